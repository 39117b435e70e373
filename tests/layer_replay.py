"""A launch's threads replayed one by one without a fault (the per-thread SASS-level programs of
``kernelfi.faults``): what every layer's tests compare with the kernel's fast path, bit for bit."""
from __future__ import annotations

from typing import Any

import torch

from kernelfi.faults import programs_layers  # noqa: F401  (registers the programs of the added kernels)
from kernelfi.faults.memmap import MemoryMap
from kernelfi.faults.programs import OPERANDS, PROGRAMS
from kernelfi.faults.replay import F32, ThreadCtx
from kernelfi.kernels import WEIGHT_ROLES


def replay_every_thread(prog: Any, launch: Any, mem: dict[str, torch.Tensor], once: bool = True
                        ) -> dict[str, dict[int, float]]:
    """Every thread of ``launch`` on lane 0 of ``mem`` (weight buffers are shared, not per lane):
    buffer -> {element index: value stored}; with ``once``, an element stored twice fails (a
    reduction's replay, where each thread recomputes its row's result, passes ``once=False``)."""
    ops = OPERANDS[launch.kernel].items()
    names = {op: (launch.reads if rw == "r" else launch.writes)[i] for op, (rw, i) in ops
             if i < len(launch.reads if rw == "r" else launch.writes)}  # a launch may lack an operand (no affine)
    flat = {b: (mem[b] if b.rsplit(".", 1)[-1] in WEIGHT_ROLES else mem[b][0]).reshape(-1) for b in launch.reads}
    memmap = MemoryMap.from_trace(prog.trace)
    out: dict[str, dict[int, float]] = {}
    for t in range(launch.template.threads):
        ctx = ThreadCtx(memmap, lambda b, i: F32(flat[b][i].item()), names)
        PROGRAMS[launch.kernel](ctx, launch.params, t)
        for (buf, i), v in ctx.overlay.items():
            assert not once or i not in out.get(buf, {}), f"{buf}[{i}] stored twice"
            out.setdefault(buf, {})[i] = v
    return out
