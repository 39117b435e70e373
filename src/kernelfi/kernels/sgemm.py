"""The gemm kernel's thread program: cuBLAS's Maxwell SGEMM as maxas reconstructed it.

Darknet's ``gemm_gpu`` calls ``cublasSgemm`` with the operands swapped (cuBLAS is column-major):
cuBLAS's m is Darknet's N (C's columns, the "x" of maxas' kernel), its n is Darknet's M (C's
rows, "y"), its A is Darknet's B and its B Darknet's A. The kernel (maxas ``sgemm_128``, and
``sgemm_64`` for thin products; docs/kernels.md §6 cites the facts):

- a block of ``T*T/64`` threads computes a ``T``×``T`` tile of C, each thread an 8×8 block of
  outputs: columns ``x0+i`` and ``x0+T/2+i``, rows ``y0+j`` and ``y0+T/2+j`` (i, j < 4), with
  ``x0``/``y0`` from the thread id as maxas' ``readAs``/``readBs``;
- per 8-step block of K, the first half of the threads loads 8×T values of Darknet's B (x), the
  other half 8×T of Darknet's A (y), ``256/T`` 128-bit loads each, into one of two shared
  buffers (double buffering: one barrier per block);
- per k, the thread reads its 8 x and 8 y operands from shared memory with four LDS.128 and
  issues 64 FFMA into 64 accumulators that start from zero;
- the epilogue writes ``alpha·acc + beta·C`` (Darknet: alpha = beta = 1) for its 64 outputs,
  predicated on row < M and column < N.

The tile rule is kernelfi's, since cuBLAS' kernel choice is not published: ``T`` = 64 when
M <= 64 or N <= 64 (a 128 tile would leave over half of it idle in that dimension), else 128.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from kernelfi.types import AddressHalf

from ._base import p_int
from ._sass import Stream, epilogue

#: The block tiles modelled: maxas' sgemm_64 and sgemm_128.
SGEMM_TILES: tuple[int, int] = (64, 128)
#: Reduction steps per shared-memory block (maxas' 8 "lines").
KBLOCK = 8


@dataclass(frozen=True)
class SgemmShape:
    """Geometry of one gemm launch under the tile rule (module docstring)."""

    M: int
    N: int
    K: int
    tile: int

    @property
    def threads_per_block(self) -> int:
        return self.tile * self.tile // 64

    @property
    def loads(self) -> int:
        """128-bit global loads per thread per K block (256/T)."""
        return 256 // self.tile

    @property
    def grid(self) -> tuple[int, int]:
        """(blocks along x = Darknet's N, blocks along y = Darknet's M)."""
        return -(-self.N // self.tile), -(-self.M // self.tile)

    @property
    def threads(self) -> int:
        gx, gy = self.grid
        return gx * gy * self.threads_per_block

    @property
    def kblocks(self) -> int:
        return max(1, -(-self.K // KBLOCK))

    @property
    def steps(self) -> int:
        """Reduction steps each thread runs: K rounded up to whole blocks (zeros past K)."""
        return KBLOCK * self.kblocks

    def split(self, thread: int) -> tuple[int, int, int]:
        """(block x, block y, thread id in the block) of a global thread index."""
        blk, tid = divmod(int(thread), self.threads_per_block)
        by, bx = divmod(blk, self.grid[0])
        return bx, by, tid

    def origin(self, tid: int) -> tuple[int, int]:
        """(x0, y0) of a thread's outputs within its tile (maxas readAs, readBs in floats)."""
        half = self.threads_per_block // 2
        if self.tile == 128:
            x0 = 4 * ((tid >> 1) & 7) + 32 * (1 if tid >= half else 0)
            y0 = 4 * ((((tid >> 4) & 7) << 1) | (tid & 1))
        else:
            x0 = 4 * ((tid >> 1) & 7)
            y0 = 4 * ((((tid >> 4) & 3) << 1) | (tid & 1))
        return x0, y0

    def columns(self, thread: int) -> list[int]:
        """The thread's 8 columns of C (Darknet's N index; may lie past N)."""
        bx, _, tid = self.split(thread)
        x0 = self.origin(tid)[0]
        return [bx * self.tile + x0 + i + h * self.tile // 2 for h in (0, 1) for i in range(4)]

    def rows(self, thread: int) -> list[int]:
        """The thread's 8 rows of C (Darknet's M index; may lie past M)."""
        _, by, tid = self.split(thread)
        y0 = self.origin(tid)[1]
        return [by * self.tile + y0 + j + h * self.tile // 2 for h in (0, 1) for j in range(4)]

    def loaded(self, thread: int, load: int, kblock: int) -> tuple[str, int, list[int]]:
        """What load ``load`` of a thread reads at K block ``kblock``: ("b", k, 4 columns) for the
        first half of the block's threads (Darknet's B, along x), ("a", k, 4 rows) for the
        other half (Darknet's A, along y). Indices may lie past K, N or M (read as zero)."""
        bx, by, tid = self.split(thread)
        half = self.threads_per_block // 2
        side, t = ("b", tid) if tid < half else ("a", tid - half)
        quads = self.tile // 4
        q, line = t % quads, t // quads
        k = kblock * KBLOCK + line + load * (KBLOCK // self.loads)
        base = (bx if side == "b" else by) * self.tile + 4 * q
        return side, k, [base + i for i in range(4)]


def sgemm_shape(params: Mapping[str, Any], kernel: str = "gemm") -> SgemmShape:
    """The launch's geometry; T by the tile rule (module docstring)."""
    m, n, k = (p_int(params, key, kernel) for key in ("M", "N", "K"))
    tile = SGEMM_TILES[0] if min(m, n) <= SGEMM_TILES[0] else SGEMM_TILES[1]
    return SgemmShape(m, n, k, tile)


def shared_bytes(params: Mapping[str, Any]) -> int:
    """Shared memory of one block: two buffers of 8 lines of T values of each operand."""
    return 2 * 2 * KBLOCK * sgemm_shape(params).tile * 4


def sgemm_stream(params: Mapping[str, Any]) -> Stream:
    """The per-thread instruction slots and register lives of one gemm launch."""
    g = sgemm_shape(params)
    nb, steps, ld = g.kblocks, g.steps, g.loads
    s = Stream()
    s.add("GPR", "S2R", "s2r:index", 3, "index", "reads tid, ctaid.x, ctaid.y: which 8x8 outputs and which loads")
    s.add("PR", "ISETP", "setp:half", 1, "predicate",
          f"tid >= {g.threads_per_block // 2}: whether the thread loads B (x) or A (y); a flip loads the other "
          "operand's elements into the wrong half of shared memory")
    s.add("GPR", "SEL", "sel:operand", 2, "index", "blk = bx or by and the operand's leading dimension")
    s.add("GPR", "SEL", "sel:ptr", 2, "address", "the 64-bit base of the operand this thread loads", halves=True)
    s.add("GPR", "LOP", "imad:track", 5 + ld, "index",
          f"tid fields and the {ld} load offsets track_j = blk*T + 4*(tid%(T/4)) + line_j*ldx")
    s.add("GPR", "XMAD", "imad:end", 5, "loop_counter", "end = track0 + (K-8)*ldx: the loop's last trip")
    s.add("GPR", "LOP", "imad:smem", 12, "address", "shared offsets writeS (stores), readAs, readBs (operand reads)")
    s.add("NODEST", "STS", "sts:zero", 1, "store", "zeroes a shared line (accumulator initialisation)")
    s.add("LD", "LDS", "lds:zero", 16, "value", "16 LDS.128 of the zero line: the 64 accumulators start at 0")
    s.begin_loop(nb)
    # the trip: its loads issued first, the 8 steps, the loaded values stored (maxas: loads at
    # step 0, stores at step 6), the barrier and buffer swap; LDS prefetch the next step
    s.add("PR", "ISETP", "setp:loop", nb, "predicate",
          "track0 <= end: a flip ends the thread's loop at another trip than its block (barrier deadlock)")
    s.add("GPR", "IADD", "lea:addr_tile", 2 * ld * nb, "address", "64-bit address ptr + 4*track_j of each load",
          halves=True)
    s.add("LD", "LDG", "ldg:tile", ld * nb, "value",
          "LDG.128 of 4 operand values of the next K block into shared memory: each value reaches all the "
          "block's outputs of its row (A) or column (B) at one k")
    s.add("FP32", "FFMA", "ffma:acc", 64 * steps, "value",
          "acc[y][x] += A[y][k]*B[k][x] for the thread's 8x8 outputs: one partial sum of one output")
    for side, what in (("a", "x"), ("b", "y")):
        for part in ("lo", "hi"):
            src = "B" if side == "a" else "A"
            s.add("LD", "LDS", f"lds:{side}_{part}", steps, "value",
                  f"LDS.128 of 4 of the thread's 8 {what} operands at the next k ({src} in Darknet's terms): "
                  f"one value feeds the 8 outputs of its {'column' if side == 'a' else 'row'} of the thread")
    s.add("NODEST", "STS", "sts:tile", ld * nb, "store", "stores the loaded values into the other shared buffer")
    s.add("NODEST", "BAR", "bar:tile", nb, "control", "one barrier per K block (double buffering)")
    s.add("GPR", "LOP", "lop:swap", 3 * nb, "address", "XOR of readAs, readBs, writeS: swap the shared buffers")
    s.add("GPR", "IADD", "iadd:track", ld * nb, "index", "track_j += 8*ldx (next K block)")
    s.add("NODEST", "BRA", "bra:loop", nb, "control", "back-edge branch of the K-block loop")
    s.end_loop()
    s.add("GPR", "XMAD", "imad:c_index", 10, "index", "cx = bx*T + x0, cy = by*T + y0, cy*ldc + cx: where C goes")
    s.add("GPR", "IADD", "lea:addr_c", 16, "address", "64-bit address of each of the thread's 8 output rows",
          halves=True)
    s.add("PR", "ISETP", "setp:store", 64, "predicate",
          "row < M and column < N of each output: a flip drops a store (stale C) or stores past the edge")
    s.add("LD", "LDG", "ld:c", 64, "value", "C[row][col] for beta*C (Darknet: beta = 1)")
    s.add("FP32", "FMUL", "fmul:alpha", 64, "value", "alpha*acc of each output")
    s.add("FP32", "FFMA", "ffma:beta", 64, "value", "alpha*acc + beta*C: the final value of each output")
    s.add("NODEST", "STG", "st:c", 64, "store", "stores each final value")
    epilogue(s)
    _registers(s, g)
    return s


def _registers(s: Stream, g: SgemmShape) -> None:
    """64 accumulators, 2 buffers x (8 x + 8 y) operands, 4 per load, and the state registers.

    sgemm_128: 64 + 32 + 8 + 14 = 118, ptxas' count for the CUDA C rendering (maxas' map: 0-63
    accumulators, 64-95 operands, 96-103 loads, 14 of 104-127 for state with a 64-bit pointer in
    place of the texture handle). sgemm_64 loads 4 vectors (16 load registers) and keeps 4 track
    offsets: 64 + 32 + 16 + 12 = 124, ptxas' count for ``gemm_64``."""
    for i in range(64):  # lane i: row i // 8, column i % 8 of the thread's block
        s.reg(f"r_acc{i:02d}", "accumulator", "ffma:acc", "lds:zero", "fmul:alpha")
    for side in ("a", "b"):
        for part in ("lo", "hi"):
            for buf in (0, 1):  # lane 4*buf + component; buffer 0 feeds even steps, 1 odd ones
                for c in range(4):
                    s.reg(f"r_j{buf}{side}{part}{c}", "data", f"lds:{side}_{part}", f"lds:{side}_{part}", "ffma:acc")
    for j in range(g.loads):
        for c in range(4):
            s.reg(f"r_load{j}_{c}", "data", "ldg:tile", "ldg:tile", "sts:tile")
    for j in range(g.loads):
        s.reg(f"r_track{j}", "index", "imad:track", "imad:track", "iadd:track")
    s.reg("r_end", "constant", "imad:end", "imad:end", "setp:loop")
    s.reg("r_ptr_lo", "address", "sel:ptr", "sel:ptr", "lea:addr_tile")
    s.reg("r_ptr_hi", "address", "sel:ptr", "sel:ptr", "lea:addr_tile", half=AddressHalf.HIGH)
    s.reg("r_tid", "index", "s2r:index", "s2r:index", "imad:c_index")
    s.reg("r_ldx8", "constant", "iadd:track", "imad:track", "iadd:track")
    s.reg("r_readAs", "address", "imad:smem", "imad:smem", "ffma:acc")
    s.reg("r_readBs", "address", "imad:smem", "imad:smem", "ffma:acc")
    s.reg("r_writeS", "address", "imad:smem", "imad:smem", "sts:tile")
    if g.tile == 128:  # sgemm_64 has no room left: its epilogue re-derives them (ptxas: 124 registers)
        s.reg("r_bx", "index", "imad:c_index", "s2r:index", "imad:c_index")
        s.reg("r_by", "index", "imad:c_index", "s2r:index", "imad:c_index")
        s.reg("r_tid31", "index", "imad:c_index", "imad:track", "imad:c_index")
        s.reg("r_tid128", "index", "imad:c_index", "imad:track", "imad:c_index")
    s.reg("p_half", "predicate", "setp:half", "setp:half", "sel:ptr")
    s.reg("p_loop", "predicate", "setp:loop", "setp:loop", "bra:loop")
    s.reg("p_store", "predicate", "setp:store", "setp:store", "st:c")
