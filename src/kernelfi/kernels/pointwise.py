"""PyTorch's element kernels for a tensor and Python scalars, and its constant pad: ``scalar_op``
(``x * c``, ``x + c``, ``x - c``, ``c - x``, ``x / c``), ``clamp`` (``torch.clamp``,
``clamp_min``/``clamp_max``, ``Hardtanh``) and ``constant_pad`` (``F.pad``, ``ZeroPad2d``).

All three are one thread per output element. ``scalar_op`` is what ``gpu_kernel_with_scalars``
runs when one operand is a CPU scalar: the scalar is a kernel argument (constant memory, no
load, no register), each element is ``AddFunctor`` ``a + alpha*b`` (alpha = 1 for add, -1 for
sub; ``c - x`` is ``rsub``, the scalar the first operand) or ``MulFunctor`` ``a*b``, in float32
(opmath of float). ``x / c`` is ``div_true_kernel_cuda``'s CPU-scalar path: the host computes
``inv = 1.0f / c`` and launches the multiply, so the GPU's ``x / c`` is ``x * (1/c)``, which
differs from the CPU's (and IEEE's) ``x / c`` by an ulp for some x when c is not a power of two.
``clamp`` is ``clamp_scalar_kernel_impl``: ``isnan(v) ? v : min(max(v, lo), hi)`` (NaN
propagates; ``clamp_min``/``clamp_max`` keep one bound; ``hardtanh`` calls clamp).
``constant_pad`` models ``constant_pad_nd`` as one thread per output element that reads its
input element or writes the constant (PyTorch fills the output and copies the input into a
narrowed view: the same values, two launches).
"""
from __future__ import annotations

from typing import Any, ClassVar, Mapping

import torch

from kernelfi._utils import KernelfiError
from kernelfi.types import AddressHalf, Launch

from ._base import lane_flat, p_int, put, ptxas_registers, register_kernel
from ._sass import Stream, StreamKernel, addr, epilogue, idiv, prologue_1d

Mem = dict[str, torch.Tensor]
#: ``scalar_op``'s ops: x + c, x - c, c - x, x * c, x / c (as x * (1/c), PyTorch's CUDA path).
SCALAR_OPS: tuple[str, ...] = ("add", "sub", "rsub", "mul", "div")


def _f32(v: float) -> float:
    """A Python number as the float32 PyTorch's kernel receives (``scalar_value<float>``)."""
    return float(torch.tensor(float(v), dtype=torch.float32))


def check_scalar_op(op: str) -> str:
    """``op`` if it is one of ``SCALAR_OPS``, else one line naming the known ones."""
    if op not in SCALAR_OPS:
        raise KernelfiError(f"scalar_op: unknown op '{op}' (known: {', '.join(SCALAR_OPS)})")
    return op


def scalar_operand(op: str, c: float) -> float:
    """The float32 kernel argument of ``scalar_op``: c, or ``1.0f / c`` for div (computed on the host)."""
    check_scalar_op(op)
    if op == "div":
        return float(torch.tensor(1.0, dtype=torch.float32) / torch.tensor(_f32(c), dtype=torch.float32))
    return _f32(c)


def scalar_value(op: str, x: torch.Tensor, s: float) -> torch.Tensor:
    """The kernel's float32 per element, ``s`` = ``scalar_operand(op, c)``: one rounding each."""
    st = torch.tensor(s, dtype=torch.float32, device=x.device)
    if op == "add":
        return x + st
    if op == "sub":
        return x - st          # fmaf(-1, c, x): -c is exact, one rounding of x - c
    if op == "rsub":
        return st - x          # fmaf(-1, x, c)
    check_scalar_op(op)
    return x * st              # mul, and div as x * (1/c)


def _op(params: Mapping[str, Any]) -> str:
    return check_scalar_op(str(params.get("op", "")))


@register_kernel
class ScalarOpKernel(StreamKernel):
    """``x op c`` with c a launch argument: out[i] = x[i] + alpha*c / c - x[i] / x[i] * c."""

    name: ClassVar[str] = "scalar_op"
    regs_allocated: ClassVar[int] = ptxas_registers("scalar_op")
    example_params = tuple({"n": 1, "op": op, "scalar": 2.0} for op in SCALAR_OPS)

    def run(self, mem: Mem, launch: Launch) -> None:
        n, op = p_int(launch.params, "n", self.name), _op(launch.params)
        x = lane_flat(mem, launch.reads[0], n, self.name)[:, :n]
        s = scalar_operand(op, float(launch.params["scalar"]))
        put(mem, launch.writes[0], scalar_value(op, x, s).contiguous())

    def _threads(self, params: Mapping[str, Any]) -> int:
        return p_int(params, "n", self.name)

    def _stream(self, params: Mapping[str, Any]) -> Stream:
        op = _op(params)
        s = Stream()
        prologue_1d(s, "element i")
        addr(s, "in", "x[i]")
        s.add("LD", "LDG", "ld:in", 1, "value", "the element")
        opcode, meaning = {"add": ("FFMA", "x + 1*c"), "sub": ("FFMA", "x + (-1)*c"),
                           "rsub": ("FFMA", "c + (-1)*x"), "mul": ("FMUL", "x * c"),
                           "div": ("FMUL", "x * (1/c), the reciprocal from the host")}[op]
        s.add("FP32", opcode, f"{op}:out", 1, "value", f"{meaning} (c a kernel argument), the output")
        addr(s, "out", "out[i]")
        s.add("NODEST", "STG", "st:out", 1, "store", "stores the output element")
        epilogue(s)
        s.reg("r_id", "index", "imad:index", "imad:index", "lea:addr_out")
        s.reg("r_in_lo", "address", "lea:addr_in", "lea:addr_in", "ld:in")
        s.reg("r_in_hi", "address", "lea:addr_in", "lea:addr_in", "ld:in", half=AddressHalf.HIGH)
        s.reg("r_x", "data", "ld:in", "ld:in", f"{op}:out")
        s.reg("r_y", "data", f"{op}:out", f"{op}:out", "st:out")
        # ptxas (6 registers): the output address is formed in the input's pair, dead after the load
        s.reg("r_in_lo", "address", "lea:addr_out", "lea:addr_out", "st:out")
        s.reg("r_in_hi", "address", "lea:addr_out", "lea:addr_out", "st:out", half=AddressHalf.HIGH)
        s.reg("p_bounds", "predicate", "setp:bounds", "setp:bounds", "bra:exit")
        return s


def clamp_bounds(params: Mapping[str, Any]) -> tuple[float | None, float | None]:
    """``clamp``'s (lo, hi) launch params as float32 (None: that side is not clamped)."""
    lo, hi = params.get("min"), params.get("max")
    if lo is None and hi is None:
        raise KernelfiError("clamp: at least one of 'min' and 'max' is needed")
    return (None if lo is None else _f32(lo)), (None if hi is None else _f32(hi))


def clamp_value(x: torch.Tensor, lo: float | None, hi: float | None) -> torch.Tensor:
    """``isnan(v) ? v : min(max(v, lo), hi)``, exact (a compare selects one operand)."""
    y = x
    if lo is not None:
        y = torch.where(y < lo, torch.full_like(y, lo), y)
    if hi is not None:
        y = torch.where(y > hi, torch.full_like(y, hi), y)
    return torch.where(torch.isnan(x), x, y)


@register_kernel
class ClampKernel(StreamKernel):
    """PyTorch's ``clamp_scalar_kernel_impl`` (and clamp_min / clamp_max): NaN passes through."""

    name: ClassVar[str] = "clamp"
    regs_allocated: ClassVar[int] = ptxas_registers("clamp")
    example_params = ({"n": 1, "min": -1.0, "max": 1.0}, {"n": 1, "min": 0.0}, {"n": 1, "max": 1.0})

    def run(self, mem: Mem, launch: Launch) -> None:
        n = p_int(launch.params, "n", self.name)
        lo, hi = clamp_bounds(launch.params)
        x = lane_flat(mem, launch.reads[0], n, self.name)[:, :n]
        put(mem, launch.writes[0], clamp_value(x, lo, hi).contiguous())

    def _threads(self, params: Mapping[str, Any]) -> int:
        return p_int(params, "n", self.name)

    def _stream(self, params: Mapping[str, Any]) -> Stream:
        lo, hi = clamp_bounds(params)
        s = Stream()
        prologue_1d(s, "element i")
        addr(s, "in", "x[i]")
        s.add("LD", "LDG", "ld:in", 1, "value", "the element")
        s.add("PR", "FSETP", "setp:nan", 1, "predicate", "isnan(v): a flip returns v unclamped (or a NaN clamped)")
        last = "ld:in"
        if lo is not None:
            s.add("FP32", "FMNMX", "fmnmx:min", 1, "value", "max(v, lo)")
            last = "fmnmx:min"
        if hi is not None:
            s.add("FP32", "FMNMX", "fmnmx:max", 1, "value", "min(., hi)")
        s.add("GPR", "SEL", "sel:out", 1, "value", "isnan(v) ? v : the clamped value, the output")
        addr(s, "out", "out[i]")
        s.add("NODEST", "STG", "st:out", 1, "store", "stores the output element")
        epilogue(s)
        s.reg("r_id", "index", "imad:index", "imad:index", "lea:addr_out")
        s.reg("r_in_lo", "address", "lea:addr_in", "lea:addr_in", "ld:in")
        s.reg("r_in_hi", "address", "lea:addr_in", "lea:addr_in", "ld:in", half=AddressHalf.HIGH)
        s.reg("r_x", "data", "ld:in", "ld:in", "sel:out")
        if lo is not None and hi is not None:
            s.reg("r_low", "data", "fmnmx:min", "fmnmx:min", "fmnmx:max")
        s.reg("r_c", "data", "fmnmx:max" if hi is not None else last, "fmnmx:max" if hi is not None else last,
              "sel:out")
        s.reg("r_y", "data", "sel:out", "sel:out", "st:out")
        # ptxas (7 registers): the output address is formed in the input's pair, dead after the load
        s.reg("r_in_lo", "address", "lea:addr_out", "lea:addr_out", "st:out")
        s.reg("r_in_hi", "address", "lea:addr_out", "lea:addr_out", "st:out", half=AddressHalf.HIGH)
        s.reg("p_bounds", "predicate", "setp:bounds", "setp:bounds", "bra:exit")
        s.reg("p_nan", "predicate", "setp:nan", "setp:nan", "sel:out")
        return s


#: ``constant_pad``'s geometry params (the input map, the top/left pads, the output extents).
PAD_KEYS: tuple[str, ...] = ("channels", "height", "width", "top", "left", "out_h", "out_w")


def pad_geometry(params: Mapping[str, Any]) -> tuple[int, ...]:
    """(C, H, W, top, left, OH, OW) of a ``constant_pad`` launch; pads must be >= 0."""
    g = tuple(p_int(params, k, "constant_pad") for k in PAD_KEYS)
    c, h, w, top, left, oh, ow = g
    if top < 0 or left < 0 or oh < h + top or ow < w + left:
        raise KernelfiError(f"constant_pad: pads must be >= 0 (top {top}, left {left}, {h}x{w} -> {oh}x{ow})")
    return g


@register_kernel
class ConstantPadKernel(StreamKernel):
    """out[c, y, x] = in[c, y - top, x - left] inside the input, else ``value``."""

    name: ClassVar[str] = "constant_pad"
    regs_allocated: ClassVar[int] = ptxas_registers("constant_pad")
    example_params = ({"channels": 1, "height": 1, "width": 1, "top": 1, "left": 1, "out_h": 3, "out_w": 3,
                       "value": 0.0},)

    def run(self, mem: Mem, launch: Launch) -> None:
        c, h, w, top, left, oh, ow = pad_geometry(launch.params)
        x = lane_flat(mem, launch.reads[0], c * h * w, self.name)[:, :c * h * w]
        lanes = x.shape[0]
        out = torch.full((lanes, c, oh, ow), _f32(launch.params.get("value", 0.0)), dtype=x.dtype, device=x.device)
        out[:, :, top:top + h, left:left + w] = x.reshape(lanes, c, h, w)
        put(mem, launch.writes[0], out.reshape(lanes, -1), (c, oh, ow))

    def _threads(self, params: Mapping[str, Any]) -> int:
        c, _, _, _, _, oh, ow = pad_geometry(params)
        return c * oh * ow

    def _stream(self, params: Mapping[str, Any]) -> Stream:
        s = Stream()
        prologue_1d(s, "output element i")
        idiv(s, "w", "i / out_w", mod="x = i % out_w")
        idiv(s, "h", "(i / out_w) / out_h", mod="y = (i / out_w) % out_h, the quotient is the channel")
        s.add("GPR", "IADD", "iadd:yx", 2, "index", "input row y - top and column x - left")
        s.add("PR", "ISETP", "setp:inside", 4, "predicate", "0 <= y-top < H and 0 <= x-left < W: a flip "
              "writes the constant inside or reads outside the input")
        s.add("GPR", "XMAD", "imad:off_in", 3, "index", "input offset (c*H + y-top)*W + x-left")
        addr(s, "in", "in[off_in]")
        s.add("LD", "LDG", "ld:in", 1, "value", "the input element (predicated: inside the input only)")
        s.add("GPR", "SEL", "sel:out", 1, "value", "inside ? the input element : the constant, the output")
        addr(s, "out", "out[i]")
        s.add("NODEST", "STG", "st:out", 1, "store", "stores the output element")
        epilogue(s)
        s.reg("r_id", "index", "imad:index", "imad:index", "lea:addr_out")
        s.reg("r_x", "index", "imod:w", "imod:w", "iadd:yx")
        s.reg("r_y", "index", "imod:h", "imod:h", "iadd:yx")
        s.reg("r_c", "index", "idiv:h", "idiv:h", "imad:off_in")
        s.reg("r_iy", "index", "iadd:yx", "iadd:yx", "imad:off_in")
        s.reg("r_ix", "index", "iadd:yx", "iadd:yx", "imad:off_in")
        s.reg("r_in_lo", "address", "lea:addr_in", "imad:off_in", "ld:in")
        s.reg("r_in_hi", "address", "lea:addr_in", "lea:addr_in", "ld:in", half=AddressHalf.HIGH)
        s.reg("r_v", "data", "ld:in", "ld:in", "sel:out")
        s.reg("r_y_out", "data", "sel:out", "sel:out", "st:out")
        s.reg("r_out_lo", "address", "lea:addr_out", "lea:addr_out", "st:out")
        s.reg("r_out_hi", "address", "lea:addr_out", "lea:addr_out", "st:out", half=AddressHalf.HIGH)
        s.reg("p_bounds", "predicate", "setp:bounds", "setp:bounds", "bra:exit")
        s.reg("p_inside", "predicate", "setp:inside", "setp:inside", "sel:out")
        return s
