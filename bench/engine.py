"""Kernel engine vs native PyTorch forward, batch 1, CPU (issue: engine/native <= 1.5x).

Both run in this process, interleaved (the order alternating), with warm-up and medians over
repetitions, so the ratio is measured side by side; the median of the paired per-repetition
ratios is printed too (on a loaded machine the two can differ: run it a few times). Prints
per-model times and ends with ``engine/native alexnet=R1 resnet50=R2``.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from kernelfi.lowering import lower
from kernelfi.models import load_model


def _time(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def measure(name: str, reps: int) -> tuple[float, float, float, float]:
    """(native median, engine median, their ratio, median of the paired per-repetition ratios)."""
    lm = load_model(name)
    prog = lower(lm.module, lm.info.input_shape, name)
    x = torch.randn(1, *lm.info.input_shape)
    native = (lambda: lm.module.logits(x)) if hasattr(lm.module, "logits") else (lambda: lm.module(x))
    engine = lambda: prog.forward(x)  # noqa: E731
    with torch.no_grad():
        for _ in range(3):  # warm-up (the engine's one-time self-checks run here)
            native(), engine()
        tn, te = [], []
        for r in range(reps):  # interleaved, the order alternating, so drift hits both alike
            if r % 2:
                te.append(_time(engine))
                tn.append(_time(native))
            else:
                tn.append(_time(native))
                te.append(_time(engine))
    n, e = statistics.median(tn), statistics.median(te)
    return n, e, e / n, statistics.median(b / a for a, b in zip(tn, te))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--models", default="alexnet,resnet50")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads (default: torch's own; 1 avoids OpenMP waits on a loaded machine)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch 1, CPU, "
          f"load average {os.getloadavg()[0]:.1f} at the start")
    ratios = {}
    for name in args.models.split(","):
        n, e, r, paired = measure(name, args.reps)
        ratios[name] = r
        print(f"{name:10s} native {1000 * n:8.2f} ms   engine {1000 * e:8.2f} ms   ratio {r:.2f}"
              f"   (median of paired ratios {paired:.2f})")
    print("engine/native " + " ".join(f"{k}={v:.2f}" for k, v in ratios.items()))


if __name__ == "__main__":
    main()
