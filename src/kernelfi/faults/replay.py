"""Scalar replay of one CUDA thread, with one fault applied at one instruction.

A thread program (``programs.py``) mirrors what one thread of a Darknet kernel does, calling
this context for every instruction tag of the kernel's template: index arithmetic (``idx``),
values (``val``), predicates (``pred``), loads and stores (``ld``/``st``, through the simulated
memory map), loops (``loop``) and the inlined division/sqrt/exp sequences. The context counts
each tag's executions and corrupts the one execution the fault targets:

- IOV: the instruction's destination value (float32 bits, integer bits, predicate truth).
- IOA: the address of a load or store (through ``MemoryMap``: another buffer, padding or a
  crash), or for other register writers the destination register index: the result is lost
  and the intended register keeps its stale content.
Every store goes to an overlay; loads see the thread's own earlier stores (softmax reads back
its exponentials). The caller diffs the overlay of a clean replay and of the faulty one.
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np

from kernelfi._utils import c_div
from kernelfi.faults.bits import corrupt_f32, corrupt_i32, corrupt_pattern, signed32
from kernelfi.faults.memmap import MemoryMap
from kernelfi.types import AddressHalf

F32 = np.float32
#: Loop trips past the intended count that count as a hang (the GPU watchdog kills the kernel).
WATCHDOG_EXTRA = 1 << 20


class Hang(Exception):
    """The thread would run far past its loop bound: watchdog timeout (DUE)."""


@dataclass(frozen=True)
class Target:
    """The one execution of one tag that a fault corrupts, and how."""

    tag: str
    exec: int
    kind: str  # "iov" (destination value) or "ioa" (address / destination register index)
    bit_model: str
    bits: tuple[int, ...] = ()
    value: int | None = None
    half: AddressHalf = AddressHalf.LOW  # which 32-bit word of a 64-bit address register
    #: which of the registers an execution writes (an LDS.128's 4, the SGEMM's 64 accumulators):
    #: in RF mode the struck register's rank among those its tag feeds, else ``site_lane``
    lane: int = 0
    register: bool = False  # an RF fault (a register between its writes), not an instruction's output


Reader = Callable[[str, int], Any]  # (buffer, element) -> value before the kernel


@dataclass
class ThreadCtx:
    """Executes one thread program; see the module docstring."""

    memmap: MemoryMap
    read: Reader
    names: dict[str, str]            # program's operand name -> buffer name
    target: Target | None = None
    calls: Counter = field(default_factory=Counter)
    overlay: dict[tuple[str, int], Any] = field(default_factory=dict)
    addr_fault: dict[str, Callable[[int], int]] = field(default_factory=dict)
    fired: bool = False
    original: float | None = None
    corrupted: float | None = None

    # ------------------------------------------------------------------ bookkeeping
    def _hit(self, tags: tuple[str, ...]) -> bool:
        hit = False
        for t in tags:
            n = self.calls[t]
            self.calls[t] = n + 1
            if self.target is not None and not self.fired and t == self.target.tag and n == self.target.exec:
                hit = True
        if hit:
            self.fired = True
        return hit

    def _note(self, before: Any, after: Any) -> None:
        self.original, self.corrupted = _num(before), _num(after)

    # ------------------------------------------------------------------ register writers
    def idx(self, tags: tuple[str, ...], i: int) -> int:
        i = signed32(int(i))  # a 32-bit register: IMAD/IADD wrap (a corrupted index times a stride)
        if self._hit(tags):
            t = self.target
            new = corrupt_i32(i, t.bit_model, t.bits, t.value) if t.kind == "iov" else 0
            self._note(i, new)
            return new
        return i

    def val(self, tags: tuple[str, ...], v: Any, old: Any = 0.0) -> np.float32:
        v = F32(v)
        if self._hit(tags):
            t = self.target
            new = F32(corrupt_f32(float(v), t.bit_model, t.bits, t.value)) if t.kind == "iov" else F32(old)
            self._note(v, new)
            return new
        return v

    def ival(self, tags: tuple[str, ...], v: int, old: int = 0) -> int:
        if self._hit(tags):
            t = self.target
            new = corrupt_i32(int(v), t.bit_model, t.bits, t.value) if t.kind == "iov" else int(old)
            self._note(v, new)
            return new
        return signed32(int(v))

    def pred(self, tags: tuple[str, ...], b: bool) -> bool:
        b = bool(b)
        if self._hit(tags):
            t = self.target
            # a predicate is one bit: any corruption of it flips it; a lost write keeps it
            new = (not b) if t.kind == "iov" and t.bit_model != "none" else b
            self._note(float(b), float(new))
            return new
        return b

    # ------------------------------------------------------------------ addresses and memory
    def _addr_corrupter(self) -> Callable[[int], int]:
        t = self.target
        if t.kind == "iov":
            return lambda a, t=t: corrupt_address(a, t)
        return lambda a: 0  # the address register kept stale content: a null pointer

    def addr(self, name: str, tags: tuple[str, ...]) -> None:
        """The address register of operand ``name`` is (re)computed here; a fault sticks."""
        if self._hit(tags):
            self.addr_fault[name] = self._addr_corrupter()
            self._note(0.0, 1.0)

    def _locate(self, name: str, buf: str, i: int, hit: bool,
                local: Callable[[int], int] | None) -> tuple[str, int] | None:
        a = _raw_address(self.memmap, buf, i)
        for f in (self.addr_fault.get(name), local):
            if f is not None:
                a = f(a)
        if hit and self.target.kind == "ioa":
            a2 = corrupt_address(a, self.target, low_only=True)
            self._note(float(a), float(a2))
            a = a2
        return self.memmap.resolve(a)

    def ld(self, tag: str, name: str, i: int, active: bool = True, addr_tags: tuple[str, ...] = ()) -> Any:
        """Load operand ``name``[i]; ``addr_tags`` compute this access's own address."""
        buf = self.names[name]
        local = self._addr_corrupter() if addr_tags and self._hit(addr_tags) else None
        hit = self._hit((tag,))
        if not active:
            return F32(0.0)  # predicated off: no access, no effect
        loc = self._locate(name, buf, int(i), hit, local)
        if loc is None:
            v: Any = F32(0.0)  # alignment padding reads as zero
        elif loc in self.overlay:
            v = self.overlay[loc]
        else:
            v = self.read(*loc)
        if hit and self.target.kind == "iov":
            new = _corrupt_any(v, self.target)
            self._note(v, new)
            v = new
        return v

    def st(self, tag: str, name: str, i: int, v: Any, addr_tags: tuple[str, ...] = ()) -> None:
        buf = self.names[name]
        local = self._addr_corrupter() if addr_tags and self._hit(addr_tags) else None
        hit = self._hit((tag,))
        loc = self._locate(name, buf, int(i), hit, local)
        if loc is not None:
            self.overlay[loc] = v

    # ------------------------------------------------------------------ control flow
    def loop(self, name: str, n: int) -> Iterator[int]:
        """``for (i = 0; i < n; ++i)`` with a corruptible counter and loop test."""
        i = 0
        trips = 0
        while True:
            if not self.pred((f"setp:loop_{name}",), i < n):
                return
            if i < 0 and n - i > n + WATCHDOG_EXTRA or trips > n + WATCHDOG_EXTRA:
                raise Hang(f"loop {name} runs {n - i} trips past its start")
            yield i
            trips += 1
            nxt = self.idx((f"loop:{name}",), i + 1)
            if nxt < 0 and n - nxt > WATCHDOG_EXTRA:
                raise Hang(f"loop {name}: counter corrupted to {nxt}")
            i = nxt

    # ------------------------------------------------------------------ inlined sequences
    def idiv(self, name: str, a: int, d: int, mod: bool = True) -> tuple[int, int]:
        q = c_div(a, d) if d else 0  # CUDA divides ints toward zero
        q = self.idx((f"cvt:idiv_{name}", f"mufu:idiv_{name}", f"idiv:{name}"), q)
        if self.pred((f"setp:idiv_{name}",), False):
            q += 1  # a flipped correction test leaves the quotient off by one
        r = a - q * d
        if mod:
            r = self.idx((f"imod:{name}",), r)
        return q, r

    def fdiv(self, name: str, a: Any, b: Any) -> np.float32:
        self._hit((f"setp:fdiv_{name}",))  # slow path is as exact: masked
        with np.errstate(all="ignore"):
            q = F32(a) / F32(b)
        return self.val((f"mufu:fdiv_{name}", f"ffma:fdiv_{name}"), q)

    def fsqrt(self, name: str, x: Any) -> np.float32:
        with np.errstate(all="ignore"):
            r = np.sqrt(F32(x))
        return self.val((f"mufu:sqrt_{name}", f"ffma:sqrt_{name}"), r)

    def fexp(self, name: str, x: Any) -> np.float32:
        with np.errstate(all="ignore"):
            r = np.exp(F32(x))
        return self.val((f"ffma:exp_{name}", f"mufu:exp_{name}"), r)


def _num(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def _corrupt_any(v: Any, t: Target) -> Any:
    if isinstance(v, (int, np.integer)):
        return corrupt_i32(int(v), t.bit_model, t.bits, t.value)
    return F32(corrupt_f32(float(v), t.bit_model, t.bits, t.value))


def site_lane(thread: int, iteration: int, bits: tuple[int, ...], value: int | None) -> int:
    """Which destination register of a multi-register instruction an IOV/IOA fault strikes: a
    pure function of the fault (the planner draws no lane). A hash, so that one thread's one
    execution reaches each of its registers under some bit: ``thread + iteration`` alone would
    leave 3 of an LDS.128's 4 values at a given site unreachable."""
    x = (int(thread) * 0x9E3779B1 + int(iteration) * 0x85EBCA77) & 0xFFFFFFFF
    for b in bits:
        x = (x ^ (int(b) + 1) * 0xC2B2AE3D) & 0xFFFFFFFF
    if value is not None:
        x = (x ^ int(value)) & 0xFFFFFFFF
    x ^= x >> 16
    x = (x * 0x7FEB352D) & 0xFFFFFFFF
    x ^= x >> 15
    return x & 0xFFFF


def corrupt_address(a: int, t: Target, low_only: bool = False) -> int:
    """Address ``a`` with the fault's bits applied to the word ``t.half`` names (the low word
    with ``low_only``: a load or store's own 32-bit offset)."""
    half = AddressHalf.LOW if low_only else t.half
    lo, hi = a & 0xFFFFFFFF, (a >> 32) & 0xFFFFFFFF
    if half == AddressHalf.LOW:
        lo = corrupt_pattern(lo, t.bit_model, t.bits, t.value)
    else:
        hi = corrupt_pattern(hi, t.bit_model, t.bits, t.value)
    return (hi << 32) | lo


def _raw_address(m: MemoryMap, buf: str, i: int) -> int:
    """Address of an out-of-range element (a thread running past its loop bound)."""
    return m.starts[m.names.index(buf)] + 4 * int(i)
