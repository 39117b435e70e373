"""Running a fused unit on a window of its output plane (the receptive-field cone).

A fault that leaves one element of a feature map corrupted can only reach, one layer later, the
outputs whose receptive field covers it. Campaigns compute only that window: the unit runs on a
crop of its input (the corrupted patch pasted onto the golden values, the halo padded exactly
as the full-tensor run pads) and the rest of the output is the golden one. This is exact only
when the primitive computes each output element the same way whatever the extent of the tensor
around it; ``CropUnit.verify`` checks that on the golden data of each unit once per campaign,
and units that fail (or kinds the cone does not cover: connected layers, routes, softmax...)
run whole.

A ``Box`` is a half-open window ``(y0, y1, x0, x1)`` of a (C, H, W) plane, all channels.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from kernelfi.kernels import conv1x1, conv1x1_cols, lane_conv2d, square_im2col
from kernelfi.lowering.engine import Program
from kernelfi.lowering.fastpath import Unit, epilogue, launch_activation, maxpool_window, relu_like, shared_weight
from kernelfi.types import Trace

Box = tuple[int, int, int, int]
Memory = dict[str, torch.Tensor]


def union(a: Box | None, b: Box | None) -> Box | None:
    if a is None:
        return b
    if b is None:
        return a
    return (min(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), max(a[3], b[3]))


def area(b: Box) -> int:
    return (b[1] - b[0]) * (b[3] - b[2])


@dataclass(frozen=True)
class Window:
    """One spatial axis of a sliding window: output o reads inputs start(o) + t*dil, t < size."""

    size: int
    stride: int
    offset: int   # input index of output 0's first tap
    dil: int
    n_in: int
    n_out: int

    def outputs(self, a: int, b: int) -> tuple[int, int]:
        """Outputs [lo, hi) that read any input in [a, b)."""
        span = (self.size - 1) * self.dil
        lo = -((self.offset + span - a) // self.stride)  # ceil((a - offset - span) / stride)
        hi = (b - 1 - self.offset) // self.stride + 1
        return max(lo, 0), min(hi, self.n_out)

    def inputs(self, lo: int, hi: int) -> tuple[int, int]:
        """Input range [a, b) (may reach into the padding) that outputs [lo, hi) read."""
        return lo * self.stride + self.offset, (hi - 1) * self.stride + self.offset + (self.size - 1) * self.dil + 1


@dataclass(frozen=True)
class CropUnit:
    """A fused unit the cone can run on a window: a convolution layer, a max-pool or a shortcut."""

    kind: str                       # "conv", "maxpool" or "shortcut"
    unit: Unit
    inputs: tuple[str, ...]         # buffers read (a shortcut reads two)
    output: str
    in_chw: tuple[int, int, int]
    out_chw: tuple[int, int, int]
    win_y: Window | None = None     # None: elementwise
    win_x: Window | None = None

    def out_box(self, box: Box) -> Box | None:
        """The output window a corrupted input window can reach (None: none)."""
        if self.win_y is None or self.win_x is None:
            return box
        y0, y1 = self.win_y.outputs(box[0], box[1])
        x0, x1 = self.win_x.outputs(box[2], box[3])
        return (y0, y1, x0, x1) if y0 < y1 and x0 < x1 else None

    def in_box(self, out: Box) -> Box:
        if self.win_y is None or self.win_x is None:
            return out
        return (*self.win_y.inputs(out[0], out[1]), *self.win_x.inputs(out[2], out[3]))

    def run(self, mem: Memory, crops: list[torch.Tensor]) -> torch.Tensor | None:
        """Outputs (lanes, C, h, w) of the window whose padded input crops are ``crops``."""
        ls = {l.kernel: l for l in self.unit.launches}
        if self.kind == "maxpool":
            p = ls["forward_maxpool"].params
            return maxpool_window(crops[0], int(p["size"]), int(p["stride"]))
        if self.kind == "shortcut":
            y = torch.add(crops[0], crops[1])
            return _act(y, *launch_activation(ls["activate_array"]))
        gemm = ls["gemm"]
        w = shared_weight(mem, gemm.reads[0], 2)
        if w is None:
            return None
        m = int(gemm.params["M"])
        c = self.in_chw[0]
        assert self.win_y is not None and self.win_x is not None
        ks = self.win_y.size
        st = self.win_y.stride
        if ks == 1 and self.win_y.offset == 0:
            # the fused path's GEMM per lane (fused_conv, conv1x1), the window padded to the
            # column policy of the whole output map
            x = crops[0][:, :, ::st, ::st] if st > 1 else crops[0]
            lanes, _, h, wd = x.shape
            y = conv1x1(x.reshape(lanes, c, h * wd), w.reshape(m, c), self.out_chw[1] * self.out_chw[2])
            y = y.reshape(lanes, m, h, wd)
        else:
            y = lane_conv2d(crops[0], w.reshape(m, c, ks, ks), stride=st, dilation=self.win_y.dil)
        lanes, _, h, wd = y.shape
        out = epilogue(ls, mem, y.reshape(lanes, m, h * wd))
        return None if out is None else out.reshape(lanes, m, h, wd)

    @property
    def columns(self) -> bool:
        """A stride-1 1x1 convolution: each output pixel reads only its own input pixel, so
        windows of any sizes run side by side as the columns of one GEMM (``run_cols``)."""
        return (self.kind == "conv" and self.win_y is not None and self.win_x is not None
                and all((a.size, a.stride, a.offset) == (1, 1, 0) for a in (self.win_y, self.win_x)))

    def run_cols(self, mem: Memory, x: torch.Tensor) -> torch.Tensor | None:
        """Outputs (M, P) of a ``columns`` unit for input pixels ``x`` (C, P), any lanes' windows
        side by side."""
        ls = {l.kernel: l for l in self.unit.launches}
        gemm = ls["gemm"]
        w = shared_weight(mem, gemm.reads[0], 2)
        if w is None:
            return None
        m = int(gemm.params["M"])
        y = conv1x1_cols(x, w.reshape(m, self.in_chw[0]), self.out_chw[1] * self.out_chw[2])
        out = epilogue(ls, mem, y.view(1, m, -1))
        return None if out is None else out.view(m, -1)

    @property
    def pad_value(self) -> float:
        return float("-inf") if self.kind == "maxpool" else 0.0


def _act(y: torch.Tensor, act: str, slope: float, threshold: float) -> torch.Tensor:
    lanes = y.shape[0]
    return relu_like(y.reshape(lanes, y.shape[1], -1), act, slope, threshold).reshape(y.shape)


def crop_units(program: Program) -> dict[int, CropUnit]:
    """Layer index -> its unit, for the layers whose whole work is one fused unit of a kind the
    cone covers."""
    trace = program.trace
    out: dict[int, CropUnit] = {}
    for unit in program.units.values():
        cu = _describe(trace, unit)
        if cu is not None:
            out[unit.launches[0].layer] = cu
    spans: dict[int, int] = {}
    for l in trace.launches:
        spans[l.layer] = spans.get(l.layer, 0) + 1
    return {k: v for k, v in out.items() if spans[k] == len(v.unit.launches)}


def _chw(trace: Trace, name: str) -> tuple[int, int, int] | None:
    shape = tuple(trace.buffer(name).shape)
    return shape if len(shape) == 3 else None  # type: ignore[return-value]


def _describe(trace: Trace, unit: Unit) -> CropUnit | None:
    ls = {l.kernel: l for l in unit.launches}
    if unit.kind == "maxpool":
        l = ls["forward_maxpool"]
        # the extents come from out_h/out_w: a ceil_mode launch's far-side CEIL_PAD rows/columns
        # are the halo past the input that ``gather`` pads with -inf, as the whole-tensor path
        p = {k: int(l.params[k]) for k in ("channels", "height", "width", "size", "stride", "pad", "out_h", "out_w")}
        off = -(p["pad"] // 2)
        return CropUnit("maxpool", unit, (l.reads[0],), l.writes[0], (p["channels"], p["height"], p["width"]),
                        (p["channels"], p["out_h"], p["out_w"]),
                        Window(p["size"], p["stride"], off, 1, p["height"], p["out_h"]),
                        Window(p["size"], p["stride"], off, 1, p["width"], p["out_w"]))
    if unit.kind == "shortcut":
        cp, sc = ls["copy"], ls["shortcut"]
        shapes = [_chw(trace, n) for n in (cp.reads[0], sc.reads[1], sc.writes[0])]
        if any(s is None for s in shapes) or len(set(shapes)) != 1:
            return None
        return CropUnit("shortcut", unit, (cp.reads[0], sc.reads[1]), sc.writes[0], shapes[0], shapes[0])  # type: ignore[arg-type]
    gemm = ls["gemm"]
    p = gemm.params
    if p.get("trans_b") or p.get("trans_a") or p.get("a_offset", 0) or p.get("b_offset", 0) or p.get("c_offset", 0):
        return None
    if float(ls["fill"].params.get("value", 0.0)) != 0.0:
        return None
    out = _chw(trace, gemm.writes[0])
    if out is None:
        return None
    if "im2col" in ls:
        q = ls["im2col"].params
        if not square_im2col(q):
            return None  # non-square geometry: the cone's windows are square (whole-tensor path)
        c, h, w, ks, st, pad = (int(q[k]) for k in ("channels", "height", "width", "ksize", "stride", "pad"))
        dil = int(q.get("dilation", 1))
        if int(p["K"]) != c * ks * ks:
            return None
        return CropUnit("conv", unit, (ls["im2col"].reads[0],), gemm.writes[0], (c, h, w), out,
                        Window(ks, st, -pad, dil, h, out[1]), Window(ks, st, -pad, dil, w, out[2]))
    if len(unit.in_shape) == 3:  # 1x1 convolution, stride 1
        c, h, w = unit.in_shape
        return CropUnit("conv", unit, (gemm.reads[1],), gemm.writes[0], (c, h, w), out,
                        Window(1, 1, 0, 1, h, out[1]), Window(1, 1, 0, 1, w, out[2]))
    return None


def gather(plane: torch.Tensor, region: Box, fill: float,
           patch: tuple[Box, torch.Tensor] | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
    """The (C, h, w) window ``region`` of a (C, H, W) plane, padded with ``fill`` outside it,
    with ``patch`` (its box and values) pasted over the plane first; into ``out`` if given."""
    c, hh, ww = plane.shape
    y0, y1, x0, x1 = region
    iy0, iy1, ix0, ix1 = max(y0, 0), min(y1, hh), max(x0, 0), min(x1, ww)
    inside = iy0 < iy1 and ix0 < ix1
    if out is None:
        out = plane.new_empty((c, y1 - y0, x1 - x0))
    if not inside or (iy0, iy1, ix0, ix1) != (y0, y1, x0, x1):
        out.fill_(fill)
    if inside:
        out[:, iy0 - y0:iy1 - y0, ix0 - x0:ix1 - x0] = plane[:, iy0:iy1, ix0:ix1]
    if patch is not None:
        (py0, py1, px0, px1), vals = patch
        jy0, jy1, jx0, jx1 = max(py0, y0), min(py1, y1), max(px0, x0), min(px1, x1)
        if jy0 < jy1 and jx0 < jx1:
            out[:, jy0 - y0:jy1 - y0, jx0 - x0:jx1 - x0] = vals[:, jy0 - py0:jy1 - py0, jx0 - px0:jx1 - px0]
    return out


def fit(box: Box, h: int, w: int, plane: tuple[int, int]) -> Box:
    """``box`` grown to h x w (shifted to stay inside the plane), so lanes share one call."""
    def axis(a: int, b: int, n: int, size: int) -> tuple[int, int]:
        a = min(a, size - n) if b - a < n else a
        a = max(0, min(a, size - n))
        return a, a + n
    y0, y1 = axis(box[0], box[1], h, plane[0])
    x0, x1 = axis(box[2], box[3], w, plane[1])
    return (y0, y1, x0, x1)


def verify(cu: CropUnit, mem: Memory, golden: dict[str, torch.Tensor], rows: list[int],
           gen: torch.Generator) -> bool:
    """Does the unit, run on windows of golden inputs, reproduce the golden outputs bit for bit?

    Windows of several sizes and offsets (edges included), two lanes per call: the primitive
    must not round an element differently for the extent of the tensor around it or for the
    lanes beside it."""
    _, oh, ow = cu.out_chw
    if cu.output not in golden or any(n not in golden for n in cu.inputs):
        return False
    out = golden[cu.output]
    for trial in range(4):
        h = [1, oh, max(1, oh // 3), int(torch.randint(1, oh + 1, (1,), generator=gen))][trial]
        w = [1, ow, max(1, ow // 2) + 1 if ow > 2 else ow, int(torch.randint(1, ow + 1, (1,), generator=gen))][trial]
        h, w = min(h, oh), min(w, ow)
        y0 = int(torch.randint(0, oh - h + 1, (1,), generator=gen))
        x0 = int(torch.randint(0, ow - w + 1, (1,), generator=gen))
        box = (y0, y0 + h, x0, x0 + w)
        region = cu.in_box(box)
        crops = [torch.stack([gather(golden[n][r].reshape(cu.in_chw), region, cu.pad_value) for r in rows])
                 for n in cu.inputs]
        got = cu.run(mem, crops)
        if got is None:
            return False
        want = torch.stack([out[r].reshape(cu.out_chw)[:, box[0]:box[1], box[2]:box[3]] for r in rows])
        if not torch.equal(torch.nan_to_num(got, nan=0.0), torch.nan_to_num(want, nan=0.0)):
            return False
    return True


def verify_cols(cu: CropUnit, mem: Memory, golden: dict[str, torch.Tensor], rows: list[int],
                gen: torch.Generator) -> bool:
    """Does a ``columns`` unit, run on windows of golden inputs side by side (``run_cols``:
    windows of several sizes and offsets, together more columns than the map holds), reproduce
    the golden outputs bit for bit?"""
    if not cu.columns or cu.output not in golden or cu.inputs[0] not in golden:
        return False
    _, oh, ow = cu.out_chw
    c, m = cu.in_chw[0], cu.out_chw[0]
    for trial in range(3):
        boxes = []
        for r in rows:
            h, w = (int(torch.randint(1, n + 1, (1,), generator=gen)) for n in (oh, ow))
            y0, x0 = (int(torch.randint(0, n - k + 1, (1,), generator=gen)) for n, k in ((oh, h), (ow, w)))
            boxes.append((y0, y0 + h, x0, x0 + w) if trial else (0, oh, 0, ow))
        x = torch.cat([golden[cu.inputs[0]][r].reshape(cu.in_chw)[:, b[0]:b[1], b[2]:b[3]].reshape(c, -1)
                       for r, b in zip(rows, boxes)], dim=1)
        got = cu.run_cols(mem, x)
        if got is None:
            return False
        want = torch.cat([golden[cu.output][r].reshape(cu.out_chw)[:, b[0]:b[1], b[2]:b[3]].reshape(m, -1)
                          for r, b in zip(rows, boxes)], dim=1)
        if not torch.equal(torch.nan_to_num(got, nan=0.0), torch.nan_to_num(want, nan=0.0)):
            return False
    return True
