"""``activate_array_kernel`` (activation_kernels.cu): x[i] = activate_kernel(x[i], a).

Darknet's device activations computed operation for operation in float32, which is why ReLU is
spelled ``x * (x > 0)``: Darknet's ReLU turns -2 into -0.0, keeps NaN and turns -inf into NaN,
and a fault that produces any of these must propagate exactly as on the GPU.
"""
from __future__ import annotations

from typing import Any, ClassVar, Mapping

import torch

from kernelfi._utils import KernelfiError
from kernelfi.types import AddressHalf, Launch

from ._base import f32, p_int, put, ptxas_registers, register_kernel
from ._sass import Stream, StreamKernel, addr, epilogue, fdiv, fexp, prologue_1d
from .elementwise import update_head

Mem = dict[str, torch.Tensor]

ACTIVATIONS: tuple[str, ...] = ("linear", "relu", "leaky", "logistic")


def _activation(params: Mapping[str, Any]) -> str:
    a = str(params.get("activation", "linear")).lower()
    if a not in ACTIVATIONS:
        raise KernelfiError(f"activate_array: unknown activation '{a}' (known: {', '.join(ACTIVATIONS)})")
    return a


def activate(x: torch.Tensor, activation: str) -> torch.Tensor:
    """Darknet's device activation functions in float32, operation for operation."""
    if activation == "linear":
        return x.clone()
    if activation == "relu":       # x*(x>0): -2 -> -0.0, NaN stays NaN, -inf -> NaN
        return x * (x > 0).to(x.dtype)
    if activation == "leaky":      # (x>0) ? x : .1f*x
        return torch.where(x > 0, x, x * f32(0.1, x))
    if activation == "logistic":   # 1.f/(1.f + expf(-x))
        one = f32(1.0, x)
        return one / (one + torch.exp(-x))
    raise KernelfiError(f"activate_array: unknown activation '{activation}' (known: {', '.join(ACTIVATIONS)})")


@register_kernel
class ActivateArrayKernel(StreamKernel):
    """``activate_array_kernel``: x[i] = activate_kernel(x[i], a), one thread per element.

    ``activate_kernel`` is a runtime switch over Darknet's activations: one compiled kernel, so
    the register allocation is the same for every activation; the instructions differ.
    """

    name: ClassVar[str] = "activate_array"
    regs_allocated: ClassVar[int] = ptxas_registers("activate_array")
    example_params = tuple({"n": 1, "activation": a} for a in ACTIVATIONS)

    def run(self, mem: Mem, launch: Launch) -> None:
        n = p_int(launch.params, "n", self.name)
        a = _activation(launch.params)
        out = launch.reads[0] if launch.reads else launch.writes[0]
        update_head(mem, out, n, self.name, lambda x: activate(x, a))
        if launch.writes and launch.writes[0] != out:
            lanes = mem[out].shape[0]
            put(mem, launch.writes[0], mem[out].reshape(lanes, -1).clone())

    def _threads(self, params: Mapping[str, Any]) -> int:
        return p_int(params, "n", self.name)

    def _stream(self, params: Mapping[str, Any]) -> Stream:
        a = _activation(params)
        s = Stream()
        prologue_1d(s, "element i")
        addr(s, "x", "x[i]")
        s.add("LD", "LDG", "ld:x", 1, "value", "the element before activation")
        s.add("PR", "ISETP", "setp:act_switch", 1, "predicate",
              "range test of the switch on the activation: a flip takes the default case, output 0")
        s.add("NODEST", "BRX", "bra:act_switch", 2, "control", "default-case branch and jump-table branch")
        last = "ld:x"
        if a == "relu":
            s.add("FP32", "FSET", "fset:relu_mask", 1, "value", "(x > 0) as 1.0f or 0.0f")
            s.add("FP32", "FMUL", "fmul:out", 1, "value", "x * (x > 0), the output")
            last = "fmul:out"
        elif a == "leaky":
            s.add("FP32", "FMUL", "fmul:leak", 1, "value", ".1f * x (the output when x <= 0)")
            s.add("FP32", "FCMP", "fcmp:out", 1, "value", "(x > 0) ? x : .1f*x, the output")
            last = "fcmp:out"
        elif a == "logistic":
            fexp(s, "neg_x", "-x")
            s.add("FP32", "FADD", "fadd:denom", 1, "value", "1 + exp(-x)")
            fdiv(s, "out", "1 / (1 + exp(-x)), the output")
            last = "ffma:fdiv_out"
        s.add("NODEST", "STG", "st:x", 1, "store", "stores the activated element in place")
        epilogue(s)
        s.reg("r_id", "index", "imad:index", "imad:index", "lea:addr_x")
        s.reg("r_x_lo", "address", "lea:addr_x", "lea:addr_x", "st:x")
        s.reg("r_x_hi", "address", "lea:addr_x", "lea:addr_x", "st:x", half=AddressHalf.HIGH)
        s.reg("r_x", "data", "ld:x", "ld:x", last if a != "linear" else "st:x")
        if a != "linear":
            s.reg("r_out", "data", last, last, "st:x")
        if a == "logistic":
            s.reg("r_exp", "data", "mufu:exp_neg_x", "mufu:exp_neg_x", "fadd:denom")
            s.reg("r_denom", "data", "fadd:denom", "fadd:denom", "ffma:fdiv_out")
            s.reg("p_fdiv", "predicate", "setp:fdiv_out", "setp:fdiv_out", "bra:fdiv_out")
        if a == "leaky":
            s.reg("r_leak", "data", "fmul:leak", "fmul:leak", "fcmp:out")
        if a == "relu":
            s.reg("r_mask", "data", "fset:relu_mask", "fset:relu_mask", "fmul:out")
        s.reg("p_bounds", "predicate", "setp:bounds", "setp:bounds", "bra:exit")
        s.reg("p_switch", "predicate", "setp:act_switch", "setp:act_switch", "bra:act_switch")
        return s
