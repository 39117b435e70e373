"""The modelled time of a launch on a named GPU, from what the trace holds (a roofline).

Per launch (docs/hardening.md, "GPU time model"):

* **issue**: each warp instruction of class c takes 32/T_c cycles of its SM (T_c = the class's
  results per clock per SM, from the Programming Guide's arithmetic-instruction table), so one
  warp of the launch needs ``w = Σ_slots count·32/T_class`` SM cycles. Blocks go to the SMs in
  waves of ``SMs × resident`` blocks; the SM that gets the most blocks sets the time. An SM with
  ``a`` resident warps of the launch issues at ``min(1, a/(L·S))`` of its peak (L: an ALU
  instruction's dependent-issue latency, S: warp schedulers; the Guide's "16 warps hide a
  4-cycle latency on 4 schedulers"), so a wave costs ``w · max(a, L·S)`` cycles;
* **occupancy**: resident blocks per SM = the least of the SM's block limit, its warp limit over
  the block's warps, its registers over the block's (registers per thread from the kernel's
  register map, allocated per warp in units of 256) and its shared memory over the block's;
* **memory**: the bytes the launch moves to and from DRAM (``kernelfi.gputime.traffic``) over
  the DRAM bandwidth;
* **time** = max(issue, memory) + the fixed launch latency. Launches that run only on a
  mismatch (``conditional``: DMR's re-execution, ABFT's correction) cost nothing fault-free.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

from kernelfi._utils import KernelfiError
from kernelfi.kernels import get_kernel
from kernelfi.types import Launch, Trace

from .specs import GpuSpec
from .traffic import dram_bytes, shared_bytes

WARP = 32


@dataclass(frozen=True)
class LaunchTime:
    """One launch's modelled time and how it was reached (seconds, counts per launch)."""

    name: str
    kernel: str
    origin: str                # the kernel type its time is charged to (hardening launches: what they protect)
    seconds: float
    issue_s: float
    memory_s: float
    launch_s: float
    blocks: int
    warps_per_block: int       # warps doing work in a block
    resident_blocks: int       # per SM, the occupancy limit
    waves: int
    registers: int             # per thread
    bytes_moved: int
    bound: str                 # issue, memory or launch (the largest term); conditional: not run fault-free


@dataclass(frozen=True)
class TraceTime:
    """Every launch of a trace on one GPU, in trace order."""

    gpu: str
    launches: tuple[LaunchTime, ...]

    @property
    def total(self) -> float:
        return sum(l.seconds for l in self.launches)

    def by_kernel(self) -> dict[str, float]:
        """Seconds per kernel type, every hardening launch charged to its ``origin``."""
        out: dict[str, float] = {}
        for l in self.launches:
            out[l.origin] = out.get(l.origin, 0.0) + l.seconds
        return out


def warp_cycles(launch: Launch, gpu: GpuSpec) -> float:
    """SM issue cycles one warp of the launch consumes: Σ count·32/T over its instructions."""
    return sum(s.count * WARP / gpu.throughput[gpu.instruction_class(s.opcode, s.group)]
               for s in launch.template.slots)


def resident_blocks(launch: Launch, gpu: GpuSpec, registers: int) -> int:
    """Blocks of the launch one SM holds at once (the occupancy calculator's rule)."""
    warps = math.ceil(launch.template.block / WARP)
    limits = [gpu.max_blocks_per_sm, gpu.max_warps_per_sm // warps]
    if registers > 0:
        per_warp = math.ceil(registers * WARP / gpu.register_unit) * gpu.register_unit
        limits.append((gpu.registers_per_sm // per_warp) // warps)
    smem = shared_bytes(launch)
    if smem:
        limits.append(gpu.shared_per_sm // smem)
    resident = min(limits)
    if resident < 1:
        raise KernelfiError(f"launch {launch.name}: a block of {launch.template.block} threads with {registers} "
                            f"registers each does not fit on an SM of the {gpu.name}")
    return resident


def launch_time(launch: Launch, trace: Trace, gpu: GpuSpec, registers: int | None = None) -> LaunchTime:
    """The modelled time of one launch (see the module docstring)."""
    origin = str(launch.params.get("origin", launch.kernel))
    if launch.params.get("conditional"):
        return LaunchTime(launch.name, launch.kernel, origin, 0.0, 0.0, 0.0, 0.0, 0, 0, 0, 0, 0, 0, "conditional")
    kernel = get_kernel(launch.kernel)
    regs = kernel.registers(launch.params).allocated if registers is None else registers
    threads = launch.template.threads
    gx, gy, gz = kernel.grid(launch.params)
    blocks = gx * gy * gz if threads > 0 else 0
    block_warps = math.ceil(launch.template.block / WARP)
    wpb = min(block_warps, math.ceil(threads / (blocks * WARP))) if blocks else 0
    resident = resident_blocks(launch, gpu, regs)
    per_wave = gpu.sms * resident
    full, rest = divmod(blocks, per_wave)
    floor = gpu.latency_cycles * gpu.schedulers   # warps needed to issue at the peak rate
    w = warp_cycles(launch, gpu)
    cycles = full * w * max(resident * wpb, floor)
    if rest:
        cycles += w * max(math.ceil(rest / gpu.sms) * wpb, floor)
    issue = cycles / gpu.clock_hz
    read, written = dram_bytes(launch, trace)
    memory = (read + written) / gpu.dram_bytes_per_s
    terms = {"issue": issue, "memory": memory, "launch": gpu.launch_s}
    return LaunchTime(launch.name, launch.kernel, origin, max(issue, memory) + gpu.launch_s, issue, memory,
                      gpu.launch_s, blocks, wpb, resident, full + (1 if rest else 0), regs, read + written,
                      max(terms, key=terms.__getitem__))


def trace_time(trace: Trace, gpu: GpuSpec, launches: Iterable[Launch] | None = None) -> TraceTime:
    """Every launch of ``trace`` (or the given ones) on ``gpu``; register maps read once per
    kernel and parameter set."""
    cache: dict[tuple, int] = {}
    out = []
    for l in (trace.launches if launches is None else launches):
        key = (l.kernel, tuple(sorted((k, repr(v)) for k, v in l.params.items())))
        if key not in cache and not l.params.get("conditional"):
            cache[key] = get_kernel(l.kernel).registers(l.params).allocated
        out.append(launch_time(l, trace, gpu, cache.get(key)))
    return TraceTime(gpu.key, tuple(out))
