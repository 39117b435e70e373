"""Pooling: ``forward_maxpool_layer_kernel`` and ``forward_avgpool_layer_kernel``
(maxpool_layer_kernels.cu, avgpool_layer_kernels.cu).

Max pooling follows Darknet to the letter: window origin ``-pad/2`` (C division, truncating
toward zero), out = (in + pad - size)/stride + 1, out-of-bounds taps read as -inf, the running
max replaced only when ``val > max`` (so NaN never wins and the first of equal maxima stays),
and the argmax written as the flat input index ``k*H*W + h*W + w`` (-1 when nothing beat
-inf). Average pooling sums left to right in float32 and divides by ``float(w*h)``.
PyTorch's ceil_mode past stride 2 adds ``CEIL_PAD`` rows/columns to the output extents (the
windowed pools' ``*_ceil`` renderings); the window origin and the taps stay Darknet's.
"""
from __future__ import annotations

from typing import Any, ClassVar, Mapping

import torch
import torch.nn.functional as F

from kernelfi._utils import KernelfiError, c_div
from kernelfi.types import AddressHalf, Launch

from ._base import lane_flat, p_int, put, ptxas_registers, register_kernel, seq_sum
from ._sass import Stream, StreamKernel, addr, epilogue, fdiv, idiv, loop, prologue_1d

Mem = dict[str, torch.Tensor]


#: The rows/columns PyTorch's ``ceil_mode`` adds past the far (bottom/right) edge where Darknet's
#: single total ``pad`` cannot give its output extents (a stride above 2, whose ``stride - 1``
#: of extra padding would move the window origin -pad/2): out = (in + pad + ceil_pad -
#: size)/stride + 1, the origin and every tap unchanged. Present only on such launches (both
#: keys), so every other launch keeps Darknet's params, template and register map; they run
#: kernelfi's ``*_ceil`` CUDA rendering, which takes the two extra arguments.
CEIL_PAD: tuple[str, str] = ("ceil_pad_h", "ceil_pad_w")


def ceil_pads(params: Mapping[str, Any]) -> tuple[int, int] | None:
    """(ceil_pad_h, ceil_pad_w) of a windowed pool launch, None on Darknet's own geometry."""
    if not any(k in params for k in CEIL_PAD):
        return None
    return int(params.get(CEIL_PAD[0], 0)), int(params.get(CEIL_PAD[1], 0))


def window_geometry(params: Mapping[str, Any], kn: str) -> tuple[int, ...]:
    """(c, h, w, size, stride, pad, out_h, out_w) of a windowed pool (Darknet's max pool,
    AlexeyAB's local avgpool), the outputs checked against Darknet's formula (with ``CEIL_PAD``
    where present)."""
    c, h, w, size, stride, pad, oh, ow = (p_int(params, k, kn) for k in (
        "channels", "height", "width", "size", "stride", "pad", "out_h", "out_w"))
    eh, ew = ceil_pads(params) or (0, 0)
    if eh < 0 or ew < 0:
        raise KernelfiError(f"kernel '{kn}': negative {CEIL_PAD[0]}/{CEIL_PAD[1]} ({eh}, {ew})")
    for axis, got, want in (("out_h", oh, c_div(h + pad + eh - size, stride) + 1),
                            ("out_w", ow, c_div(w + pad + ew - size, stride) + 1)):
        if got != want:
            raise KernelfiError(f"kernel '{kn}': {axis}={got} but Darknet's (in + pad - size)/stride + 1 gives {want}")
    return c, h, w, size, stride, pad, oh, ow


def window_padded(x: torch.Tensor, size: int, stride: int, pad: int, oh: int, ow: int,
                  fill: float) -> tuple[torch.Tensor, int, int, int]:
    """(padded input, window origin -pad/2, top and left padding): ``x`` (lanes, C, H, W)
    padded with ``fill`` wherever a window of Darknet's geometry reaches outside it."""
    h, w = x.shape[-2:]
    off = -(pad // 2)                      # C's -pad/2 truncates toward zero
    top, left = max(0, -off), max(0, -off)
    bottom = max(0, off + (oh - 1) * stride + size - h)
    right = max(0, off + (ow - 1) * stride + size - w)
    return F.pad(x, (left, right, top, bottom), value=fill), off, top, left


def window_prologue(s: Stream, params: Mapping[str, Any]) -> None:
    """The index arithmetic a windowed pool thread does before its window loop (Darknet's
    forward_maxpool and AlexeyAB's forward_local_avgpool): output extents, (j, i, k, b) by
    remainders, the window offsets and the output index. A ``CEIL_PAD`` launch adds its
    far-side rows/columns into each extent's dividend: two more IADDs."""
    ceil = ceil_pads(params) is not None
    prologue_1d(s, "output element id")
    idiv(s, "out_h", "the output height (in_h + pad - size)/stride")
    idiv(s, "out_w", "the output width (in_w + pad - size)/stride")
    if ceil:
        s.add("GPR", "IADD", "iadd:out_hw", 6, "index",
              "in + pad + ceil_pad - size and the +1 of the output extents")
    else:
        s.add("GPR", "IADD", "iadd:out_hw", 4, "index", "in + pad - size and the +1 of the output extents")
    idiv(s, "ow", "id / w", mod="j = id % w (output column)")
    idiv(s, "oh", "id / w / h", mod="i = (id/w) % h (output row)")
    idiv(s, "c", "id / w / h / c (batch)", mod="k = ... % c (channel)")
    s.add("GPR", "IADD", "iadd:offset", 2, "index", "w_offset = h_offset = -pad/2")
    s.add("GPR", "XMAD", "imad:out_index", 9, "index", "out_index = j + w*(i + h*(k + c*b))")


class PlaneOutputKernel(StreamKernel):
    """A pool with one thread per output element (c, o_h, o_w): the windowed, adaptive and
    dilated pools."""

    def _threads(self, params: Mapping[str, Any]) -> int:
        return (p_int(params, "channels", self.name) * p_int(params, "out_h", self.name)
                * p_int(params, "out_w", self.name))


class WindowKernel(PlaneOutputKernel):
    """A windowed pool: one thread per output element (forward_maxpool, forward_local_avgpool)."""

    def rendering(self, params: Mapping[str, Any]) -> str | None:
        """Darknet's kernel, or its ``*_ceil`` entry (two more arguments) on a ``CEIL_PAD`` launch."""
        return None if ceil_pads(params) is None else f"{self.name}_ceil"


@register_kernel
class MaxpoolKernel(WindowKernel):
    """``forward_maxpool_layer_kernel``: one thread per output element, a size×size window."""

    name: ClassVar[str] = "forward_maxpool"
    regs_allocated: ClassVar[int] = ptxas_registers("forward_maxpool")
    example_params = ({"channels": 1, "height": 2, "width": 2, "size": 2, "stride": 2, "pad": 0,
                       "out_h": 1, "out_w": 1},
                      {"channels": 1, "height": 7, "width": 5, "size": 3, "stride": 3, "pad": 0,
                       "out_h": 3, "out_w": 2, "ceil_pad_h": 2, "ceil_pad_w": 1})

    def run(self, mem: Mem, launch: Launch) -> None:
        c, h, w, size, stride, pad, oh, ow = window_geometry(launch.params, self.name)
        x = lane_flat(mem, launch.reads[0], c * h * w, self.name)
        lanes = x.shape[0]
        x = x[:, :c * h * w].reshape(lanes, c, h, w)
        xp, off, top, left = window_padded(x, size, stride, pad, oh, ow, float("-inf"))
        dev = x.device
        rows = off + stride * torch.arange(oh, device=dev)          # window origins (input coords)
        cols = off + stride * torch.arange(ow, device=dev)
        chan = torch.arange(c, device=dev).view(c, 1, 1) * (h * w)
        best = torch.full((lanes, c, oh, ow), float("-inf"), dtype=x.dtype, device=dev)
        arg = torch.full((lanes, c, oh, ow), -1, dtype=torch.int32, device=dev)
        for di in range(size):
            for dj in range(size):
                r0, c0 = off + di + top, off + dj + left
                val = xp[:, :, r0:r0 + stride * (oh - 1) + 1:stride, c0:c0 + stride * (ow - 1) + 1:stride]
                index = (chan + (rows + di).view(1, oh, 1) * w + (cols + dj).view(1, 1, ow)).to(torch.int32)
                gt = val > best                    # NaN > max is false: NaN never wins
                arg = torch.where(gt, index, arg)
                best = torch.where(gt, val, best)
        put(mem, launch.writes[0], best.reshape(lanes, -1), natural=(c, oh, ow))
        if len(launch.writes) > 1:
            put(mem, launch.writes[1], arg.reshape(lanes, -1), natural=(c, oh, ow))

    def _stream(self, params: Mapping[str, Any]) -> Stream:
        size = p_int(params, "size", self.name)
        s2 = size * size
        s = Stream()
        window_prologue(s, params)
        s.add("GPR", "XMAD", "imad:window", 6, "index", "window origin i*stride + h_offset, j*stride + w_offset")
        s.add("GPR", "MOV", "mov:max_init", 1, "value", "max = -INFINITY")
        s.add("GPR", "MOV", "mov:argmax_init", 1, "value", "max_i = -1")
        s.begin_loop(s2)
        s.add("GPR", "IADD", "iadd:cur_hw", 2 * s2, "index", "cur_h = h_offset + i*stride + l, cur_w likewise")
        s.add("GPR", "XMAD", "imad:in_index", 4 * s2, "index",
              "index = cur_w + in_w*(cur_h + in_h*(k + b*in_c)): the candidate's (and argmax's) flat index")
        s.add("PR", "ISETP", "setp:valid", 4 * s2, "predicate",
              "cur_h/cur_w inside the input: a flip treats a real pixel as -inf or loads outside the window")
        addr(s, "in", "input[index]", count=2 * s2)
        s.add("LD", "LDG", "ld:in", s2, "value",
              "one candidate input[index] (issued for padding taps too, predicated off)")
        s.add("GPR", "SEL", "sel:val", s2, "value", "val = valid ? input[index] : -INFINITY")
        s.add("PR", "FSETP", "setp:gt", s2, "predicate",
              "val > max: a flip keeps a smaller max or takes a smaller candidate (value and argmax)")
        s.add("GPR", "SEL", "sel:argmax", s2, "value", "max_i = (val > max) ? index : max_i (the argmax index)")
        s.add("GPR", "SEL", "sel:max", s2, "value", "max = (val > max) ? val : max (the running max)")
        loop(s, "m", "m over the window width", s2)
        loop(s, "l", "l over the window height", size)
        s.end_loop()
        addr(s, "out", "output[out_index]")
        addr(s, "indexes", "indexes[out_index]")
        s.add("NODEST", "STG", "st:out", 1, "store", "stores the max")
        s.add("NODEST", "STG", "st:indexes", 1, "store", "stores the argmax index (int32)")
        epilogue(s)
        s.reg("r_id", "index", "imad:index", "imad:index", "idiv:ow")
        s.reg("r_w", "index", "idiv:out_w", "idiv:out_w", "imad:out_index")
        s.reg("r_h", "index", "idiv:out_h", "idiv:out_h", "imad:out_index")
        s.reg("r_j", "index", "imod:ow", "imod:ow", "imad:window")
        s.reg("r_i", "index", "imod:oh", "imod:oh", "imad:window")
        s.reg("r_k", "index", "imod:c", "imod:c", "imad:out_index")
        s.reg("r_out_index", "index", "imad:out_index", "imad:out_index", "lea:addr_indexes")
        s.reg("r_win_h", "index", "imad:window", "imad:window", "setp:loop_l")
        s.reg("r_win_w", "index", "imad:window", "imad:window", "setp:loop_l")
        s.reg("r_chan_base", "index", "imad:out_index", "imad:window", "setp:loop_l")
        s.reg("r_cur", "index", "iadd:cur_hw", "iadd:cur_hw", "setp:valid")
        s.reg("r_index", "index", "imad:in_index", "imad:in_index", "sel:argmax")
        s.reg("r_in_lo", "address", "lea:addr_in", "lea:addr_in", "ld:in")
        s.reg("r_in_hi", "address", "lea:addr_in", "lea:addr_in", "ld:in", half=AddressHalf.HIGH)
        s.reg("r_val", "data", "sel:val", "sel:val", "sel:max")
        s.reg("r_max", "accumulator", "sel:max", "mov:max_init", "st:out")
        s.reg("r_argmax", "accumulator", "sel:argmax", "mov:argmax_init", "st:indexes")
        s.reg("r_l", "loop_counter", "loop:l", "mov:argmax_init", "setp:loop_l")
        s.reg("r_m", "loop_counter", "loop:m", "mov:argmax_init", "setp:loop_m")
        s.reg("r_out_lo", "address", "lea:addr_out", "lea:addr_out", "st:out")
        s.reg("r_out_hi", "address", "lea:addr_out", "lea:addr_out", "st:out", half=AddressHalf.HIGH)
        s.reg("p_bounds", "predicate", "setp:bounds", "setp:bounds", "bra:exit")
        s.reg("p_valid", "predicate", "setp:valid", "setp:valid", "sel:val")
        s.reg("p_gt", "predicate", "setp:gt", "setp:gt", "sel:max")
        s.reg("p_loop", "predicate", "setp:loop_m", "setp:loop_m", "bra:loop_l")
        return s


# --------------------------------------------------------------------------------------------
@register_kernel
class AvgpoolKernel(StreamKernel):
    """``forward_avgpool_layer_kernel`` (global): one thread per channel sums the whole plane
    into ``output[out_index]`` element by element, then divides by ``w*h``.

    The output pointer may alias the input, so nvcc stores the running sum after every add:
    a store per trip, which the template counts.
    """

    name: ClassVar[str] = "forward_avgpool"
    regs_allocated: ClassVar[int] = ptxas_registers("forward_avgpool")
    example_params = ({"channels": 1, "height": 1, "width": 1},)

    def run(self, mem: Mem, launch: Launch) -> None:
        c, h, w = (p_int(launch.params, k, self.name) for k in ("channels", "height", "width"))
        x = lane_flat(mem, launch.reads[0], c * h * w, self.name)
        lanes = x.shape[0]
        total = seq_sum(x[:, :c * h * w].reshape(lanes, c, h * w))
        out = total / torch.tensor(float(h * w), dtype=total.dtype, device=total.device)
        put(mem, launch.writes[0], out.reshape(lanes, c), natural=(c, 1, 1))

    def _threads(self, params: Mapping[str, Any]) -> int:
        return p_int(params, "channels", self.name)

    def _stream(self, params: Mapping[str, Any]) -> Stream:
        plane = p_int(params, "height", self.name) * p_int(params, "width", self.name)
        s = Stream()
        prologue_1d(s, "channel id")
        idiv(s, "c", "b = id / c", mod="k = id % c (channel)")
        s.add("GPR", "XMAD", "imad:out_index", 3, "index", "out_index = k + c*b")
        addr(s, "out", "output[out_index]")
        s.add("NODEST", "STG", "st:out_zero", 1, "store", "output[out_index] = 0")
        s.add("GPR", "XMAD", "imad:hw", 3, "index", "w*h (loop bound and divisor)")
        addr(s, "in", "input[h*w*(k + b*c)] (the plane's first element)")
        s.begin_loop(plane)
        s.add("LD", "LDG", "ld:in", plane, "value", "one input element of the plane")
        s.add("FP32", "FADD", "fadd:acc", plane, "value",
              "output += input[i]: one partial sum of this channel's output; the sum continues from it")
        s.add("NODEST", "STG", "st:out_partial", plane, "store", "stores the running sum (output may alias input)")
        s.add("GPR", "IADD", "iadd:addr_in", 2 * plane, "address", "input pointer += 1", halves=True)
        loop(s, "i", "i over the plane", plane)
        s.end_loop()
        s.add("OTHERS", "I2F", "cvt:hw", 1, "value", "(float)(w*h), the divisor")
        fdiv(s, "out", "sum / (w*h), the output")
        s.add("NODEST", "STG", "st:out", 1, "store", "stores the average")
        epilogue(s)
        s.reg("r_id", "index", "imad:index", "imad:index", "idiv:c")
        s.reg("r_k", "index", "imod:c", "imod:c", "imad:out_index")
        s.reg("r_b", "index", "idiv:c", "idiv:c", "imad:out_index")
        s.reg("r_out_index", "index", "imad:out_index", "imad:out_index", "lea:addr_out")
        s.reg("r_out_lo", "address", "lea:addr_out", "lea:addr_out", "st:out")
        s.reg("r_out_hi", "address", "lea:addr_out", "lea:addr_out", "st:out", half=AddressHalf.HIGH)
        s.reg("r_hw", "constant", "imad:hw", "imad:hw", "cvt:hw")
        s.reg("r_in_lo", "address", "lea:addr_in", "lea:addr_in", "iadd:addr_in")
        s.reg("r_in_hi", "address", "lea:addr_in", "lea:addr_in", "iadd:addr_in", half=AddressHalf.HIGH)
        s.reg("r_x", "data", "ld:in", "ld:in", "fadd:acc")
        s.reg("r_acc", "accumulator", "fadd:acc", "st:out_zero", "ffma:fdiv_out")
        s.reg("r_i", "loop_counter", "loop:i", "lea:addr_in", "setp:loop_i")
        s.reg("r_div", "data", "cvt:hw", "cvt:hw", "ffma:fdiv_out")
        s.reg("r_avg", "data", "ffma:fdiv_out", "ffma:fdiv_out", "st:out")
        s.reg("p_bounds", "predicate", "setp:bounds", "setp:bounds", "bra:exit")
        s.reg("p_loop", "predicate", "setp:loop_i", "setp:loop_i", "bra:loop_i")
        s.reg("p_fdiv", "predicate", "setp:fdiv_out", "setp:fdiv_out", "bra:fdiv_out")
        return s
