"""RF mode helpers: register maps per launch and the allocated-register derating (AVF).

GPU model for derating: the seed's GTX 750 Ti (Maxwell GM107): 5 SMs, 65,536 32-bit registers
and at most 2,048 resident threads per SM. A launch occupies at most ``regs/thread × resident
threads`` registers; the share of the physical register file that holds live allocations is
the probability that a uniformly random register-file bit flip can reach the program at all.
"""
from __future__ import annotations

from kernelfi.kernels import get_kernel
from kernelfi.types import Launch, RegisterMap, Trace

SMS = 5
REGS_PER_SM = 65536
MAX_THREADS_PER_SM = 2048


_CACHE: dict[tuple, RegisterMap] = {}


def rf_registers(launch: Launch) -> RegisterMap:
    """The kernel's register map for this launch's parameters (cached: campaigns ask often)."""
    key = (launch.kernel, tuple(sorted((k, repr(v)) for k, v in launch.params.items())))
    regs = _CACHE.get(key)
    if regs is None:
        regs = _CACHE[key] = get_kernel(launch.kernel).registers(launch.params)
    return regs


def launch_derating(launch: Launch) -> float:
    """Share of the register file a launch's resident threads allocate."""
    regs = rf_registers(launch).allocated
    resident = min(launch.template.threads, SMS * MAX_THREADS_PER_SM)
    return min(1.0, regs * resident / (SMS * REGS_PER_SM))


def derating(trace: Trace) -> float:
    """Time-weighted (dynamic-instruction-weighted) allocated-register share of an inference."""
    total = sum(l.profile.total() for l in trace.launches) or 1
    return sum(launch_derating(l) * l.profile.total() for l in trace.launches) / total
