"""Fault effects inside the tiled SGEMM (``kernels/conv.py``'s model: thread blocks of
``GEMM_TILE`` × ``GEMM_TILE`` (16×16), one C element per thread, shared tiles of A and B of
that size per K step).

Every tag of the gemm template has one entry in ``EFFECTS``: how many times a thread executes
it (the executions a fault is drawn among) and what a fault there writes; a tag nothing can
strike (barriers, branches, shared stores) says why. A tag without an entry is an error
(``UnknownTag``), never a silent Masked.

Replaying a whole thread instruction by instruction would cost K Python steps per output, so
effects are computed on the few outputs a fault reaches: each affected output is re-summed
sequentially in float32 from its (possibly corrupted) product terms, and the difference to the
clean sequential sum is added to the kernel's output. A fault that changes nothing therefore
leaves the output bit-identical (no false SDC from summation order).

Reach of each tag (docs/faults.md):
- ``ffma:acc``  one partial sum of one output; the accumulation continues from it.
- ``lds:a/b``   one product term of one output (IOA: another shared element, or an
  out-of-range shared access: crash).
- ``ldg:a_tile`` one A element as loaded into the shared tile: the 16 outputs of tile row ty.
- ``ldg:b_tile`` one B element: the 16 outputs of tile column tx.
- ``ld:c``      the accumulator's start value (beta = 1).
- ``st:c``, ``lea:addr_c``, ``imad:c_offset``: the output lands elsewhere, C keeps its stale value.
- ``imad:a_offset/b_offset``, ``lea:addr_a/b``, ``iadd:addr_a/b``: the thread's tile loads read
  other addresses from then on (every later tile), reaching its tile row/column.
- ``imad:smem``: the thread's shared reads use a wrong base: every product term of its output.
- index tags and ``setp:bounds``: the thread does not store its output (stale), or stores the
  value of another element (unchanged).
- ``loop:k_tile``, ``setp:loop_k_tile``: a thread leaving the tile loop at another trip than its
  block diverges at ``__syncthreads``: the block deadlocks (hang, DUE).
"""
from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import numpy as np

from kernelfi.faults.bits import corrupt_f32, corrupt_i32, corrupt_pattern
from kernelfi.faults.memmap import Crash, MemoryMap
from kernelfi.faults.replay import F32, Hang, Target, corrupt_address
from kernelfi.kernels.conv import GEMM_TILE as TILE
from kernelfi.types import InstrSlot

Writes = dict[tuple[str, int], Any]


class UnknownTag(LookupError):
    """A gemm template tag without an entry in ``EFFECTS`` (a template changed, its fault model
    did not): an error, never a silent Masked."""


def k_tiles(k: int) -> int:
    """The K tiles of a reduction of ``k`` steps (the last one zero-padded)."""
    return -(-int(k) // TILE)


class GemmView:
    """Scalar access to a gemm launch's operands for one lane (pre-kernel values)."""

    def __init__(self, params: dict[str, Any], names: tuple[str, str, str], read: Callable[[str, int], Any],
                 memmap: MemoryMap, gather: Callable[[str, np.ndarray], np.ndarray]) -> None:
        self.M, self.N, self.K = int(params["M"]), int(params["N"]), int(params["K"])
        self.ta, self.tb = bool(params.get("trans_a")), bool(params.get("trans_b"))
        self.ao, self.bo, self.co = (int(params.get(k, 0)) for k in ("a_offset", "b_offset", "c_offset"))
        self.A, self.B, self.C = names
        self.read, self.memmap, self.gather = read, memmap, gather

    def a_index(self, r: int, k: int) -> int:
        return self.ao + (k * self.M + r if self.ta else r * self.K + k)

    def b_index(self, k: int, c: int) -> int:
        return self.bo + (c * self.K + k if self.tb else k * self.N + c)

    def c_index(self, r: int, c: int) -> int:
        return self.co + r * self.N + c

    def row(self, r: int) -> np.ndarray:
        ks = np.arange(self.K)
        idx = self.ao + (ks * self.M + r if self.ta else r * self.K + ks)
        return self.gather(self.A, idx).astype(np.float32)

    def col(self, c: int) -> np.ndarray:
        ks = np.arange(self.K)
        idx = self.bo + (c * self.K + ks if self.tb else ks * self.N + c)
        return self.gather(self.B, idx).astype(np.float32)

    def at(self, address: int) -> Any:
        loc = self.memmap.resolve(address)
        return F32(0.0) if loc is None else self.read(*loc)


def seq_sum(c0: float, a: np.ndarray, b: np.ndarray) -> np.float32:
    """C0 + Σ a_k b_k accumulated left to right in float32 (one FFMA per k)."""
    with np.errstate(all="ignore"):
        terms = np.concatenate([[np.float32(c0)], (a.astype(np.float64) * b.astype(np.float64)).astype(np.float32)])
        return np.add.accumulate(terms, dtype=np.float32)[-1]


class GemmFault:
    """Computes the writes one gemm fault makes: {(buffer, element): value}, or raises."""

    def __init__(self, view: GemmView, target: Target, thread: int, golden: Callable[[int, int], float]) -> None:
        self.v, self.t, self.golden = view, target, golden
        self.row, self.col = divmod(int(thread), view.N)
        self.original: float | None = None
        self.corrupted: float | None = None

    def _cf(self, x: float) -> np.float32:
        return F32(corrupt_f32(float(x), self.t.bit_model, self.t.bits, self.t.value))

    def _note(self, a: Any, b: Any) -> None:
        self.original, self.corrupted = float(a), float(b)

    def _out(self, r: int, c: int, a: np.ndarray, b: np.ndarray, c0: float, a2: np.ndarray, b2: np.ndarray,
             c02: float, writes: dict) -> None:
        """Output (r, c) with terms (a2, b2, c02) instead of (a, b, c0)."""
        with np.errstate(all="ignore"):
            delta = np.float64(seq_sum(c02, a2, b2)) - np.float64(seq_sum(c0, a, b))
            g = np.float64(self.golden(r, c))
            val = F32(g + delta) if np.isfinite(delta) else F32(seq_sum(c02, a2, b2))
        writes[(self.v.C, self.v.c_index(r, c))] = val

    def _stale(self, r: int, c: int, writes: dict) -> None:
        i = self.v.c_index(r, c)
        writes[(self.v.C, i)] = self.v.read(self.v.C, i)

    def writes(self, tag: str, exec_: int) -> Writes:
        """The writes of a fault in execution ``exec_`` of ``tag`` (``EFFECTS``)."""
        effect = effect_of(tag)
        if effect.run is None:
            raise UnknownTag(f"gemm tag '{tag}' has no fault effect ({effect.why}): it is never struck")
        return effect.run(self, exec_)

    # ------------------------------------------------------------------ the effects
    def barrier_hang(self, exec_: int, counter: bool) -> Writes:
        """The loop counter (``counter``) or the loop test of the K-tile loop: a thread leaving
        the loop at another trip than its block diverges at ``__syncthreads`` (hang)."""
        t = self.t
        if counter:
            nxt = corrupt_i32(exec_ + 1, t.bit_model, t.bits, t.value) if t.kind == "iov" else exec_
            if nxt == exec_ + 1:
                return {}
        raise Hang(f"gemm thread leaves the K-tile loop at another trip than its block ({k_tiles(self.v.K)} tiles): "
                   "barrier deadlock")

    def partial_sum(self, exec_: int) -> Writes:
        """``ffma:acc``: one partial sum of the output; the accumulation continues from it."""
        v, t, r, c = self.v, self.t, self.row, self.col
        c0 = float(v.read(v.C, v.c_index(r, c)))
        a, b = v.row(r), v.col(c)
        k = min(exec_, v.K - 1)
        with np.errstate(all="ignore"):
            terms = np.concatenate([[np.float32(c0)], (a.astype(np.float64) * b).astype(np.float32)])
            part = np.add.accumulate(terms, dtype=np.float32)
        pk = part[k + 1]
        new = self._cf(pk) if t.kind == "iov" else part[k]  # IOA: the FFMA's result is lost
        self._note(pk, new)
        rest = terms[k + 2:]
        with np.errstate(all="ignore"):
            faulty = np.add.accumulate(np.concatenate([[new], rest]), dtype=np.float32)[-1]
            delta = np.float64(faulty) - np.float64(part[-1])
            val = F32(np.float64(self.golden(r, c)) + delta) if np.isfinite(delta) else F32(faulty)
        return {(v.C, v.c_index(r, c)): val}

    def shared_read(self, exec_: int, side: str) -> Writes:
        """``lds:a``/``lds:b``: one product term of the output, its operand from shared memory
        corrupted (IOV) or read through a corrupted shared offset (IOA)."""
        v, r, c = self.v, self.row, self.col
        c0 = float(v.read(v.C, v.c_index(r, c)))
        a, b = v.row(r), v.col(c)
        a2, b2 = a.copy(), b.copy()
        k = min(exec_, v.K - 1)
        if side == "b":
            b2[k] = self._cf(b[k]) if self.t.kind == "iov" else self._shared(k, r, c, "b", a, b)
            self._note(b[k], b2[k])
        else:
            a2[k] = self._cf(a[k]) if self.t.kind == "iov" else self._shared(k, r, c, "a", a, b)
            self._note(a[k], a2[k])
        writes: Writes = {}
        self._out(r, c, a, b, c0, a2, b2, c0, writes)
        return writes

    def shared_base(self, exec_: int) -> Writes:
        """``imad:smem``: the thread's shared reads use a wrong base: every A term of its output
        comes from another shared element."""
        v, r, c = self.v, self.row, self.col
        c0 = float(v.read(v.C, v.c_index(r, c)))
        a, b = v.row(r), v.col(c)
        a2 = a.copy()
        k = min(exec_, v.K - 1)
        for kk in range(v.K):
            a2[kk] = self._shared(kk, r, c, "a", a, b)
        self._note(a[k], a2[k])
        writes: Writes = {}
        self._out(r, c, a, b, c0, a2, b, c0, writes)
        return writes

    def accumulator_start(self, exec_: int) -> Writes:
        """``ld:c``: the accumulator's start value (beta = 1) corrupted, or loaded from a
        corrupted address."""
        v, t, r, c = self.v, self.t, self.row, self.col
        c0 = float(v.read(v.C, v.c_index(r, c)))
        if t.kind == "iov":
            c02 = float(self._cf(c0))
        else:
            c02 = float(v.at(corrupt_address(v.memmap.address(v.C, v.c_index(r, c)), t, low_only=True)))
        self._note(c0, c02)
        a, b = v.row(r), v.col(c)
        writes: Writes = {}
        self._out(r, c, a, b, c0, a, b, c02, writes)
        return writes

    def misplaced_store(self, exec_: int, via: str) -> Writes:
        """The output lands elsewhere and C keeps its stale value: through the store's address
        (``st``: ``st:c``), the 64-bit C pointer (``pointer``: ``lea:addr_c``) or the C offset
        (``offset``: ``imad:c_offset``)."""
        v, t, r, c = self.v, self.t, self.row, self.col
        iov = t.kind == "iov"
        writes: Writes = {}
        addr = v.memmap.address(v.C, v.c_index(r, c))
        if via == "offset":
            off = v.c_index(r, c) - v.co
            off2 = corrupt_i32(off, t.bit_model, t.bits, t.value) if iov else 0
            addr2 = addr + 4 * (off2 - off)
        elif via == "pointer":
            addr2 = corrupt_address(addr, t) if iov else 0
        else:
            addr2 = corrupt_address(addr, t, low_only=True)
        self._note(addr, addr2)
        loc = v.memmap.resolve(addr2)
        if loc == (v.C, v.c_index(r, c)):
            return writes
        self._stale(r, c, writes)
        if loc is not None:
            if via == "st":
                writes[loc] = F32(self.golden(r, c))
            else:  # the C load went to the same wrong place: it accumulates onto that value
                a, b = v.row(r), v.col(c)
                writes[loc] = seq_sum(float(v.read(*loc)), a, b)
        return writes

    def no_store(self, exec_: int, bounds: bool) -> Writes:
        """Index tags and the bounds test (``bounds``): the thread does not store its output
        (stale), or stores the value of another element (unchanged)."""
        v, r, c = self.v, self.row, self.col
        self._note(r * v.N + c, -1)
        writes: Writes = {}
        if bounds and self.t.bit_model == "none":
            return writes
        self._stale(r, c, writes)  # the thread stores elsewhere (its own value) or nowhere
        return writes

    def _shared(self, kk: int, r: int, c: int, which: str, a: np.ndarray, b: np.ndarray) -> np.float32:
        """The shared element read through a corrupted shared-memory offset."""
        t = self.t
        base = kk % TILE
        other = c % TILE if which == "a" else r % TILE
        off = ((other if which == "b" else r % TILE) * TILE + base) if which == "a" else (base * TILE + c % TILE)
        off2 = corrupt_pattern(off * 4, t.bit_model, t.bits, t.value) if t.kind != "ioa_stale" else 0
        if off2 % 4 or off2 >= 2 * TILE * TILE * 4:
            kind = "misaligned_address" if off2 % 4 else "shared_out_of_range"
            raise Crash(f"shared-memory access at byte {off2} outside the block's 2 KiB of tiles", kind)
        e = off2 // 4
        tile, e = divmod(e, TILE * TILE)
        i, j = divmod(e, TILE)
        k0 = kk - base
        v = self.v
        if tile == 0:  # As[i][j] = A[row0 + i][k0 + j]
            rr, kx = (r - r % TILE) + i, k0 + j
            return F32(v.read(v.A, v.a_index(rr, kx))) if rr < v.M and kx < v.K else F32(0.0)
        kx, cc = k0 + i, (c - c % TILE) + j  # Bs[i][j] = B[k0 + i][col0 + j]
        return F32(v.read(v.B, v.b_index(kx, cc))) if kx < v.K and cc < v.N else F32(0.0)

    def tile_loads(self, exec_: int, side: str, via: str) -> Writes:
        """Wrong values in the tile elements of A (``side`` "a") or B this thread loads into
        shared memory: one element as loaded (``ldg``), or every later tile through a corrupted
        offset (``offset``), 64-bit pointer (``pointer``) or pointer step (``step``: from the
        next tile on)."""
        v, t, r, c = self.v, self.t, self.row, self.col
        writes: Writes = {}
        tx, ty = c % TILE, r % TILE
        nt = k_tiles(v.K)
        tiles = [exec_] if via == "ldg" else range(exec_ + (1 if via == "step" else 0), nt)
        iov = t.kind == "iov"
        changed: dict[int, np.float32] = {}
        for ti in tiles:
            k = ti * TILE + (tx if side == "a" else ty)
            if k >= v.K:
                continue  # zero-padded tile element: both operands are zero
            idx = v.a_index(r, k) if side == "a" else v.b_index(k, c)
            buf = v.A if side == "a" else v.B
            old = F32(v.read(buf, idx))
            addr = v.memmap.address(buf, idx)
            if via == "ldg":
                new = self._cf(old) if iov else F32(v.at(corrupt_address(addr, t, low_only=True)))
            elif via == "offset":
                off = idx - (v.ao if side == "a" else v.bo) - ti * (TILE if side == "a" else TILE * v.N)
                off2 = corrupt_i32(off, t.bit_model, t.bits, t.value) if iov else 0
                new = F32(v.at(addr + 4 * (off2 - off)))
            else:  # the 64-bit pointer register
                new = F32(v.at(corrupt_address(addr, t) if iov else 0))
            if ti == (tiles[0] if tiles else -1):
                self._note(old, new)
            changed[k] = new
        if not changed:
            return writes
        # outputs sharing the element: the tile row (A) or tile column (B)
        if side == "a":
            outs = [(r, cc) for cc in range(c - tx, min(c - tx + TILE, v.N))]
        else:
            outs = [(rr, c) for rr in range(r - ty, min(r - ty + TILE, v.M))]
        for (rr, cc) in outs:
            a, b = v.row(rr), v.col(cc)
            a2, b2 = a.copy(), b.copy()
            for k, new in changed.items():
                if side == "a":
                    a2[k] = new
                else:
                    b2[k] = new
            c0 = float(v.read(v.C, v.c_index(rr, cc)))
            self._out(rr, cc, a, b, c0, a2, b2, c0, writes)
        return writes


class Calls(enum.Enum):
    """How many logical executions of a tag one gemm thread makes (``calls``)."""

    ONCE = "once"
    PER_K = "per_k"        # once per reduction step
    PER_TILE = "per_tile"  # once per K tile
    NEVER = "never"        # nothing a fault can strike (its effect is another tag's, or none)


Run = Callable[[GemmFault, int], Writes]


@dataclass(frozen=True)
class GemmEffect:
    """What a fault in one gemm tag does: ``run(fault, execution)`` gives its writes (or
    raises Crash/Hang); ``calls``: the executions per thread a fault is drawn among. A tag that
    is never struck has no ``run`` and says ``why``."""

    calls: Calls
    run: Run | None = None
    why: str = ""


#: why the shared stores have no effect of their own
_SHARED_STORE = ("a shared store: the value it stores is the tile load's (ldg:a_tile/ldg:b_tile); an IOA fault in "
                 "its address is not modelled and counts as Masked")


def _tile(side: str, via: str) -> Run:
    return lambda f, e: f.tile_loads(e, side, via)


#: The fault model of every tag of the gemm template (``kernels/conv.py``), the one place a tag
#: gets its effect: a new tag needs an entry here (tests/test_faults_hand.py checks every tag).
EFFECTS: dict[str, GemmEffect] = {
    "s2r:index": GemmEffect(Calls.ONCE, lambda f, e: f.no_store(e, bounds=False)),
    "imad:index": GemmEffect(Calls.ONCE, lambda f, e: f.no_store(e, bounds=False)),
    "setp:bounds": GemmEffect(Calls.ONCE, lambda f, e: f.no_store(e, bounds=True)),
    "imad:a_offset": GemmEffect(Calls.ONCE, _tile("a", "offset")),
    "imad:b_offset": GemmEffect(Calls.ONCE, _tile("b", "offset")),
    "imad:c_offset": GemmEffect(Calls.ONCE, lambda f, e: f.misplaced_store(e, "offset")),
    "imad:smem": GemmEffect(Calls.ONCE, GemmFault.shared_base),
    "lea:addr_a": GemmEffect(Calls.ONCE, _tile("a", "pointer")),
    "lea:addr_b": GemmEffect(Calls.ONCE, _tile("b", "pointer")),
    "lea:addr_c": GemmEffect(Calls.ONCE, lambda f, e: f.misplaced_store(e, "pointer")),
    "ld:c": GemmEffect(Calls.ONCE, GemmFault.accumulator_start),
    "ldg:a_tile": GemmEffect(Calls.PER_TILE, _tile("a", "ldg")),
    "ldg:b_tile": GemmEffect(Calls.PER_TILE, _tile("b", "ldg")),
    "sts:a_tile": GemmEffect(Calls.NEVER, why=_SHARED_STORE),
    "sts:b_tile": GemmEffect(Calls.NEVER, why=_SHARED_STORE),
    "bar:tile_loaded": GemmEffect(Calls.NEVER, why="a barrier: no destination"),
    "lds:a": GemmEffect(Calls.PER_K, lambda f, e: f.shared_read(e, "a")),
    "lds:b": GemmEffect(Calls.PER_K, lambda f, e: f.shared_read(e, "b")),
    "ffma:acc": GemmEffect(Calls.PER_K, GemmFault.partial_sum),
    "bar:tile_consumed": GemmEffect(Calls.NEVER, why="a barrier: no destination"),
    "iadd:addr_a": GemmEffect(Calls.PER_TILE, _tile("a", "step")),
    "iadd:addr_b": GemmEffect(Calls.PER_TILE, _tile("b", "step")),
    "loop:k_tile": GemmEffect(Calls.PER_TILE, lambda f, e: f.barrier_hang(e, counter=True)),
    "setp:loop_k_tile": GemmEffect(Calls.PER_TILE, lambda f, e: f.barrier_hang(e, counter=False)),
    "bra:loop_k_tile": GemmEffect(Calls.NEVER, why="a branch: no destination"),
    "st:c": GemmEffect(Calls.ONCE, lambda f, e: f.misplaced_store(e, "st")),
    "exit:done": GemmEffect(Calls.NEVER, why="the thread's exit: no destination"),
}


def effect_of(tag: str) -> GemmEffect:
    """The table's entry for ``tag``; an unknown tag is an error (``UnknownTag``)."""
    try:
        return EFFECTS[tag]
    except KeyError:
        raise UnknownTag(f"gemm tag '{tag}' has no entry in faults/gemm.py EFFECTS") from None


def calls(k: int, slots: Iterable[InstrSlot]) -> dict[str, int]:
    """Logical executions per thread of each tag of a gemm launch's ``slots`` (K = ``k``)."""
    per = {Calls.ONCE: 1, Calls.PER_K: int(k), Calls.PER_TILE: k_tiles(k), Calls.NEVER: 0}
    return {s.tag: per[effect_of(s.tag).calls] for s in slots}
