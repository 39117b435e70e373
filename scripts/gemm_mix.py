"""gemm's dynamic instruction mix in a lowered model: its share of the model's instructions, its
LD share (1 in N), FFMA per shared load and FP32 share (docs/kernels.md §6 compares the LD share
with maxas' sgemm_128 loop, 34 loads in 556 instructions).

    python scripts/gemm_mix.py digits-alexnet alexnet
"""
from __future__ import annotations

import sys
from collections import Counter

from kernelfi.campaign.session import ModelSpec, open_session


def mix(model: str) -> str:
    """One line of figures, summed as ``threads × count`` over every launch's slots."""
    program = open_session(ModelSpec(model)).program
    groups: Counter[str] = Counter()
    ops: Counter[str] = Counter()
    everything = 0
    for launch in program.trace.launches:
        for slot in launch.template.slots:
            n = launch.template.threads * slot.count
            everything += n
            if launch.kernel == "gemm":
                groups[slot.group] += n
                ops[slot.opcode] += n
    total = sum(groups.values())
    return (f"{model}: gemm {total:.3e} of {everything:.3e} dynamic instructions ({total / everything:.1%}); "
            f"LD share 1 in {total / groups['LD']:.1f} (LDS {ops['LDS']:.2e}, LDG {ops['LDG']:.2e}); "
            f"FFMA per LDS {ops['FFMA'] / ops['LDS']:.1f}; FP32 {groups['FP32'] / total:.1%}")


if __name__ == "__main__":
    for name in sys.argv[1:] or ["digits-alexnet", "alexnet"]:
        print(mix(name))
