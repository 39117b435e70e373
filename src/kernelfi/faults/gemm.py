"""Fault effects inside cuBLAS's Maxwell SGEMM (``kernels/sgemm.py``: a T×T tile per block of
T²/64 threads, each thread an 8×8 block of outputs, 64 accumulators from zero, operands through
two shared buffers, epilogue ``alpha·acc + beta·C`` with alpha = beta = 1).

Every tag of the gemm template has one entry in ``EFFECTS``: how many times a thread executes
it (the executions a fault is drawn among) and what a fault there writes; a tag nothing can
strike (barriers, branches, shared stores) says why. A tag without an entry is an error
(``UnknownTag``), never a silent Masked. An instruction writing several registers (LDS.128,
LDG.128) or one register of many (the accumulators) is told apart by ``Target.lane``: in RF
mode the register's rank among the registers its tag feeds, else a pure function of the site.

Effects are computed on the outputs a fault reaches: each is re-summed in float32 from its
(possibly corrupted) product terms, and the difference to the clean re-sum is added to the
kernel's output, so a fault that changes nothing leaves the output bit-identical.

Reach (docs/faults.md):
- ``ffma:acc``: one partial sum of one output (RF: that accumulator, at the step its live
  interval gives); ``lds:zero``: one accumulator's start.
- ``lds:{a,b}_{lo,hi}``: one operand as the thread uses it at one k: the 8 outputs of its column
  (an x operand, Darknet's B) or row (a y operand, Darknet's A); IOA: the LDS.128 reads 4 values
  from another shared address (or crashes). RF: the operand register of buffer k mod 2.
- ``ldg:tile``, ``lea:addr_tile``: one shared value of the block at one k: all the block's
  outputs of its row or column; ``sel:ptr``, ``imad:track``, ``iadd:track``, ``sel:operand``:
  every later load of the thread reads elsewhere; ``setp:half``: the thread's loads are missing.
- ``imad:smem``, ``lop:swap``: the thread's shared reads (or stores) use a wrong offset.
- ``setp:loop``, ``imad:end``: a thread leaving the loop at another trip than its block hangs at
  the barrier.
- epilogue: ``ld:c`` the C read, ``fmul:alpha``/``ffma:beta`` the final value, ``st:c``,
  ``lea:addr_c``, ``imad:c_index`` where outputs land, ``setp:store`` a dropped store.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

import numpy as np

from kernelfi.faults.bits import corrupt_f32, corrupt_i32, corrupt_pattern
from kernelfi.faults.memmap import Crash, MemoryMap
from kernelfi.faults.replay import F32, Hang, Target, corrupt_address
from kernelfi.kernels import SgemmShape, sgemm_shape
from kernelfi.types import InstrSlot

Writes = dict[tuple[str, int], Any]
Out = tuple[int, int]


class UnknownTag(LookupError):
    """A gemm template tag without an entry in ``EFFECTS`` (a template changed, its fault model
    did not): an error, never a silent Masked."""


class GemmView:
    """Scalar access to a gemm launch's operands for one lane (pre-kernel values)."""

    def __init__(self, params: Mapping[str, Any], names: tuple[str, str, str], read: Callable[[str, int], Any],
                 memmap: MemoryMap, gather: Callable[[str, np.ndarray], np.ndarray]) -> None:
        self.M, self.N, self.K = int(params["M"]), int(params["N"]), int(params["K"])
        self.ta, self.tb = bool(params.get("trans_a")), bool(params.get("trans_b"))
        self.ao, self.bo, self.co = (int(params.get(k, 0)) for k in ("a_offset", "b_offset", "c_offset"))
        self.A, self.B, self.C = names
        self.read, self.memmap, self.gather = read, memmap, gather
        self.shape: SgemmShape = sgemm_shape(params)

    def a_index(self, r: int, k: int) -> int:
        return self.ao + (k * self.M + r if self.ta else r * self.K + k)

    def b_index(self, k: int, c: int) -> int:
        return self.bo + (c * self.K + k if self.tb else k * self.N + c)

    def c_index(self, r: int, c: int) -> int:
        return self.co + r * self.N + c

    def row(self, r: int) -> np.ndarray:
        ks = np.arange(self.K)
        return self.gather(self.A, self.ao + (ks * self.M + r if self.ta else r * self.K + ks)).astype(np.float32)

    def col(self, c: int) -> np.ndarray:
        ks = np.arange(self.K)
        return self.gather(self.B, self.bo + (c * self.K + ks if self.tb else ks * self.N + c)).astype(np.float32)

    def a(self, r: int, k: int) -> np.float32:
        return F32(self.read(self.A, self.a_index(r, k))) if r < self.M and 0 <= k < self.K else F32(0.0)

    def b(self, k: int, c: int) -> np.float32:
        return F32(self.read(self.B, self.b_index(k, c))) if c < self.N and 0 <= k < self.K else F32(0.0)

    def at(self, address: int) -> Any:
        loc = self.memmap.resolve(address)
        return F32(0.0) if loc is None else self.read(*loc)

    def inside(self, r: int, c: int) -> bool:
        return 0 <= r < self.M and 0 <= c < self.N


def accumulate(start: float, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Partial sums start + Σ_{j<=k} a_j b_j in float32 (index k+1; index 0 is ``start``)."""
    with np.errstate(all="ignore"):
        terms = np.concatenate([[np.float32(start)], (a.astype(np.float64) * b.astype(np.float64)).astype(np.float32)])
        return np.add.accumulate(terms, dtype=np.float32)


def final(acc: float, c0: float) -> np.float32:
    """The epilogue: alpha·acc + beta·C with alpha = beta = 1."""
    with np.errstate(all="ignore"):
        return F32(np.float32(acc) + np.float32(c0))


class GemmFault:
    """Computes the writes one gemm fault makes: {(buffer, element): value}, or raises."""

    def __init__(self, view: GemmView, target: Target, thread: int, golden: Callable[[int, int], float]) -> None:
        self.v, self.t, self.golden = view, target, golden
        self.g = view.shape
        self.thread = int(thread)
        self.rows, self.cols = self.g.rows(thread), self.g.columns(thread)
        self.original: float | None = None
        self.corrupted: float | None = None

    # ------------------------------------------------------------------ helpers
    @property
    def iov(self) -> bool:
        return self.t.kind == "iov"

    def _cf(self, x: float) -> np.float32:
        return F32(corrupt_f32(float(x), self.t.bit_model, self.t.bits, self.t.value))

    def _note(self, a: Any, b: Any) -> None:
        if self.original is None:
            self.original, self.corrupted = float(a), float(b)

    def _c0(self, r: int, c: int) -> float:
        return float(self.v.read(self.v.C, self.v.c_index(r, c)))

    def _out(self, r: int, c: int, a_over: Mapping[int, Any], b_over: Mapping[int, Any], writes: Writes,
             start: float = 0.0, at_step: tuple[int, Any] | None = None) -> None:
        """Output (r, c) with operands replaced at some k (``a_over``: A[r][k], ``b_over``:
        B[k][c]), the accumulator starting at ``start``, or its partial sum after step k set
        (``at_step``); the difference to the clean sums is added to the golden output."""
        v = self.v
        if not v.inside(r, c):
            return
        a, b = v.row(r), v.col(c)
        a2, b2 = a.copy(), b.copy()
        for k, x in a_over.items():
            if 0 <= k < v.K:
                a2[k] = x
        for k, x in b_over.items():
            if 0 <= k < v.K:
                b2[k] = x
        c0 = self._c0(r, c)
        clean = final(accumulate(0.0, a, b)[-1], c0)
        if at_step is None:
            acc = accumulate(start, a2, b2)[-1]
        else:
            k, new = at_step
            acc = accumulate(float(new), a2[k + 1:], b2[k + 1:])[-1]
        self._put(r, c, clean, final(acc, c0), writes)

    def _put(self, r: int, c: int, clean: float, faulty: float, writes: Writes) -> None:
        with np.errstate(all="ignore"):
            delta = np.float64(faulty) - np.float64(clean)
            val = F32(np.float64(self.golden(r, c)) + delta) if np.isfinite(delta) else F32(faulty)
        writes[(self.v.C, self.v.c_index(r, c))] = val

    def _stale(self, r: int, c: int, writes: Writes) -> None:
        if self.v.inside(r, c):
            i = self.v.c_index(r, c)
            writes[(self.v.C, i)] = self.v.read(self.v.C, i)

    def _output(self, o: int) -> Out:
        """Output ``o`` (0..63) of the thread: row o // 8, column o % 8 of its 8×8 block."""
        return self.rows[o // 8], self.cols[o % 8]

    def _block_outputs(self, side: str, index: int) -> list[Out]:
        """The block's outputs that read shared element ``index`` of an operand: a row of A
        (``side`` "a") reaches the block's columns, a column of B its rows."""
        bx, by, _ = self.g.split(self.thread)
        tile = self.g.tile
        if side == "a":
            return [(index, c) for c in range(bx * tile, min(self.v.N, (bx + 1) * tile))]
        return [(r, index) for r in range(by * tile, min(self.v.M, (by + 1) * tile))]

    def _shared_over(self, changed: Mapping[tuple[str, int, int], Any]) -> Writes:
        """Writes of block-wide operand changes {(side, row or column, k): value}."""
        writes: Writes = {}
        outs: dict[Out, tuple[dict[int, Any], dict[int, Any]]] = {}
        for (side, index, k), x in changed.items():
            for rc in self._block_outputs(side, index):
                over = outs.setdefault(rc, ({}, {}))
                over[0 if side == "a" else 1][k] = x
        for (r, c), (ao, bo) in outs.items():
            self._out(r, c, ao, bo, writes)
        return writes

    # ------------------------------------------------------------------ accumulators
    def partial_sum(self, exec_: int) -> Writes:
        """``ffma:acc``: one partial sum of one output; the accumulation continues from it. IOV:
        execution k*64 + o is output o's FFMA at step k; RF: accumulator ``lane`` at step k."""
        o = self.t.lane % 64 if self.t.register else exec_ % 64
        k = min(exec_ // 64, self.v.K - 1)
        r, c = self._output(o)
        writes: Writes = {}
        if not self.v.inside(r, c):
            return writes
        part = accumulate(0.0, self.v.row(r), self.v.col(c))
        new = part[k] if self.t.kind == "ioa" else self._cf(part[k + 1])  # IOA: the FFMA's result is lost
        self._note(part[k + 1], new)
        self._out(r, c, {}, {}, writes, at_step=(k, new))
        return writes

    def accumulator_start(self, exec_: int) -> Writes:
        """``lds:zero``: one of the 64 accumulators starts from the corrupted zero (IOA: from
        another shared word, which holds a loaded operand or zero)."""
        o = 4 * exec_ + self.t.lane % 4
        r, c = self._output(o)
        start = self._cf(0.0) if self.iov else self._smem(0, corrupt_pattern(self._zero_line(), self.t.bit_model,
                                                                             self.t.bits, self.t.value))[0]
        self._note(0.0, start)
        writes: Writes = {}
        self._out(r, c, {}, {}, writes, start=float(start))
        return writes

    def _zero_line(self) -> int:
        return 4 * 16 * self.g.tile  # byte offset of the zeroed line (the start of buffer 1)

    # ------------------------------------------------------------------ shared-memory operands
    def _smem(self, k: int, byte: int) -> list[np.float32]:
        """The 4 words an LDS.128 at step k reads from shared byte offset ``byte``. Layout: two
        buffers of [x (B) lines, y (A) lines] × 8 lines × T floats; buffer (k//8) % 2 holds
        block k//8, the other the next block (the trip's loads are stored before its reads end)."""
        tile = self.g.tile
        if byte % 16:
            raise Crash(f"LDS.128 at shared byte {byte}: not 16-byte aligned", "misaligned_address")
        if not 0 <= byte < 4 * 32 * tile:
            raise Crash(f"shared access at byte {byte} outside the block's {4 * 32 * tile} bytes", "shared_out_of_range")
        bx, by, _ = self.g.split(self.thread)
        e = byte // 4
        buf, rest = divmod(e, 16 * tile)
        op, rest = divmod(rest, 8 * tile)
        line, pos = divmod(rest, tile)
        kb = k // 8 + (0 if buf == (k // 8) % 2 else 1)
        kk = 8 * kb + line
        if op == 0:
            return [self.v.b(kk, bx * tile + pos + i) for i in range(4)]
        return [self.v.a(by * tile + pos + i, kk) for i in range(4)]

    def _read_offset(self, side: str, part: str, k: int) -> int:
        """Byte offset of the thread's LDS.128 of ``side`` (a: x, b: y) ``part`` at step k."""
        tile = self.g.tile
        x0, y0 = self.g.origin(self.g.split(self.thread)[2])
        base = x0 if side == "a" else y0
        pos = base + (tile // 2 if part == "hi" else 0)
        return 4 * (16 * tile * ((k // 8) % 2) + (0 if side == "a" else 8 * tile) + (k % 8) * tile + pos)

    def _operand_outputs(self, side: str, slot: int) -> list[Out]:
        """The thread's 8 outputs using its x operand ``slot`` (a column) or y operand (a row)."""
        if side == "a":
            return [(r, self.cols[slot]) for r in self.rows]
        return [(self.rows[slot], c) for c in self.cols]

    def _thread_over(self, changed: Mapping[tuple[str, int, int], Any]) -> Writes:
        """Writes of operand changes local to the thread {(side, slot 0..7, k): value}: an x
        value (side a, Darknet's B[k][column]) or a y value (side b, A[row][k])."""
        writes: Writes = {}
        outs: dict[Out, tuple[dict[int, Any], dict[int, Any]]] = {}
        for (side, slot, k), x in changed.items():
            for rc in self._operand_outputs(side, slot):
                outs.setdefault(rc, ({}, {}))[1 if side == "a" else 0][k] = x
        for (r, c), (ao, bo) in outs.items():
            self._out(r, c, ao, bo, writes)
        return writes

    def _clean_operand(self, side: str, slot: int, k: int) -> np.float32:
        return self.v.b(k, self.cols[slot]) if side == "a" else self.v.a(self.rows[slot], k)

    def operand(self, exec_: int, side: str, part: str) -> Writes:
        """``lds:{side}_{part}``: IOV: one of the 4 values read at step k (component ``lane``
        mod 4); RF: register ``lane`` of buffer lane // 4, holding step k or k + 1 (the buffer
        of that parity); IOA: the 4 values from another shared address."""
        k = exec_
        comp = self.t.lane % 4
        if self.t.register:
            buf = (self.t.lane // 4) % 2
            k += (k + buf) % 2  # the register holds the operand of the next step of its parity
        if k >= self.g.steps:
            return {}
        slots = [comp + (4 if part == "hi" else 0)] if self.t.kind != "ioa" else [i + (4 if part == "hi" else 0)
                                                                                  for i in range(4)]
        changed: dict[tuple[str, int, int], Any] = {}
        if self.t.kind == "ioa":
            off = self._read_offset(side, part, k)
            got = self._smem(k, corrupt_pattern(off, self.t.bit_model, self.t.bits, self.t.value))
            for i, s in enumerate(slots):
                changed[(side, s, k)] = got[i]
        else:
            old = self._clean_operand(side, slots[0], k)
            changed[(side, slots[0], k)] = self._cf(old)
        first = next(iter(changed))
        self._note(self._clean_operand(side, first[1], k), changed[first])
        return self._thread_over(changed)

    def shared_base(self, exec_: int, swap: bool) -> Writes:
        """``imad:smem`` (from the start) or ``lop:swap`` (from the next K block): readAs,
        readBs or writeS (``lane`` mod 3) corrupted. A read offset changes all 8 x (or y)
        operands the thread reads from then on; the store offset leaves the thread's loaded
        values out of their shared place (they read as zero; where they land is not modelled)."""
        which = self.t.lane % 3
        k0 = 8 * (exec_ + 1) if swap else 0
        if k0 >= self.g.steps:
            return {}
        if which == 2:
            return self._loads_missing(k0 // 8)
        side = "a" if which == 0 else "b"
        first = self._read_offset(side, "lo", k0)
        delta = corrupt_pattern(first, self.t.bit_model, self.t.bits, self.t.value) - first
        changed: dict[tuple[str, int, int], Any] = {}
        for k in range(k0, min(self.g.steps, self.v.K)):
            for part in ("lo", "hi"):
                got = self._smem(k, self._read_offset(side, part, k) + delta)
                for i in range(4):
                    changed[(side, i + (4 if part == "hi" else 0), k)] = got[i]
        self._note(first, first + delta)
        return self._thread_over(changed)

    # ------------------------------------------------------------------ global loads into shared
    def _loaded(self, j: int, kb: int) -> tuple[str, int, list[int]]:
        return self.g.loaded(self.thread, j, kb)

    def _element(self, side: str, k: int, index: int) -> tuple[str, int] | None:
        """(buffer, element) a load reads for operand element (side, k, row or column); None
        where the load is clamped (past K, M or N: it reads zero)."""
        v = self.v
        if not 0 <= k < v.K:
            return None
        if side == "a":
            return (v.A, v.a_index(index, k)) if index < v.M else None
        return (v.B, v.b_index(k, index)) if index < v.N else None

    def tile_load(self, exec_: int, via: str) -> Writes:
        """``ldg:tile`` (``via`` "ldg") or its address ``lea:addr_tile`` ("lea"): trip exec_ // L,
        load exec_ % L (RF: load lane // 4). IOV of the load: one of its 4 values (lane mod 4);
        IOA or a corrupted pointer: its 4 values from another address."""
        ld = self.g.loads
        kb = exec_ // ld
        j = (self.t.lane // 4) % ld if self.t.register else exec_ % ld
        side, k, idx = self._loaded(j, kb)
        changed: dict[tuple[str, int, int], Any] = {}
        if via == "ldg" and self.iov:
            comp = self.t.lane % 4
            loc = self._element(side, k, idx[comp])
            if loc is not None:
                old = F32(self.v.read(*loc))
                changed[(side, idx[comp], k)] = self._cf(old)
                self._note(old, changed[(side, idx[comp], k)])
            return self._shared_over(changed)
        loc0 = self._element(side, k, idx[0])
        if loc0 is None:
            return {}
        addr = self.v.memmap.address(*loc0)
        if via == "ldg":
            addr2 = corrupt_address(addr, self.t, low_only=True)
        else:
            addr2 = corrupt_address(addr, self.t) if self.iov else 0
        return self._loads_moved({(j, kb): addr2 - addr})

    def _loads_moved(self, deltas: Mapping[tuple[int, int], int]) -> Writes:
        """Loads (j, K block) reading ``delta`` bytes away from their elements."""
        changed: dict[tuple[str, int, int], Any] = {}
        for (j, kb), delta in deltas.items():
            side, k, idx = self._loaded(j, kb)
            for i in idx:
                loc = self._element(side, k, i)
                if loc is None:
                    continue
                addr = self.v.memmap.address(*loc)
                new = F32(self.v.at(addr + delta))
                self._note(self.v.read(*loc), new)
                changed[(side, i, k)] = new
        return self._shared_over(changed)

    def _loads_missing(self, kb0: int) -> Writes:
        """The thread's loads from K block ``kb0`` on never reach their shared place (zero)."""
        changed: dict[tuple[str, int, int], Any] = {}
        for kb in range(kb0, self.g.kblocks):
            for j in range(self.g.loads):
                side, k, idx = self._loaded(j, kb)
                for i in idx:
                    if self._element(side, k, i) is not None:
                        changed[(side, i, k)] = F32(0.0)
        self._note(1.0, 0.0)
        return self._shared_over(changed)

    def load_offsets(self, exec_: int, via: str) -> Writes:
        """The thread's later loads read elsewhere: the 64-bit base (``ptr``: every load),
        one track offset (``track``: load ``lane``, or every load for ``operand``'s blk/ldx),
        or one increment (``step``: load exec_ % L from the next K block on)."""
        t, ld, nb = self.t, self.g.loads, self.g.kblocks
        if via == "ptr":
            side, k, idx = self._loaded(0, 0)
            loc = self._element(side, k, idx[0])
            base = self.v.memmap.address(loc[0], 0) if loc else self.v.memmap.address(self.v.A, 0)
            delta = (corrupt_address(base, t) if self.iov else 0) - base
            return self._loads_moved({(j, kb): delta for j in range(ld) for kb in range(nb)})
        if via == "step":
            j, kb0 = exec_ % ld, exec_ // ld + 1
            loads = [j]
        else:
            kb0, loads = 0, (list(range(ld)) if via == "operand" else [t.lane % ld])
        side = self._loaded(0, 0)[0]
        off = self._loaded(loads[0], kb0 if kb0 < nb else 0)[2][0]
        off2 = corrupt_i32(off, t.bit_model, t.bits, t.value) if t.kind != "ioa" else 0
        elem = 4 * (off2 - off) * (1 if side == "b" else max(1, self.v.K))  # a row of A is K elements
        return self._loads_moved({(j, kb): elem for j in loads for kb in range(kb0, nb)})

    # ------------------------------------------------------------------ loop control
    def loop_exit(self, exec_: int, bound: bool) -> Writes:
        """``setp:loop`` (a flipped test) or ``imad:end`` (``bound``: the loop's last offset):
        a thread leaving the loop at another trip than its block diverges at the barrier
        (hang); a bound that still gives the same trip count changes nothing."""
        nb = self.g.kblocks
        if bound:
            side = self._loaded(0, 0)[0]
            ldx = self.v.N if side == "b" else 1
            track0 = self._loaded(0, 0)[2][0]
            end = track0 + 8 * (nb - 1) * ldx
            end2 = corrupt_i32(end, self.t.bit_model, self.t.bits, self.t.value) if self.t.kind != "ioa" else 0
            trips = 1 + max(0, (end2 - track0) // (8 * ldx))
            self._note(end, end2)
            if trips == nb:
                return {}
        raise Hang(f"gemm thread leaves the K loop at another trip than its block ({nb} K blocks): barrier deadlock")

    def half_select(self, exec_: int) -> Writes:
        """``setp:half``: the thread loads the other operand's elements into the other half of
        shared memory: its own elements stay unloaded (zero; the overwritten ones are not modelled)."""
        return self._loads_missing(0)

    # ------------------------------------------------------------------ epilogue
    def c_read(self, exec_: int) -> Writes:
        """``ld:c``: output exec_'s C value (beta·C) corrupted, or read from another address."""
        r, c = self._output(exec_)
        writes: Writes = {}
        if not self.v.inside(r, c):
            return writes
        c0 = self._c0(r, c)
        if self.iov:
            c02 = float(self._cf(c0))
        else:
            c02 = float(self.v.at(corrupt_address(self.v.memmap.address(self.v.C, self.v.c_index(r, c)), self.t,
                                                  low_only=True)))
        self._note(c0, c02)
        acc = accumulate(0.0, self.v.row(r), self.v.col(c))[-1]
        self._put(r, c, final(acc, c0), final(acc, c02), writes)
        return writes

    def epilogue_value(self, exec_: int, stage: str) -> Writes:
        """``fmul:alpha`` (alpha·acc) or ``ffma:beta`` (the final value) of output exec_
        corrupted; IOA: the result is lost, the register keeps what it held (the accumulator for
        alpha·acc with alpha = 1, alpha·acc for the final value: C is not added)."""
        r, c = self._output(exec_)
        writes: Writes = {}
        if not self.v.inside(r, c):
            return writes
        c0 = self._c0(r, c)
        acc = accumulate(0.0, self.v.row(r), self.v.col(c))[-1]
        clean = final(acc, c0)
        if stage == "alpha":
            prod = F32(acc) if self.t.kind == "ioa" else self._cf(acc)
            self._note(acc, prod)
            faulty = final(prod, c0)
        else:
            faulty = F32(acc) if self.t.kind == "ioa" else self._cf(clean)
            self._note(clean, faulty)
        self._put(r, c, clean, faulty, writes)
        return writes

    def stores_moved(self, exec_: int, via: str) -> Writes:
        """Outputs land elsewhere, C keeps its stale value: one store's address (``st``), one
        row's 64-bit pointer (``row``: its 8 outputs; the C read goes there too) or the C
        offset (``index``: all 64)."""
        v, t = self.v, self.t
        if via == "st":
            outs, rowwise = [self._output(exec_)], False
        elif via == "row":
            outs, rowwise = [(self.rows[exec_ % 8], c) for c in self.cols], True
        else:
            outs, rowwise = [self._output(o) for o in range(64)], True
        writes: Writes = {}
        landed: Writes = {}
        delta: int | None = None
        for r, c in outs:
            if not v.inside(r, c):
                continue
            addr = v.memmap.address(v.C, v.c_index(r, c))
            if via == "st":
                addr2 = corrupt_address(addr, t, low_only=True)
            elif via == "row":
                addr2 = corrupt_address(addr, t) if t.kind != "ioa" else 0
            else:
                if delta is None:
                    off = v.c_index(r, c) - v.co
                    delta = 4 * ((corrupt_i32(off, t.bit_model, t.bits, t.value) if t.kind != "ioa" else 0) - off)
                addr2 = addr + delta
            self._note(addr, addr2)
            loc = v.memmap.resolve(addr2)
            if loc == (v.C, v.c_index(r, c)):
                continue
            self._stale(r, c, writes)
            if loc is not None:
                acc = accumulate(0.0, v.row(r), v.col(c))[-1]
                landed[loc] = final(acc, float(v.read(*loc))) if rowwise else F32(self.golden(r, c))
        writes.update(landed)  # a store that landed on another output's place outlives its staleness
        return writes

    def store_predicate(self, exec_: int) -> Writes:
        """``setp:store``: an output inside C is not stored (stale); one past the edge is stored
        with what it read there plus its accumulator, which is zero (its operands are clamped)."""
        r, c = self._output(exec_)
        writes: Writes = {}
        self._note(1.0, 0.0)
        self._stale(r, c, writes)
        return writes

    def misplaced_thread(self, exec_: int) -> Writes:
        """``s2r:index``: the thread computes and stores another thread's outputs (which that
        thread stores too) and loads another thread's elements: its own 64 outputs stay stale."""
        writes: Writes = {}
        for o in range(64):
            self._stale(*self._output(o), writes)
        self._note(self.thread, -1)
        return writes

    def writes(self, tag: str, exec_: int) -> Writes:
        """The writes of a fault in execution ``exec_`` of ``tag`` (``EFFECTS``)."""
        effect = effect_of(tag)
        if effect.run is None:
            raise UnknownTag(f"gemm tag '{tag}' has no fault effect ({effect.why}): it is never struck")
        return effect.run(self, exec_)


class Calls(enum.Enum):
    """How many logical executions of a tag one gemm thread makes (``calls``)."""

    ONCE = "once"
    PER_STEP = "per_step"      # once per reduction step (K rounded up to whole blocks)
    PER_FFMA = "per_ffma"      # 64 per step: step * 64 + output
    PER_BLOCK = "per_block"    # once per K block
    PER_LOAD = "per_load"      # 256/T per K block: block * loads + load
    PER_OUTPUT = "per_output"  # 64: one per output of the thread
    PER_ROW = "per_row"        # 8: one per output row of the thread
    ZERO = "zero"              # 16 LDS.128 zeroing the accumulators
    NEVER = "never"            # nothing a fault can strike (its effect is another tag's, or none)


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
_SHARED_STORE = ("a shared store: the value it stores is the global load's (ldg:tile); an IOA fault in its "
                 "address is not modelled and counts as Masked")


def _op(side: str, part: str) -> Run:
    return lambda f, e: f.operand(e, side, part)


#: The fault model of every tag of the gemm template (``kernels/sgemm.py``), the one place a tag
#: gets its effect: a new tag needs an entry here (tests/test_fault_effects.py checks every tag).
EFFECTS: dict[str, GemmEffect] = {
    "s2r:index": GemmEffect(Calls.ONCE, GemmFault.misplaced_thread),
    "setp:half": GemmEffect(Calls.ONCE, GemmFault.half_select),
    "sel:operand": GemmEffect(Calls.ONCE, lambda f, e: f.load_offsets(e, "operand")),
    "sel:ptr": GemmEffect(Calls.ONCE, lambda f, e: f.load_offsets(e, "ptr")),
    "imad:track": GemmEffect(Calls.ONCE, lambda f, e: f.load_offsets(e, "track")),
    "imad:end": GemmEffect(Calls.ONCE, lambda f, e: f.loop_exit(e, bound=True)),
    "imad:smem": GemmEffect(Calls.ONCE, lambda f, e: f.shared_base(e, swap=False)),
    "sts:zero": GemmEffect(Calls.NEVER, why="a shared store of zero: its effect is the zeroing loads' (lds:zero)"),
    "lds:zero": GemmEffect(Calls.ZERO, GemmFault.accumulator_start),
    "ffma:acc": GemmEffect(Calls.PER_FFMA, GemmFault.partial_sum),
    "lds:a_lo": GemmEffect(Calls.PER_STEP, _op("a", "lo")),
    "lds:b_lo": GemmEffect(Calls.PER_STEP, _op("b", "lo")),
    "lds:a_hi": GemmEffect(Calls.PER_STEP, _op("a", "hi")),
    "lds:b_hi": GemmEffect(Calls.PER_STEP, _op("b", "hi")),
    "setp:loop": GemmEffect(Calls.PER_BLOCK, lambda f, e: f.loop_exit(e, bound=False)),
    "lea:addr_tile": GemmEffect(Calls.PER_LOAD, lambda f, e: f.tile_load(e, "lea")),
    "ldg:tile": GemmEffect(Calls.PER_LOAD, lambda f, e: f.tile_load(e, "ldg")),
    "sts:tile": GemmEffect(Calls.NEVER, why=_SHARED_STORE),
    "bar:tile": GemmEffect(Calls.NEVER, why="a barrier: no destination"),
    "lop:swap": GemmEffect(Calls.PER_BLOCK, lambda f, e: f.shared_base(e, swap=True)),
    "iadd:track": GemmEffect(Calls.PER_LOAD, lambda f, e: f.load_offsets(e, "step")),
    "bra:loop": GemmEffect(Calls.NEVER, why="a branch: no destination"),
    "imad:c_index": GemmEffect(Calls.ONCE, lambda f, e: f.stores_moved(e, "index")),
    "lea:addr_c": GemmEffect(Calls.PER_ROW, lambda f, e: f.stores_moved(e, "row")),
    "setp:store": GemmEffect(Calls.PER_OUTPUT, GemmFault.store_predicate),
    "ld:c": GemmEffect(Calls.PER_OUTPUT, GemmFault.c_read),
    "fmul:alpha": GemmEffect(Calls.PER_OUTPUT, lambda f, e: f.epilogue_value(e, "alpha")),
    "ffma:beta": GemmEffect(Calls.PER_OUTPUT, lambda f, e: f.epilogue_value(e, "beta")),
    "st:c": GemmEffect(Calls.PER_OUTPUT, lambda f, e: f.stores_moved(e, "st")),
    "exit:done": GemmEffect(Calls.NEVER, why="the thread's exit: no destination"),
}


def effect_of(tag: str) -> GemmEffect:
    """The table's entry for ``tag``; an unknown tag is an error (``UnknownTag``)."""
    try:
        return EFFECTS[tag]
    except KeyError:
        raise UnknownTag(f"gemm tag '{tag}' has no entry in faults/gemm.py EFFECTS") from None


def calls(params: Mapping[str, Any], slots: Iterable[InstrSlot]) -> dict[str, int]:
    """Logical executions per thread of each tag of a gemm launch's ``slots``."""
    g = sgemm_shape(params)
    per = {Calls.ONCE: 1, Calls.PER_STEP: g.steps, Calls.PER_FFMA: 64 * g.steps, Calls.PER_BLOCK: g.kblocks,
           Calls.PER_LOAD: g.loads * g.kblocks, Calls.PER_OUTPUT: 64, Calls.PER_ROW: 8, Calls.ZERO: 16,
           Calls.NEVER: 0}
    return {s.tag: per[effect_of(s.tag).calls] for s in slots}
