"""Each gemm fault effect (faults/gemm.py) on a tiny product worked out on paper.

    A = [[1, 2],      B = [[1, 0, 2],      C (before) = [[10, 20, 30],
         [3, 4]]           [0, 1, 1]]                    [40, 50, 60]]

A·B = [[1, 2, 4], [3, 4, 10]], so the clean C = [[11, 22, 34], [43, 54, 70]]. M = 2, N = 3, K = 2:
min(M, N) <= 64, the 64 tile: one block of 64 threads, one K block (8 steps, 2..7 zero).
Thread 0 owns all six outputs (x0 = y0 = 0: columns 0-3 and 32-35, rows 0-3 and 32-35), as
output o = 8*row slot + column slot. Thread 16 loads B's line k = 1 (t = 16: quad 0, line 1),
thread 32 A's line k = 0 (t = 0: rows 0-3). Bit 23 is the exponent's lowest bit: it halves or
doubles a value of exponent parity (1.0 -> 0.5, 3.0 -> 6.0, 10.0 -> 20.0, 70.0 -> 35.0).
"""
from __future__ import annotations

import numpy as np
import pytest

from kernelfi.faults import gemm
from kernelfi.faults.memmap import BASE, Crash, MemoryMap
from kernelfi.faults.replay import F32, Hang, Target
from kernelfi.types import AddressHalf

A = [1.0, 2.0, 3.0, 4.0]
B = [1.0, 0.0, 2.0, 0.0, 1.0, 1.0]
C = [10.0, 20.0, 30.0, 40.0, 50.0, 60.0]
D = [5.0, 6.0, 7.0, 8.0]
GOLDEN = [[11.0, 22.0, 34.0], [43.0, 54.0, 70.0]]
MEM = {"A": A, "B": B, "C": C, "D": D}
#: A at BASE, B at BASE+256, C at BASE+512, D (another live buffer) at BASE+768
MAP = MemoryMap(("A", "B", "C", "D"), (BASE, BASE + 256, BASE + 512, BASE + 768), (4, 6, 6, 4))


def read(buf: str, i: int) -> np.float32:
    data = MEM[buf]
    return F32(data[i]) if 0 <= i < len(data) else F32(0.0)


def gather(buf: str, idx: np.ndarray) -> np.ndarray:
    return np.array([read(buf, int(i)) for i in idx], dtype=np.float32)


def writes(tag: str, exec_: int, thread: int = 0, kind: str = "iov", bits: tuple[int, ...] = (23,), lane: int = 0,
           register: bool = False, half: AddressHalf = AddressHalf.LOW) -> dict:
    view = gemm.GemmView({"M": 2, "N": 3, "K": 2}, ("A", "B", "C"), read, MAP, gather)
    t = Target(tag, exec_, kind, "single", bits, None, half, lane=lane, register=register)
    w = gemm.GemmFault(view, t, thread, lambda r, c: GOLDEN[r][c]).writes(tag, exec_)
    return {k: float(v) for k, v in w.items()}


def c(*pairs: tuple[int, float]) -> dict:
    return {("C", i): v for i, v in pairs}


def test_thread_zero_owns_the_six_outputs() -> None:
    g = gemm.GemmView({"M": 2, "N": 3, "K": 2}, ("A", "B", "C"), read, MAP, gather).shape
    assert (g.tile, g.threads, g.steps, g.loads) == (64, 64, 8, 4)
    assert g.rows(0)[:2] == [0, 1] and g.columns(0)[:3] == [0, 1, 2] and g.columns(0)[4] == 32
    assert g.loaded(16, 0, 0) == ("b", 1, [0, 1, 2, 3]) and g.loaded(32, 0, 0) == ("a", 0, [0, 1, 2, 3])


def test_lds_value_fault_corrupts_one_operand_for_its_column() -> None:
    # lds:a_lo at k = 1, component 2: the x operand B[1][2] = 1.0 -> 0.5, used by column 2's rows:
    # C[0][2] = 30 + 1*2 + 2*0.5 = 33, C[1][2] = 60 + 3*2 + 4*0.5 = 68; no other output changes.
    assert writes("lds:a_lo", 1, lane=2) == c((2, 33.0), (5, 68.0))


def test_lds_value_fault_corrupts_one_operand_for_its_row() -> None:
    # lds:b_lo at k = 0, component 1: the y operand A[1][0] = 3.0 -> 6.0, used by row 1:
    # [6*1 + 4*0, 6*0 + 4*1, 6*2 + 4*1] + [40, 50, 60] = [46, 54, 76] (column 1 unchanged).
    assert writes("lds:b_lo", 0, lane=1) == c((3, 46.0), (4, 54.0), (5, 76.0))


def test_lds_address_fault_reads_other_shared_words_or_crashes() -> None:
    # LDS.128 of x at k = 0 reads shared byte 0 (line 0, x 0-3). Bit 8: byte 256 = line 1:
    # the x operands at k = 0 become B[1][c] = [0, 1, 1]: row 0 = (1+2)*[0, 1, 1] + C = [10, 23, 33],
    # row 1 = (3+4)*[0, 1, 1] + C = [40, 57, 67].
    assert writes("lds:a_lo", 0, kind="ioa", bits=(8,)) == c((0, 10.0), (1, 23.0), (2, 33.0), (3, 40.0),
                                                            (4, 57.0), (5, 67.0))
    with pytest.raises(Crash):  # bit 2: byte 4, not 16-byte aligned
        writes("lds:a_lo", 0, kind="ioa", bits=(2,))


def test_ffma_fault_corrupts_one_partial_sum() -> None:
    # output o = 1 (row 0, column 1) at step 0: execution 0*64 + 1. Its partial sum 1*0 = 0.0,
    # bit 30 -> 2.0; step 1 adds 2*1: 4, the epilogue adds 20: 24.
    assert writes("ffma:acc", 1, bits=(30,)) == c((1, 24.0))


def test_rf_fault_in_an_accumulator() -> None:
    # accumulator lane 8 = row slot 1, column slot 0: output (1, 0); the time gives step 1
    # (execution 64..127): partial sum 3*1 + 4*0 = 3.0 -> 6.0; + 40 = 46.
    assert writes("ffma:acc", 64 + 5, lane=8, register=True) == c((3, 46.0))
    # lane 5: column slot 5 is column 33, past N: nothing stored
    assert writes("ffma:acc", 64, lane=5, register=True) == {}


def test_rf_fault_in_an_operand_register_hits_its_buffers_step() -> None:
    # register lane 6 of lds:a_lo: buffer 1 (odd steps), component 2. Struck at step 0 it holds
    # step 1's operand B[1][2]: the same corruption as the LDS value fault at k = 1.
    assert writes("lds:a_lo", 0, lane=6, register=True) == c((2, 33.0), (5, 68.0))


def test_global_load_fault_reaches_every_output_of_its_column_in_the_block() -> None:
    # thread 16 (which owns no output inside C) loads B[1][0..3]; component 2 is B[1][2] = 1.0
    # -> 0.5: every output of column 2, as in the LDS test.
    assert writes("ldg:tile", 0, thread=16, lane=2) == c((2, 33.0), (5, 68.0))
    # thread 32 loads A[0..3][0]; component 1 is A[1][0] = 3.0 -> 6.0: all of row 1
    assert writes("ldg:tile", 0, thread=32, lane=1) == c((3, 46.0), (4, 54.0), (5, 76.0))


def test_global_load_address_fault_reads_other_memory() -> None:
    # B[1][0] is at BASE+256+12 = ...10C; bit 3 gives ...104 = B's element 1: the LDG.128 reads
    # B elements 1, 2, 3 for B[1][0..2] = [0, 2, 0]: row 0 = [1, 0+4, 2] + C = [11, 24, 32],
    # row 1 = [3, 8, 6] + C = [43, 58, 66].
    assert writes("ldg:tile", 0, thread=16, kind="ioa", bits=(3,)) == c((0, 11.0), (1, 24.0), (2, 32.0),
                                                                       (3, 43.0), (4, 58.0), (5, 66.0))


def test_rf_fault_in_the_operand_pointer() -> None:
    # thread 16's base pointer (B, ...100) low word bit 3: every load reads 2 elements later;
    # only its k = 1 line is inside K: B[1][0..2] = B elements 5, 6, 7 = [1, 0 (padding), 0]:
    # row 0 = [1+2, 0, 2] + C = [13, 20, 32], row 1 = [3+4, 0, 6] + C = [47, 50, 66].
    assert writes("sel:ptr", 0, thread=16, bits=(3,), register=True) == c((0, 13.0), (1, 20.0), (2, 32.0),
                                                                          (3, 47.0), (4, 50.0), (5, 66.0))
    with pytest.raises(Crash):  # the high word: 4 GiB away, outside every allocation
        writes("sel:ptr", 0, thread=16, bits=(0,), register=True, half=AddressHalf.HIGH)


def test_epilogue_faults_change_the_final_value() -> None:
    # ffma:beta of output o = 8 + 2 (row 1, column 2): 70 -> 35
    assert writes("ffma:beta", 10) == c((5, 35.0))
    # fmul:alpha of output 0: alpha*acc = 1.0 -> 0.5, + 10 = 10.5
    assert writes("fmul:alpha", 0) == c((0, 10.5))
    # ld:c of output 0: C = 10 -> 20, + 1 = 21
    assert writes("ld:c", 0) == c((0, 21.0))
    # IOA of the final FFMA: its result is lost, the register keeps alpha*acc = 1 (C not added)
    assert writes("ffma:beta", 0, kind="ioa") == c((0, 1.0))


def test_row_pointer_fault_moves_a_row_of_outputs() -> None:
    # row 0's pointer (C at ...200) bit 8: ...300 = D. Each output reads D there and stores
    # acc + D: D = [1+5, 2+6, 4+7]; C's row 0 keeps 10, 20, 30.
    assert writes("lea:addr_c", 0, bits=(8,)) == {**c((0, 10.0), (1, 20.0), (2, 30.0)),
                                                 ("D", 0): 6.0, ("D", 1): 8.0, ("D", 2): 11.0}


def test_store_predicate_fault_leaves_the_output_stale() -> None:
    assert writes("setp:store", 9) == c((4, 50.0))  # output (1, 1) not stored: the 50 before the kernel


def test_loop_bound_faults() -> None:
    with pytest.raises(Hang):
        writes("setp:loop", 0)
    # thread 0's end = its track0 = 0 (one K block); bit 0 gives 1: still one trip (1 < 8*ldx)
    assert writes("imad:end", 0, bits=(0,)) == {}
    with pytest.raises(Hang):  # bit 10: 1024, 1 + 1024 // 24 = 43 trips
        writes("imad:end", 0, bits=(10,))
