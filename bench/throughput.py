"""Campaign throughput: kernelfi vs PyTorchFI 0.6.0 and MRFI 2.1.0, same faults, same outcomes.

For each model, N seeded neuron faults (one float32 bit flip of one conv/linear output element
of one input; see ``peers/common.py`` for the pairing with kernelfi's IOV site) run through

* PyTorchFI: custom FP32 flip function, batched (one fault per batch element, one forward per
  batch of B);
* MRFI: ``FixPositions`` + ``FloatFixedBitFlip``, batched the same way;
* kernelfi: the equivalent IOV fault (``add_bias``/``fadd:out``), through the campaign Runner
  in the campaign's batches (layer order, a batch spanning consecutive layers).

All three run in this process, interleaved batch by batch (the tool that has injected the
fewest faults so far runs its next batch), after a warm-up (each tool's golden run at its batch
shape). The timed phase is the injections only (fault set-up, forward/suffix runs and
output classification); one-off set-up (lowering, golden runs, hooks, model copies) is
printed separately. Every fault's output-level category must agree across the three.

Ends with ``speedup_vs_best_peer alexnet=X resnet50=Y agreement=Z%``.
"""
from __future__ import annotations

import argparse
import os
import platform
import resource
import subprocess
import sys
import textwrap
import time
from collections import Counter
from dataclasses import dataclass
from importlib.metadata import version

import torch

from kernelfi.campaign.pool import auto_workers

from peers.common import (CATEGORIES, KERNELFI_CATEGORY, bit_class, chunks, disagreement_cause, draw_faults,
                          neuron_sites, peer_golden, reference_run)
from peers.kernelfi_peer import KernelfiPeer, KernelfiPool
from peers.models import MODELS, Bench, build


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


def run_model(name: str, b: Bench, n: int, batch: int, seed: int, weighting: str, peers: list[str],
              workers: int) -> ModelResult:
    print(f"\n== {name}: input {'x'.join(map(str, b.shape))}, {b.inputs} {b.data} inputs, N={n}, "
          f"peer batch {batch}")
    t0 = time.perf_counter()
    built = build(name)
    module, program, x = built.module, built.program, built.x
    sites = neuron_sites(program, module)
    faults = draw_faults(sites, n, x.shape[0], seed, weighting)
    bn = sum(s.batch_norm for s in sites)
    print(f"   {len(sites)} neuron sites ({bn} conv+BN: peers inject at the BatchNorm2d output = kernelfi's "
          f"post-BN add_bias); weights: {built.note}")
    print(f"   lowering + inputs + fault draw: {time.perf_counter() - t0:.1f}s")

    t0 = time.perf_counter()
    kf: KernelfiPeer | KernelfiPool
    if workers > 1:
        kf = KernelfiPool(name, program, x, sites, workers)
        how = (f"{workers} worker processes (kernelfi campaign --workers {workers}), one engine thread each, "
               f"mapping one golden run in shared memory")
    else:
        kf = KernelfiPeer(program, x, sites)
        how = "in this process, one engine thread"
    print(f"   kernelfi set-up (golden cache): {time.perf_counter() - t0:.1f}s; {how}; campaign batches of up to "
          f"{kf.batch} faults in layer order (auto_batch)")
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

    # Timed phase, interleaved batch by batch: the tool that has injected the fewest faults so
    # far runs its next batch, so load drift on the machine hits all three alike. Every tool keeps
    # its own batching (peers: chunks of B in id order; kernelfi: the campaign's batches, one per
    # worker at a time).
    work: dict[str, list] = {t.name: chunks(faults, batch) for t in tools}
    work["kernelfi"] = chunks(kf.plan(faults), max(1, workers))
    run_item = {t.name: (lambda part, t=t: t.run(x, part, golden)[0]) for t in tools}
    out: dict[str, dict[int, object]] = {k: {} for k in work}
    secs = {k: 0.0 for k in work}
    done = {k: 0 for k in work}
    pos = {k: 0 for k in work}
    order = list(work)
    while True:
        pending = [k for k in order if pos[k] < len(work[k])]
        if not pending:
            break
        k = min(pending, key=lambda k: (done[k], order.index(k)))
        item = work[k][pos[k]]
        pos[k] += 1
        t0 = time.perf_counter()
        if k == "kernelfi":
            out[k].update(kf.run_batches(item))
            done[k] += sum(len(b) for b in item)
        else:
            out[k].update({f.id: c for f, c in zip(item, run_item[k](item))})
            done[k] += len(item)
        secs[k] += time.perf_counter() - t0
    raw = [out["kernelfi"][f.id] for f in faults]
    cats: dict[str, list[str]] = {k: [out[k][f.id] for f in faults] for k in order if k != "kernelfi"}
    cats["kernelfi"] = [KERNELFI_CATEGORY[r.outcome] for r in raw]
    for k in cats:
        print(f"   {k:9s} {n} injections in {secs[k]:7.2f}s  {n / secs[k]:8.2f} inj/s")
    print(f"   peak RSS so far {rss_mib():.0f} MiB")
    print(f"   kernelfi outcomes: {dict(Counter(r.outcome for r in raw))}")
    units, st = kf.stats()
    if isinstance(kf, KernelfiPool):
        kf.close()
    share = st["window_elems"] / st["map_elems"] if st["map_elems"] else 0.0
    print(f"   kernelfi cone: {units} conv/pool/shortcut units verified crop-exact; {st['windows']} windows "
          f"computed, {100 * share:.1f}% of the elements of the feature maps they stood for")

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
    by_bits: dict[str, list[int]] = {}
    for i, f in enumerate(faults):
        a = by_bits.setdefault(bit_class(f.bit), [0, 0])
        a[0] += len({cats[k][i] for k in names}) == 1
        a[1] += 1
    print("   agreement by flipped bit: " + ", ".join(f"{c} {a}/{t}" for c, (a, t) in sorted(by_bits.items())))
    causes: Counter = Counter()
    bad = [i for i in range(n) if len({cats[k][i] for k in names}) > 1]
    for part in chunks(bad, batch):  # diagnosis: plain-torch reference runs, B faults per forward
        probs, n_orig, n_corr = reference_run(module, x, sites, [faults[i] for i in part], batch)
        for j, i in enumerate(part):
            f, r, s = faults[i], raw[i], sites[faults[i].site]
            causes[disagreement_cause(n_orig[j], r.original, n_corr[j], r.corrupted, probs[j], r.flags)] += 1
            if sum(causes.values()) <= 12:
                print(f"     disagree: fault {f.id} {s.name} [{s.module}] element {f.element} bit {f.bit} input {f.input}: "
                      + ", ".join(f"{k}={cats[k][i]}" for k in names)
                      + f"; value torch {n_orig[j]!r}->{n_corr[j]!r}, kernelfi {r.original!r}->{r.corrupted!r}")
    for cause, k in causes.most_common():
        print(f"   {k:4d} disagreement(s): {cause}")
    return ModelResult(name, n, rate, agree, {k: Counter(v) for k, v in cats.items()}, causes)


R152 = textwrap.dedent("""
    import os, sys, tempfile, time
    from kernelfi.campaign import CampaignConfig, ModelSpec, run_campaign
    from kernelfi.campaign.pool import execute_local
    n, workers = int(sys.argv[1]), int(sys.argv[2])
    # the workers take every batch, however short the campaign: their memory is measured
    execute = (lambda prep, work: execute_local(prep, work, workers, driver=False)) if workers > 1 else None
    t = time.perf_counter()
    with tempfile.TemporaryDirectory() as d:
        cfg = CampaignConfig(model=ModelSpec("resnet152"), mode="iov", bit_model="single", n=n, seed=1,
                             data="random", inputs=4, workers=workers, batch=-(-n // (2 * workers)))
        run_campaign(cfg, os.path.join(d, "r152.db"), execute=execute)
    print(f"{time.perf_counter() - t:.1f}")
""")


def _tree(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            with open(f"/proc/{p}/task/{p}/children") as f:
                todo.extend(int(c) for c in f.read().split())
        except OSError:
            pass
    return out


def _mem_kib(pid: int) -> tuple[int, int]:
    """(RSS, PSS) of a process in KiB. PSS charges each shared page to its processes in equal
    parts: the campaign's workers map one golden run, which RSS would count once per worker."""
    rss = pss = 0
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1])
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    pss = int(line.split()[1])
    except OSError:
        pass
    return rss, pss or rss


@dataclass
class TreeMem:
    sum_pss: float    # MiB, peak of the processes' summed PSS (sampled every 50 ms): the memory they use
    sum_rss: float    # MiB, peak of their summed RSS (shared pages counted in every process)
    largest: float    # MiB, getrusage(RUSAGE_CHILDREN): the largest single process's peak RSS
    processes: int
    secs: float


def resnet152_rss(n: int, workers: int) -> TreeMem:
    """Memory of a kernelfi resnet152 campaign with ``workers`` worker processes, run in a child
    process: the campaign's driver and its workers, sampled from /proc (Linux).

    On Linux a child's ru_maxrss also counts the address space it had before exec, i.e. this
    process's RSS at fork; run it while this process is small (first). The summed figures
    read each process's own /proc files, which belong to its exec'd image alone."""
    child = subprocess.Popen([sys.executable, "-c", R152, str(n), str(workers)], stdout=subprocess.PIPE, text=True)
    peak_pss = peak_rss = 0
    seen: set[int] = set()
    while child.poll() is None:
        rss = pss = 0
        for p in _tree(child.pid):
            r, q = _mem_kib(p)
            rss, pss = rss + r, pss + q
            if r:
                seen.add(p)
        peak_pss, peak_rss = max(peak_pss, pss), max(peak_rss, rss)
        time.sleep(0.05)
    out = child.stdout.read() if child.stdout else ""
    if child.returncode != 0:
        raise SystemExit(f"resnet152 memory campaign failed (exit {child.returncode})")
    return TreeMem(peak_pss / 1024.0, peak_rss / 1024.0, rss_mib(resource.RUSAGE_CHILDREN), len(seen),
                   float(out.strip().splitlines()[-1]))


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
    ap.add_argument("--workers", type=int, default=0, help="kernelfi worker processes (0: one per CPU, as "
                    "kernelfi campaign runs by default; 1: in this process)")
    ap.add_argument("--r152-n", type=int, default=None, help="injections of the resnet152 memory campaign "
                    "(default 20; 10 with --quick: the peak is set by lowering and the golden cache, not by n); 0 skips it")
    args = ap.parse_args()
    peers = [] if args.peers == "none" else [p for p in args.peers.split(",") if p]
    models = [m for m in args.models.split(",") if m]
    for m in models:
        if m not in MODELS:
            ap.error(f"unknown model {m} (known: {', '.join(MODELS)})")
    for p in peers:
        if p not in ("pytorchfi", "mrfi"):
            ap.error(f"unknown peer {p} (known: pytorchfi, mrfi, or none)")

    print(f"kernelfi throughput bench: torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{os.cpu_count()} CPUs, python {platform.python_version()}, {'quick' if args.quick else 'full'} run, "
          f"seed {args.seed}, weighting {args.weighting}")
    try:
        head = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True,
                              cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip()
    except OSError:
        head = ""
    print(f"   kernelfi {version('kernelfi')} (git {head or 'unknown'})")
    for p in peers:
        print(f"   peer {p} {version(p)}")

    workers = args.workers or auto_workers()
    t_all = time.perf_counter()
    r152_n = args.r152_n if args.r152_n is not None else (10 if args.quick else 20)
    r152 = None
    if r152_n > 0:  # first, while this process is small (see resnet152_rss)
        print(f"\n== memory: kernelfi resnet152 campaign (iov single, {r152_n} injections, 4 random inputs, "
              f"random weights, {workers} worker process(es), child process; this process's RSS now "
              f"{rss_mib():.0f} MiB)")
        r152 = resnet152_rss(r152_n, workers)
        ok = "under" if r152.sum_pss < 4096 else "OVER"
        print(f"   resnet152 campaign, all its processes together ({r152.processes}): peak PSS {r152.sum_pss / 1024:.2f} "
              f"GiB, {ok} the 4 GiB target (summed RSS {r152.sum_rss / 1024:.2f} GiB counts the shared golden run "
              f"once per worker); largest process {r152.largest / 1024:.2f} GiB RSS; {r152.secs:.1f}s")

    results: dict[str, ModelResult] = {}
    for m in models:
        b = MODELS[m]
        n = args.n if args.n is not None else (b.n_quick if args.quick else b.n_full)
        batch = args.batch if args.batch is not None else (b.batch_quick if args.quick else b.batch_full)
        results[m] = run_model(m, b, n, batch, args.seed, args.weighting, peers, workers)

    print(f"\nbench peak RSS (this process): {rss_mib():.0f} MiB; total wall {time.perf_counter() - t_all:.1f}s")

    print("\nsummary (injections/s)")
    for m, r in results.items():
        best = max((v for k, v in r.rate.items() if k != "kernelfi"), default=None)
        line = "  ".join(f"{k}={v:.2f}" for k, v in r.rate.items())
        sp = f"  speedup vs best peer {r.rate['kernelfi'] / best:.2f}x" if best else ""
        print(f"   {m:15s} N={r.n:5d}  {line}{sp}  agreement {100.0 * r.agree / r.n:.1f}%")
    if r152 is not None:
        print(f"   resnet152 campaign peak memory {r152.sum_pss / 1024:.2f} GiB PSS, {workers} worker(s) and driver "
              f"together (summed RSS {r152.sum_rss / 1024:.2f} GiB; largest process {r152.largest / 1024:.2f} GiB)")

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
