"""The transposed convolution's scatter step: ``col2im`` (Darknet's/Caffe's col2im_gpu_kernel).

A ``ConvTranspose2d`` runs, per image, the GEMM columns = W^T · X (W the (C_in, C_out*k*k)
weight matrix, X the (C_in, H*W) input) and then ``col2im``: one thread per output pixel sums
every column entry that lands on it. The sum's order is the CUDA loop's (rows of the column
map outer, columns inner, both ascending, from 0), and float32 addition is not associative:
``F.fold`` adds the same entries kernel offset by kernel offset (the reverse order per axis),
so ``run`` gathers the taps in the thread's own order instead, and every value it writes is
what the per-thread replay (``faults.programs_layers``) computes fault-free.
"""
from __future__ import annotations

from typing import Any, ClassVar, Mapping

import torch

from kernelfi._utils import KernelfiError, c_div
from kernelfi.types import AddressHalf, Launch

from ._base import BLOCK, lane_flat, p_int, put, ptxas_registers, register_kernel
from ._sass import Stream, StreamKernel, addr, epilogue, idiv, loop, prologue_1d

Mem = dict[str, torch.Tensor]


def col2im_geometry(params: Mapping[str, Any], kernel: str = "col2im") -> dict[str, int]:
    """A col2im launch's geometry, checked: the image (channels, height, width), the square
    ksize/stride/pad and the column map (height_col, width_col) the forward convolution of
    that image would give (Darknet's ``(height + 2*pad - ksize)/stride + 1``)."""
    g = {k: p_int(params, k, kernel) for k in ("channels", "height", "width", "ksize", "stride", "pad",
                                                "height_col", "width_col")}
    for axis, size in (("height_col", g["height"]), ("width_col", g["width"])):
        want = c_div(size + 2 * g["pad"] - g["ksize"], g["stride"]) + 1
        if g[axis] != want:
            raise KernelfiError(f"kernel '{kernel}': {axis}={g[axis]} but the geometry gives {want}")
    return g


def col_range(x: int, ksize: int, stride: int, n_col: int) -> tuple[int, int]:
    """[start, end) of the column positions whose window covers padded coordinate ``x``:
    the thread's ``w_col_start``/``w_col_end`` (and the same for rows)."""
    start = 0 if x < ksize else c_div(x - ksize, stride) + 1
    return start, min(c_div(x, stride) + 1, n_col)


def max_taps(size: int, pad: int, ksize: int, stride: int, n_col: int) -> int:
    """The most column positions any output coordinate of an axis sums (the template's trips)."""
    return max((max(0, e - s) for s, e in (col_range(x + pad, ksize, stride, n_col) for x in range(size))),
               default=0)


#: Gather plans of ``Col2imKernel.run``, per geometry and device: index tensors, built once.
_PLANS: dict[tuple[Any, ...], list[tuple[torch.Tensor, torch.Tensor]]] = {}


def _plan(g: Mapping[str, int], device: torch.device) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(column index, valid) per trip (i, j) of the thread's two loops, i outer: for output
    pixel p, trip (i, j) adds column entry index[p] when valid[p] (h_col = h_col_start + i,
    w_col = w_col_start + j inside their ends)."""
    geo = tuple(g[k] for k in ("channels", "height", "width", "ksize", "stride", "pad", "height_col", "width_col"))
    key = (*geo, str(device))
    if key in _PLANS:
        return _PLANS[key]
    c, h, w, ks, st, pad, hc, wc = geo
    th, tw = max_taps(h, pad, ks, st, hc), max_taps(w, pad, ks, st, wc)
    hh = torch.arange(h) + pad
    ww = torch.arange(w) + pad
    rows = [col_range(int(x), ks, st, hc) for x in hh]
    cols = [col_range(int(x), ks, st, wc) for x in ww]
    h0 = torch.tensor([r[0] for r in rows]); h1 = torch.tensor([r[1] for r in rows])
    w0 = torch.tensor([r[0] for r in cols]); w1 = torch.tensor([r[1] for r in cols])
    cc = torch.arange(c).view(c, 1, 1)
    plan = []
    for i in range(th):
        for j in range(tw):
            hcol = (h0 + i).view(1, h, 1)
            wcol = (w0 + j).view(1, 1, w)
            valid = ((h0 + i) < h1).view(1, h, 1) & ((w0 + j) < w1).view(1, 1, w)
            kh = hh.view(1, h, 1) - hcol * st
            kw = ww.view(1, 1, w) - wcol * st
            idx = ((cc * ks + kh) * ks + kw) * (hc * wc) + hcol * wc + wcol
            valid = valid.expand(c, h, w)
            plan.append((torch.where(valid, idx, torch.zeros_like(idx)).reshape(-1).to(device),
                         valid.reshape(-1).to(device)))
    _PLANS[key] = plan
    return plan


@register_kernel
class Col2imKernel(StreamKernel):
    """``col2im_gpu_kernel``: one thread per image element (c, h, w) sums the column entries
    of every window that covers it, ``val += data_col[(c*k*k + kh*k + kw)*hc*wc + h_col*wc +
    w_col]`` for h_col, w_col in the covering ranges (kh = h + pad - h_col*stride), and stores
    ``data_im[index] = val`` (Caffe's and PyTorch's store; Darknet's adds into an output it
    filled with zeros first, the same value). The template counts the largest number of
    covering windows (``max_taps`` per axis); a thread nearer the edge runs fewer trips."""

    name: ClassVar[str] = "col2im"
    regs_allocated: ClassVar[int] = ptxas_registers("col2im")
    example_params = ({"channels": 1, "height": 4, "width": 4, "ksize": 3, "stride": 2, "pad": 1,
                       "height_col": 2, "width_col": 2},)

    def run(self, mem: Mem, launch: Launch) -> None:
        g = col2im_geometry(launch.params, self.name)
        c, h, w = g["channels"], g["height"], g["width"]
        n_col = c * g["ksize"] ** 2 * g["height_col"] * g["width_col"]
        cols = lane_flat(mem, launch.reads[0], n_col, self.name)
        val = torch.zeros((cols.shape[0], c * h * w), dtype=torch.float32, device=cols.device)
        for idx, valid in _plan(g, cols.device):
            val = torch.where(valid, val + cols[:, idx], val)   # val += entry, trip by trip
        put(mem, launch.writes[0], val, natural=(c, h, w))

    def _threads(self, params: Mapping[str, Any]) -> int:
        return p_int(params, "channels", self.name) * p_int(params, "height", self.name) * p_int(params, "width", self.name)

    def grid(self, params: Mapping[str, Any]) -> tuple[int, int, int]:
        return ((self._threads(params) + BLOCK - 1) // BLOCK, 1, 1)  # (num_kernels + BLOCK - 1) / BLOCK

    def _stream(self, params: Mapping[str, Any]) -> Stream:
        g = col2im_geometry(params, self.name)
        th = max_taps(g["height"], g["pad"], g["ksize"], g["stride"], g["height_col"])
        tw = max_taps(g["width"], g["pad"], g["ksize"], g["stride"], g["width_col"])
        taps = th * tw
        s = Stream()
        prologue_1d(s, "image element")
        idiv(s, "w", "index / width", mod="w = index % width")
        idiv(s, "h", "c = (index/width) / height", mod="h = (index/width) % height")
        s.add("GPR", "IADD", "iadd:pad", 2, "index", "w += pad, h += pad: the padded coordinates")
        s.add("PR", "ISETP", "setp:start", 2, "predicate",
              "w < ksize, h < ksize: a flip starts the column range at 0 or past the first covering window")
        idiv(s, "start", "(w - ksize)/stride and (h - ksize)/stride, the first covering windows")
        idiv(s, "end", "w/stride and h/stride, the last covering windows")
        s.add("GPR", "IADD", "iadd:range", 4, "index", "w_col_start/h_col_start (+1) and w_col_end/h_col_end (+1)")
        s.add("GPR", "IMNMX", "imnmx:end", 2, "index", "w_col_end = min(., width_col), h_col_end = min(., height_col)")
        s.add("GPR", "XMAD", "imad:offset", 6, "index",
              "offset = (c*ksize*ksize + h*ksize + w)*height_col*width_col and the two step coefficients")
        s.add("GPR", "MOV", "mov:val_init", 1, "value", "val = 0")
        s.begin_loop(taps)
        s.add("GPR", "XMAD", "imad:col_index", 2 * taps, "index",
              "offset + h_col*coeff_h_col + w_col*coeff_w_col: a corruption loads another column entry")
        addr(s, "col", "data_col[index]", count=2 * taps)
        s.add("LD", "LDG", "ld:col", taps, "value", "one column entry: one weight times input product sum")
        s.add("FP32", "FADD", "fadd:val", taps, "value", "val += entry, the running sum")
        loop(s, "w_col", "w_col over the covering windows", taps)
        loop(s, "h_col", "h_col over the covering windows", th)
        s.end_loop()
        addr(s, "im", "data_im[index]")
        s.add("NODEST", "STG", "st:im", 1, "store", "stores the output element")
        epilogue(s)
        s.reg("r_index", "index", "imad:index", "imad:index", "lea:addr_im")
        s.reg("r_w", "index", "imod:w", "imod:w", "imad:offset")
        s.reg("r_h", "index", "imod:h", "imod:h", "imad:offset")
        s.reg("r_c", "index", "idiv:h", "idiv:h", "imad:offset")
        s.reg("r_w_start", "index", "iadd:range", "iadd:range", "setp:loop_w_col")
        s.reg("r_h_start", "index", "iadd:range", "iadd:range", "setp:loop_h_col")
        s.reg("r_w_end", "index", "imnmx:end", "imnmx:end", "setp:loop_w_col")
        s.reg("r_h_end", "index", "imnmx:end", "imnmx:end", "setp:loop_h_col")
        s.reg("r_offset", "index", "imad:offset", "imad:offset", "imad:col_index")
        s.reg("r_col_lo", "address", "lea:addr_col", "imad:col_index", "ld:col")
        s.reg("r_col_hi", "address", "lea:addr_col", "lea:addr_col", "ld:col", half=AddressHalf.HIGH)
        s.reg("r_x", "data", "ld:col", "ld:col", "fadd:val")
        s.reg("r_val", "accumulator", "fadd:val", "mov:val_init", "st:im")
        s.reg("r_h_col", "loop_counter", "loop:h_col", "mov:val_init", "setp:loop_h_col")
        s.reg("r_w_col", "loop_counter", "loop:w_col", "mov:val_init", "setp:loop_w_col")
        s.reg("r_im_lo", "address", "lea:addr_im", "lea:addr_im", "st:im")
        s.reg("r_im_hi", "address", "lea:addr_im", "lea:addr_im", "st:im", half=AddressHalf.HIGH)
        s.reg("p_bounds", "predicate", "setp:bounds", "setp:bounds", "bra:exit")
        s.reg("p_loop", "predicate", "setp:loop_w_col", "setp:loop_w_col", "bra:loop_h_col")
        return s
