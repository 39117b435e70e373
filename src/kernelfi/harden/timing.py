"""Measured run time of (hardened) programs, per launch, medians over repetitions.

What is timed is this simulator's execution of the kernels (torch on CPU, or on CUDA when the
tensors live there), not Darknet's CUDA kernels: the overhead of hardening is measured on the
machine at hand, as docs/method.md §5 asks, with the same code that campaigns run. Programs compared with
each other are timed in one interleaved loop (rep 1 of every program, then rep 2, ...), so slow
drifts of the machine hit them alike.

``clock``: ``wall`` (``time.perf_counter``, the default: what a user waits) or ``cpu`` (the
calling thread's CPU time with one intra-op thread: on a shared, oversubscribed machine it
measures the work rather than the queueing; the planner's default). CUDA uses CUDA events.

A *step* is what the engine runs at once: with ``fast``, a fused layer unit (the engine runs an
unprotected conv/connected layer as one convolution + bias + activation, a max-pool as one
pooling; its time is charged to its gemm or max-pool launch) or an im2col+gemm pair (charged to
the gemm); otherwise one launch. Hardened layers run kernel by kernel (the engine does not fuse
layers holding replicas, voters or checkers). Conditional launches (DMR re-execution, ABFT correction: ``conditional`` param) are skipped: a fault-free
run never executes them.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable

import torch

from kernelfi.lowering import Program
from kernelfi.types import Trace


@dataclass(frozen=True)
class Timing:
    """Median seconds per launch (aligned with the trace) and of the whole run; the minima too
    (on a shared machine the best run is the least disturbed one)."""

    label: str
    device: str
    per_launch: tuple[float, ...]
    total: float
    reps: int
    total_min: float = 0.0


def on_device(program: Program, device: str | torch.device) -> Program:
    """The same program with its weights on ``device`` (the engine follows its tensors)."""
    return Program(program.trace, {k: v.to(device) for k, v in program.weights.items()})


def steps(program: Program, fast: bool, layer_units: bool = True) -> list[tuple[int, int, int]]:
    """(start, stop, charged launch) of what the engine runs at once, conditional launches left
    out: with ``fast``, the engine's fused units (a whole conv/connected layer, a max-pool, a
    shortcut; charged to its gemm, max-pool or shortcut launch) unless ``layer_units`` is off,
    and im2col+gemm pairs; otherwise single launches."""
    ls = program.trace.launches
    units = program.units if fast and layer_units else {}
    out: list[tuple[int, int, int]] = []
    i = 0
    while i < len(ls):
        l = ls[i]
        u = units.get(i)
        if u is not None:
            main = next((x.index for x in u.launches if x.kernel in ("gemm", "forward_maxpool", "shortcut")), u.end - 1)
            out.append((u.start, u.end, main))
            i = u.end
            continue
        if l.params.get("conditional"):
            i += 1
            continue
        if (fast and l.kernel == "im2col" and i + 1 < len(ls) and ls[i + 1].kernel == "gemm"
                and ls[i + 1].reads[1] == "workspace" and not ls[i + 1].params.get("conditional")):
            out.append((i, i + 2, i + 1))
            i += 2
            continue
        out.append((i, i + 1, i))
        i += 1
    return out


def time_programs(programs: dict[str, Program], x: torch.Tensor, reps: int = 20, warmup: int = 2,
                  fast: bool = True, device: str = "cpu", clock: str = "wall",
                  unfused: tuple[str, ...] = ()) -> dict[str, Timing]:
    """Time every program on the batch ``x`` (lanes = inputs), interleaved, medians of ``reps``;
    the programs labelled in ``unfused`` run without the engine's fused layer units."""
    if clock not in ("wall", "cpu"):
        raise ValueError(f"clock must be wall or cpu, got {clock!r}")
    threads = torch.get_num_threads()
    if clock == "cpu":
        torch.set_num_threads(1)
    try:
        return _time(programs, x, reps, warmup, fast, torch.device(device),
                     time.thread_time if clock == "cpu" else time.perf_counter, set(unfused))
    finally:
        torch.set_num_threads(threads)


def _time(programs: dict[str, Program], x: torch.Tensor, reps: int, warmup: int, fast: bool, dev: torch.device,
          now: Callable[[], float], unfused: set[str]) -> dict[str, Timing]:
    progs = {k: on_device(p, dev) for k, p in programs.items()}
    xd = x.to(dev)
    plan = {k: steps(p, fast, k not in unfused) for k, p in progs.items()}
    samples: dict[str, list[list[float]]] = {k: [] for k in progs}
    cuda = dev.type == "cuda"
    with torch.no_grad():
        for rep in range(warmup + reps):
            for label, prog in progs.items():
                mem = prog.memory(xd)
                per = [0.0] * len(prog.trace.launches)
                if cuda:
                    evs = []
                    torch.cuda.synchronize(dev)
                    for a, b, at in plan[label]:
                        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                        e0.record()
                        prog.run(mem, a, b, fast=fast)
                        e1.record()
                        evs.append((at, e0, e1))
                    torch.cuda.synchronize(dev)
                    for i, e0, e1 in evs:
                        per[i] = e0.elapsed_time(e1) / 1000.0
                else:
                    for a, b, at in plan[label]:
                        t0 = now()
                        prog.run(mem, a, b, fast=fast)
                        per[at] = now() - t0
                if rep >= warmup:
                    samples[label].append(per)
    out: dict[str, Timing] = {}
    for label, runs in samples.items():
        med = tuple(statistics.median(r[i] for r in runs) for i in range(len(runs[0])))
        totals = [sum(r) for r in runs]
        out[label] = Timing(label, str(dev), med, statistics.median(totals), reps, min(totals))
    return out


def by_kernel(trace: Trace, timing: Timing) -> dict[str, float]:
    """Median seconds per kernel type, every hardening launch charged to its ``origin``."""
    out: dict[str, float] = {}
    for l, t in zip(trace.launches, timing.per_launch):
        k = str(l.params.get("origin", l.kernel))
        out[k] = out.get(k, 0.0) + t
    return out
