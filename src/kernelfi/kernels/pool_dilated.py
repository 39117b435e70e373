"""PyTorch's ``max_pool_forward_nchw`` (DilatedMaxPool2d.cu), the kernel of a *dilated*
``MaxPool2d`` / ``F.max_pool2d(dilation=d)``: Darknet's maxpool has no dilation, so only
dilated pools launch this (undilated ones keep Darknet's ``forward_maxpool``, unchanged).

One thread per output element: window start ``hstart = oh*stride - pad``, end
``hend = min(hstart + (k - 1)*d + 1, H)``, ``while (hstart < 0) hstart += d`` (and the columns
likewise), ``max`` from -inf and ``argmax = hstart*W + wstart``, the taps ``h = hstart, hstart + d,
... < hend`` row by row, a tap taken when ``val > max || isnan(val)``; the output and the argmax
(int64 in PyTorch, int32 here, like Darknet's ``indexes``) are stored.
"""
from __future__ import annotations

from typing import Any, ClassVar, Mapping

import torch

from kernelfi.types import AddressHalf, Launch

from ._base import lane_flat, p_int, put, ptxas_registers, register_kernel
from ._sass import Stream, addr, epilogue, idiv, loop, prologue_1d
from .pool import PlaneOutputKernel

Mem = dict[str, torch.Tensor]
KEYS = ("channels", "height", "width", "size", "stride", "pad", "dilation", "out_h", "out_w")


def dilated_start(start: int, dilation: int) -> int:
    """``while (start < 0) start += dilation``: the first tap inside the input."""
    return start + dilation * (-(start // dilation)) if start < 0 else start


@register_kernel
class DilatedMaxpoolKernel(PlaneOutputKernel):
    """``max_pool_forward_nchw``: one thread per output element, a size×size window dilated by d."""

    name: ClassVar[str] = "max_pool_nchw"
    regs_allocated: ClassVar[int] = ptxas_registers("max_pool_nchw")
    example_params = ({"channels": 1, "height": 5, "width": 5, "size": 2, "stride": 1, "pad": 1, "dilation": 2,
                       "out_h": 3, "out_w": 3},)

    def run(self, mem: Mem, launch: Launch) -> None:
        c, h, w, k, st, pad, d, oh, ow = (p_int(launch.params, key, self.name) for key in KEYS)
        x = lane_flat(mem, launch.reads[0], c * h * w, self.name)
        lanes = x.shape[0]
        x = x[:, :c * h * w].reshape(lanes, c, h, w)
        dev = x.device
        rows = st * torch.arange(oh, device=dev) - pad
        cols = st * torch.arange(ow, device=dev) - pad
        r0 = torch.tensor([dilated_start(int(r), d) for r in rows], device=dev)
        c0 = torch.tensor([dilated_start(int(q), d) for q in cols], device=dev)
        best = torch.full((lanes, c, oh, ow), float("-inf"), dtype=x.dtype, device=dev)
        arg = (r0.view(oh, 1) * w + c0.view(1, ow)).to(torch.int32).expand(lanes, c, oh, ow).clone()
        for di in range(k):          # every tap in PyTorch's order; those outside the input are skipped
            r = rows + di * d
            for dj in range(k):
                q = cols + dj * d
                valid = ((r >= 0) & (r < h)).view(oh, 1) & ((q >= 0) & (q < w)).view(1, ow)
                val = x[:, :, r.clamp(0, h - 1)][:, :, :, q.clamp(0, w - 1)]
                take = valid & ((val > best) | torch.isnan(val))
                best = torch.where(take, val, best)
                arg = torch.where(take, (r.view(oh, 1) * w + q.view(1, ow)).to(torch.int32), arg)
        put(mem, launch.writes[0], best.reshape(lanes, -1), natural=(c, oh, ow))
        if len(launch.writes) > 1:
            put(mem, launch.writes[1], arg.reshape(lanes, -1), natural=(c, oh, ow))

    def _stream(self, params: Mapping[str, Any]) -> Stream:
        k = p_int(params, "size", self.name)
        taps = k * k
        s = Stream()
        prologue_1d(s, "output element index")
        idiv(s, "ow", "index / pooled_width", mod="pw = index % pooled_width")
        idiv(s, "oh", "index / pooled_width / pooled_height", mod="ph = ... % pooled_height")
        idiv(s, "c", "index / pooled_width / pooled_height / channels", mod="c = ... % channels")
        s.add("GPR", "XMAD", "imad:start", 2, "index", "hstart = ph*stride - pad, wstart = pw*stride - pad")
        s.add("GPR", "XMAD", "imad:end", 2, "index", "hstart + (k - 1)*dilation + 1, wstart likewise")
        s.add("GPR", "IMNMX", "imnmx:end", 2, "index", "hend = min(..., height), wend = min(..., width)")
        s.add("GPR", "IADD", "iadd:start", 2, "index",
              "while (hstart < 0) hstart += dilation (wstart likewise), one IADD per axis: the first tap inside")
        s.add("GPR", "XMAD", "imad:plane", 2, "index", "the plane's first input (n*channels + c)*height*width")
        s.add("GPR", "MOV", "mov:max_init", 1, "value", "maxval = -INFINITY")
        s.add("GPR", "XMAD", "imad:argmax_init", 1, "value", "maxidx = hstart*width + wstart")
        s.begin_loop(taps)
        s.add("GPR", "XMAD", "imad:in_index", taps, "index", "h*width + w, the tap's (and argmax's) index in the plane")
        addr(s, "in", "bottom_data[h*width + w]", count=2 * taps)
        s.add("LD", "LDG", "ld:in", taps, "value", "one tap of the dilated window")
        s.add("PR", "FSETP", "setp:gt", taps, "predicate",
              "val > maxval: a flip keeps a smaller max or takes a smaller candidate (value and argmax)")
        s.add("PR", "FSETP", "setp:nan", taps, "predicate",
              "isnan(val) (val != val): a flip takes a non-NaN candidate, or lets a NaN lose")
        s.add("GPR", "SEL", "sel:argmax", taps, "value", "maxidx = taken ? h*width + w : maxidx")
        s.add("GPR", "SEL", "sel:max", taps, "value", "maxval = taken ? val : maxval (the running max)")
        loop(s, "w", "w += dilation over the window's columns", taps)
        loop(s, "h", "h += dilation over the window's rows", k)
        s.end_loop()
        addr(s, "out", "top_data[index]")
        addr(s, "indices", "top_mask[index]")
        s.add("NODEST", "STG", "st:out", 1, "store", "stores the max")
        s.add("NODEST", "STG", "st:indices", 1, "store", "stores the argmax index within the plane")
        epilogue(s)
        s.reg("r_id", "index", "imad:index", "imad:index", "lea:addr_indices")
        s.reg("r_pw", "index", "imod:ow", "imod:ow", "imad:start")
        s.reg("r_ph", "index", "imod:oh", "imod:oh", "imad:start")
        s.reg("r_c", "index", "imod:c", "imod:c", "imad:plane")
        s.reg("r_n", "index", "idiv:c", "idiv:c", "imad:plane")
        s.reg("r_hstart", "index", "iadd:start", "imad:start", "setp:loop_h")
        s.reg("r_wstart", "index", "iadd:start", "imad:start", "setp:loop_h")
        s.reg("r_hend", "index", "imnmx:end", "imad:end", "setp:loop_h")
        s.reg("r_wend", "index", "imnmx:end", "imad:end", "setp:loop_h")
        s.reg("r_plane", "index", "imad:plane", "imad:plane", "setp:loop_h")
        s.reg("r_index", "index", "imad:in_index", "imad:in_index", "sel:argmax")
        s.reg("r_in_lo", "address", "lea:addr_in", "lea:addr_in", "ld:in")
        s.reg("r_in_hi", "address", "lea:addr_in", "lea:addr_in", "ld:in", half=AddressHalf.HIGH)
        s.reg("r_x", "data", "ld:in", "ld:in", "sel:max")
        s.reg("r_max", "accumulator", "sel:max", "mov:max_init", "st:out")
        s.reg("r_argmax", "accumulator", "sel:argmax", "imad:argmax_init", "st:indices")
        s.reg("r_h", "loop_counter", "loop:h", "mov:max_init", "setp:loop_h")
        s.reg("r_w", "loop_counter", "loop:w", "mov:max_init", "setp:loop_w")
        s.reg("r_out_lo", "address", "lea:addr_out", "lea:addr_out", "st:out")
        s.reg("r_out_hi", "address", "lea:addr_out", "lea:addr_out", "st:out", half=AddressHalf.HIGH)
        s.reg("p_bounds", "predicate", "setp:bounds", "setp:bounds", "bra:exit")
        s.reg("p_gt", "predicate", "setp:gt", "setp:gt", "sel:max")
        s.reg("p_nan", "predicate", "setp:nan", "setp:nan", "sel:max")
        s.reg("p_loop", "predicate", "setp:loop_w", "setp:loop_w", "bra:loop_h")
        return s
