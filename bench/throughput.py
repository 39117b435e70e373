"""Campaign throughput: kernelfi vs PyTorchFI 0.6.0 and MRFI 2.1.0, same faults, same outcomes.

For each model, N seeded neuron faults (one float32 bit flip of one conv/linear output element
of one input; see ``peers/common.py`` for the pairing with kernelfi's IOV site) run through

* PyTorchFI: custom FP32 flip function, batched (one fault per batch element, one forward per
  batch of B);
* MRFI: ``FixPositions`` + ``FloatFixedBitFlip``, batched the same way;
* kernelfi: the equivalent IOV fault (``add_bias``/``fadd:out``), through the campaign Runner
  in per-layer batches.

All three run in this process, back to back, after a warm-up (each tool's golden run at its
batch shape). The timed phase is the injections only (fault set-up, forward/suffix runs and
output classification); one-off set-up (lowering, golden runs, hooks, model copies) is
printed separately. Every fault's output-level category must agree across the three.

Ends with ``speedup_vs_best_peer alexnet=X resnet50=Y agreement=Z%``.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import resource
import subprocess
import sys
import tempfile
import textwrap
import time
from collections import Counter
from dataclasses import dataclass

import torch

from kernelfi.data import load_inputs
from kernelfi.lowering import lower
from kernelfi.models import load_model

from peers.common import (CATEGORIES, disagreement_cause, draw_faults, neuron_sites, peer_golden,
                          reference_run)
from peers.kernelfi_peer import KernelfiPeer


@dataclass(frozen=True)
class Bench:
    registry: str
    kwargs: dict
    shape: tuple[int, int, int]
    data: str
    inputs: int
    n_full: int
    n_quick: int
    batch_full: int
    batch_quick: int


MODELS: dict[str, Bench] = {
    # kernelfi's registry AlexNet is torchvision's (224x224 in its metadata); its
    # AdaptiveAvgPool makes 227x227 give the same 6x6 feature map, and kernelfi lowers it at
    # 227x227 (the avgpool becomes an identity and disappears from the trace).
    "alexnet": Bench("alexnet", {"num_classes": 7}, (3, 227, 227), "random", 8, 512, 64, 64, 64),
    "resnet50": Bench("resnet50", {}, (3, 224, 224), "random", 4, 128, 16, 64, 16),
    "digits-alexnet": Bench("digits-alexnet", {}, (1, 32, 32), "digits", 32, 2048, 256, 64, 64),
}


def rss_mib(who: int = resource.RUSAGE_SELF) -> float:
    return resource.getrusage(who).ru_maxrss / 1024.0  # Linux: KiB


@dataclass
class ModelResult:
    name: str
    n: int
    rate: dict[str, float]
    agree: int
    cats: dict[str, Counter]
    causes: Counter


def run_model(name: str, b: Bench, n: int, batch: int, seed: int, weighting: str, peers: list[str]) -> ModelResult:
    print(f"\n== {name}: input {'x'.join(map(str, b.shape))}, {b.inputs} {b.data} inputs, N={n}, "
          f"peer batch {batch}, kernelfi batch 64 per layer")
    t0 = time.perf_counter()
    lm = load_model(b.registry, **b.kwargs)
    module = lm.module
    program = lower(module, b.shape, name)
    info = dataclasses.replace(lm.info, input_shape=b.shape)
    x = load_inputs(b.data, info, b.inputs).x.to(torch.float32).contiguous()
    sites = neuron_sites(program, module)
    faults = draw_faults(sites, n, x.shape[0], seed, weighting)
    bn = sum(s.batch_norm for s in sites)
    print(f"   {len(sites)} neuron sites ({bn} conv+BN: peers inject at the BatchNorm2d output = kernelfi's "
          f"post-BN add_bias); weights: {lm.note}")
    print(f"   lowering + inputs + fault draw: {time.perf_counter() - t0:.1f}s")

    t0 = time.perf_counter()
    kf = KernelfiPeer(program, x, sites)
    print(f"   kernelfi set-up (golden cache): {time.perf_counter() - t0:.1f}s")
    tools = []
    golden = None
    if peers:
        t0 = time.perf_counter()
        golden = peer_golden(module, x, batch)  # also the peers' warm-up at their batch shape
        print(f"   peer golden run (batch {batch}): {time.perf_counter() - t0:.1f}s")
    if "pytorchfi" in peers:
        from peers.pytorchfi_peer import PyTorchFIPeer
        t0 = time.perf_counter()
        tools.append(PyTorchFIPeer(module, sites, b.shape, batch, x[:1]))
        print(f"   pytorchfi set-up (profile, deepcopy, hooks): {time.perf_counter() - t0:.1f}s")
    if "mrfi" in peers:
        from peers.mrfi_peer import MRFIPeer
        t0 = time.perf_counter()
        tools.append(MRFIPeer(module, sites, batch))
        print(f"   mrfi set-up (config tree, hooks): {time.perf_counter() - t0:.1f}s")

    cats: dict[str, list[str]] = {}
    secs: dict[str, float] = {}
    for tool in tools:
        c, s = tool.run(x, faults, golden)
        cats[tool.name], secs[tool.name] = c, s
        print(f"   {tool.name:9s} {n} injections in {s:7.2f}s  {n / s:8.2f} inj/s   peak RSS so far {rss_mib():.0f} MiB",
              flush=True)
    c, s, raw = kf.run(faults)
    cats["kernelfi"], secs["kernelfi"] = c, s
    print(f"   {'kernelfi':9s} {n} injections in {s:7.2f}s  {n / s:8.2f} inj/s   peak RSS so far {rss_mib():.0f} MiB",
          flush=True)
    print(f"   kernelfi outcomes: {dict(Counter(r.outcome for r in raw))}")

    rate = {k: n / v for k, v in secs.items()}
    names = list(cats)
    agree = sum(1 for i in range(n) if len({cats[k][i] for k in names}) == 1)
    for k in names:
        cnt = Counter(cats[k])
        print(f"   {k:9s} " + "  ".join(f"{c}={cnt.get(c, 0)}" for c in CATEGORIES + ("due",) if c != "due" or cnt.get(c)))
    for k in names:
        if k != "kernelfi":
            print(f"   kernelfi / {k}: {rate['kernelfi'] / rate[k]:.2f}x")
    print(f"   agreement ({' = '.join(names)}): {agree}/{n} = {100.0 * agree / n:.1f}%")
    causes: Counter = Counter()
    for i, f in enumerate(faults):
        if len({cats[k][i] for k in names}) == 1:
            continue
        s = sites[f.site]
        if sum(causes.values()) >= 12:  # each diagnosis is one more peer-sized forward
            causes["not diagnosed (12 shown per model)"] += 1
            continue
        probs, n_orig, n_corr = reference_run(module, x, s, f, batch)
        r = raw[i]
        causes[disagreement_cause(n_orig, r.original, n_corr, r.corrupted, probs)] += 1
        print(f"     disagree: fault {f.id} {s.name} [{s.module}] element {f.element} bit {f.bit} input {f.input}: "
                  + ", ".join(f"{k}={cats[k][i]}" for k in names)
                  + f"; value torch {n_orig!r}->{n_corr!r}, kernelfi {r.original!r}->{r.corrupted!r}")
    for cause, k in causes.most_common():
        print(f"   {k:4d} disagreement(s): {cause}")
    return ModelResult(name, n, rate, agree, {k: Counter(v) for k, v in cats.items()}, causes)


R152 = textwrap.dedent("""
    import os, sys, tempfile, time
    from kernelfi.campaign import CampaignConfig, ModelSpec, run_campaign
    n = int(sys.argv[1])
    t = time.perf_counter()
    with tempfile.TemporaryDirectory() as d:
        cfg = CampaignConfig(model=ModelSpec("resnet152"), mode="iov", bit_model="single", n=n, seed=1,
                             data="random", inputs=4)
        run_campaign(cfg, os.path.join(d, "r152.db"))
    print(f"{time.perf_counter() - t:.1f}")
""")


def resnet152_rss(n: int) -> tuple[float, float]:
    """Peak RSS (MiB) and seconds of a kernelfi resnet152 campaign in a child process."""
    before = rss_mib(resource.RUSAGE_CHILDREN)
    out = subprocess.run([sys.executable, "-c", R152, str(n)], check=True, capture_output=True, text=True)
    peak = rss_mib(resource.RUSAGE_CHILDREN)
    if peak <= before:
        print(f"   (a previous child had a higher peak, {before:.0f} MiB: figure is an upper bound)")
    return peak, float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small N (and peer batch 16 on resnet50): < 3 min on 2 cores")
    ap.add_argument("--n", type=int, default=None, help="injections per model (default: per-model, see MODELS)")
    ap.add_argument("--batch", type=int, default=None, help="peer batch size B (default 64; 16 for resnet50 --quick)")
    ap.add_argument("--models", default="alexnet,resnet50,digits-alexnet")
    ap.add_argument("--peers", default="pytorchfi,mrfi", help="comma list, or 'none'")
    ap.add_argument("--seed", type=int, default=2024)
    ap.add_argument("--weighting", choices=("layer", "element"), default="layer",
                    help="fault draw: uniform layer then element (PyTorchFI's), or uniform over all neurons")
    ap.add_argument("--r152-n", type=int, default=None, help="injections of the resnet152 memory campaign "
                    "(default 20; 4 with --quick); 0 skips it")
    args = ap.parse_args()
    peers = [] if args.peers == "none" else [p for p in args.peers.split(",") if p]
    models = [m for m in args.models.split(",") if m]
    for m in models:
        if m not in MODELS:
            ap.error(f"unknown model {m} (known: {', '.join(MODELS)})")

    print(f"kernelfi throughput bench: torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{os.cpu_count()} CPUs, python {platform.python_version()}, {'quick' if args.quick else 'full'} run, "
          f"seed {args.seed}, weighting {args.weighting}")
    for p in peers:
        mod = {"pytorchfi": "pytorchfi", "mrfi": "mrfi"}[p]
        from importlib.metadata import version
        print(f"   peer {p} {version(mod)}")

    t_all = time.perf_counter()
    results: dict[str, ModelResult] = {}
    for m in models:
        b = MODELS[m]
        n = args.n if args.n is not None else (b.n_quick if args.quick else b.n_full)
        batch = args.batch if args.batch is not None else (b.batch_quick if args.quick else b.batch_full)
        results[m] = run_model(m, b, n, batch, args.seed, args.weighting, peers)

    r152_n = args.r152_n if args.r152_n is not None else (4 if args.quick else 20)
    if r152_n > 0:
        print(f"\n== memory: kernelfi resnet152 campaign (iov single, {r152_n} injections, 4 random inputs, child process)")
        peak, secs = resnet152_rss(r152_n)
        ok = "under" if peak < 4096 else "OVER"
        print(f"   resnet152 peak RSS {peak:.0f} MiB ({peak / 1024:.2f} GiB, {ok} the 4 GiB target) in {secs:.1f}s")
    print(f"\nbench peak RSS (this process): {rss_mib():.0f} MiB; total wall {time.perf_counter() - t_all:.1f}s")

    print("\nsummary (injections/s)")
    for m, r in results.items():
        best = max((v for k, v in r.rate.items() if k != "kernelfi"), default=None)
        line = "  ".join(f"{k}={v:.2f}" for k, v in r.rate.items())
        sp = f"  speedup vs best peer {r.rate['kernelfi'] / best:.2f}x" if best else ""
        print(f"   {m:15s} N={r.n:5d}  {line}{sp}  agreement {100.0 * r.agree / r.n:.1f}%")

    def speed(m: str) -> str:
        r = results.get(m)
        if r is None or len(r.rate) < 2:
            return "n/a"
        return f"{r.rate['kernelfi'] / max(v for k, v in r.rate.items() if k != 'kernelfi'):.2f}"

    total = sum(r.n for r in results.values())
    agree = 100.0 * sum(r.agree for r in results.values()) / max(1, total)
    print(f"speedup_vs_best_peer alexnet={speed('alexnet')} resnet50={speed('resnet50')} agreement={agree:.1f}%")


if __name__ == "__main__":
    main()
