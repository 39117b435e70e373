"""Wall-clock of a 1000-injection IOV campaign on digits-alexnet (target: under a minute on 2 cores).

Runs the campaign the CLI runs (fresh database, default batch, embedded weights and the digits
test split), once cold (start-up, golden run, campaign) and prints the figures, ending with
``campaign_seconds=S injections_per_second=R``.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from kernelfi.campaign import CampaignConfig, ModelSpec, run_campaign
from kernelfi.models import get_model_info
from kernelfi.store import Store


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="digits-alexnet")
    ap.add_argument("--mode", default="iov")
    ap.add_argument("-n", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--data", default=None, help="inputs (default: the model's embedded data, else random)")
    args = ap.parse_args()
    data = args.data or (None if get_model_info(args.model).default_data else "random")
    with tempfile.TemporaryDirectory() as d:
        db = Path(d) / "bench.db"
        t0 = time.perf_counter()
        cid = run_campaign(CampaignConfig(ModelSpec(args.model), args.mode, "single", n=args.n, seed=args.seed,
                                          data=data), str(db))
        secs = time.perf_counter() - t0
        with Store(db) as s:
            counts = s.outcome_counts(cid)
    print(f"{args.model} {args.mode} single-bit, n={args.n}: " + ", ".join(f"{k}={v}" for k, v in counts.items()))
    print(f"campaign_seconds={secs:.1f} injections_per_second={args.n / secs:.1f}")


if __name__ == "__main__":
    main()
