"""Soak: many injections in every mode on a list of models, counting the faults the tool fails on.

A campaign never dies on one fault: a fault the tool fails on is stored as a tool error and the
campaign goes on (docs/store.md). The target is zero of them; this runs the campaigns the CLI
runs (default data and weights, default batch, one worker per CPU) and prints, per model and
mode, the injections, the count per outcome and the tool errors, and how many batches failed
only as a whole (logged by ``kernelfi.campaign``; their faults ran one by one). It ends with

    soak injections=N tool_errors=E batch_failures=B seconds=S

and exits 1 if E or B is not zero. The models are a list of ``NAME=N`` or ``NAME=NxS`` (N
injections per seed, S seeds from ``--seed``): any registered name or ``.cfg`` path, so the
user models of later work join by name. ``--quick`` is the share CI runs (tests/test_soak.py).

    python bench/soak.py                 # the full soak (figures in bench/README.md)
    python bench/soak.py --quick
    python bench/soak.py --models digits-alexnet=1000x2 alexnet=200 --modes iov
    python bench/soak.py --models --fuzz 20=200     # 20 fuzzed CNNs, 200 injections per mode each

``--fuzz K=N`` adds K random CNNs drawn from the fuzzer's vocabulary (tests/zoo/fuzz_nets.py:
SE blocks, residuals, concatenations, pools, every supported activation...) with seeded
weights and calibrated BatchNorm statistics, N injections per mode each, drawn from ``--seed``.
Each is written as a model file (``PATH.py:build``, beside its checkpoint), which every worker
imports again by path, as a user's model file.
"""
from __future__ import annotations

import argparse
import logging
import random
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from kernelfi._utils import KernelfiError
from kernelfi.campaign import CampaignConfig, ModelSpec, run_campaign
from kernelfi.models import get_model_info
from kernelfi.store import Store
from kernelfi.types import OUTCOMES

#: The full soak: >= 20,000 injections per mode on each digits model (5 seeds of 4,000) and
#: 2,000 per mode on AlexNet and ResNet-50 with seeded random weights
FULL = ("digits-alexnet=4000x5", "digits-resnet=4000x5", "alexnet=2000", "resnet50=2000")
#: What CI runs: 1,000 per mode and digits model (6,000 injections)
QUICK = ("digits-alexnet=1000", "digits-resnet=1000")
MODES = ("rf", "iov", "ioa")


@dataclass
class Line:
    """One (model, mode): every seed's campaign together."""

    model: str
    mode: str
    injections: int = 0
    outcomes: dict[str, int] = field(default_factory=lambda: dict.fromkeys(OUTCOMES, 0))
    tool_errors: int = 0
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0
    #: the one line a model was refused with (the lowering, a bad spec): no campaign ran
    refused: str | None = None


@dataclass
class Soak:
    lines: list[Line]
    batch_failures: int
    seconds: float

    @property
    def injections(self) -> int:
        return sum(l.injections for l in self.lines)

    @property
    def tool_errors(self) -> int:
        return sum(l.tool_errors for l in self.lines)

    @property
    def ok(self) -> bool:
        return self.tool_errors == 0 and self.batch_failures == 0 and not any(l.refused for l in self.lines)


def parse_model(text: str) -> tuple[str, int, int]:
    """``NAME=N`` or ``NAME=NxS`` -> (name, injections per seed, seeds)."""
    name, _, size = text.rpartition("=")
    if not name:
        raise SystemExit(f"soak: '{text}' is not NAME=N or NAME=NxS")
    n, _, seeds = size.partition("x")
    return name, int(n), int(seeds or 1)


class _BatchFailures(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if "failed together" in record.getMessage():
            self.count += 1
            print(f"  {record.getMessage()}", flush=True)


def soak(models: list[str], modes: tuple[str, ...] = MODES, seed: int = 1, workers: int = 0,
         db_dir: str | None = None, say=print,  # type: ignore[no-untyped-def]
         weights: dict[str, str] | None = None) -> Soak:
    """Run every (model, mode, seed) campaign into one database per model; the counts.
    ``weights``: a checkpoint for some models (by name)."""
    weights = weights or {}
    failures = _BatchFailures()
    log = logging.getLogger("kernelfi.campaign")
    log.addHandler(failures)
    t0 = time.perf_counter()
    lines: list[Line] = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            where = Path(db_dir or tmp)
            where.mkdir(parents=True, exist_ok=True)
            for spec in models:
                name, n, seeds = parse_model(spec)
                # models with no embedded data run on seeded random inputs, named as the CLI's --data random
                data = None if get_model_info(name).default_data is not None else "random"
                db = where / f"soak-{Path(name).stem}.db"
                for mode in modes:
                    line = Line(name, mode)
                    t1 = time.perf_counter()
                    for s in range(seed, seed + seeds):
                        try:
                            cid = run_campaign(CampaignConfig(ModelSpec(name, weights=weights.get(name)), mode,
                                                              "single", n=n, seed=s, data=data, workers=workers),
                                               str(db))
                        except KernelfiError as err:
                            line.refused = str(err)
                            break
                        with Store(db, create=False, readonly=True) as store:
                            for k, v in store.outcome_counts(cid).items():
                                line.outcomes[k] += v
                            errs = store.tool_errors(cid)
                        line.injections += n
                        line.tool_errors += len(errs)
                        line.errors += [f"{e.error} ({e.replay})" for e in errs[:3]]
                    line.seconds = time.perf_counter() - t1
                    lines.append(line)
                    say(_format(line))
    finally:
        log.removeHandler(failures)
    return Soak(lines, failures.count, time.perf_counter() - t0)


def fuzzed(count: int, n: int, seed: int, where: Path) -> tuple[list[str], dict[str, str]]:
    """``count`` fuzzed CNNs written under ``where`` as model files with their seeded weights
    beside them: the soak's ``PATH.py:build=N`` specs and the checkpoint of each model.
    Architecture ``i`` is drawn from ``random.Random(f"{seed}:{i}")``: the same options give
    the same networks."""
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "zoo"))
    from fuzz_nets import FuzzNet, model_file, random_net  # noqa: E402 (tests/zoo)
    from zoo import CLASSES, seeded  # noqa: E402

    specs, ckpts = [], {}
    for i in range(count):
        shape, arch = random_net(random.Random(f"{seed}:{i}"))
        name = model_file(arch, shape, CLASSES, where)
        path = where / f"{Path(name.rpartition(':')[0]).stem}.pt"
        torch.save(seeded(FuzzNet(arch, shape, CLASSES), shape, seed).state_dict(), path)
        specs.append(f"{name}={n}")
        ckpts[name] = str(path)
    return specs, ckpts


def _format(l: Line) -> str:
    parts = " ".join(f"{k}={v}" for k, v in l.outcomes.items())
    text = (f"{l.model:<16} {l.mode:<3} injections={l.injections} {parts} tool_errors={l.tool_errors} "
            f"({l.seconds:.0f}s, {l.injections / max(l.seconds, 1e-9):.0f}/s)")
    if l.refused:
        text = f"{l.model:<16} {l.mode:<3} REFUSED {l.refused}"
    return "\n".join([text] + [f"    TOOL ERROR {e}" for e in l.errors])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="*", default=None, help="NAME=N or NAME=NxS (default: the full soak; "
                    "none: only the fuzzed ones)")
    ap.add_argument("--fuzz", default=None, metavar="K=N", help="also K fuzzed CNNs, N injections per mode each")
    ap.add_argument("--quick", action="store_true", help="the share CI runs: 1,000 per mode on each digits model")
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES, help="fault modes")
    ap.add_argument("--seed", type=int, default=1, help="first seed (a model's S seeds run from it)")
    ap.add_argument("--workers", type=int, default=0, help="worker processes (0: one per CPU)")
    ap.add_argument("--db-dir", default=None, help="keep the databases here (default: a temporary directory)")
    args = ap.parse_args()
    models = list(QUICK if args.quick else FULL) if args.models is None else list(args.models)
    with tempfile.TemporaryDirectory() as tmp:
        weights: dict[str, str] = {}
        if args.fuzz:
            count, n, _ = parse_model(args.fuzz)
            specs, weights = fuzzed(int(count), n, args.seed, Path(args.db_dir or tmp))
            models += specs
        result = soak(models, tuple(args.modes), args.seed, args.workers, args.db_dir, weights=weights)
    print(f"soak injections={result.injections} tool_errors={result.tool_errors} "
          f"refused={sum(1 for l in result.lines if l.refused)} "
          f"batch_failures={result.batch_failures} seconds={result.seconds:.0f}")
    sys.exit(0 if result.ok else 1)


if __name__ == "__main__":
    main()
