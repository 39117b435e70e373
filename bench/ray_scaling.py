"""Local (1 worker) vs Ray (2 workers) injections/s for digits-alexnet on 2 cores (issue 7).

Both campaigns run in this process, one after the other, with the same plan (same seed, n,
batch) into separate databases, so the two rates are measured side by side; the rows are
checked identical. "local" is the default ``--executor local`` (one process, torch's own
threads); "ray" is ``--executor ray`` with two one-CPU actors on a local 2-CPU Ray instance.

Rates are end to end — model preparation, actor start-up and storing included — since that is
what a user waits for; Ray's start-up is amortised only over enough injections, hence the
large default ``-n``. The steady rate (first to last stored batch) is printed too. Starting
Ray itself is not timed: on a cluster it is already up. Ends with ``local=X/s ray=Y/s``.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
import time
from pathlib import Path

from kernelfi.campaign import CampaignConfig, ModelSpec, run_campaign
from kernelfi.store import Store


class _Clock:
    """Progress callback that remembers when the first and the last batch were stored."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.first: tuple[float, int] | None = None
        self.last: tuple[float, int] = (self.start, 0)

    def __call__(self, done: int, counts: dict[str, int]) -> None:
        if done == 0:
            return
        now = time.perf_counter()
        if self.first is None:
            self.first = (now, done)
        self.last = (now, done)

    def rates(self, n: int) -> tuple[float, float]:
        end, _ = self.last
        total = n / (end - self.start)
        if self.first is None or self.last[1] == self.first[1]:
            return total, total
        (t0, d0), (t1, d1) = self.first, self.last
        return total, (d1 - d0) / (t1 - t0)


def _rows(db: Path) -> list:
    with Store(db, create=False) as s:
        [c] = s.campaigns()
        return [dataclasses.replace(s.injection(c.id, i), seconds=0.0) for i in sorted(s.done_ids(c.id))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=2000)
    ap.add_argument("--mode", default="rf", choices=["rf", "iov", "ioa"])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--inputs", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    import ray

    from kernelfi.distributed import ray_executor

    cfg = CampaignConfig(model=ModelSpec("digits-alexnet"), mode=args.mode, bit_model="single", n=args.n,
                         seed=args.seed, batch=args.batch, inputs=args.inputs)
    print(f"digits-alexnet {args.mode}/single n={args.n} batch={args.batch} inputs={args.inputs}, "
          f"{os.cpu_count()} cores visible, load average {os.getloadavg()[0]:.1f} (other work skews both rates)")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            dbs = {k: Path(tmp) / f"{k}.db" for k in ("local", "ray")}
            clocks: dict[str, _Clock] = {}
            clocks["local"] = _Clock()  # starts now: each clock times its own run only
            run_campaign(cfg, str(dbs["local"]), progress=clocks["local"])
            ex = ray_executor(workers=2)
            clocks["ray"] = _Clock()
            run_campaign(cfg, str(dbs["ray"]), progress=clocks["ray"], execute=ex)
            same = _rows(dbs["local"]) == _rows(dbs["ray"])
        rates = {k: c.rates(args.n) for k, c in clocks.items()}
        for k, (total, steady) in rates.items():
            print(f"{k:5s}: {total:7.1f} inj/s end to end, {steady:7.1f} inj/s steady")
        print(f"rows identical: {same}; ray workers {ex.stats.workers}, batches {ex.stats.batches}")
        print(f"local={rates['local'][0]:.1f}/s ray={rates['ray'][0]:.1f}/s")
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
