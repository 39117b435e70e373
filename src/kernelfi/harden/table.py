"""The AlexNet study's Table 2: time per kernel type, unhardened / plan / full DMR / full TMR.

One table, whatever priced it: modelled GPU time (``kernelfi.harden.pricing``) or this
machine's measured time (``kernelfi.harden.timing``). Each hardening launch is charged to the
kernel type it protects (``origin``), so a row says what protecting that kernel type costs;
``invocations`` counts the kernel type's launches in the unhardened model (the study's
"Number of invocations").
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from kernelfi.gputime import GpuSpec
from kernelfi.lowering import Program

from .plan import Plan
from .pricing import modelled_programs
from .timing import Timing, by_kernel
from .transform import comparison_programs


@dataclass(frozen=True)
class OverheadTable:
    """Seconds per kernel type and in total for each labelled program; ``device`` says what
    priced them (``gpu:gtx750ti``, ``cpu``, ``cuda``)."""

    model: str
    device: str
    labels: tuple[str, ...]
    kernels: tuple[str, ...]                      # by unhardened time, largest first
    invocations: Mapping[str, int]
    seconds: Mapping[str, Mapping[str, float]]    # label -> kernel type -> seconds
    total: Mapping[str, float]                    # label -> seconds

    def overhead(self, label: str) -> float:
        """Whole-model overhead of ``label`` over the unhardened model (0.05 = +5%)."""
        base = self.total["unhardened"]
        return self.total[label] / base - 1.0 if base > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "device": self.device, "invocations": dict(self.invocations),
                "seconds": {lab: dict(v) for lab, v in self.seconds.items()}, "total": dict(self.total),
                "overhead": {lab: self.overhead(lab) for lab in self.labels if lab != "unhardened"}}


def overhead_table(programs: Mapping[str, Program], timing: Mapping[str, Timing], device: str) -> OverheadTable:
    """The table of timed (or modelled) programs; ``programs`` must hold ``unhardened``."""
    per = {k: by_kernel(programs[k].trace, t) for k, t in timing.items()}
    base = programs["unhardened"].trace
    inv: dict[str, int] = {}
    for l in base.launches:
        inv[l.kernel] = inv.get(l.kernel, 0) + 1
    kernels = sorted({k for d in per.values() for k in d}, key=lambda k: (-per["unhardened"].get(k, 0.0), k))
    return OverheadTable(base.model, device, tuple(timing), tuple(kernels), inv,
                         {lab: {k: per[lab].get(k, 0.0) for k in kernels} for lab in timing},
                         {lab: t.total for lab, t in timing.items()})


def modelled_overhead(base: Program, plan: Plan | Mapping[str, Any] | None, gpu: GpuSpec) -> OverheadTable:
    """Table 2 in modelled time on ``gpu``: unhardened, ``plan`` (when given), full DMR, full TMR."""
    programs = comparison_programs(base, plan)
    return overhead_table(programs, modelled_programs(programs, gpu), f"gpu:{gpu.key}")
