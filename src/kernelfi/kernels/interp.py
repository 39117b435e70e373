"""PyTorch's ``upsample_bilinear2d_out_frame`` (aten/src/ATen/native/cuda/UpSampleBilinear2d.cu):
bilinear upsampling, ``nn.Upsample(mode='bilinear')`` / ``F.interpolate(mode='bilinear')``.
Darknet has no bilinear upsample, so models brought from PyTorch get PyTorch's own kernel.

One thread per output pixel (h2, w2) that loops over the planes (channels; a lane is one
sample). The source coordinate is ``area_pixel_compute_source_index``: ``scale*dst`` with
align_corners, else ``max(scale*(dst + 0.5) - 0.5, 0)``; ``h1 = (int)h1r``, ``h1p = h1 < H-1``,
``h1lambda = h1r - h1``, ``h0lambda = 1 - h1lambda`` (columns likewise), and each plane's output
``h0lambda*(w0lambda*x00 + w1lambda*x01) + h1lambda*(w0lambda*x10 + w1lambda*x11)`` in float32.
nvcc (-fmad=true) contracts that into FMUL + FFMA per row and FMUL + FFMA for the output
(``fma(w0, x00, w1*x01)``, ..., ``fma(h0, top, h1*bottom)``) and ``scale*(dst + 0.5) - 0.5``
into one FFMA: the PTX of kernels/cuda/interp.cu shows it, and ``run`` rounds the same way
(``fma_f32``), so the replay of every thread equals ``run`` bit for bit. PyTorch's CPU kernel
(separable passes) rounds differently: within a couple of float32 ulps of the output, not
bitwise.

The scale (``rheight``/``rwidth``, launch params, float32) is PyTorch's
``area_pixel_compute_scale``: ``(in - 1)/(out - 1)`` with align_corners (0 for a one-pixel
output), else ``1/scale_factor`` (computed in double, then float) when a scale factor reaches
the kernel, else ``in/out`` (:func:`bilinear_scale`).
"""
from __future__ import annotations

from typing import Any, ClassVar, Mapping

import numpy as np
import torch

from kernelfi.types import AddressHalf, Launch

from ._base import f32, fma_f32, lane_flat, p_int, put, ptxas_registers, register_kernel
from ._sass import Stream, StreamKernel, addr, epilogue, idiv, loop, prologue_1d

Mem = dict[str, torch.Tensor]
KN = "upsample_bilinear"


def bilinear_scale(in_size: int, out_size: int, align_corners: bool, scale_factor: float | None) -> float:
    """PyTorch's ``area_pixel_compute_scale`` in float32 (returned as the float it rounds to):
    the exact constant matters bit for bit (1/3 as float differs from 4/12's float division)."""
    if align_corners:
        return float(np.float32(in_size - 1) / np.float32(out_size - 1)) if out_size > 1 else 0.0
    if scale_factor is not None and scale_factor > 0:
        return float(np.float32(1.0 / float(scale_factor)))
    return float(np.float32(in_size) / np.float32(out_size))


def source_index(scale: torch.Tensor, dst: torch.Tensor, align_corners: bool) -> torch.Tensor:
    """``area_pixel_compute_source_index`` (linear): FMUL with align_corners, else FADD 0.5,
    FFMA ``scale*(dst + 0.5) - 0.5`` and FMNMX with 0."""
    d = dst.to(scale.dtype)
    if align_corners:
        return scale * d
    r = fma_f32(d + 0.5, scale.expand_as(d), torch.full_like(d, -0.5))
    return torch.clamp_min(r, 0.0)


def _axis(scale: float, n_out: int, n_in: int, align: bool, like: torch.Tensor
          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per output row (or column): the first source index, its +1 step (0 at the far edge),
    lambda1 and lambda0."""
    r = source_index(f32(scale, like), torch.arange(n_out, device=like.device), align)
    i1 = r.to(torch.int64)                          # (int) truncates; r >= 0
    step = (i1 < n_in - 1).to(torch.int64)
    l1 = r - i1.to(r.dtype)
    return i1, step, l1, 1.0 - l1


def bilinear_params(params: Mapping[str, Any], kernel: str) -> tuple[int, int, int, int, int]:
    """(channels, height, width, out_h, out_w) of a launch."""
    return tuple(p_int(params, k, kernel) for k in ("channels", "height", "width", "out_h", "out_w"))  # type: ignore[return-value]


@register_kernel
class UpsampleBilinearKernel(StreamKernel):
    """``upsample_bilinear2d_out_frame``: one thread per output pixel, a loop over the planes."""

    name: ClassVar[str] = KN
    regs_allocated: ClassVar[int] = ptxas_registers(KN)
    example_params = ({"channels": 1, "height": 2, "width": 2, "out_h": 4, "out_w": 4, "align_corners": False,
                       "rheight": 0.5, "rwidth": 0.5},
                      {"channels": 1, "height": 2, "width": 2, "out_h": 4, "out_w": 4, "align_corners": True,
                       "rheight": bilinear_scale(2, 4, True, None), "rwidth": bilinear_scale(2, 4, True, None)})

    def run(self, mem: Mem, launch: Launch) -> None:
        p = launch.params
        c, h, w, oh, ow = bilinear_params(p, self.name)
        align = bool(p.get("align_corners", False))
        x = lane_flat(mem, launch.reads[0], c * h * w, self.name)
        lanes = x.shape[0]
        x = x[:, :c * h * w].reshape(lanes, c, h, w)
        h1, hp, hl1, hl0 = _axis(float(p["rheight"]), oh, h, align, x)
        w1, wp, wl1, wl0 = _axis(float(p["rwidth"]), ow, w, align, x)
        rows0, rows1 = h1.view(oh, 1), (h1 + hp).view(oh, 1)
        cols0, cols1 = w1.view(1, ow), (w1 + wp).view(1, ow)
        x00, x01 = x[:, :, rows0, cols0], x[:, :, rows0, cols1]
        x10, x11 = x[:, :, rows1, cols0], x[:, :, rows1, cols1]
        m0, m1 = wl0.view(1, 1, 1, ow).expand_as(x00), wl1.view(1, 1, 1, ow).expand_as(x00)
        l0, l1 = hl0.view(1, 1, oh, 1).expand_as(x00), hl1.view(1, 1, oh, 1).expand_as(x00)
        top = fma_f32(m0, x00, m1 * x01)
        bottom = fma_f32(m0, x10, m1 * x11)
        y = fma_f32(l0, top, l1 * bottom)
        put(mem, launch.writes[0], y.reshape(lanes, -1), natural=(c, oh, ow))

    def _threads(self, params: Mapping[str, Any]) -> int:
        return p_int(params, "out_h", self.name) * p_int(params, "out_w", self.name)

    def _stream(self, params: Mapping[str, Any]) -> Stream:
        c = p_int(params, "channels", self.name)
        align = bool(params.get("align_corners", False))
        s = Stream()
        prologue_1d(s, "output pixel index")
        idiv(s, "ow", "h2 = index / out_w", mod="w2 = index % out_w")
        s.add("OTHERS", "I2F", "cvt:dst", 2, "value", "float(h2), float(w2)")
        if align:
            s.add("FP32", "FMUL", "fmul:src", 2, "value", "h1r = rheight*h2, w1r = rwidth*w2 (align_corners)")
        else:
            s.add("FP32", "FADD", "fadd:src_half", 2, "value", "h2 + 0.5, w2 + 0.5")
            s.add("FP32", "FFMA", "ffma:src", 2, "value", "rheight*(h2 + 0.5) - 0.5 (and the column's)")
            s.add("FP32", "FMNMX", "fmnmx:src", 2, "value", "max(source, 0): h1r, w1r")
        s.add("OTHERS", "F2I", "cvt:src_int", 2, "index", "h1 = (int)h1r, w1 = (int)w1r (truncation)")
        s.add("PR", "ISETP", "setp:step", 2, "predicate",
              "h1 < H - 1, w1 < W - 1: the +1 step to the second row/column (a flip reads the same one or past the edge)")
        s.add("OTHERS", "I2F", "cvt:lambda", 2, "value", "float(h1), float(w1)")
        s.add("FP32", "FADD", "fadd:lambda1", 2, "value", "h1lambda = h1r - h1, w1lambda = w1r - w1")
        s.add("FP32", "FADD", "fadd:lambda0", 2, "value", "h0lambda = 1 - h1lambda, w0lambda = 1 - w1lambda")
        s.begin_loop(c)
        s.add("GPR", "XMAD", "imad:in_index", 4 * c, "index",
              "the four taps' indices plane*H*W + (h1 + {0, h1p})*W + w1 + {0, w1p}")
        addr(s, "in", "input[tap]", count=8 * c)
        s.add("LD", "LDG", "ld:in", 4 * c, "value", "x00, x01, x10, x11 (each a load of its own)")
        s.add("FP32", "FMUL", "fmul:tap", 2 * c, "value", "w1lambda*x01, w1lambda*x11")
        s.add("FP32", "FFMA", "ffma:row", 2 * c, "value", "top = w0lambda*x00 + w1lambda*x01, bottom likewise")
        s.add("FP32", "FMUL", "fmul:out", c, "value", "h1lambda*bottom")
        s.add("FP32", "FFMA", "ffma:out", c, "value", "h0lambda*top + h1lambda*bottom, the output")
        s.add("GPR", "XMAD", "imad:out_index", c, "index", "(plane*out_h + h2)*out_w + w2")
        addr(s, "out", "output[plane][h2][w2]", count=2 * c)
        s.add("NODEST", "STG", "st:out", c, "store", "stores the output pixel of the plane")
        loop(s, "c", "c over the planes", c)
        s.end_loop()
        epilogue(s)
        src = "fmul:src" if align else "fmnmx:src"
        s.reg("r_id", "index", "imad:index", "imad:index", "idiv:ow")
        s.reg("r_h2", "index", "idiv:ow", "idiv:ow", "setp:loop_c")
        s.reg("r_w2", "index", "imod:ow", "imod:ow", "setp:loop_c")
        s.reg("r_dst_h", "data", "cvt:dst", "cvt:dst", src)
        s.reg("r_dst_w", "data", "cvt:dst", "cvt:dst", src)
        s.reg("r_h1r", "data", src, src, "fadd:lambda1")
        s.reg("r_w1r", "data", src, src, "fadd:lambda1")
        s.reg("r_h1", "index", "cvt:src_int", "cvt:src_int", "setp:loop_c")
        s.reg("r_w1", "index", "cvt:src_int", "cvt:src_int", "setp:loop_c")
        s.reg("r_h1l", "data", "fadd:lambda1", "fadd:lambda1", "setp:loop_c")
        s.reg("r_w1l", "data", "fadd:lambda1", "fadd:lambda1", "setp:loop_c")
        s.reg("r_h0l", "data", "fadd:lambda0", "fadd:lambda0", "setp:loop_c")
        s.reg("r_w0l", "data", "fadd:lambda0", "fadd:lambda0", "setp:loop_c")
        s.reg("r_index", "index", "imad:in_index", "imad:in_index", "lea:addr_in")
        s.reg("r_in_lo", "address", "lea:addr_in", "lea:addr_in", "ld:in")
        s.reg("r_in_hi", "address", "lea:addr_in", "lea:addr_in", "ld:in", half=AddressHalf.HIGH)
        s.reg("r_x0", "data", "ld:in", "ld:in", "ffma:row")
        s.reg("r_x1", "data", "ld:in", "ld:in", "fmul:tap")
        s.reg("r_tap", "data", "fmul:tap", "fmul:tap", "ffma:row")
        s.reg("r_top", "data", "ffma:row", "ffma:row", "ffma:out")
        s.reg("r_bottom", "data", "ffma:row", "ffma:row", "fmul:out")
        s.reg("r_prod", "data", "fmul:out", "fmul:out", "ffma:out")
        s.reg("r_out", "data", "ffma:out", "ffma:out", "st:out")
        s.reg("r_out_lo", "address", "lea:addr_out", "imad:out_index", "st:out")
        s.reg("r_out_hi", "address", "lea:addr_out", "lea:addr_out", "st:out", half=AddressHalf.HIGH)
        s.reg("r_c", "loop_counter", "loop:c", "fadd:lambda0", "setp:loop_c")
        s.reg("p_bounds", "predicate", "setp:bounds", "setp:bounds", "bra:exit")
        s.reg("p_step", "predicate", "setp:step", "setp:step", "imad:in_index")
        s.reg("p_loop", "predicate", "setp:loop_c", "setp:loop_c", "bra:loop_c")
        return s
