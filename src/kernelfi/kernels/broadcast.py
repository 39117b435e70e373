"""Kernels that combine two maps of different shapes: AlexeyAB Darknet's ``scale_channels``
(a squeeze-and-excitation multiply) and PyTorch's broadcasting binary element kernel (``a - b``,
``a * b``, ``a + b`` with broadcast, issue 20) and PyTorch's ``prelu`` (the same TensorIterator
kernel with the slope as the broadcast operand: ``x > 0 ? x : w*x``).

Both are one thread per output element, like Darknet's 1-D kernels. ``scale_channels`` is
AlexeyAB's ``scale_channels_kernel`` (blas_kernels.cu): ``out[i] = in[i] * scales[i /
channel_size]``; its ``scale_wh`` variant (a per-pixel scale) is not modelled. ``binary_op`` is
what PyTorch's ``gpu_kernel_with_scalars`` does per element for ``add``/``sub``/``mul`` (the
``AddFunctor`` ``a + alpha*b``, alpha = -1 for sub, ``MulFunctor`` ``a*b``): the output index
split into (c, y, x) by the ``OffsetCalculator``'s two integer divisions, each operand's offset
from its strides (0 along a broadcast dimension). PyTorch unrolls four elements per thread;
kernelfi models one, the same instructions per element.
"""
from __future__ import annotations

from typing import Any, ClassVar, Mapping

import torch

from kernelfi._utils import KernelfiError
from kernelfi.types import AddressHalf, Launch

from ._base import lane_flat, operand_flat, p_int, put, ptxas_registers, register_kernel
from ._sass import Stream, StreamKernel, addr, epilogue, idiv, prologue_1d

Mem = dict[str, torch.Tensor]
BINARY_OPS: tuple[str, ...] = ("add", "sub", "mul")


def broadcast_strides(shape: tuple[int, int, int], out: tuple[int, int, int]) -> tuple[int, int, int]:
    """Element strides of a (C, H, W) operand read over an ``out`` map (0 along a broadcast
    dimension), as PyTorch's TensorIterator sets them; KernelfiError when it does not broadcast."""
    if len(shape) != 3 or any(d not in (1, o) for d, o in zip(shape, out)):
        raise KernelfiError(f"binary_op: operand {tuple(shape)} does not broadcast to {tuple(out)}")
    c, h, w = shape
    full = (h * w, w, 1)
    return tuple(0 if d == 1 and o != 1 else s for d, o, s in zip(shape, out, full))  # type: ignore[return-value]


def _chw(params: Mapping[str, Any], key: str) -> tuple[int, int, int]:
    try:
        c, h, w = (int(d) for d in params[key])
    except (KeyError, TypeError, ValueError):
        raise KernelfiError(f"binary_op: launch parameter '{key}' must be (c, h, w)") from None
    return c, h, w


@register_kernel
class ScaleChannelsKernel(StreamKernel):
    """``scale_channels_kernel``: out[i] = in[i] * scales[i / channel_size], one thread per element."""

    name: ClassVar[str] = "scale_channels"
    regs_allocated: ClassVar[int] = ptxas_registers("scale_channels")
    example_params = ({"channels": 1, "spatial": 1},)

    def run(self, mem: Mem, launch: Launch) -> None:
        c, sp = p_int(launch.params, "channels", self.name), p_int(launch.params, "spatial", self.name)
        x = lane_flat(mem, launch.reads[0], c * sp, self.name)[:, :c * sp]
        lanes = x.shape[0]
        s = operand_flat(mem, launch.reads[1], 1, lanes, c, self.name)[:, :c]
        y = x.reshape(lanes, c, sp) * s.reshape(s.shape[0], c, 1)
        put(mem, launch.writes[0], y.reshape(lanes, c * sp), (c, sp))

    def _threads(self, params: Mapping[str, Any]) -> int:
        return p_int(params, "channels", self.name) * p_int(params, "spatial", self.name)

    def _stream(self, params: Mapping[str, Any]) -> Stream:
        s = Stream()
        prologue_1d(s, "element i")
        idiv(s, "channel", "i / channel_size (the channel)")
        addr(s, "in", "in_w_h_c[i]")
        s.add("LD", "LDG", "ld:in", 1, "value", "the element to scale")
        addr(s, "scale", "scales_c[i / channel_size]")
        s.add("LD", "LDG", "ld:scale", 1, "value", "the channel's scale (this element only)")
        s.add("FP32", "FMUL", "fmul:out", 1, "value", "in[i] * scale, the output")
        addr(s, "out", "out[i]")
        s.add("NODEST", "STG", "st:out", 1, "store", "stores the scaled element")
        epilogue(s)
        s.reg("r_id", "index", "imad:index", "imad:index", "lea:addr_out")
        # ptxas (10 registers): the channel is computed into the low half of the scale's address
        s.reg("r_in_lo", "address", "lea:addr_in", "lea:addr_in", "ld:in")
        s.reg("r_in_hi", "address", "lea:addr_in", "lea:addr_in", "ld:in", half=AddressHalf.HIGH)
        s.reg("r_scale_lo", "address", "lea:addr_scale", "idiv:channel", "ld:scale")
        s.reg("r_scale_hi", "address", "lea:addr_scale", "lea:addr_scale", "ld:scale", half=AddressHalf.HIGH)
        s.reg("r_x", "data", "ld:in", "ld:in", "fmul:out")
        s.reg("r_s", "data", "ld:scale", "ld:scale", "fmul:out")
        s.reg("r_y", "data", "fmul:out", "fmul:out", "st:out")
        s.reg("r_out_lo", "address", "lea:addr_out", "lea:addr_out", "st:out")
        s.reg("r_out_hi", "address", "lea:addr_out", "lea:addr_out", "st:out", half=AddressHalf.HIGH)
        s.reg("p_bounds", "predicate", "setp:bounds", "setp:bounds", "bra:exit")
        return s


def binary_value(op: str, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """PyTorch's functors in float32: add/sub ``a + alpha*b`` (one FFMA for sub), mul ``a*b``."""
    if op == "add":
        return a + b
    if op == "sub":
        return a - b  # fmaf(-1, b, a): -b is exact, so one rounding of a - b
    if op == "mul":
        return a * b
    raise KernelfiError(f"binary_op: unknown op '{op}' (known: {', '.join(BINARY_OPS)})")


@register_kernel
class BinaryOpKernel(StreamKernel):
    """PyTorch's broadcasting element kernel for add/sub/mul: out[i] = a[off_a(i)] op b[off_b(i)]."""

    name: ClassVar[str] = "binary_op"
    regs_allocated: ClassVar[int] = ptxas_registers("binary_op")
    example_params = tuple({"op": op, "out": (1, 1, 1), "a": (1, 1, 1), "b": (1, 1, 1)} for op in BINARY_OPS)

    def run(self, mem: Mem, launch: Launch) -> None:
        p = launch.params
        op = str(p.get("op", ""))
        out, sa, sb = _chw(p, "out"), _chw(p, "a"), _chw(p, "b")
        broadcast_strides(sa, out), broadcast_strides(sb, out)
        a = lane_flat(mem, launch.reads[0], sa[0] * sa[1] * sa[2], self.name)
        lanes = a.shape[0]
        b = operand_flat(mem, launch.reads[1], 3, lanes, sb[0] * sb[1] * sb[2], self.name)
        av = a[:, :sa[0] * sa[1] * sa[2]].reshape(lanes, *sa)
        bv = b[:, :sb[0] * sb[1] * sb[2]].reshape(b.shape[0], *sb)
        y = binary_value(op, av.expand(lanes, *out), bv.expand(lanes, *out))
        put(mem, launch.writes[0], y.reshape(lanes, -1).contiguous(), out)

    def _threads(self, params: Mapping[str, Any]) -> int:
        c, h, w = _chw(params, "out")
        return c * h * w

    def _stream(self, params: Mapping[str, Any]) -> Stream:
        op = str(params.get("op", ""))
        if op not in BINARY_OPS:
            raise KernelfiError(f"binary_op: unknown op '{op}' (known: {', '.join(BINARY_OPS)})")
        s = Stream()
        broadcast_loads(s, ("a", "the element of a"),
                        ("b", "the element of b (a broadcast b element feeds many outputs, each its own load)"))
        opcode, meaning = {"add": ("FADD", "a + b"), "sub": ("FFMA", "a + (-1)*b"), "mul": ("FMUL", "a * b")}[op]
        s.add("FP32", opcode, f"{op}:out", 1, "value", f"{meaning}, the output")
        broadcast_store(s, "a", "b", (f"{op}:out",), f"{op}:out")
        return s


def broadcast_loads(s: Stream, a: tuple[str, str], b: tuple[str, str]) -> None:
    """The TensorIterator element kernel up to its two loads: the thread id, the output index split
    into (c, y, x) by two divisions, each operand's offset from its strides and its load."""
    prologue_1d(s, "output element i")
    idiv(s, "w", "i / out_w", mod="x = i % out_w")
    idiv(s, "h", "(i / out_w) / out_h", mod="y = (i / out_w) % out_h, the quotient is the channel")
    for v, _ in (a, b):
        s.add("GPR", "XMAD", f"imad:off_{v}", 3, "index",
              f"offset of {v}: c*stride_c + y*stride_y + x*stride_x (0 where broadcast)")
    for v, _ in (a, b):
        addr(s, v, f"{v}[off_{v}]")
    for v, what in (a, b):
        s.add("LD", "LDG", f"ld:{v}", 1, "value", what)


def broadcast_store(s: Stream, a: str, b: str, readers: tuple[str, ...], last: str) -> None:
    """The store of the output (computed by ``last``; both loaded values read by ``readers``) and
    the registers of ``broadcast_loads``."""
    addr(s, "out", "out[i]")
    s.add("NODEST", "STG", "st:out", 1, "store", "stores the output element")
    epilogue(s)
    s.reg("r_id", "index", "imad:index", "imad:index", "lea:addr_out")
    s.reg("r_x", "index", "imod:w", "imod:w", f"imad:off_{b}")
    s.reg("r_y", "index", "imod:h", "imod:h", f"imad:off_{b}")
    s.reg("r_c", "index", "idiv:h", "idiv:h", f"imad:off_{b}")
    for v in (a, b):
        s.reg(f"r_{v}_lo", "address", f"lea:addr_{v}", f"imad:off_{v}", f"ld:{v}")
        s.reg(f"r_{v}_hi", "address", f"lea:addr_{v}", f"lea:addr_{v}", f"ld:{v}", half=AddressHalf.HIGH)
    s.reg(f"r_v{a}", "data", f"ld:{a}", f"ld:{a}", readers[-1])
    s.reg(f"r_v{b}", "data", f"ld:{b}", f"ld:{b}", readers[0])
    s.reg("r_out", "data", last, last, "st:out")
    s.reg("p_bounds", "predicate", "setp:bounds", "setp:bounds", "bra:exit")


def prelu_value(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """PyTorch's prelu functor in float32: ``x > 0 ? x : w*x``."""
    return torch.where(x > 0, x, w * x)


@register_kernel
class PreluKernel(StreamKernel):
    """PyTorch's ``prelu`` (the TensorIterator kernel of ``_prelu_kernel``): out[i] = x > 0 ? x : w*x,
    the slope ``w`` of x's channel (``num_parameters`` = C) or the one slope (1), read from the
    layer's weight buffer. Params: ``out`` (c, h, w) and ``w`` (k, 1, 1), k = 1 or c."""

    name: ClassVar[str] = "prelu"
    regs_allocated: ClassVar[int] = ptxas_registers("prelu")
    example_params = ({"out": (1, 1, 1), "w": (1, 1, 1)},)

    def run(self, mem: Mem, launch: Launch) -> None:
        out, sw = _chw(launch.params, "out"), _chw(launch.params, "w")
        broadcast_strides(sw, out)
        n = out[0] * out[1] * out[2]
        x = lane_flat(mem, launch.reads[0], n, self.name)
        lanes = x.shape[0]
        w = operand_flat(mem, launch.reads[1], 1, lanes, sw[0], self.name)[:, :sw[0]]
        y = prelu_value(x[:, :n].reshape(lanes, *out), w.reshape(w.shape[0], sw[0], 1, 1))
        put(mem, launch.writes[0], y.reshape(lanes, -1).contiguous(), out)

    def _threads(self, params: Mapping[str, Any]) -> int:
        c, h, w = _chw(params, "out")
        return c * h * w

    def _stream(self, params: Mapping[str, Any]) -> Stream:
        s = Stream()
        broadcast_loads(s, ("x", "the input element"),
                        ("w", "the slope of its channel (one slope: every thread loads the same)"))
        s.add("FP32", "FMUL", "fmul:prelu", 1, "value", "w * x (the output when x <= 0)")
        s.add("PR", "FSETP", "setp:prelu", 1, "predicate", "x > 0: a flip selects the other value")
        s.add("FP32", "FSEL", "fsel:prelu", 1, "value", "x > 0 ? x : w*x, the output")
        broadcast_store(s, "x", "w", ("fmul:prelu", "fsel:prelu"), "fsel:prelu")
        # ptxas allocates 11, all named by broadcast_store: w*x lands in a register dead by then
        # (w's), live for the one FSETP between it and the FSEL; not listed (its flips are masked)
        s.reg("p_prelu", "predicate", "setp:prelu", "setp:prelu", "fsel:prelu")
        return s
