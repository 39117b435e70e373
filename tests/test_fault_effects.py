"""Every instruction tag a fault can strike has a fault effect: none counts as Masked by default.

A fault strikes one execution of one tag (IOV, IOA) or a register fed by one tag (RF). For gemm
the effect of each tag is an entry of ``faults.gemm.EFFECTS``; for every other kernel it is the
thread program's call of that tag during the replay. A tag with neither would make its faults
Masked without anything computing that: a template change would pass unnoticed.
"""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from kernelfi.faults import gemm, programs_harden, programs_layers  # noqa: F401  (registers the hardening/issue-20 programs)
from kernelfi.faults.memmap import MemoryMap
from kernelfi.faults.programs import NOT_REPLAYED, OPERANDS, PROGRAMS
from kernelfi.faults.replay import F32, Target, ThreadCtx
from kernelfi.faults.sites import eligible
from kernelfi.kernels import all_kernels, get_kernel
from kernelfi.types import BufferSpec, InstrSlot, Mode, Trace


def struck_tags(kernel, params) -> set[str]:  # type: ignore[no-untyped-def]
    """The tags a fault of some mode can strike in a launch of ``kernel`` with ``params``."""
    slots = {s.tag for s in kernel.template(params).slots if eligible(Mode.IOV, s) or eligible(Mode.IOA, s)}
    return slots | {r.tag for r in kernel.registers(params).registers}


def replayed_tags(name: str, params, threads: int) -> set[str]:  # type: ignore[no-untyped-def]
    """The tags the thread program executes in the first 64 threads, on two memories (all ones;
    ones at even elements, zeros at odd: ABFT's correction runs only on one flagged row and
    column)."""
    ops = OPERANDS[name]
    bufs = {rw: [f"{rw}{i}" for i in range(1 + max([i for k, i in ops.values() if k == rw], default=-1))]
            for rw in "rw"}
    names = {op: bufs[rw][i] for op, (rw, i) in ops.items()}
    specs = tuple(BufferSpec(b, (1 << 16,), "activation") for b in bufs["r"] + bufs["w"])
    memmap = MemoryMap.from_trace(Trace("t", (1,), (), specs, (), specs[0].name, specs[0].name))
    calls: Counter = Counter()
    for value in (lambda i: 1.0, lambda i: 1.0 if i % 2 == 0 else 0.0):
        for t in range(min(threads, 64)):
            ctx = ThreadCtx(memmap, lambda b, i, value=value: F32(value(i)), names)
            PROGRAMS[name](ctx, params, t)
            calls.update({tag for tag, n in ctx.calls.items() if n})
    return set(calls)


def test_every_struck_tag_of_a_replayed_kernel_is_executed() -> None:
    for name, k in all_kernels().items():
        if name == "gemm":
            continue
        for p in k.example_params:  # type: ignore[attr-defined]
            missing = struck_tags(k, p) - replayed_tags(name, p, k.template(p).threads)
            declared = {tag for (kernel, tag) in NOT_REPLAYED if kernel == name}
            assert missing <= declared, f"{name} {p}: tags no thread executes: {sorted(missing - declared)}"
    for (kernel, tag), why in NOT_REPLAYED.items():  # every declaration is still needed and says why
        assert why and any(tag in struck_tags(get_kernel(kernel), p) for p in get_kernel(kernel).example_params)


def test_every_gemm_tag_has_an_entry_and_a_struck_one_an_effect() -> None:
    k = get_kernel("gemm")
    assert set(k.vocabulary()) == set(gemm.EFFECTS)  # no tag without an entry, no stale entry
    for tag, effect in gemm.EFFECTS.items():
        assert (effect.run is None) == (effect.calls is gemm.Calls.NEVER), tag
        assert effect.run is not None or effect.why, tag
    for p in k.example_params:  # type: ignore[attr-defined]
        calls = gemm.calls(p, k.template(p).slots)
        for tag in struck_tags(k, p):
            assert calls[tag] > 0 or gemm.EFFECTS[tag].why, tag
    # K = 36: 5 K blocks of 8 (the last one zero-padded), 40 steps; the 64 tile: 4 loads a block
    p = dict(M=4, N=4, K=36)
    calls = gemm.calls(p, k.template(p).slots)
    assert (calls["ffma:acc"], calls["lds:b_hi"], calls["ldg:tile"], calls["iadd:track"], calls["st:c"],
            calls["lea:addr_c"], calls["lds:zero"]) == (64 * 40, 40, 4 * 5, 4 * 5, 64, 8, 16)
    assert calls["sts:tile"] == calls["bar:tile"] == 0


def test_an_unknown_gemm_tag_is_an_error() -> None:
    with pytest.raises(gemm.UnknownTag):
        gemm.calls({"M": 1, "N": 1, "K": 16}, [InstrSlot("GPR", "IADD", "iadd:new_pointer", 2)])
    view = gemm.GemmView({"M": 1, "N": 1, "K": 1}, ("a", "b", "c"), lambda b, i: F32(1.0), None,  # type: ignore[arg-type]
                         lambda b, idx: np.ones(len(idx), dtype=np.float32))
    fault = gemm.GemmFault(view, Target("iadd:new_pointer", 0, "iov", "single", (3,)), 0, lambda r, c: 1.0)
    with pytest.raises(gemm.UnknownTag):
        fault.writes("iadd:new_pointer", 0)
    with pytest.raises(gemm.UnknownTag):  # a tag nothing strikes has no writes either
        fault.writes("bar:tile", 0)
