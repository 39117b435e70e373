"""One struck SGEMM thread of ``faults/gemm.py``: where its outputs are, what it loads, the
shared-memory layout it reads, and how a set of changed operands becomes the writes of the
outputs they reach. The effects themselves (one per tag) are ``faults/gemm.py``'s."""
from __future__ import annotations

from typing import Any, Callable, Mapping

import numpy as np

from kernelfi.faults.bits import corrupt_f32
from kernelfi.faults.gemm_view import GemmView, Out, Writes, accumulate, final
from kernelfi.faults.memmap import Crash
from kernelfi.faults.replay import F32, Target


class GemmThread:
    """The struck thread's geometry and the re-sums its faults share."""

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
