"""What hardening costs: modelled GPU time (the default) or this machine's measured time.

``--cost gpu:NAME`` prices every launch with ``kernelfi.gputime`` on that GPU: a pure function of
the trace, the same on every run and every machine, with Darknet's kernel-by-kernel execution
(no fused fast path to lose: on a GPU every launch runs as it is). ``--cost measured`` times the
simulator on the machine at hand (``kernelfi.harden.timing``), where a hardened layer also loses
the engine's fused path. Either way the result is a :class:`~kernelfi.harden.timing.Timing` per
program, so the planner and the overhead tables read both alike.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from kernelfi._utils import KernelfiError
from kernelfi.gputime import GpuSpec, get_gpu, gpus, trace_time
from kernelfi.lowering import Program
from kernelfi.types import Trace

from .timing import Timing, time_programs

#: The planner's default pricing: the AlexNet study's GPU.
DEFAULT_COST = "gpu:gtx750ti"


@dataclass(frozen=True)
class Cost:
    """A parsed ``--cost``: ``gpu`` with the GPU's spec, or ``measured``."""

    kind: str
    gpu: GpuSpec | None = None

    @property
    def label(self) -> str:
        return f"gpu:{self.gpu.key}" if self.gpu is not None else "measured"


def parse_cost(text: str) -> Cost:
    """``gpu:gtx750ti`` or ``measured``; one clear line (naming the known GPUs) otherwise."""
    s = str(text).strip().lower()
    if s == "measured":
        return Cost("measured")
    if s.startswith("gpu:"):
        return Cost("gpu", get_gpu(s[4:]))
    raise KernelfiError(f"--cost: '{text}' is not gpu:NAME or measured (GPUs: {', '.join(gpus())})")


def modelled(trace: Trace, gpu: GpuSpec, label: str = "") -> Timing:
    """A trace's modelled GPU time as a Timing (one 'repetition': the model has no noise)."""
    t = trace_time(trace, gpu)
    per = tuple(l.seconds for l in t.launches)
    total = sum(per)
    return Timing(label or trace.model, f"gpu:{gpu.key}", per, total, 0, total)


def modelled_programs(programs: dict[str, Program], gpu: GpuSpec) -> dict[str, Timing]:
    """Every program's modelled time on ``gpu``, by label."""
    return {k: modelled(p.trace, gpu, k) for k, p in programs.items()}


@dataclass(frozen=True)
class Pricer:
    """Prices the programs the planner compares: modelled on a GPU (no timer; ``x`` unused) or
    measured on this machine (one interleaved loop, medians of ``reps``; the labels in
    ``unfused`` run without the engine's fused layers, and are left out under GPU pricing,
    where every launch runs kernel by kernel anyway)."""

    cost: Cost
    x: torch.Tensor
    reps: int = 10
    fast: bool = True
    device: str = "cpu"
    clock: str = "cpu"

    def __call__(self, programs: dict[str, Program], unfused: tuple[str, ...] = ()) -> dict[str, Timing]:
        if self.cost.gpu is not None:
            return modelled_programs({k: p for k, p in programs.items() if k not in unfused}, self.cost.gpu)
        return time_programs(programs, self.x, reps=self.reps, fast=self.fast, device=self.device,
                             clock=self.clock, unfused=unfused)
