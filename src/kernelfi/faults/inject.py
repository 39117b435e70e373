"""Applies faults inside a kernel launch for some lanes of a batch (the engine's override).

The kernel first runs normally for every lane (``kernels``); then, per faulty lane, the struck
thread (or the 32 threads of its warp) is replayed clean and faulty (``programs``/``gemm``) and
the difference is written into that lane's buffers: corrupted values, stores that landed at
other addresses (weights included: the lane gets its own copy), and intended locations that
kept their stale content. A crash or hang marks the lane DUE.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, NamedTuple

import numpy as np
import torch

from kernelfi.faults.bits import bits_f32, signed32, word32
from kernelfi.faults import gemm
from kernelfi.faults.gemm import GemmFault, GemmView
from kernelfi.faults.memmap import Crash, MemoryMap
from kernelfi.faults.programs import OPERANDS, PROGRAMS
from kernelfi.faults.registers import rf_registers
from kernelfi.faults.replay import F32, Hang, Target, ThreadCtx, site_lane
from kernelfi.kernels import get_kernel
from kernelfi.types import AddressHalf, Fault, Launch, Mode
from kernelfi.faults import programs_harden  # noqa: F401
from kernelfi.faults import programs_layers  # noqa: F401  (registers the issue-20 kernels' programs)

WARP = 32


class Reach(NamedTuple):
    """Which buffers a faulty thread of one launch can reach, whatever else the run holds.

    A load outside ``loads`` (a buffer nothing reads from this launch on: an earlier layer's
    consumed output, the im2col columns after their GEMM, the input after the first layer) reads
    0, as a buffer never written in this inference does; a store outside ``stores`` (neither
    this launch nor a later one reads it) has no effect and is flagged ``stray_store``. Without
    it, what a fault did would depend on which buffers the batch's other faults kept in memory
    (a batch that starts at a layer's GEMM holds its im2col columns until the layer ends)."""

    loads: frozenset[str]
    stores: frozenset[str]


@dataclass
class LaneEffect:
    """What one fault did inside its kernel (recorded with the injection)."""

    golden_lane: int
    tag: str = ""
    element: int = -1
    original: float | None = None
    corrupted: float | None = None
    flags: list[str] = field(default_factory=list)
    due: str | None = None
    touched: set[str] = field(default_factory=set)


class LaneReader:
    """Pre-kernel values of one lane: the kernel's inputs and its outputs before it ran."""

    def __init__(self, mem: dict[str, torch.Tensor], before: dict[str, torch.Tensor], lane: int,
                 per_lane: Callable[[str, torch.Tensor], bool], loads: frozenset[str] | None = None) -> None:
        self.mem, self.before, self.lane, self.per_lane = mem, before, lane, per_lane
        self.loads = loads
        self._flat: dict[str, torch.Tensor | None] = {}

    def flat(self, buf: str) -> torch.Tensor | None:
        if buf not in self._flat:
            t = self.before.get(buf, self.mem.get(buf)) if self.loads is None or buf in self.loads else None
            if t is None:
                self._flat[buf] = None
            else:
                self._flat[buf] = (t[self.lane] if self.per_lane(buf, t) else t).reshape(-1)
        return self._flat[buf]

    def __call__(self, buf: str, i: int) -> Any:
        t = self.flat(buf)
        if t is None or not 0 <= i < t.numel():
            return F32(0.0)  # never written in this inference: Darknet zero-initialises buffers
        x = t[i].item()
        return int(x) if t.dtype == torch.int32 else F32(x)

    def gather(self, buf: str, idx: np.ndarray) -> np.ndarray:
        t = self.flat(buf)
        if t is None:
            return np.zeros(len(idx), dtype=np.float32)
        ok = (idx >= 0) & (idx < t.numel())
        out = np.zeros(len(idx), dtype=np.float32)
        out[ok] = t[torch.from_numpy(idx[ok])].numpy()
        return out


def _target(fault: Fault, launch: Launch, calls: dict[str, int]) -> Target | None:
    """The tag execution a fault strikes; None when it strikes nothing live (masked)."""
    site = fault.site
    slots = launch.template.slots
    if fault.mode == Mode.RF.value:
        regs = rf_registers(launch)
        if not 0 <= site.register < len(regs.registers):
            return None  # an allocated register holding nothing
        reg = regs.registers[site.register]
        total = sum(s.count for s in slots) or 1
        pos = sum(s.count for s in slots[:site.slot]) + site.iteration
        frac = pos / total
        lo, hi = reg.live
        if not lo <= frac < hi:
            return None  # dead or about to be overwritten
        n = calls.get(reg.tag, 0)
        if n == 0:
            return None
        ex = min(n - 1, int((frac - lo) / max(hi - lo, 1e-12) * n))
        lane = sum(1 for r in regs.registers[:site.register] if r.tag == reg.tag)
        return Target(reg.tag, ex, "iov", fault.bit_model, fault.bits, fault.value,
                      AddressHalf.LOW if reg.half is None else reg.half, lane=lane, register=True)
    slot = slots[site.slot]
    n = calls.get(slot.tag, 0)
    if n == 0:
        return None
    per = max(1, slot.count // n)
    ex = min(n - 1, site.iteration // per)
    # an execution of a 64-bit address computation: its low word's instructions, then its high word's
    half = AddressHalf.HIGH if slot.halves and per > 1 and (site.iteration % per) >= per // 2 else AddressHalf.LOW
    kind = "iov" if fault.mode == Mode.IOV.value else "ioa"
    return Target(slot.tag, ex, kind, fault.bit_model, fault.bits, fault.value, half,
                  lane=site_lane(site.thread, site.iteration, fault.bits, fault.value))


def _names(launch: Launch) -> dict[str, str]:
    # an operand past the launch's buffers is an optional one it does not have (a GroupNorm
    # without affine reads no gamma/beta); its program does not touch it
    spec = OPERANDS[launch.kernel]
    return {k: bufs[i] for k, (rw, i) in spec.items()
            if i < len(bufs := (launch.reads if rw == "r" else launch.writes))}


def _thread_writes(launch: Launch, fault: Fault, thread: int, reader: LaneReader, memmap: MemoryMap,
                   eff: LaneEffect, golden_out: Callable[[int, int], float]) -> tuple[dict, dict]:
    """(clean writes, faulty writes) of one thread."""
    if launch.kernel == "gemm":
        names = (launch.reads[0], launch.reads[1], launch.writes[0])
        view = GemmView(dict(launch.params), names, reader, memmap, reader.gather)
        target = _target(fault, launch, gemm.calls(launch.params, launch.template.slots))
        if target is None:
            return {}, {}
        eff.tag = target.tag
        struck = GemmFault(view, target, thread, golden_out)
        w = struck.writes(target.tag, target.exec)
        if struck.original is not None:
            eff.original, eff.corrupted = struck.original, struck.corrupted
        clean = {k: (F32(golden_out(*divmod(k[1] - view.co, view.N))) if k[0] == view.C and 0 <= k[1] - view.co < view.M * view.N
                     else reader(*k)) for k in w}
        return clean, w
    prog = PROGRAMS[launch.kernel]
    names = _names(launch)
    clean = ThreadCtx(memmap, reader, names)
    prog(clean, launch.params, thread)
    target = _target(fault, launch, dict(clean.calls))
    if target is None:
        return clean.overlay, clean.overlay
    eff.tag = target.tag
    faulty = ThreadCtx(memmap, reader, names, target)
    prog(faulty, launch.params, thread)
    if faulty.original is not None and eff.original is None:
        eff.original, eff.corrupted = faulty.original, faulty.corrupted
    return clean.overlay, faulty.overlay


def fault_writes(launch: Launch, mem: dict[str, torch.Tensor], before: dict[str, torch.Tensor], lane: int,
                 fault: Fault, eff: LaneEffect, memmap: MemoryMap,
                 per_lane: Callable[[str, torch.Tensor], bool], reach: Reach | None = None
                 ) -> list[tuple[str, int, int | float]]:
    """What the struck thread(s) of ``lane`` leave different from the clean run: (buffer, flat
    index, value in the buffer's dtype), in address order; ``eff`` records what happened.

    ``mem`` holds the launch's clean outputs (the kernel ran for every lane), ``before`` its
    inputs and outputs before it ran. Nothing is written: ``apply_fault`` writes the lane, the
    runner's sparse struck layer lays the writes over a golden lane."""
    if fault.bit_model == "none":
        eff.tag = launch.template.slots[fault.site.slot].tag
        return []
    reader = LaneReader(mem, before, lane, per_lane, None if reach is None else reach.loads)
    threads = launch.template.threads
    t0 = fault.site.thread
    group = range(t0 - t0 % WARP, min(threads, t0 - t0 % WARP + WARP)) if fault.warp else [t0]
    out_name = launch.writes[0] if launch.writes else None
    out_flat = mem[out_name][lane].reshape(-1) if out_name in mem else None

    def golden_out(r: int, c: int) -> float:
        n = int(launch.params.get("N", 1))
        return float(out_flat[int(launch.params.get("c_offset", 0)) + r * n + c])

    diffs: dict[tuple[str, int], Any] = {}
    try:
        for th in group:
            clean, faulty = _thread_writes(launch, fault, th, reader, memmap, eff, golden_out)
            for key in set(clean) | set(faulty):
                if key in faulty:
                    if key in clean and _same(clean[key], faulty[key]):
                        continue
                    diffs[key] = faulty[key]
                else:
                    diffs[key] = reader(*key)  # the store went elsewhere: stale content stays
    except Crash as err:
        eff.due, eff.flags = "crash", [err.kind]
        return []
    except Hang:
        eff.due, eff.flags = "hang", ["watchdog"]
        return []
    return _landed(mem, diffs, lane, launch, eff, per_lane, None if reach is None else reach.stores)


def apply_fault(launch: Launch, mem: dict[str, torch.Tensor], before: dict[str, torch.Tensor], lane: int,
                fault: Fault, eff: LaneEffect, memmap: MemoryMap,
                per_lane: Callable[[str, torch.Tensor], bool], owned: set[str] | None = None,
                reach: Reach | None = None) -> None:
    """Replay the struck thread(s) of ``lane`` and write the difference into ``mem``."""
    writes = fault_writes(launch, mem, before, lane, fault, eff, memmap, per_lane, reach)
    cloned = set() if owned is None else owned
    lanes = mem["input"].shape[0]
    for buf, i, value in writes:
        t = mem[buf]
        if buf not in cloned:
            if not per_lane(buf, t):
                t = t.unsqueeze(0).expand(lanes, *t.shape).clone()  # this lane now owns a copy
            else:
                t = t.clone()
            mem[buf] = t
            cloned.add(buf)
        t[lane].reshape(-1)[i] = value


def _as_dtype(value: Any, dtype: torch.dtype) -> int | float:
    """A stored 32-bit word as the element type of the buffer it landed in: a float stored into
    an int32 buffer (a misdirected store) keeps its bits, and the other way round."""
    if dtype == torch.int32:
        return signed32(word32(value))
    return float(value) if isinstance(value, (float, np.floating)) else bits_f32(word32(value))


def _same(a: Any, b: Any) -> bool:
    """Do two stores leave the same word in memory? Memory holds words, not types: a corrupted
    index can send a float store over an int32 element (a max-pool's -inf over its argmax), and
    what lands there is the float's bit pattern."""
    return word32(a) == word32(b)


def _landed(mem: dict[str, torch.Tensor], diffs: dict, lane: int, launch: Launch, eff: LaneEffect,
            per_lane: Callable[[str, torch.Tensor], bool], stores: frozenset[str] | None = None
            ) -> list[tuple[str, int, int | float]]:
    """The stores of ``diffs`` that land in memory, as the buffer's dtype; records the first
    struck output element and its values in ``eff``. A store into a buffer outside ``stores``
    has no effect (``stray_store``)."""
    out: list[tuple[str, int, int | float]] = []
    for (buf, i), value in sorted(diffs.items()):
        t = mem.get(buf) if stores is None or buf in stores else None
        flat = None if t is None else (t[lane] if per_lane(buf, t) else t).reshape(-1)
        if flat is None:
            eff.flags.append("stray_store") if "stray_store" not in eff.flags else None
            continue
        if not 0 <= i < flat.numel():
            continue  # beyond what the run holds of a live buffer (a layer's im2col columns)
        old = flat[i].item()
        out.append((buf, int(i), _as_dtype(value, t.dtype)))
        if buf not in launch.writes:
            eff.touched.add(buf)
        if eff.element < 0 and buf in launch.writes:
            eff.element = int(i)
            if eff.original is None or launch.kernel in ("fill",):
                eff.original, eff.corrupted = float(old), float(value)
    return out


def make_override(launch: Launch, lane_faults: list[tuple[int, Fault, int]], effects: dict[int, LaneEffect],
                  memmap: MemoryMap, per_lane: Callable[[str, torch.Tensor], bool],
                  reach: Reach | None = None) -> Callable:
    """An engine override that runs ``launch`` and injects ``(lane, fault, golden lane)``s."""

    def override(l: Launch, mem: dict[str, torch.Tensor]) -> None:
        before = {n: mem[n] for n in set(l.writes) | set(l.reads) if n in mem}
        get_kernel(l.kernel).run(mem, l)
        # the kernel stored fresh output tensors: lanes may be patched in place
        owned = {n for n in l.writes if n in mem and (n not in before or mem[n] is not before[n])}
        for lane, fault, glane in lane_faults:
            eff = LaneEffect(golden_lane=glane)
            effects[lane] = eff
            apply_fault(l, mem, before, lane, fault, eff, memmap, per_lane, owned, reach)

    return override
