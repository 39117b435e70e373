"""Fault effects inside the tiled SGEMM (``kernels/conv.py``'s model: 16×16 thread blocks,
one C element per thread, 16×16 shared tiles of A and B per K step).

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

from typing import Any, Callable

import numpy as np

from kernelfi.faults.bits import corrupt_f32, corrupt_i32, corrupt_pattern
from kernelfi.faults.memmap import Crash, MemoryMap
from kernelfi.faults.replay import F32, Hang, Target, _corrupt_address

TILE = 16


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

    def writes(self, tag: str, exec_: int) -> dict[tuple[str, int], Any]:
        v, t, r, c = self.v, self.t, self.row, self.col
        writes: dict[tuple[str, int], Any] = {}
        K = v.K
        iov = t.kind == "iov"
        if tag in ("loop:k_tile", "setp:loop_k_tile"):
            nt = -(-K // TILE)
            if tag == "loop:k_tile":
                nxt = corrupt_i32(exec_ + 1, t.bit_model, t.bits, t.value) if iov else exec_
                if nxt == exec_ + 1:
                    return writes
            raise Hang(f"gemm thread leaves the K-tile loop at another trip than its block ({nt} tiles): barrier deadlock")
        c0 = float(v.read(v.C, v.c_index(r, c)))
        if tag in ("ffma:acc", "lds:a", "lds:b", "imad:smem"):
            a, b = v.row(r), v.col(c)
            a2, b2 = a.copy(), b.copy()
            k = min(exec_, K - 1)
            if tag == "ffma:acc":
                with np.errstate(all="ignore"):
                    terms = np.concatenate([[np.float32(c0)], (a.astype(np.float64) * b).astype(np.float32)])
                    part = np.add.accumulate(terms, dtype=np.float32)
                pk = part[k + 1]
                new = self._cf(pk) if iov else part[k]  # IOA: the FFMA's result is lost
                self._note(pk, new)
                rest = terms[k + 2:]
                with np.errstate(all="ignore"):
                    faulty = np.add.accumulate(np.concatenate([[new], rest]), dtype=np.float32)[-1]
                    delta = np.float64(faulty) - np.float64(part[-1])
                    val = F32(np.float64(self.golden(r, c)) + delta) if np.isfinite(delta) else F32(faulty)
                writes[(v.C, v.c_index(r, c))] = val
                return writes
            if tag == "imad:smem":
                ks = range(K)
                tx, ty = c % TILE, r % TILE
            else:
                ks = [k]
            for kk in ks:
                if tag == "lds:b":
                    if iov:
                        b2[kk] = self._cf(b[kk])
                    else:
                        b2[kk] = self._shared(kk, r, c, "b", a, b)
                else:
                    if iov and tag == "lds:a":
                        a2[kk] = self._cf(a[kk])
                    else:
                        a2[kk] = self._shared(kk, r, c, "a", a, b)
            self._note(a[k] if tag != "lds:b" else b[k], a2[k] if tag != "lds:b" else b2[k])
            self._out(r, c, a, b, c0, a2, b2, c0, writes)
            return writes
        if tag in ("ldg:a_tile", "ldg:b_tile", "imad:a_offset", "imad:b_offset", "lea:addr_a", "lea:addr_b",
                   "iadd:addr_a", "iadd:addr_b"):
            return self._tile_loads(tag, exec_, writes)
        if tag == "ld:c":
            if iov:
                c02 = float(self._cf(c0))
            else:
                c02 = float(v.at(_corrupt_address(v.memmap.address(v.C, v.c_index(r, c)), t, low_only=True)))
            self._note(c0, c02)
            a, b = v.row(r), v.col(c)
            self._out(r, c, a, b, c0, a, b, c02, writes)
            return writes
        if tag in ("st:c", "lea:addr_c", "imad:c_offset"):
            addr = v.memmap.address(v.C, v.c_index(r, c))
            if tag == "imad:c_offset":
                off = v.c_index(r, c) - v.co
                off2 = corrupt_i32(off, t.bit_model, t.bits, t.value) if iov else 0
                addr2 = addr + 4 * (off2 - off)
            elif tag == "lea:addr_c" and iov:
                addr2 = _corrupt_address(addr, t)
            elif tag == "lea:addr_c":
                addr2 = 0
            else:
                addr2 = _corrupt_address(addr, t, low_only=True)
            self._note(addr, addr2)
            loc = v.memmap.resolve(addr2)
            if loc == (v.C, v.c_index(r, c)):
                return writes
            self._stale(r, c, writes)
            if loc is not None:
                if tag == "st:c":
                    writes[loc] = F32(self.golden(r, c))
                else:  # the C load went to the same wrong place: it accumulates onto that value
                    a, b = v.row(r), v.col(c)
                    writes[loc] = seq_sum(float(v.read(*loc)), a, b)
            return writes
        if tag in ("s2r:index", "imad:index", "setp:bounds"):
            self._note(r * v.N + c, -1)
            if tag == "setp:bounds" and t.bit_model == "none":
                return writes
            self._stale(r, c, writes)  # the thread stores elsewhere (its own value) or nowhere
            return writes
        return writes  # control / shared stores (NODEST) never reach here

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

    def _tile_loads(self, tag: str, exec_: int, writes: dict) -> dict:
        """Wrong values in the tile elements this thread loads into shared memory."""
        v, t, r, c = self.v, self.t, self.row, self.col
        tx, ty = c % TILE, r % TILE
        op = tag.split(":", 1)[1]
        side = "a" if op.startswith("a_") or op.endswith("_a") else "b"
        nt = -(-v.K // TILE)
        tiles = [exec_] if tag.startswith("ldg:") else range(exec_ + (1 if tag.startswith("iadd:") else 0), nt)
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
            if tag.startswith("ldg:"):
                new = self._cf(old) if iov else F32(v.at(_corrupt_address(addr, t, low_only=True)))
            elif tag.startswith("imad:"):
                off = idx - (v.ao if side == "a" else v.bo) - ti * (TILE if side == "a" else TILE * v.N)
                off2 = corrupt_i32(off, t.bit_model, t.bits, t.value) if iov else 0
                new = F32(v.at(addr + 4 * (off2 - off)))
            else:  # lea:/iadd: the 64-bit pointer register
                new = F32(v.at(_corrupt_address(addr, t) if iov else 0))
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
