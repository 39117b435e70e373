"""Faults in every kernel of a hand-weighted network, checked against values worked out on paper.

See tests/tiny.py for the network: golden logits [6.5, 6.0], class 0.
"""
from __future__ import annotations

import math
import struct

import pytest
import torch

from kernelfi.faults.memmap import MemoryMap
from kernelfi.types import Fault, Site
from tests.tiny import launch, rf_site, rf_site_of, run_full, site, tiny_program


def f32(bits: int) -> float:
    return struct.unpack("<f", struct.pack("<I", bits))[0]


def probs(logits: list[float]) -> torch.Tensor:
    t = torch.tensor(logits, dtype=torch.float64)
    return torch.softmax(t, 0).float()


@pytest.fixture(scope="module")
def prog():
    return tiny_program()


def one(prog, fault: Fault) -> dict:
    return run_full(prog, [fault])[0]


def test_golden_is_worked_out(prog) -> None:
    from tests.tiny import tiny_input
    lg, pr = prog.forward(tiny_input())
    assert lg[0].tolist() == [6.5, 6.0]
    assert torch.allclose(pr[0], probs([6.5, 6.0]), atol=1e-7)


def test_gemm_partial_sum_exponent_flip_is_malfunction(prog) -> None:
    # pixel 5 (x = 6): the centre tap is reduction step 4; its partial sum is 6.0 (steps 0-3 are 0*x).
    # 6.0 = 0x40C00000; flipping bit 30 gives 0x00C00000; the remaining steps add 0, the bias 0.5
    # follows: conv out[5] = 1.76e-38 + 0.5 = 0.5, so the window [1.5, 2.5, 5.5, 0.5] pools to 5.5,
    # logits [5.5, 6.0]: class 1 -> Malfunction.
    # The SGEMM (M = 1 filter, N = 16 pixels: the 64 tile, K = 9: 2 K blocks, 16 steps): output
    # (row 0, column 5) is thread 2's (x0 = 4*((2>>1)&7) = 4, column x0+1 = its column slot 1;
    # y0 = 4*((((2>>4)&3)<<1)|(2&1)) = 0, row slot 0): output o = 0*8 + 1, its FFMA at step 4 is
    # execution 4*64 + 1 of 64*16. The accumulator starts at 0 and C (0, the fill) is added at
    # the end: the same 6.0 partial sum, the same 0.5.
    s = site(prog, "layers.0.gemm", "ffma:acc", thread=2, exec_=4 * 64 + 1, calls=64 * 16)
    out = one(prog, Fault("iov", s, "single", (30,)))
    r = out["result"]
    assert r.outcome == "sdc_malfunction"
    assert r.original == 6.0 and r.corrupted == f32(0x00C00000)
    assert (r.golden_top1, r.faulty_top1) == (0, 1)
    assert torch.allclose(out["probs"], probs([5.5, 6.0]), atol=1e-7)
    assert r.propagation[0].layer == 0 and r.propagation[0].corrupted == 1
    assert r.propagation[0].max_abs == pytest.approx(6.0)


def test_im2col_entry_under_zero_weight_is_no_malfunction(prog) -> None:
    # column entry of pixel 5 at tap 0 (x[0][0] = 1) is multiplied by weight 0: the im2col output
    # is corrupted (SDC) but the GEMM masks it -> No-Malfunction, never Masked.
    s = site(prog, "layers.0.im2col", "sel:value", thread=5, exec_=0, calls=9)
    r = one(prog, Fault("iov", s, "single", (0,)))["result"]
    assert r.outcome == "sdc_no_malfunction"
    assert r.original == 1.0 and r.corrupted == f32(0x3F800001)


def test_fill_value_is_accumulated_by_gemm(prog) -> None:
    # fill writes 0 to out[5]; bit 30 of 0.0 -> 2.0; the GEMM adds 6, the bias 0.5: 8.5, so the
    # first window pools 8.5 and the logits become [8.5, 6.0]: same class, other probabilities.
    s = site(prog, "layers.0.fill", "mov:value", thread=5)
    out = one(prog, Fault("iov", s, "single", (30,)))
    assert out["result"].outcome == "sdc_light_malfunction"
    assert out["result"].corrupted == 2.0
    assert torch.allclose(out["probs"], probs([8.5, 6.0]), atol=1e-7)


def test_add_bias_output_sign_flip(prog) -> None:
    # out[5] = 6 + 0.5 = 6.5 -> bit 31 -> -6.5: window [1.5, 2.5, 5.5, -6.5] pools 5.5 -> class 1.
    s = site(prog, "layers.0.add_bias", "fadd:out", thread=5)
    out = one(prog, Fault("iov", s, "single", (31,)))
    assert out["result"].outcome == "sdc_malfunction"
    assert out["result"].corrupted == -6.5
    assert torch.allclose(out["probs"], probs([5.5, 6.0]), atol=1e-7)


def test_maxpool_compare_flip_keeps_smaller_max(prog) -> None:
    # output 0 scans x+0.5 = 1.5, 2.5, 5.5, 6.5; the 4th compare (6.5 > 5.5) flipped keeps 5.5.
    s = site(prog, "layers.1.forward_maxpool", "setp:gt", thread=0, exec_=3, calls=4)
    out = one(prog, Fault("iov", s, "single", (0,)))
    assert out["result"].outcome == "sdc_malfunction"
    assert torch.allclose(out["probs"], probs([5.5, 6.0]), atol=1e-7)


def test_softmax_sum_exponent_flip_is_nonfinite(prog) -> None:
    # largest = (float)(int)6.5 = 6; e0 = exp(0.5), e1 = exp(0); the final sum e0 + e1 = 2.6487...
    # has exponent 0x80: bit 30 is set, flipping it gives exponent 0 -> a tiny sum: e/sum overflows
    # to inf: non-finite output -> Malfunction, flagged.
    s = site(prog, "layers.3.softmax", "fadd:sum", thread=0, exec_=1, calls=2)
    out = one(prog, Fault("iov", s, "single", (30,)))
    r = out["result"]
    assert r.outcome == "sdc_malfunction" and "nonfinite" in r.flags
    assert r.original == pytest.approx(math.exp(0.5) + 1.0, rel=1e-6)
    assert not torch.isfinite(out["probs"]).all()


def test_ioa_store_lands_in_next_layer_bias(prog) -> None:
    # add_bias of element 0 (1 + 0.5) stored through an address with one bit flipped so that it
    # lands on layer 2's bias[0]: out[0] keeps its stale 1.0 (not in the max), bias[0] becomes 1.5:
    # logits [6.5 + 1.5, 6] = [8, 6] -> Light-Malfunction.
    l = launch(prog, "layers.0.add_bias")
    mm = MemoryMap.from_trace(prog.trace)
    a = mm.address("layers.0.output", 0)
    target = mm.address("layers.2.biases", 0)
    bit = (a ^ target).bit_length() - 1
    assert a ^ (1 << bit) == target, "layout changed: no single-bit path"
    s = site(prog, "layers.0.add_bias", "st:out", thread=0)
    out = one(prog, Fault("ioa", s, "single", (bit,)))
    assert out["result"].outcome == "sdc_light_malfunction"
    assert torch.allclose(out["probs"], probs([8.0, 6.0]), atol=1e-7)


def test_ioa_illegal_address_is_due(prog) -> None:
    s = site(prog, "layers.0.add_bias", "ld:bias", thread=3)
    r = one(prog, Fault("ioa", s, "single", (31,)))["result"]
    assert r.outcome == "due" and "crash" in r.flags


def test_rf_loop_counter_sign_flip_hangs(prog) -> None:
    s = rf_site(prog, "layers.1.forward_maxpool", "loop_counter", thread=1)
    r = one(prog, Fault("rf", s, "single", (31,)))["result"]
    assert r.outcome == "due" and "hang" in r.flags


def test_rf_dead_register_is_masked(prog) -> None:
    l = launch(prog, "layers.0.add_bias")
    from kernelfi.faults.registers import rf_registers
    unused = len(rf_registers(l).registers)  # allocated but holding nothing
    s = Site(l.index, "GPR", 2, 0, 0, register=unused)
    r = one(prog, Fault("rf", s, "single", (3,)))["result"]
    assert r.outcome == "masked"


def test_bit_model_none_is_masked_everywhere(prog) -> None:
    for l in prog.trace.launches:
        s = Site(l.index, l.template.slots[0].group, 0, 0, 0)
        assert one(prog, Fault("iov", s, "none"))["result"].outcome == "masked", l.name


def test_misdirected_store_keeps_its_bits_across_buffer_types() -> None:
    import torch as _t
    from kernelfi.faults.bits import f32_bits
    from kernelfi.faults.inject import _as_dtype
    assert _as_dtype(float("inf"), _t.int32) == 0x7F800000
    assert _as_dtype(-2.0, _t.int32) == f32_bits(-2.0) - (1 << 32)
    assert _as_dtype(0x3F800000, _t.float32) == 1.0
    assert _as_dtype(7, _t.int32) == 7 and _as_dtype(1.5, _t.float32) == 1.5
    # a 32-bit register holds only the low 32 bits of an index computed past int32
    assert _as_dtype((1 << 40) + 7, _t.int32) == 7 and _as_dtype((1 << 31) + 1, _t.int32) == -(1 << 31) + 1


def test_maxpool_window_index_flip_stores_minus_inf_over_the_argmax(prog) -> None:
    # Issue 17 (IOV, digits-alexnet seed 11 injection 1363 crashed with OverflowError): bit 6 of
    # thread 0's column j = idx % ow (imod:ow) gives j = 64, so out_index = 64 and the window
    # starts at column 128: every tap is outside the 4x4 map, the max stays -inf, the argmax -1.
    # layers.1.output (4 floats) is padded to 256 bytes, so out[64] is layers.1.indexes[0] and
    # indexes[64] is layers.2.weights[0]. The thread leaves: out[0] its stale content (not written before
    # in this inference, it reads back as the kernel's clean output, 6.5), indexes[0] the word of
    # -inf (0xFF800000 as int32) instead of the argmax 5, and layers.2.weights[0] the word of -1
    # (0xFFFFFFFF: a NaN). The NaN weight makes logit 0 NaN: Malfunction, non-finite.
    from kernelfi.faults.inject import LaneEffect, fault_writes
    from tests.tiny import tiny_input
    s = site(prog, "layers.1.forward_maxpool", "imod:ow", thread=0)
    fault = Fault("iov", s, "single", (6,))
    l = launch(prog, "layers.1.forward_maxpool")
    mem = {"layers.0.output": tiny_input() + 0.5}
    for b in prog.trace.buffers:
        if b.kind == "weight":
            mem[b.name] = torch.zeros(b.shape)
    before = {n: mem[n] for n in set(l.reads) | set(l.writes) if n in mem}  # as the engine's override
    from kernelfi.kernels import get_kernel
    get_kernel(l.kernel).run(mem, l)
    assert mem["layers.1.indexes"].reshape(-1)[0].item() == 5
    eff = LaneEffect(golden_lane=0)
    writes = fault_writes(l, mem, before, 0, fault, eff, MemoryMap.from_trace(prog.trace),
                          lambda n, t: t.dim() == 4)
    assert eff.due is None and eff.tag == "imod:ow"
    assert [(b, i) for b, i, _ in writes] == [("layers.1.indexes", 0), ("layers.1.output", 0),
                                              ("layers.2.weights", 0)]
    vals = {b: v for b, _, v in writes}
    assert vals["layers.1.indexes"] == f32_bits_signed(0xFF800000) and vals["layers.1.output"] == 6.5
    assert math.isnan(vals["layers.2.weights"])
    r = one(prog, fault)["result"]
    assert r.outcome == "sdc_malfunction" and "nonfinite" in r.flags
    assert (r.original, r.corrupted) == (0.0, 64.0)


def f32_bits_signed(u: int) -> int:
    return u - (1 << 32) if u >= 1 << 31 else u


def _address_register(prog, launch_name: str, tag: str, half) -> int:
    from kernelfi.faults.registers import rf_registers
    regs = rf_registers(launch(prog, launch_name)).registers
    return next(i for i, r in enumerate(regs) if r.tag == tag and r.half == half)


def test_rf_flip_in_each_half_of_an_address_register(prog) -> None:
    """The register map says which word of the bias pointer a register holds. Bit 2 of the low
    word moves the load 4 bytes on, into the alignment padding after the one-element bias
    (reads 0): out[5] = 6 + 0 = 6, the window [1.5, 2.5, 5.5, 6] pools 6, logits [6, 6]: a tie
    keeps class 0 -> Light-Malfunction. Bit 2 of the high word moves it 2**34 bytes on, past
    every allocation: illegal address -> DUE."""
    from kernelfi.types import AddressHalf

    name, tag = "layers.0.add_bias", "lea:addr_bias"
    for half, want in ((AddressHalf.LOW, "sdc_light_malfunction"), (AddressHalf.HIGH, "due")):
        reg = _address_register(prog, name, tag, half)
        s = rf_site_of(prog, name, reg, thread=5)
        out = one(prog, Fault("rf", s, "single", (2,)))
        assert out["result"].outcome == want, half
        if half == AddressHalf.LOW:
            assert torch.allclose(out["probs"], probs([6.0, 6.0]), atol=1e-7)
        else:
            assert "illegal_address" in out["result"].flags


def test_iov_flip_in_each_half_of_an_address_computation(prog) -> None:
    """``lea:addr_bias`` computes the 64-bit bias pointer in two instructions (the slot says
    ``halves``): the first writes the low word, the second the high word. The same flips as
    above: bit 2 of the low word reads the padding (Light-Malfunction), of the high word an
    illegal address (DUE)."""
    import dataclasses

    s = site(prog, "layers.0.add_bias", "lea:addr_bias", thread=5)
    assert launch(prog, "layers.0.add_bias").template.slots[s.slot].halves
    low = one(prog, Fault("iov", s, "single", (2,)))
    high = one(prog, Fault("iov", dataclasses.replace(s, iteration=1), "single", (2,)))
    assert low["result"].outcome == "sdc_light_malfunction"
    assert torch.allclose(low["probs"], probs([6.0, 6.0]), atol=1e-7)
    assert high["result"].outcome == "due" and "illegal_address" in high["result"].flags


def test_index_arithmetic_wraps_at_32_bits_as_the_gpu_s(prog) -> None:
    # Thread 0 of the max-pool: q = idx / ow (idiv:ow) is 0; bit 31 makes it -2**31. The column
    # j = idx - q*ow = 2**32 is 0 in a 32-bit register, so the window starts at column 0 as it
    # should; the row and channel come out as before (i = 0, k = 0) and the output index
    # j + ow*(i + oh*(k + channels*b)) = 0 - 2**32 is 0 again: the fault is Masked on a GPU.
    # With unbounded integers the window started at column 2**33: every tap invalid, the max
    # -inf, a non-finite Malfunction.
    s = site(prog, "layers.1.forward_maxpool", "idiv:ow", thread=0)
    r = one(prog, Fault("iov", s, "single", (31,)))["result"]
    assert (r.original, r.corrupted) == (0.0, -2.0 ** 31)
    assert r.outcome == "masked"


def test_integer_division_truncates_toward_zero_as_in_cuda() -> None:
    from kernelfi._utils import c_div
    assert [c_div(-1, 2), c_div(-7, 2), c_div(7, -2), c_div(7, 2), c_div(-8, 2)] == [0, -3, -3, 3, -4]
