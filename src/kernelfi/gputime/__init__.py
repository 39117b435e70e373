"""Modelled GPU time of every launch of a trace, on a named GPU (docs/hardening.md, "GPU time model").

>>> from kernelfi.gputime import get_gpu, trace_time
>>> t = trace_time(program.trace, get_gpu("gtx750ti"))     # doctest: +SKIP
>>> t.total, t.by_kernel()["gemm"]                         # doctest: +SKIP

A roofline per launch: issue time from the launch's dynamic instruction profile and the
Programming Guide's per-class throughputs, occupancy and waves from registers per thread, block
size and the SM's limits, DRAM time from the bytes the launch must move, plus a fixed launch
latency. The GPUs are data (``kernelfi/assets/gpus.json``, every number with its source).
It hardens nothing and measures nothing: the hardening planner prices with it
(``kernelfi.harden.pricing``) and ``kernelfi overhead --gpu`` tabulates it.

Layering: with ``models``/``lowering`` (level 1); imports ``kernels``, ``types`` and ``_utils`` only.
"""
from __future__ import annotations

from .model import LaunchTime, TraceTime, launch_time, resident_blocks, trace_time, warp_cycles
from .specs import GpuSpec, get_gpu, gpus, sources
from .traffic import ELEMENT, dram_bytes, footprint, shared_bytes

__all__ = [
    "ELEMENT", "GpuSpec", "LaunchTime", "TraceTime", "dram_bytes", "footprint", "get_gpu", "gpus", "launch_time",
    "resident_blocks", "shared_bytes", "sources", "trace_time", "warp_cycles",
]
