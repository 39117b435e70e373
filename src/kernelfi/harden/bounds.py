"""Range-restriction bounds profiled on the model's data (Ranger, docs/hardening.md §1).

The bounds are the min and max each protected activation takes over a golden run of the given
inputs, as float32 values (exact in JSON). Clamping with bounds profiled on the same inputs
changes nothing in those runs, so the hardened golden output equals the original bit for bit;
other inputs may legitimately exceed them (then the clamp acts, as Ranger's would).
"""
from __future__ import annotations

import torch

from kernelfi._utils import KernelfiError
from kernelfi.lowering import Program
from kernelfi.types import Trace


def layer_outputs(trace: Trace) -> dict[str, str]:
    """Layer name -> the buffer its last launch writes (what range restriction clamps);
    softmax layers and layers that launch nothing are left out."""
    out: dict[str, str] = {}
    for spec in trace.layers:
        ls = trace.layer_launches(spec.index)
        if ls and ls[-1].kernel != "softmax" and ls[-1].writes:
            out[spec.name] = ls[-1].writes[0]
    return out


def profile_bounds(program: Program, x: torch.Tensor, buffers: list[str] | None = None, fast: bool = True,
                   batch: int = 64) -> dict[str, tuple[float, float]]:
    """Per buffer: (min, max) over every element and every input of a golden run.

    ``fast`` must match the campaigns' setting (the default of both is True) so the profiled
    extremes are the very float32 values the hardened golden run clamps.
    """
    names = list(layer_outputs(program.trace).values()) if buffers is None else list(buffers)
    lo: dict[str, torch.Tensor] = {}
    hi: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for s in range(0, x.shape[0], batch):
            mem = program.run(program.memory(x[s:s + batch]), fast=fast)
            for name in names:
                if name not in mem:
                    raise KernelfiError(f"{program.trace.model}: buffer '{name}' is not written by the model")
                t = mem[name].reshape(-1)
                t = t[~torch.isnan(t)]
                if t.numel() == 0:
                    continue
                a, b = torch.aminmax(t)
                lo[name] = a if name not in lo else torch.minimum(lo[name], a)
                hi[name] = b if name not in hi else torch.maximum(hi[name], b)
    return {n: (float(lo[n]), float(hi[n])) for n in names if n in lo}
