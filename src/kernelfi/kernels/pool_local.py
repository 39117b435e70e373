"""AlexeyAB Darknet's ``forward_local_avgpool_layer_kernel`` (maxpool_layer_kernels.cu: a
[local_avgpool] layer, average pooling over size×size windows) and ``upsample_kernel``
(blas_kernels.cu: nearest-neighbour upsampling by an integer stride), issue 20.

Local average pooling has max pooling's geometry (window origin ``-pad/2``, out = (in + pad -
size)/stride + 1), sums the valid taps left to right in float32 and divides by their count
(``avg / counter``: PyTorch's ``count_include_pad=False``). PyTorch's default
``count_include_pad=True`` divides instead by the window clipped to the padded input,
``(hend - hstart)*(wend - wstart)`` with ``hend = min(hstart + size, H + pad_side)``, as
``avg_pool2d``'s CUDA kernel does (launch param ``count_include_pad``); a ceil_mode launch's
``CEIL_PAD`` rows/columns (``kernels.pool``) lengthen only the output extents, so that divisor
still stops at the padded input, as PyTorch's does, not at the ceil overhang. PyTorch's
``divisor_override=k`` divides every window's sum by k instead (launch param ``divisor``, present
only then: entry ``forward_local_avgpool_divisor``). ``upsample_kernel``
computes ``out[i] += scale * x[in_index]`` after the layer's ``fill`` of zeros.
"""
from __future__ import annotations

from typing import Any, ClassVar, Iterator, Mapping

import torch

from kernelfi.types import AddressHalf, Launch

from ._base import f32, lane_flat, p_int, put, ptxas_registers, register_kernel
from ._sass import Stream, StreamKernel, addr, epilogue, fdiv, idiv, loop, prologue_1d
from .pool import PlaneOutputKernel, WindowKernel, window_geometry, window_padded, window_prologue

Mem = dict[str, torch.Tensor]
KN = "forward_local_avgpool"


def padded_divisor(start: int, size: int, extent: int, side: int) -> int:
    """PyTorch's count_include_pad window length along one axis: min(start + size, extent + side) - start."""
    return min(start + size, extent + side) - start


@register_kernel
class LocalAvgpoolKernel(WindowKernel):
    """``forward_local_avgpool_layer_kernel``: one thread per output element, a size×size window."""

    name: ClassVar[str] = KN
    regs_allocated: ClassVar[int] = ptxas_registers(KN)
    example_params = ({"channels": 1, "height": 2, "width": 2, "size": 2, "stride": 2, "pad": 0,
                       "out_h": 1, "out_w": 1},
                      {"channels": 1, "height": 2, "width": 2, "size": 2, "stride": 2, "pad": 2,
                       "out_h": 2, "out_w": 2, "count_include_pad": True},
                      {"channels": 1, "height": 8, "width": 5, "size": 3, "stride": 4, "pad": 2,
                       "out_h": 3, "out_w": 2, "ceil_pad_h": 1, "ceil_pad_w": 0, "count_include_pad": True},
                      {"channels": 1, "height": 3, "width": 3, "size": 2, "stride": 2, "pad": 2,
                       "out_h": 2, "out_w": 2, "divisor": 3})

    def run(self, mem: Mem, launch: Launch) -> None:
        c, h, w, size, stride, pad, oh, ow = window_geometry(launch.params, self.name)
        x = lane_flat(mem, launch.reads[0], c * h * w, self.name)
        lanes = x.shape[0]
        x = x[:, :c * h * w].reshape(lanes, c, h, w)
        xp, off, top, left = window_padded(x, size, stride, pad, oh, ow, 0.0)
        dev = x.device
        rows = off + stride * torch.arange(oh, device=dev)
        cols = off + stride * torch.arange(ow, device=dev)
        acc = torch.zeros((lanes, c, oh, ow), dtype=x.dtype, device=dev)
        count = torch.zeros((oh, ow), dtype=torch.int64, device=dev)
        for di in range(size):
            for dj in range(size):
                r0, c0 = off + di + top, off + dj + left
                val = xp[:, :, r0:r0 + stride * (oh - 1) + 1:stride, c0:c0 + stride * (ow - 1) + 1:stride]
                valid = (((rows + di) >= 0) & ((rows + di) < h)).view(oh, 1) & \
                        (((cols + dj) >= 0) & ((cols + dj) < w)).view(1, ow)
                acc = torch.where(valid, acc + val, acc)     # only valid taps are added, in order
                count = count + valid.to(torch.int64)
        if launch.params.get("count_include_pad"):
            side = pad // 2
            dh = torch.tensor([padded_divisor(int(r), size, h, side) for r in rows], device=dev)
            dw = torch.tensor([padded_divisor(int(q), size, w, side) for q in cols], device=dev)
            count = dh.view(oh, 1) * dw.view(1, ow)
        if "divisor" in launch.params:   # PyTorch's divisor_override: every window's sum over k
            count = torch.full((oh, ow), p_int(launch.params, "divisor", self.name), dtype=torch.int64, device=dev)
        y = acc / count.to(x.dtype)
        put(mem, launch.writes[0], y.reshape(lanes, -1), natural=(c, oh, ow))

    def rendering(self, params: Mapping[str, Any]) -> str | None:
        """A divisor_override launch: entry ``forward_local_avgpool_divisor``; every other launch
        the Darknet (or ``*_ceil``) entry."""
        return f"{KN}_divisor" if "divisor" in params else super().rendering(params)

    def _stream(self, params: Mapping[str, Any]) -> Stream:
        size = p_int(params, "size", self.name)
        s2 = size * size
        s = Stream()
        window_prologue(s, params)
        s.add("GPR", "MOV", "mov:avg_init", 1, "value", "avg = 0")
        s.add("GPR", "MOV", "mov:count_init", 1, "value", "counter = 0")
        s.begin_loop(s2)
        s.add("GPR", "XMAD", "imad:cur_hw", 4 * s2, "index", "cur_h = h_offset + i*stride_y + l, cur_w likewise")
        s.add("GPR", "XMAD", "imad:in_index", 4 * s2, "index", "index = cur_w + in_w*(cur_h + in_h*(k + b*in_c))")
        s.add("PR", "ISETP", "setp:valid", 4 * s2, "predicate",
              "cur_h/cur_w inside the input: a flip adds a padding tap's load or drops a pixel (and its count)")
        addr(s, "in", "input[index]", count=2 * s2)
        s.add("LD", "LDG", "ld:in", s2, "value", "one input[index] of the window (valid taps only)")
        s.add("FP32", "FADD", "fadd:avg", s2, "value", "avg += input[index], the running sum")
        s.add("GPR", "IADD", "iadd:counter", s2, "value", "counter++ (the divisor)")
        loop(s, "m", "m over the window width", s2)
        loop(s, "l", "l over the window height", size)
        s.end_loop()
        if params.get("count_include_pad"):
            s.add("GPR", "IMNMX", "imnmx:divisor", 6, "value",
                  "PyTorch's count_include_pad divisor (hend - hstart)*(wend - wstart), clipped to the padded input")
        if "divisor" in params:
            s.add("GPR", "MOV", "mov:divisor", 1, "value", "counter = divisor_override, PyTorch's avg_pool2d divisor")
        s.add("OTHERS", "I2F", "cvt:counter", 1, "value", "float(divisor)")
        fdiv(s, "out", "avg / divisor, the output")
        addr(s, "out", "output[out_index]")
        s.add("NODEST", "STG", "st:out", 1, "store", "stores the average")
        epilogue(s)
        s.reg("r_id", "index", "imad:index", "imad:index", "idiv:ow")
        s.reg("r_w", "index", "idiv:out_w", "idiv:out_w", "imad:out_index")
        s.reg("r_h", "index", "idiv:out_h", "idiv:out_h", "imad:out_index")
        s.reg("r_j", "index", "imod:ow", "imod:ow", "setp:loop_l")
        s.reg("r_i", "index", "imod:oh", "imod:oh", "setp:loop_l")
        s.reg("r_k", "index", "imod:c", "imod:c", "setp:loop_l")
        s.reg("r_out_index", "index", "imad:out_index", "imad:out_index", "lea:addr_out")
        s.reg("r_cur", "index", "imad:cur_hw", "imad:cur_hw", "setp:valid")
        s.reg("r_index", "index", "imad:in_index", "imad:in_index", "lea:addr_in")
        s.reg("r_in_lo", "address", "lea:addr_in", "lea:addr_in", "ld:in")
        s.reg("r_in_hi", "address", "lea:addr_in", "lea:addr_in", "ld:in", half=AddressHalf.HIGH)
        s.reg("r_x", "data", "ld:in", "ld:in", "fadd:avg")
        s.reg("r_avg", "accumulator", "fadd:avg", "mov:avg_init", "ffma:fdiv_out")
        s.reg("r_count", "accumulator", "iadd:counter", "mov:count_init", "cvt:counter")
        s.reg("r_l", "loop_counter", "loop:l", "mov:count_init", "setp:loop_l")
        s.reg("r_m", "loop_counter", "loop:m", "mov:count_init", "setp:loop_m")
        s.reg("r_div", "data", "cvt:counter", "cvt:counter", "ffma:fdiv_out")
        s.reg("r_out", "data", "ffma:fdiv_out", "ffma:fdiv_out", "st:out")
        s.reg("r_out_lo", "address", "lea:addr_out", "lea:addr_out", "st:out")
        s.reg("r_out_hi", "address", "lea:addr_out", "lea:addr_out", "st:out", half=AddressHalf.HIGH)
        s.reg("p_bounds", "predicate", "setp:bounds", "setp:bounds", "bra:exit")
        s.reg("p_valid", "predicate", "setp:valid", "setp:valid", "fadd:avg")
        s.reg("p_loop", "predicate", "setp:loop_m", "setp:loop_m", "bra:loop_l")
        s.reg("p_fdiv", "predicate", "setp:fdiv_out", "setp:fdiv_out", "bra:fdiv_out")
        return s


@register_kernel
class UpsampleKernel(StreamKernel):
    """``upsample_kernel`` (forward): out[i] += scale * x[in_index], one thread per output element."""

    name: ClassVar[str] = "upsample"
    regs_allocated: ClassVar[int] = ptxas_registers("upsample")
    example_params = ({"channels": 1, "height": 1, "width": 1, "stride": 2, "scale": 1.0},)

    def run(self, mem: Mem, launch: Launch) -> None:
        p = launch.params
        c, h, w, st = (p_int(p, k, self.name) for k in ("channels", "height", "width", "stride"))
        x = lane_flat(mem, launch.reads[0], c * h * w, self.name)
        lanes = x.shape[0]
        n = c * h * w * st * st
        out = lane_flat(mem, launch.reads[1], n, self.name)[:, :n]
        rep = x[:, :c * h * w].reshape(lanes, c, h, 1, w, 1).expand(lanes, c, h, st, w, st).reshape(lanes, n)
        y = out + f32(float(p.get("scale", 1.0)), x) * rep
        put(mem, launch.writes[0], y, natural=(c, h * st, w * st))

    def _threads(self, params: Mapping[str, Any]) -> int:
        c, h, w, st = (p_int(params, k, self.name) for k in ("channels", "height", "width", "stride"))
        return c * h * w * st * st

    def _stream(self, params: Mapping[str, Any]) -> Stream:
        s = Stream()
        prologue_1d(s, "output element i")
        idiv(s, "ow", "i / (w*stride)", mod="out_w = i % (w*stride)")
        idiv(s, "oh", "i / (w*stride) / (h*stride)", mod="out_h = ... % (h*stride)")
        idiv(s, "c", "... / c", mod="out_c = ... % c")
        idiv(s, "b", "... / batch", mod="b = ... % batch")
        idiv(s, "in_w", "in_w = out_w / stride")
        idiv(s, "in_h", "in_h = out_h / stride")
        s.add("GPR", "XMAD", "imad:in_index", 6, "index", "in_index = b*w*h*c + in_c*w*h + in_h*w + in_w")
        addr(s, "x", "x[in_index]")
        addr(s, "out", "out[i]")
        s.add("LD", "LDG", "ld:x", 1, "value", "the input pixel (each feeds stride² outputs, its own load each)")
        s.add("LD", "LDG", "ld:out", 1, "value", "the output before the update (0 from the fill)")
        s.add("FP32", "FFMA", "ffma:out", 1, "value", "out + scale*x, the output")
        s.add("NODEST", "STG", "st:out", 1, "store", "stores the output element")
        epilogue(s)
        s.reg("r_id", "index", "imad:index", "imad:index", "lea:addr_out")
        s.reg("r_q", "index", "idiv:ow", "idiv:ow", "imod:b")
        s.reg("r_ow", "index", "imod:ow", "imod:ow", "idiv:in_w")
        s.reg("r_oh", "index", "imod:oh", "imod:oh", "idiv:in_h")
        s.reg("r_c", "index", "imod:c", "imod:c", "imad:in_index")
        s.reg("r_iw", "index", "idiv:in_w", "idiv:in_w", "imad:in_index")
        s.reg("r_ih", "index", "idiv:in_h", "idiv:in_h", "imad:in_index")
        s.reg("r_x_lo", "address", "lea:addr_x", "imad:in_index", "ld:x")
        s.reg("r_x_hi", "address", "lea:addr_x", "lea:addr_x", "ld:x", half=AddressHalf.HIGH)
        s.reg("r_out_lo", "address", "lea:addr_out", "lea:addr_out", "st:out")
        s.reg("r_out_hi", "address", "lea:addr_out", "lea:addr_out", "st:out", half=AddressHalf.HIGH)
        s.reg("r_vx", "data", "ld:x", "ld:x", "ffma:out")
        s.reg("r_vout", "data", "ld:out", "ld:out", "ffma:out")
        s.reg("r_y", "data", "ffma:out", "ffma:out", "st:out")
        s.reg("p_bounds", "predicate", "setp:bounds", "setp:bounds", "bra:exit")
        return s


def adaptive_bounds(o: int, osize: int, isize: int) -> tuple[int, int]:
    """PyTorch's START_IND/END_IND: floor(o*isize/osize), ceil((o + 1)*isize/osize) in float."""
    import math
    return int(math.floor(float(o * isize) / osize)), int(math.ceil(float((o + 1) * isize) / osize))


def _adaptive_max_window(params: Mapping[str, Any], kernel: str) -> tuple[int, int]:
    h, w, oh, ow = (p_int(params, k, kernel) for k in ("height", "width", "out_h", "out_w"))
    kh = max(b - a for a, b in (adaptive_bounds(o, oh, h) for o in range(oh)))
    kw = max(b - a for a, b in (adaptive_bounds(o, ow, w) for o in range(ow)))
    return kh, kw


def adaptive_window_head(s: Stream) -> Stream:
    """The part of an adaptive pool thread both of PyTorch's kernels share (avg and max): the
    output element's coordinates and its window's bounds and first input."""
    prologue_1d(s, "output element id")
    idiv(s, "ow", "id / out_w", mod="o_w = id % out_w")
    idiv(s, "oh", "id / out_w / out_h (the plane)", mod="o_h = (id/out_w) % out_h")
    s.add("GPR", "XMAD", "imad:bounds", 4, "index", "o_h*H, (o_h + 1)*H, o_w*W, (o_w + 1)*W")
    s.add("OTHERS", "I2F", "cvt:bounds", 8, "index", "I2F of the products and F2I.FLOOR/CEIL of the quotients: the window bounds")
    fdiv(s, "bounds", "the window bounds' quotients by out_h, out_w", count=4)
    s.add("GPR", "IADD", "iadd:extent", 2, "index", "kH = iend_h - istart_h, kW = iend_w - istart_w")
    s.add("GPR", "XMAD", "imad:in_base", 3, "index", "the window's first input: plane*H*W + istart_h*W + istart_w")
    return s


def adaptive_windows(oh: int, ow: int, h: int, w: int) -> Iterator[tuple[int, int, tuple[int, int], tuple[int, int]]]:
    """(o_h, o_w, rows, columns) of every output of an adaptive pool, rows then columns."""
    for i in range(oh):
        rows = adaptive_bounds(i, oh, h)
        for j in range(ow):
            yield i, j, rows, adaptive_bounds(j, ow, w)


class AdaptiveKernel(PlaneOutputKernel):
    """An adaptive pool: one thread per output element (c, o_h, o_w)."""

    def _planes(self, mem: Mem, launch: Launch) -> tuple[torch.Tensor, tuple[int, int, int, int, int]]:
        """The input as (lanes, C, H, W) and (C, H, W, OH, OW)."""
        dims = tuple(p_int(launch.params, k, self.name) for k in ("channels", "height", "width", "out_h", "out_w"))
        c, h, w = dims[:3]
        x = lane_flat(mem, launch.reads[0], c * h * w, self.name)
        return x[:, :c * h * w].reshape(x.shape[0], c, h, w), dims  # type: ignore[return-value]


@register_kernel
class AdaptiveAvgpoolKernel(AdaptiveKernel):
    """PyTorch's ``adaptive_average_pool`` (AdaptiveAveragePooling.cu): output (o_h, o_w) averages
    input rows [floor(o_h*H/OH), ceil((o_h+1)*H/OH)) and the columns likewise, ``sum / kH / kW``.
    PyTorch gives each block a plane and strides its threads over the outputs; modelled as one
    thread per output element (the per-output work is the same). Windows may differ in size
    (7 -> 3: 3, 3, 3 rows with overlap); the template counts the largest window, a thread of a
    smaller one executes fewer trips."""

    name: ClassVar[str] = "adaptive_avgpool"
    regs_allocated: ClassVar[int] = ptxas_registers("adaptive_avgpool")
    example_params = ({"channels": 1, "height": 3, "width": 3, "out_h": 2, "out_w": 2},)

    def run(self, mem: Mem, launch: Launch) -> None:
        x, (c, h, w, oh, ow) = self._planes(mem, launch)
        lanes = x.shape[0]
        out = torch.empty((lanes, c, oh, ow), dtype=x.dtype, device=x.device)
        for i, j, (h0, h1), (w0, w1) in adaptive_windows(oh, ow, h, w):
            acc = torch.zeros((lanes, c), dtype=x.dtype, device=x.device)
            for ih in range(h0, h1):       # sum += ptr_input[iw*istrideW], row by row, in order
                for iw in range(w0, w1):
                    acc = acc + x[:, :, ih, iw]
            out[:, :, i, j] = acc / f32(float(h1 - h0), x) / f32(float(w1 - w0), x)
        put(mem, launch.writes[0], out.reshape(lanes, -1), natural=(c, oh, ow))

    def _stream(self, params: Mapping[str, Any]) -> Stream:
        kh, kw = _adaptive_max_window(params, self.name)
        taps = kh * kw
        s = adaptive_window_head(Stream())
        s.add("GPR", "MOV", "mov:sum_init", 1, "value", "sum = 0")
        s.begin_loop(taps)
        s.add("GPR", "XMAD", "imad:in_index", 2 * taps, "index", "ih*W + iw from the window's first input")
        addr(s, "in", "input[index]", count=2 * taps)
        s.add("LD", "LDG", "ld:in", taps, "value", "one input of the window")
        s.add("FP32", "FADD", "fadd:sum", taps, "value", "sum += input, the running sum")
        loop(s, "iw", "iw over the window width", taps)
        loop(s, "ih", "ih over the window height", kh)
        s.end_loop()
        s.add("OTHERS", "I2F", "cvt:extent", 2, "value", "float(kH), float(kW), the divisors")
        fdiv(s, "avg_h", "sum / kH")
        fdiv(s, "out", "sum / kH / kW, the output")
        addr(s, "out", "output[id]")
        s.add("NODEST", "STG", "st:out", 1, "store", "stores the average")
        epilogue(s)
        s.reg("r_id", "index", "imad:index", "imad:index", "lea:addr_out")
        s.reg("r_ow", "index", "imod:ow", "imod:ow", "imad:bounds")
        s.reg("r_oh", "index", "imod:oh", "imod:oh", "imad:bounds")
        s.reg("r_plane", "index", "idiv:oh", "idiv:oh", "imad:in_base")
        s.reg("r_h0", "index", "ffma:fdiv_bounds", "ffma:fdiv_bounds", "imad:in_base")
        s.reg("r_w0", "index", "ffma:fdiv_bounds", "ffma:fdiv_bounds", "imad:in_base")
        s.reg("r_kh", "index", "iadd:extent", "iadd:extent", "cvt:extent")
        s.reg("r_kw", "index", "iadd:extent", "iadd:extent", "cvt:extent")
        s.reg("r_base", "index", "imad:in_base", "imad:in_base", "setp:loop_ih")
        s.reg("r_in_lo", "address", "lea:addr_in", "imad:in_index", "ld:in")
        s.reg("r_in_hi", "address", "lea:addr_in", "lea:addr_in", "ld:in", half=AddressHalf.HIGH)
        s.reg("r_x", "data", "ld:in", "ld:in", "fadd:sum")
        s.reg("r_sum", "accumulator", "fadd:sum", "mov:sum_init", "ffma:fdiv_avg_h")
        s.reg("r_ih", "loop_counter", "loop:ih", "mov:sum_init", "setp:loop_ih")
        s.reg("r_iw", "loop_counter", "loop:iw", "mov:sum_init", "setp:loop_iw")
        s.reg("r_avg_h", "data", "ffma:fdiv_avg_h", "ffma:fdiv_avg_h", "ffma:fdiv_out")
        s.reg("r_out", "data", "ffma:fdiv_out", "ffma:fdiv_out", "st:out")
        s.reg("r_out_lo", "address", "lea:addr_out", "lea:addr_out", "st:out")
        s.reg("r_out_hi", "address", "lea:addr_out", "lea:addr_out", "st:out", half=AddressHalf.HIGH)
        s.reg("p_bounds", "predicate", "setp:bounds", "setp:bounds", "bra:exit")
        s.reg("p_loop", "predicate", "setp:loop_iw", "setp:loop_iw", "bra:loop_ih")
        s.reg("p_fdiv", "predicate", "setp:fdiv_out", "setp:fdiv_avg_h", "bra:fdiv_out")
        return s


@register_kernel
class AdaptiveMaxpoolKernel(AdaptiveKernel):
    """PyTorch's ``adaptivemaxpool`` (AdaptiveMaxPooling2d.cu): output (o_h, o_w) is the max of
    input rows [floor(o_h*H/OH), ceil((o_h+1)*H/OH)) and the columns likewise (the same
    START/END_IND windows as ``adaptive_avgpool``), ``max`` from -inf, a tap taken when
    ``val > max || isnan(val)`` (so a NaN wins and then only a later NaN replaces it), row by
    row in order; the argmax (``ih*W + iw`` within the plane) goes to ``indices``, which PyTorch
    writes even when ``return_indices=False`` (int64 there; modelled as int32 like Darknet's
    ``indexes``). Modelled as one thread per output element, as ``adaptive_avgpool``."""

    name: ClassVar[str] = "adaptive_maxpool"
    regs_allocated: ClassVar[int] = ptxas_registers("adaptive_maxpool")
    example_params = ({"channels": 1, "height": 3, "width": 3, "out_h": 2, "out_w": 2},)

    def run(self, mem: Mem, launch: Launch) -> None:
        x, (c, h, w, oh, ow) = self._planes(mem, launch)
        lanes = x.shape[0]
        out = torch.empty((lanes, c, oh, ow), dtype=x.dtype, device=x.device)
        arg = torch.empty((lanes, c, oh, ow), dtype=torch.int32, device=x.device)
        for i, j, (h0, h1), (w0, w1) in adaptive_windows(oh, ow, h, w):
            best = torch.full((lanes, c), float("-inf"), dtype=x.dtype, device=x.device)
            bi = torch.full((lanes, c), h0 * w + w0, dtype=torch.int32, device=x.device)
            for ih in range(h0, h1):
                for iw in range(w0, w1):
                    v = x[:, :, ih, iw]
                    take = (v > best) | torch.isnan(v)
                    best = torch.where(take, v, best)
                    bi = torch.where(take, torch.full_like(bi, ih * w + iw), bi)
            out[:, :, i, j] = best
            arg[:, :, i, j] = bi
        put(mem, launch.writes[0], out.reshape(lanes, -1), natural=(c, oh, ow))
        if len(launch.writes) > 1:
            put(mem, launch.writes[1], arg.reshape(lanes, -1), natural=(c, oh, ow))

    def _stream(self, params: Mapping[str, Any]) -> Stream:
        kh, kw = _adaptive_max_window(params, self.name)
        taps = kh * kw
        s = adaptive_window_head(Stream())
        s.add("GPR", "MOV", "mov:max_init", 1, "value", "max = -INFINITY")
        s.add("GPR", "XMAD", "imad:argmax_init", 1, "value", "argmax = istart_h*W + istart_w")
        s.begin_loop(taps)
        s.add("GPR", "XMAD", "imad:in_index", 2 * taps, "index", "ih*W + iw from the window's first input")
        addr(s, "in", "input[index]", count=2 * taps)
        s.add("LD", "LDG", "ld:in", taps, "value", "one input of the window")
        s.add("PR", "FSETP", "setp:gt", taps, "predicate",
              "val > max: a flip keeps a smaller max or takes a smaller candidate (value and argmax)")
        s.add("PR", "FSETP", "setp:nan", taps, "predicate",
              "isnan(val) (val != val): a flip takes a non-NaN candidate, or lets a NaN lose")
        s.add("GPR", "XMAD", "imad:argmax", taps, "value", "(ih + istart_h)*W + iw + istart_w, the candidate's argmax")
        s.add("GPR", "SEL", "sel:argmax", taps, "value", "argmax = taken ? candidate : argmax")
        s.add("GPR", "SEL", "sel:max", taps, "value", "max = taken ? val : max (the running max)")
        loop(s, "iw", "iw over the window width", taps)
        loop(s, "ih", "ih over the window height", kh)
        s.end_loop()
        addr(s, "out", "output[id]")
        addr(s, "indices", "indices[id]")
        s.add("NODEST", "STG", "st:out", 1, "store", "stores the max")
        s.add("NODEST", "STG", "st:indices", 1, "store", "stores the argmax index within the plane")
        epilogue(s)
        s.reg("r_id", "index", "imad:index", "imad:index", "lea:addr_indices")
        s.reg("r_ow", "index", "imod:ow", "imod:ow", "imad:bounds")
        s.reg("r_oh", "index", "imod:oh", "imod:oh", "imad:bounds")
        s.reg("r_plane", "index", "idiv:oh", "idiv:oh", "imad:in_base")
        s.reg("r_h0", "index", "ffma:fdiv_bounds", "ffma:fdiv_bounds", "imad:argmax")
        s.reg("r_w0", "index", "ffma:fdiv_bounds", "ffma:fdiv_bounds", "imad:argmax")
        s.reg("r_kh", "index", "iadd:extent", "iadd:extent", "setp:loop_ih")
        s.reg("r_kw", "index", "iadd:extent", "iadd:extent", "setp:loop_iw")
        s.reg("r_base", "index", "imad:in_base", "imad:in_base", "setp:loop_ih")
        s.reg("r_in_lo", "address", "lea:addr_in", "imad:in_index", "ld:in")
        s.reg("r_in_hi", "address", "lea:addr_in", "lea:addr_in", "ld:in", half=AddressHalf.HIGH)
        s.reg("r_x", "data", "ld:in", "ld:in", "sel:max")
        s.reg("r_cand", "index", "imad:argmax", "imad:argmax", "sel:argmax")
        s.reg("r_max", "accumulator", "sel:max", "mov:max_init", "st:out")
        s.reg("r_argmax", "accumulator", "sel:argmax", "imad:argmax_init", "st:indices")
        s.reg("r_ih", "loop_counter", "loop:ih", "mov:max_init", "setp:loop_ih")
        s.reg("r_iw", "loop_counter", "loop:iw", "mov:max_init", "setp:loop_iw")
        s.reg("r_out_lo", "address", "lea:addr_out", "lea:addr_out", "st:out")
        s.reg("r_out_hi", "address", "lea:addr_out", "lea:addr_out", "st:out", half=AddressHalf.HIGH)
        s.reg("p_bounds", "predicate", "setp:bounds", "setp:bounds", "bra:exit")
        s.reg("p_gt", "predicate", "setp:gt", "setp:gt", "sel:max")
        s.reg("p_nan", "predicate", "setp:nan", "setp:nan", "sel:max")
        s.reg("p_loop", "predicate", "setp:loop_iw", "setp:loop_iw", "bra:loop_ih")
        return s
