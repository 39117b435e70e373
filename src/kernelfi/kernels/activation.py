"""``activate_array_kernel`` (activation_kernels.cu): x[i] = activate_kernel(x[i], a).

Darknet's device activations computed operation for operation in float32, which is why ReLU is
spelled ``x * (x > 0)``: Darknet's ReLU turns -2 into -0.0, keeps NaN and turns -inf into NaN,
and a fault that produces any of these must propagate exactly as on the GPU.

Beyond the original four, the cases of AlexeyAB's Darknet (the maintained fork) where it has
one: ``relu6`` (``min_val_cmp(max_val_cmp(x, 0), 6)``), ``tanh`` (``2/(1 + expf(-2x)) - 1``),
``swish`` (``x * logistic(x)``, AlexeyAB's ``activate_array_swish_kernel``, whose extra store
of the sigmoid for training is not modelled), ``leaky`` with any slope (Darknet's own is .1f;
another is PyTorch's ``leaky_relu`` kernel, ``x > 0 ? x : x*slope``); and PyTorch's CUDA
element kernels where Darknet has none: ``gelu`` (``x*0.5*(1 + erf(x*M_SQRT1_2))``),
``gelu_tanh`` (``GELU(approximate='tanh')``: ``0.5*x*(1 + tanh(sqrt(2/pi)*(x + 0.044715*x^3)))``,
its ``x + k*x^3`` one FFMA as nvcc contracts it),
``mish`` (PyTorch's ``mish`` kernel, ``x * tanh(log1p(exp(x)))``),
``elu``, ``selu``, ``celu`` (PyTorch's ``elu`` kernel, ``x > 0 ? x*scale : expm1(x*input_scale)*alpha*scale``:
ELU and CELU take alpha in ``slope``),
``softplus`` (PyTorch's ``softplus`` kernel, ``x*beta > threshold ? x : log1p(exp(x*beta))/beta``:
beta in ``slope``, the launch's ``threshold``),
``hardswish`` (``x*min(max(x + 3, 0), 6)*(1/6)``) and ``hardsigmoid``
(``min(max(x + 3, 0), 6)*(1/6)``), all one thread per element like Darknet's kernel.
"""
from __future__ import annotations

from typing import Any, ClassVar, Mapping

import torch

from kernelfi._utils import KernelfiError
from kernelfi.types import AddressHalf, Launch

from ._base import f32, fma_f32, p_int, put, ptxas_registers, register_kernel
from ._sass import Stream, StreamKernel, addr, epilogue, fdiv, ferf, fexp, fexpm1, flog1p, ftanh, prologue_1d
from .elementwise import update_head

Mem = dict[str, torch.Tensor]

ACTIVATIONS: tuple[str, ...] = ("linear", "relu", "leaky", "logistic", "relu6", "tanh", "swish", "gelu",
                                 "hardswish", "hardsigmoid", "gelu_tanh", "mish", "elu", "selu", "celu", "softplus")
#: PyTorch's GELU tanh constants as float (opmath) constants: kBeta = M_SQRT2*M_2_SQRTPI*0.5
#: (sqrt(2/pi)) and kKappa = 0.044715.
GELU_BETA = 0.7978845608028654
GELU_KAPPA = 0.044715
#: SELU's alpha and scale (torch.nn.functional.selu's constants).
SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946
#: The activations of PyTorch's elu kernel (ELU, SELU, CELU), whose alpha is the launch's ``slope``.
ELU_FAMILY = ("elu", "selu", "celu")
#: Softplus's default threshold (the launch's ``threshold`` when it has none).
SOFTPLUS_THRESHOLD = 20.0
#: Darknet's leaky slope (``.1f``); a launch whose ``slope`` differs is PyTorch's leaky_relu.
LEAKY_SLOPE = 0.1


def _activation(params: Mapping[str, Any]) -> str:
    a = str(params.get("activation", "linear")).lower()
    if a not in ACTIVATIONS:
        raise KernelfiError(f"activate_array: unknown activation '{a}' (known: {', '.join(ACTIVATIONS)})")
    return a


def slope_of(params: Mapping[str, Any]) -> float:
    """The leaky slope of an activate_array launch (Darknet's .1f unless it says otherwise)."""
    return float(params.get("slope", LEAKY_SLOPE))


def elu_coefs(activation: str, alpha: float) -> tuple[float, float, float]:
    """PyTorch's elu kernel's float (opmath) coefficients ``(poscoef, negiptcoef, negcoef)``, as
    the host computes them: ``scale``, ``input_scale``, ``float(alpha)*float(scale)``. ELU:
    (1, 1, alpha); SELU: its constants; CELU: (1, 1/alpha in double, alpha)."""
    def f(v: float) -> float:
        return torch.tensor(v, dtype=torch.float32).item()
    if activation == "selu":
        return f(SELU_SCALE), 1.0, f(f(SELU_ALPHA) * f(SELU_SCALE))
    if activation == "celu":
        return 1.0, f(1.0 / alpha), f(alpha)
    return 1.0, 1.0, f(alpha)


def threshold_of(params: Mapping[str, Any]) -> float:
    """The softplus threshold of an activate_array launch (PyTorch's 20 unless it says otherwise)."""
    return float(params.get("threshold", SOFTPLUS_THRESHOLD))


def _clamp6(y: torch.Tensor) -> torch.Tensor:
    """PyTorch's ``min(max(y, 0), 6)`` on the device: fmaxf/fminf, so NaN gives 0."""
    return torch.fmin(torch.fmax(y, f32(0.0, y)), f32(6.0, y))


def activate(x: torch.Tensor, activation: str, slope: float = LEAKY_SLOPE,
             threshold: float = SOFTPLUS_THRESHOLD) -> torch.Tensor:
    """Darknet's (or PyTorch's) device activation functions in float32, operation for operation."""
    if activation == "linear":
        return x.clone()
    if activation == "relu":       # x*(x>0): -2 -> -0.0, NaN stays NaN, -inf -> NaN
        return x * (x > 0).to(x.dtype)
    if activation == "leaky":      # (x>0) ? x : .1f*x
        return torch.where(x > 0, x, x * f32(slope, x))
    if activation == "logistic":   # 1.f/(1.f + expf(-x))
        one = f32(1.0, x)
        return one / (one + torch.exp(-x))
    if activation == "relu6":      # min_val_cmp(max_val_cmp(x, 0), 6): (a > b) ? a : b, (a < b) ? a : b
        low = torch.where(x > 0, x, f32(0.0, x))
        return torch.where(low < 6, low, f32(6.0, x))
    if activation == "tanh":       # 2.f/(1 + expf(-2*x)) - 1
        return f32(2.0, x) / (f32(1.0, x) + torch.exp(x * f32(-2.0, x))) - f32(1.0, x)
    if activation == "swish":      # x * (1.f/(1.f + expf(-x)))
        one = f32(1.0, x)
        return x * (one / (one + torch.exp(-x)))
    if activation == "gelu":       # (x*0.5) * (1 + erf(x*M_SQRT1_2))
        return (x * f32(0.5, x)) * (f32(1.0, x) + torch.erf(x * f32(0.7071067811865476, x)))
    if activation == "gelu_tanh":  # (0.5*x) * (1 + tanh(kBeta * fma(kKappa, x*x*x, x)))
        inner = fma_f32(x * x * x, f32(GELU_KAPPA, x), x)
        return (x * f32(0.5, x)) * (f32(1.0, x) + torch.tanh(inner * f32(GELU_BETA, x)))
    if activation == "mish":       # x * tanh(log1p(exp(x))), PyTorch's CUDA and CPU formula
        return x * torch.tanh(torch.log1p(torch.exp(x)))
    if activation in ELU_FAMILY:   # x > 0 ? x*poscoef : expm1(x*negiptcoef)*negcoef
        pos, ipt, neg = elu_coefs(activation, slope)
        return torch.where(x > 0, x * f32(pos, x), torch.expm1(x * f32(ipt, x)) * f32(neg, x))
    if activation == "softplus":   # (x*beta) > threshold ? x : log1p(exp(x*beta)) / beta
        bx = x * f32(slope, x)
        return torch.where(bx > f32(threshold, x), x, torch.log1p(torch.exp(bx)) / f32(slope, x))
    if activation == "hardswish":  # x * min(max(x + 3, 0), 6) * one_sixth
        return (x * _clamp6(x + f32(3.0, x))) * f32(1.0 / 6.0, x)
    if activation == "hardsigmoid":  # min(max(x + 3, 0), 6) * one_sixth
        return _clamp6(x + f32(3.0, x)) * f32(1.0 / 6.0, x)
    raise KernelfiError(f"activate_array: unknown activation '{activation}' (known: {', '.join(ACTIVATIONS)})")


@register_kernel
class ActivateArrayKernel(StreamKernel):
    """``activate_array_kernel``: x[i] = activate_kernel(x[i], a), one thread per element.

    ``activate_kernel`` is a runtime switch over Darknet's activations: one compiled kernel, so
    the register allocation is the same for every activation; the instructions differ.
    """

    name: ClassVar[str] = "activate_array"
    regs_allocated: ClassVar[int] = ptxas_registers("activate_array")
    #: two elements for the elu family, whose x <= 0 path only a zero or negative element takes
    example_params = tuple({"n": 2 if a in ELU_FAMILY else 1, "activation": a} for a in ACTIVATIONS)

    def run(self, mem: Mem, launch: Launch) -> None:
        n = p_int(launch.params, "n", self.name)
        a = _activation(launch.params)
        slope, threshold = slope_of(launch.params), threshold_of(launch.params)
        out = launch.reads[0] if launch.reads else launch.writes[0]
        update_head(mem, out, n, self.name, lambda x: activate(x, a, slope, threshold))
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
            s.add("FP32", "FMUL", "fmul:leak", 1, "value", "slope * x (the output when x <= 0)")
            s.add("FP32", "FCMP", "fcmp:out", 1, "value", "(x > 0) ? x : slope*x, the output")
            last = "fcmp:out"
        elif a in ("logistic", "swish"):
            fexp(s, "neg_x", "-x")
            s.add("FP32", "FADD", "fadd:denom", 1, "value", "1 + exp(-x)")
            if a == "logistic":
                fdiv(s, "out", "1 / (1 + exp(-x)), the output")
                last = "ffma:fdiv_out"
            else:
                fdiv(s, "sig", "1 / (1 + exp(-x)), the sigmoid")
                s.add("FP32", "FMUL", "fmul:swish", 1, "value", "x * sigmoid(x), the output")
                last = "fmul:swish"
        elif a == "relu6":
            s.add("FP32", "FCMP", "fcmp:relu6_low", 1, "value", "(x > 0) ? x : 0")
            s.add("FP32", "FCMP", "fcmp:relu6_out", 1, "value", "(y < 6) ? y : 6, the output")
            last = "fcmp:relu6_out"
        elif a == "tanh":
            s.add("FP32", "FMUL", "fmul:tanh_2x", 1, "value", "-2 * x")
            fexp(s, "tanh", "-2x")
            s.add("FP32", "FADD", "fadd:tanh_denom", 1, "value", "1 + exp(-2x)")
            fdiv(s, "tanh", "2 / (1 + exp(-2x))")
            s.add("FP32", "FADD", "fadd:tanh_out", 1, "value", "2/(1 + exp(-2x)) - 1, the output")
            last = "fadd:tanh_out"
        elif a == "gelu":
            s.add("FP32", "FMUL", "fmul:gelu_arg", 1, "value", "x * M_SQRT1_2, the argument of erf")
            ferf(s, "gelu", "x/sqrt(2)")
            s.add("FP32", "FADD", "fadd:gelu_one", 1, "value", "1 + erf(x/sqrt(2))")
            s.add("FP32", "FMUL", "fmul:gelu_half", 1, "value", "x * 0.5")
            s.add("FP32", "FMUL", "fmul:gelu_out", 1, "value", "(x*0.5) * (1 + erf), the output")
            last = "fmul:gelu_out"
        elif a == "gelu_tanh":     # the order of the SASS
            s.add("FP32", "FMUL", "fmul:gelut_sq", 1, "value", "x * x")
            s.add("FP32", "FMUL", "fmul:gelut_cube", 1, "value", "x * (x*x), the cube")
            s.add("FP32", "FFMA", "ffma:gelut_inner", 1, "value", "0.044715 * x^3 + x")
            s.add("FP32", "FMUL", "fmul:gelut_half", 1, "value", "x * 0.5")
            s.add("FP32", "FMUL", "fmul:gelut_arg", 1, "value", "sqrt(2/pi) * (x + 0.044715*x^3) = u, the argument of tanh")
            ftanh(s, "gelut", "u")
            s.add("FP32", "FADD", "fadd:gelut_one", 1, "value", "1 + tanh(u)")
            s.add("FP32", "FMUL", "fmul:gelut_out", 1, "value", "(x*0.5) * (1 + tanh(u)), the output")
            last = "fmul:gelut_out"
        elif a == "mish":          # PyTorch's mish kernel: x * tanh(log1p(exp(x))), no threshold
            fexp(s, "mish", "x")
            flog1p(s, "mish", "exp(x)")
            ftanh(s, "mish", "sp")
            s.add("FP32", "FMUL", "fmul:mish_out", 1, "value", "x * tanh(sp), sp = log1p(exp(x)): the output")
            last = "fmul:mish_out"
        elif a in ELU_FAMILY:      # PyTorch's elu kernel; nvcc branches on x > 0
            s.add("PR", "FSETP", "setp:elu_pos", 1, "predicate", "x > 0: a flip takes the other path")
            s.add("NODEST", "BRA", "bra:elu", 2, "control", "branch to the x > 0 path, branch over it")
            s.add("FP32", "FMUL", "fmul:elu_in", 1, "value", "x * input_scale (x <= 0 path)")
            fexpm1(s, "elu", "x*input_scale")
            s.add("FP32", "FMUL", "fmul:elu_neg", 1, "value", "expm1(x*input_scale) * alpha*scale, the output when x <= 0")
            s.add("FP32", "FMUL", "fmul:elu_pos", 1, "value", "x * scale, the output when x > 0")
            last = "fmul:elu_pos"
        elif a == "softplus":      # PyTorch's softplus kernel; nvcc branches on the threshold
            s.add("FP32", "FMUL", "fmul:softplus_bx", 1, "value", "x * beta")
            s.add("PR", "FSETP", "setp:softplus_th", 1, "predicate",
                  "x*beta > threshold (the output is x): a flip takes the other path")
            s.add("NODEST", "BRA", "bra:softplus", 1, "control", "branch past the log1p path when above the threshold")
            fexp(s, "softplus", "x*beta")
            flog1p(s, "softplus", "exp(x*beta)")
            fdiv(s, "softplus", "log1p(exp(x*beta)) / beta, the output below the threshold")
            last = "ffma:fdiv_softplus"
        elif a in ("hardswish", "hardsigmoid"):
            s.add("FP32", "FADD", "fadd:hard_shift", 1, "value", "x + 3")
            s.add("FP32", "FMNMX", "fmnmx:hard_low", 1, "value", "max(x + 3, 0)")
            s.add("FP32", "FMNMX", "fmnmx:hard_high", 1, "value", "min(max(x + 3, 0), 6)")
            if a == "hardswish":
                s.add("FP32", "FMUL", "fmul:hard_x", 1, "value", "x * min(max(x + 3, 0), 6)")
            s.add("FP32", "FMUL", "fmul:hard_out", 1, "value", "... * (1/6), the output")
            last = "fmul:hard_out"
        s.add("NODEST", "STG", "st:x", 1, "store", "stores the activated element in place")
        epilogue(s)
        s.reg("r_id", "index", "imad:index", "imad:index", "lea:addr_x")
        s.reg("r_x_lo", "address", "lea:addr_x", "lea:addr_x", "st:x")
        s.reg("r_x_hi", "address", "lea:addr_x", "lea:addr_x", "st:x", half=AddressHalf.HIGH)
        s.reg("r_x", "data", "ld:x", "ld:x", last if a not in ("linear", "softplus") else "st:x")
        if a != "linear":
            s.reg("r_out", "data", last, last, "st:x")
        if a == "logistic":
            s.reg("r_exp", "data", "mufu:exp_neg_x", "mufu:exp_neg_x", "fadd:denom")
            s.reg("r_denom", "data", "fadd:denom", "fadd:denom", "ffma:fdiv_out")
            s.reg("p_fdiv", "predicate", "setp:fdiv_out", "setp:fdiv_out", "bra:fdiv_out")
        if a == "swish":
            s.reg("r_x_keep", "data", "ld:x", "ld:x", "fmul:swish")
            s.reg("r_exp", "data", "mufu:exp_neg_x", "mufu:exp_neg_x", "fadd:denom")
            s.reg("r_denom", "data", "fadd:denom", "fadd:denom", "ffma:fdiv_sig")
            s.reg("r_sig", "data", "ffma:fdiv_sig", "ffma:fdiv_sig", "fmul:swish")
            s.reg("p_fdiv", "predicate", "setp:fdiv_sig", "setp:fdiv_sig", "bra:fdiv_sig")
        if a == "relu6":
            s.reg("r_low", "data", "fcmp:relu6_low", "fcmp:relu6_low", "fcmp:relu6_out")
        if a == "tanh":
            s.reg("r_2x", "data", "fmul:tanh_2x", "fmul:tanh_2x", "ffma:exp_tanh")
            s.reg("r_exp", "data", "mufu:exp_tanh", "mufu:exp_tanh", "fadd:tanh_denom")
            s.reg("r_denom", "data", "fadd:tanh_denom", "fadd:tanh_denom", "ffma:fdiv_tanh")
            s.reg("r_q", "data", "ffma:fdiv_tanh", "ffma:fdiv_tanh", "fadd:tanh_out")
            s.reg("p_fdiv", "predicate", "setp:fdiv_tanh", "setp:fdiv_tanh", "bra:fdiv_tanh")
        if a == "gelu":
            s.reg("r_x_keep", "data", "ld:x", "ld:x", "fmul:gelu_half")
            s.reg("r_arg", "data", "fmul:gelu_arg", "fmul:gelu_arg", "ffma:erf_gelu")
            s.reg("r_erf", "data", "ffma:erf_gelu", "ffma:erf_gelu", "fadd:gelu_one")
            s.reg("r_one", "data", "fadd:gelu_one", "fadd:gelu_one", "fmul:gelu_out")
            s.reg("r_half", "data", "fmul:gelu_half", "fmul:gelu_half", "fmul:gelu_out")
        if a == "gelu_tanh":
            s.reg("r_x_keep", "data", "ld:x", "ld:x", "fmul:gelut_half")
            s.reg("r_sq", "data", "fmul:gelut_sq", "fmul:gelut_sq", "fmul:gelut_cube")
            s.reg("r_cube", "data", "fmul:gelut_cube", "fmul:gelut_cube", "ffma:gelut_inner")
            s.reg("r_inner", "data", "ffma:gelut_inner", "ffma:gelut_inner", "fmul:gelut_arg")
            s.reg("r_half", "data", "fmul:gelut_half", "fmul:gelut_half", "fmul:gelut_out")
            s.reg("r_u", "data", "fmul:gelut_arg", "fmul:gelut_arg", "ffma:tanhs_gelut")
            s.reg("r_one", "data", "fadd:gelut_one", "fadd:gelut_one", "fmul:gelut_out")
            s.reg("p_tanh", "predicate", "setp:tanh_gelut", "setp:tanh_gelut", "ffma:tanhs_gelut")
        if a == "mish":
            s.reg("r_x_keep", "data", "ld:x", "ld:x", "fmul:mish_out")
            s.reg("r_exp", "data", "mufu:exp_mish", "mufu:exp_mish", "setp:log1p_mish")
            s.reg("r_sp", "data", "ffma:log1p_mish", "ffma:log1p_mish", "ffma:tanhs_mish")
            s.reg("p_log1p", "predicate", "setp:log1p_mish", "setp:log1p_mish", "bra:log1p_mish")
            s.reg("p_tanh", "predicate", "setp:tanh_mish", "setp:tanh_mish", "ffma:tanhs_mish")
            s.reg("r_tanh", "data", "ffma:tanhs_mish", "ffma:tanhs_mish", "fmul:mish_out")
        if a in ELU_FAMILY:
            s.reg("p_elu", "predicate", "setp:elu_pos", "setp:elu_pos", "bra:elu")
            s.reg("r_arg", "data", "fmul:elu_in", "fmul:elu_in", "fsel:expm1_elu")
            s.reg("r_expm1", "data", "fsel:expm1_elu", "fsel:expm1_elu", "fmul:elu_neg")
            s.reg("r_neg", "data", "fmul:elu_neg", "fmul:elu_neg", "st:x")
        if a == "softplus":
            s.reg("r_bx", "data", "fmul:softplus_bx", "fmul:softplus_bx", "ffma:exp_softplus")
            s.reg("p_th", "predicate", "setp:softplus_th", "setp:softplus_th", "bra:softplus")
            s.reg("r_exp", "data", "mufu:exp_softplus", "mufu:exp_softplus", "setp:log1p_softplus")
            s.reg("r_sp", "data", "ffma:log1p_softplus", "ffma:log1p_softplus", "ffma:fdiv_softplus")
            s.reg("p_fdiv", "predicate", "setp:fdiv_softplus", "setp:fdiv_softplus", "bra:fdiv_softplus")
        if a in ("hardswish", "hardsigmoid"):
            s.reg("r_shift", "data", "fadd:hard_shift", "fadd:hard_shift", "fmnmx:hard_low")
            s.reg("r_low", "data", "fmnmx:hard_low", "fmnmx:hard_low", "fmnmx:hard_high")
            s.reg("r_clamp", "data", "fmnmx:hard_high", "fmnmx:hard_high",
                  "fmul:hard_x" if a == "hardswish" else "fmul:hard_out")
            if a == "hardswish":
                s.reg("r_x_keep", "data", "ld:x", "ld:x", "fmul:hard_x")
                s.reg("r_prod", "data", "fmul:hard_x", "fmul:hard_x", "fmul:hard_out")
        if a == "leaky":
            s.reg("r_leak", "data", "fmul:leak", "fmul:leak", "fcmp:out")
        if a == "relu":
            s.reg("r_mask", "data", "fset:relu_mask", "fset:relu_mask", "fmul:out")
        s.reg("p_bounds", "predicate", "setp:bounds", "setp:bounds", "bra:exit")
        s.reg("p_switch", "predicate", "setp:act_switch", "setp:act_switch", "bra:act_switch")
        return s
