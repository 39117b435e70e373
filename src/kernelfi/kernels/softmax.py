"""``softmax_kernel`` / ``softmax_device`` (blas_kernels.cu): one thread per inference walks
the n scores three times: largest, exponentials and their sum, division.

Darknet's ``softmax_device`` keeps the running largest through an ``int``
(``int val = input[i]``): each score is truncated toward zero (saturating, NaN -> 0 on the GPU)
before the comparison, so ``largest`` is an integer-valued float. Softmax is shift-invariant,
so fault-free results barely notice, but a corrupted huge score saturates at 2^31 instead of
becoming the shift, which decides whether the output overflows to inf/NaN. ``run`` keeps it.
"""
from __future__ import annotations

from typing import Any, ClassVar, Mapping

import torch

from kernelfi.types import AddressHalf, Launch

from ._base import f32, lane_flat, p_int, put, ptxas_registers, register_kernel, seq_sum
from ._sass import Stream, StreamKernel, addr, epilogue, fdiv, fexp, loop, prologue_1d

Mem = dict[str, torch.Tensor]

_INT_MIN, _INT_MAX = -2.0 ** 31, 2.0 ** 31 - 1


def darknet_largest(x: torch.Tensor) -> torch.Tensor:
    """max over the last dim of ``(float)(int)x`` as CUDA converts: truncate, saturate, NaN -> 0."""
    t = torch.where(torch.isnan(x), torch.zeros_like(x), torch.trunc(x))
    t = t.clamp(_INT_MIN, _INT_MAX)   # in float32 INT_MAX rounds to 2^31, as I2F of it does
    return t.max(dim=-1).values


@register_kernel
class SoftmaxKernel(StreamKernel):
    """``softmax_kernel`` launched with one group per inference (cuda_gridsize(batch*groups))."""

    name: ClassVar[str] = "softmax"
    regs_allocated: ClassVar[int] = ptxas_registers("softmax")
    example_params = ({"n": 2, "temperature": 1.0},)

    def run(self, mem: Mem, launch: Launch) -> None:
        n = p_int(launch.params, "n", self.name)
        temp = float(launch.params.get("temperature", 1.0))
        x = lane_flat(mem, launch.reads[0], n, self.name)[:, :n]
        t = f32(temp, x)
        largest = darknet_largest(x).unsqueeze(-1)
        e = torch.exp(x / t - largest / t)
        total = seq_sum(e).unsqueeze(-1)
        put(mem, launch.writes[0], e / total, natural=(n,))

    def _threads(self, params: Mapping[str, Any]) -> int:
        return 1

    def _stream(self, params: Mapping[str, Any]) -> Stream:
        n = p_int(params, "n", self.name)
        s = Stream()
        prologue_1d(s, "inference b")
        s.add("GPR", "XMAD", "imad:offset", 3, "index", "b*batch_offset + g*group_offset: which score vector")
        addr(s, "in", "input + offset")
        addr(s, "out", "output + offset")
        s.add("GPR", "MOV", "mov:largest_init", 1, "value", "largest = -INFINITY")
        s.add("GPR", "MOV", "mov:sum_init", 1, "value", "sum = 0")
        # pass 1: largest
        s.begin_loop(n)
        s.add("LD", "LDG", "ld:in_max", n, "value", "input[i] read for the largest")
        s.add("OTHERS", "F2I", "cvt:trunc", n, "value", "int val = input[i] (truncation, saturating)")
        s.add("OTHERS", "I2F", "cvt:itof", n, "value", "val converted back to float for the compare")
        s.add("PR", "FSETP", "setp:gt_largest", n, "predicate", "val > largest: a flip keeps or takes the wrong max")
        s.add("GPR", "SEL", "sel:largest", n, "value", "largest = (val > largest) ? val : largest (the max)")
        s.add("GPR", "IADD", "iadd:addr_max", 2 * n, "address", "input pointer of pass 1", halves=True)
        loop(s, "max", "i of pass 1 (largest)", n)
        s.end_loop()
        fdiv(s, "largest", "largest/temp (hoisted)")
        # pass 2: exponentials and their sum
        s.begin_loop(n)
        s.add("LD", "LDG", "ld:in_exp", n, "value", "input[i] read for the exponential")
        fdiv(s, "scaled", "input[i]/temp", count=n)
        s.add("FP32", "FADD", "fadd:shifted", n, "value", "input[i]/temp - largest/temp")
        fexp(s, "shifted", "the shifted score", count=n)
        s.add("FP32", "FADD", "fadd:sum", n, "value", "sum += e: one partial sum; the sum continues from it")
        s.add("NODEST", "STG", "st:exp", n, "store", "output[i] = e")
        s.add("GPR", "IADD", "iadd:addr_exp", 4 * n, "address", "input and output pointers of pass 2", halves=True)
        loop(s, "exp", "i of pass 2 (exponentials)", n)
        s.end_loop()
        # pass 3: normalise
        s.begin_loop(n)
        s.add("LD", "LDG", "ld:exp", n, "value", "output[i] (= e) read back for the division")
        fdiv(s, "out", "output[i] / sum, one probability", count=n)
        s.add("NODEST", "STG", "st:out", n, "store", "stores one probability")
        s.add("GPR", "IADD", "iadd:addr_norm", 2 * n, "address", "output pointer of pass 3", halves=True)
        loop(s, "norm", "i of pass 3 (division)", n)
        s.end_loop()
        epilogue(s)
        s.reg("r_id", "index", "imad:index", "imad:index", "imad:offset")
        s.reg("r_offset", "index", "imad:offset", "imad:offset", "lea:addr_out")
        s.reg("r_in_lo", "address", "lea:addr_in", "lea:addr_in", "iadd:addr_exp")
        s.reg("r_in_hi", "address", "lea:addr_in", "lea:addr_in", "iadd:addr_exp", half=AddressHalf.HIGH)
        s.reg("r_out_lo", "address", "lea:addr_out", "lea:addr_out", "iadd:addr_norm")
        s.reg("r_out_hi", "address", "lea:addr_out", "lea:addr_out", "iadd:addr_norm", half=AddressHalf.HIGH)
        s.reg("r_ptr_lo", "address", "iadd:addr_max", "lea:addr_out", "iadd:addr_norm")
        s.reg("r_ptr_hi", "address", "iadd:addr_max", "lea:addr_out", "iadd:addr_norm", half=AddressHalf.HIGH)
        s.reg("r_largest", "accumulator", "sel:largest", "mov:largest_init", "ffma:fdiv_largest")
        s.reg("r_shift", "data", "ffma:fdiv_largest", "ffma:fdiv_largest", "fadd:shifted")
        s.reg("r_sum", "accumulator", "fadd:sum", "mov:sum_init", "ffma:fdiv_out")
        s.reg("r_x", "data", "ld:in_max", "ld:in_max", "sel:largest")
        s.reg("r_val", "data", "cvt:itof", "cvt:itof", "sel:largest")
        s.reg("r_e", "data", "mufu:exp_shifted", "mufu:exp_shifted", "st:exp")
        s.reg("r_q", "data", "ffma:fdiv_out", "ffma:fdiv_out", "st:out")
        s.reg("r_i", "loop_counter", "loop:max", "mov:sum_init", "setp:loop_norm")
        s.reg("r_n", "constant", "imad:offset", "imad:offset", "setp:loop_norm")
        s.reg("r_temp", "constant", "imad:offset", "imad:offset", "ffma:fdiv_scaled")
        s.reg("p_bounds", "predicate", "setp:bounds", "setp:bounds", "bra:exit")
        s.reg("p_gt", "predicate", "setp:gt_largest", "setp:gt_largest", "sel:largest")
        s.reg("p_loop", "predicate", "setp:loop_max", "setp:loop_max", "bra:loop_norm")
        s.reg("p_fdiv", "predicate", "setp:fdiv_scaled", "setp:fdiv_largest", "bra:fdiv_out")
        return s
