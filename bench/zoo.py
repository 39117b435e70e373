"""The zoo table: for each architecture of tests/zoo (written from its paper, scaled down), its
layers and launches, its lowering error and the injections per second of a campaign in every
mode (through ``run_campaign`` into a results database, one process, as tests/zoo runs them).

    python bench/zoo.py                 # 300 injections per mode (the issue's figure)
    python bench/zoo.py -n 100 --models vgg16-bn densenet-121

A model the lowering refuses prints its one line. Ends with ``zoo tool_errors=E refused=R``
and exits 1 if either is not zero.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "zoo"))
from zoo import MODES, ZOO, campaign, lowered, lowering_error, register  # noqa: E402 (tests/zoo)

from kernelfi._utils import KernelfiError  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=300, help="injections per mode")
    ap.add_argument("--models", nargs="+", default=[e.key for e in ZOO], choices=[e.key for e in ZOO])
    args = ap.parse_args()
    errors = refused = 0
    print(f"{'model':<20} {'input':<9} {'layers':>6} {'launches':>8} {'params':>8} {'rel.err':>8} "
          + " ".join(f"{m + ' inj/s':>9}" for m in MODES))
    for entry in (e for e in ZOO if e.key in args.models):
        shape = "x".join(str(d) for d in entry.input_shape[1:])
        try:
            module, program = lowered(entry)
        except KernelfiError as err:
            refused += 1
            print(f"{entry.key:<20} {shape:<9} REFUSED {err}")
            continue
        err = lowering_error(module, program, entry.input_shape).error
        name = f"zoo-{entry.key}"
        register(name, entry.build, entry.input_shape)
        with tempfile.TemporaryDirectory() as tmp:
            runs = campaign(name, module, Path(tmp), args.n)
        errors += sum(len(r.tool_errors) for r in runs)
        params = sum(p.numel() for p in module.parameters())
        print(f"{entry.key:<20} {shape:<9} {len(program.trace.layers):>6} {len(program.trace.launches):>8} "
              f"{params:>8} {err:>8.1e} " + " ".join(f"{r.injections / r.seconds:>9.1f}" for r in runs), flush=True)
        for r in runs:
            for e in r.tool_errors[:3]:
                print(f"    TOOL ERROR {r.mode}: {e}")
    print(f"zoo tool_errors={errors} refused={refused}")
    sys.exit(1 if errors or refused else 0)


if __name__ == "__main__":
    main()
