"""Thread programs of the kernels added for models brought from PyTorch (issue 20):
``scale_channels``, ``binary_op``, ``forward_local_avgpool``, ``upsample``, ``adaptive_avgpool``, ``adaptive_maxpool``, ``max_pool_nchw`` and
``upsample_bilinear`` (``kernelfi.kernels.broadcast``, ``kernelfi.kernels.pool_local``,
``kernelfi.kernels.interp``), ``scalar_op``, ``clamp``, ``constant_pad``
(``kernelfi.kernels.pointwise``), ``channel_shuffle``, ``pixel_shuffle``, ``reflection_pad2d``, ``replication_pad2d``
(``kernelfi.kernels.layout``), the transposed convolution's ``col2im``
(``kernelfi.kernels.deconv``) and GroupNorm's ``group_norm_moments``/``group_norm_apply``
(``kernelfi.kernels.norm``). Importing the module
registers them in ``programs.PROGRAMS`` (``faults.inject`` does), as ``programs_harden`` does
for the hardening kernels; the new activations are cases of ``programs``' activate_array.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np
import torch

from kernelfi.faults.programs import OPERANDS, ffma32, prologue, program, trunc_i32, window_prologue
from kernelfi.faults.replay import F32, ThreadCtx
from kernelfi.kernels.norm import OFFSETS, WARP, lane_states, shuffle_partner, threads_per_row, warp_0_inputs, warp_level
from kernelfi.kernels import (broadcast_strides, dilated_start, clamp_bounds, col2im_geometry, pad_geometry, pad2d_geometry,
                              pixel_dims, scalar_operand, shuffle_geometry)

OPERANDS.update({
    "scale_channels": {"in": ("r", 0), "scale": ("r", 1), "out": ("w", 0)},
    "binary_op": {"a": ("r", 0), "b": ("r", 1), "out": ("w", 0)},
    "prelu": {"x": ("r", 0), "w": ("r", 1), "out": ("w", 0)},
    "forward_local_avgpool": {"in": ("r", 0), "out": ("w", 0)},
    "upsample": {"x": ("r", 0), "out": ("r", 1)},
    "adaptive_avgpool": {"in": ("r", 0), "out": ("w", 0)},
    "adaptive_maxpool": {"in": ("r", 0), "out": ("w", 0), "indices": ("w", 1)},
    "max_pool_nchw": {"in": ("r", 0), "out": ("w", 0), "indices": ("w", 1)},
    "upsample_bilinear": {"in": ("r", 0), "out": ("w", 0)},
    "scalar_op": {"in": ("r", 0), "out": ("w", 0)},
    "clamp": {"in": ("r", 0), "out": ("w", 0)},
    "constant_pad": {"in": ("r", 0), "out": ("w", 0)},
    "channel_shuffle": {"in": ("r", 0), "out": ("w", 0)},
    "pixel_shuffle": {"in": ("r", 0), "out": ("w", 0)},
    "reflection_pad2d": {"in": ("r", 0), "out": ("w", 0)},
    "replication_pad2d": {"in": ("r", 0), "out": ("w", 0)},
    "col2im": {"col": ("r", 0), "im": ("w", 0)},
})


@program("scale_channels")
def _scale_channels(c: ThreadCtx, p: Mapping[str, Any], t: int) -> None:
    ch, sp = int(p["channels"]), int(p["spatial"])
    i = prologue(c, t, ch * sp)
    if i is None:
        return
    f, _ = c.idiv("channel", i, sp, mod=False)
    c.addr("in", ("lea:addr_in",))
    x = c.ld("ld:in", "in", i)
    c.addr("scale", ("lea:addr_scale",))
    w = c.ld("ld:scale", "scale", f)
    with np.errstate(all="ignore"):
        y = c.val(("fmul:out",), F32(x) * F32(w), old=x)
    c.addr("out", ("lea:addr_out",))
    c.st("st:out", "out", i, y)


def _broadcast_loads(c: ThreadCtx, p: Mapping[str, Any], t: int, a: str, b: str
                     ) -> tuple[int, np.float32, np.float32] | None:
    """A TensorIterator element thread up to its two loads (``kernels.broadcast.broadcast_loads``):
    the output element and the values of operands ``a`` and ``b`` (params ``out``, ``a``/``b``
    shapes), or None for a surplus thread."""
    out = tuple(int(d) for d in p["out"])
    sa = broadcast_strides(tuple(int(d) for d in p[a]), out)  # type: ignore[arg-type]
    sb = broadcast_strides(tuple(int(d) for d in p[b]), out)  # type: ignore[arg-type]
    i = prologue(c, t, out[0] * out[1] * out[2])
    if i is None:
        return None
    q, x = c.idiv("w", i, out[2])
    ch, y = c.idiv("h", q, out[1])
    oa = c.idx((f"imad:off_{a}",), ch * sa[0] + y * sa[1] + x * sa[2])
    ob = c.idx((f"imad:off_{b}",), ch * sb[0] + y * sb[1] + x * sb[2])
    c.addr(a, (f"lea:addr_{a}",))
    c.addr(b, (f"lea:addr_{b}",))
    return i, F32(c.ld(f"ld:{a}", a, oa)), F32(c.ld(f"ld:{b}", b, ob))


@program("prelu")
def _prelu(c: ThreadCtx, p: Mapping[str, Any], t: int) -> None:
    got = _broadcast_loads(c, {**p, "x": p["out"]}, t, "x", "w")
    if got is None:
        return
    i, x, w = got
    with np.errstate(all="ignore"):
        wx = c.val(("fmul:prelu",), w * x)
        pos = c.pred(("setp:prelu",), x > 0)
        r = c.val(("fsel:prelu",), x if pos else wx, old=x)
    c.addr("out", ("lea:addr_out",))
    c.st("st:out", "out", i, r)


@program("binary_op")
def _binary_op(c: ThreadCtx, p: Mapping[str, Any], t: int) -> None:
    got = _broadcast_loads(c, p, t, "a", "b")
    if got is None:
        return
    i, va, vb = got
    op = str(p["op"])
    with np.errstate(all="ignore"):
        r = va + vb if op == "add" else (va * vb if op == "mul" else F32(np.float64(va) - np.float64(vb)))
        r = c.val((f"{op}:out",), r, old=va)
    c.addr("out", ("lea:addr_out",))
    c.st("st:out", "out", i, r)


@program("scalar_op")
def _scalar_op(c: ThreadCtx, p: Mapping[str, Any], t: int) -> None:
    op = str(p["op"])
    sc = F32(scalar_operand(op, float(p["scalar"])))  # a kernel argument: no register to strike
    i = prologue(c, t, int(p["n"]))
    if i is None:
        return
    c.addr("in", ("lea:addr_in",))
    x = F32(c.ld("ld:in", "in", i))
    with np.errstate(all="ignore"):
        r = {"add": lambda: x + sc, "sub": lambda: F32(np.float64(x) - np.float64(sc)),
             "rsub": lambda: F32(np.float64(sc) - np.float64(x))}.get(op, lambda: x * sc)()
        r = c.val((f"{op}:out",), r, old=x)
    c.addr("out", ("lea:addr_out",))
    c.st("st:out", "out", i, r)


@program("clamp")
def _clamp(c: ThreadCtx, p: Mapping[str, Any], t: int) -> None:
    lo, hi = clamp_bounds(p)
    i = prologue(c, t, int(p["n"]))
    if i is None:
        return
    c.addr("in", ("lea:addr_in",))
    x = F32(c.ld("ld:in", "in", i))
    nan = c.pred(("setp:nan",), bool(np.isnan(x)))
    y = x
    if lo is not None:  # fmaxf/fminf return the other operand of a NaN
        y = c.val(("fmnmx:min",), F32(lo) if np.isnan(y) or y < lo else y, old=x)
    if hi is not None:
        y = c.val(("fmnmx:max",), F32(hi) if np.isnan(y) or y > hi else y, old=x)
    r = c.val(("sel:out",), x if nan else y, old=x)
    c.addr("out", ("lea:addr_out",))
    c.st("st:out", "out", i, r)


@program("constant_pad")
def _constant_pad(c: ThreadCtx, p: Mapping[str, Any], t: int) -> None:
    ch, H, W, top, left, oh, ow = pad_geometry(p)
    i = prologue(c, t, ch * oh * ow)
    if i is None:
        return
    q, x = c.idiv("w", i, ow)
    k, y = c.idiv("h", q, oh)
    iy = c.idx(("iadd:yx",), y - top)
    ix = c.idx(("iadd:yx",), x - left)
    inside = c.pred(("setp:inside",), 0 <= iy < H and 0 <= ix < W)
    off = c.idx(("imad:off_in",), (k * H + iy) * W + ix)
    c.addr("in", ("lea:addr_in",))
    v = c.ld("ld:in", "in", off, active=inside)
    r = c.val(("sel:out",), v if inside else float(p.get("value", 0.0)), old=v)
    c.addr("out", ("lea:addr_out",))
    c.st("st:out", "out", i, r)


@program("channel_shuffle")
def _channel_shuffle(c: ThreadCtx, p: Mapping[str, Any], t: int) -> None:
    ch, g, hw = shuffle_geometry(p)
    i = prologue(c, t, ch * hw)
    if i is None:
        return
    co, s = c.idiv("hw", i, hw)
    j, gi = c.idiv("g", co, g)
    off = c.idx(("imad:off_in",), s + gi * (ch // g) * hw + j * hw)
    c.addr("in", ("lea:addr_in",))
    v = c.ld("ld:in", "in", off)
    c.addr("out", ("lea:addr_out",))
    c.st("st:out", "out", i, v)


@program("pixel_shuffle")
def _pixel_shuffle(c: ThreadCtx, p: Mapping[str, Any], t: int) -> None:
    sizes, strides = pixel_dims(p)
    i = prologue(c, t, int(p["channels"]) * int(p["height"]) * int(p["width"]))
    if i is None:
        return
    q, off = i, 0
    for k, (d, st) in enumerate(zip(sizes, strides)):
        q, r = c.idiv(f"d{k}", q, d)
        off += r * st
    off = c.idx(("imad:off_in",), off + q * strides[-1])
    c.addr("in", ("lea:addr_in",))
    v = c.ld("ld:in", "in", off)
    c.addr("out", ("lea:addr_out",))
    c.st("st:out", "out", i, v)


def _pad2d(kernel: str) -> Any:
    """The thread of PyTorch's reflect or replicate pad kernel (``kernels.layout``)."""
    def thread(c: ThreadCtx, p: Mapping[str, Any], t: int) -> None:
        ch, H, W, top, left, oh, ow = pad2d_geometry(p, kernel)
        i = prologue(c, t, ch * oh * ow)
        if i is None:
            return
        plane, xy = divmod(i, oh * ow)  # blockIdx.y and the thread's place in the plane: no instruction
        oy, ox = c.idiv("w", xy, ow)
        src = []
        for o, pad, n in ((ox, left, W), (oy, top, H)):
            if kernel == "reflection_pad2d":
                a = c.idx(("iabs:reflect",), abs(c.idx(("iadd:reflect",), o - pad)))
                b = c.idx(("iabs:reflect",), abs(c.idx(("iadd:reflect",), o - (n + pad - 1))))
                src.append(c.idx(("iadd:in_xy",), a - b - o + pad + n - 1))
            else:
                lo = c.idx(("imnmx:clamp",), max(o, pad))
                src.append(c.idx(("iadd:in_xy",), c.idx(("imnmx:clamp",), min(lo, n + pad - 1)) - pad))
        ix, iy = src
        off = c.idx(("imad:off_in",), (plane * H + iy) * W + ix)
        c.addr("in", ("lea:addr_in",))
        v = c.ld("ld:in", "in", off)
        out = c.idx(("imad:off_out",), (plane * oh + oy) * ow + ox)
        c.addr("out", ("lea:addr_out",))
        c.st("st:out", "out", out, v)
    return thread


program("reflection_pad2d")(_pad2d("reflection_pad2d"))
program("replication_pad2d")(_pad2d("replication_pad2d"))


@program("forward_local_avgpool")
def _local_avgpool(c: ThreadCtx, p: Mapping[str, Any], t: int) -> None:
    ch, H, W = int(p["channels"]), int(p["height"]), int(p["width"])
    size, stride, pad = int(p["size"]), int(p["stride"]), int(p["pad"])
    g = window_prologue(c, p, t)
    if g is None:
        return
    j, i, k, b, h_off, w_off, out_index = g
    avg = c.val(("mov:avg_init",), 0.0)
    counter = c.ival(("mov:count_init",), 0)
    with np.errstate(all="ignore"):
        for l in c.loop("l", size):
            for m in c.loop("m", size):
                cur_h = c.idx(("imad:cur_hw",), h_off + i * stride + l)
                cur_w = c.idx(("imad:cur_hw",), w_off + j * stride + m)
                index = c.idx(("imad:in_index",), cur_w + W * (cur_h + H * (k + b * ch)))
                valid = c.pred(("setp:valid",), 0 <= cur_h < H and 0 <= cur_w < W)
                v = c.ld("ld:in", "in", index, active=valid, addr_tags=("lea:addr_in",))
                if valid:
                    counter = c.ival(("iadd:counter",), counter + 1, old=counter)
                    avg = c.val(("fadd:avg",), avg + F32(v), old=avg)
        if p.get("count_include_pad"):
            side = pad // 2
            hs, ws = h_off + i * stride, w_off + j * stride
            counter = c.ival(("imnmx:divisor",), (min(hs + size, H + side) - hs) * (min(ws + size, W + side) - ws),
                             old=counter)
        if "divisor" in p:   # PyTorch's divisor_override
            counter = c.ival(("mov:divisor",), int(p["divisor"]), old=counter)
        d = c.val(("cvt:counter",), F32(counter))
    y = c.fdiv("out", avg, d)
    c.addr("out", ("lea:addr_out",))
    c.st("st:out", "out", out_index, y)


@program("upsample")
def _upsample(c: ThreadCtx, p: Mapping[str, Any], t: int) -> None:
    ch, h, w, st = int(p["channels"]), int(p["height"]), int(p["width"]), int(p["stride"])
    i = prologue(c, t, ch * h * w * st * st)
    if i is None:
        return
    q, out_w = c.idiv("ow", i, w * st)
    q, out_h = c.idiv("oh", q, h * st)
    q, out_c = c.idiv("c", q, ch)
    _, b = c.idiv("b", q, 1)
    in_w, _ = c.idiv("in_w", out_w, st, mod=False)
    in_h, _ = c.idiv("in_h", out_h, st, mod=False)
    in_index = c.idx(("imad:in_index",), b * w * h * ch + out_c * w * h + in_h * w + in_w)
    c.addr("x", ("lea:addr_x",))
    c.addr("out", ("lea:addr_out",))
    x = c.ld("ld:x", "x", in_index)
    o = c.ld("ld:out", "out", i)
    with np.errstate(all="ignore"):
        y = c.val(("ffma:out",), F32(np.float64(o) + np.float64(F32(p.get("scale", 1.0))) * np.float64(x)), old=o)
    c.st("st:out", "out", i, y)


def _bound(x: np.float32, up: bool) -> int:
    """F2I.FLOOR / F2I.CEIL of a (maybe corrupted) window bound: saturating, NaN -> 0."""
    if x != x:
        return 0
    v = math.ceil(x) if up else math.floor(x)
    return max(-(2**31), min(2**31 - 1, v)) if math.isfinite(x) else (2**31 - 1 if x > 0 else -(2**31))


@program("adaptive_avgpool")
def _adaptive_avgpool(c: ThreadCtx, p: Mapping[str, Any], t: int) -> None:
    ch, H, W, OH, OW = (int(p[k]) for k in ("channels", "height", "width", "out_h", "out_w"))
    i = prologue(c, t, ch * OH * OW)
    if i is None:
        return
    _, _, kh, kw, base, _ = _adaptive_window(c, p, i)
    acc = c.val(("mov:sum_init",), 0.0)
    with np.errstate(all="ignore"):
        for ih in c.loop("ih", kh):
            for iw in c.loop("iw", kw):
                idx = c.idx(("imad:in_index",), base + ih * W + iw)
                x = c.ld("ld:in", "in", idx, addr_tags=("lea:addr_in",))
                acc = c.val(("fadd:sum",), acc + F32(x), old=acc)
        dh = c.val(("cvt:extent",), F32(kh))
        dw = c.val(("cvt:extent",), F32(kw))
    avg = c.fdiv("avg_h", acc, dh)
    y = c.fdiv("out", avg, dw)
    c.addr("out", ("lea:addr_out",))
    c.st("st:out", "out", i, y)


def _adaptive_window(c: ThreadCtx, p: Mapping[str, Any], i: int) -> tuple[int, int, int, int, int, int]:
    """The adaptive pools' window (shared by adaptive_avgpool and adaptive_maxpool): the
    START/END_IND bounds by float division, F2I.FLOOR/CEIL, the extents and the first input."""
    H, W, OH, OW = (int(p[k]) for k in ("height", "width", "out_h", "out_w"))
    q, ow = c.idiv("ow", i, OW)
    plane, oh = c.idiv("oh", q, OH)
    prods = [c.idx(("imad:bounds",), v) for v in (oh * H, (oh + 1) * H, ow * W, (ow + 1) * W)]
    quot = [c.fdiv("bounds", c.val(("cvt:bounds",), F32(v)), F32(d)) for v, d in zip(prods, (OH, OH, OW, OW))]
    h0, h1, w0, w1 = (c.ival(("cvt:bounds",), _bound(v, up)) for v, up in zip(quot, (False, True, False, True)))
    kh = c.idx(("iadd:extent",), h1 - h0)
    kw = c.idx(("iadd:extent",), w1 - w0)
    base = c.idx(("imad:in_base",), plane * H * W + h0 * W + w0)
    return h0, w0, kh, kw, base, W


@program("adaptive_maxpool")
def _adaptive_maxpool(c: ThreadCtx, p: Mapping[str, Any], t: int) -> None:
    ch, OH, OW = (int(p[k]) for k in ("channels", "out_h", "out_w"))
    i = prologue(c, t, ch * OH * OW)
    if i is None:
        return
    h0, w0, kh, kw, base, W = _adaptive_window(c, p, i)
    mx = c.val(("mov:max_init",), F32(-np.inf))
    arg = c.ival(("imad:argmax_init",), h0 * W + w0)
    for ih in c.loop("ih", kh):
        for iw in c.loop("iw", kw):
            idx = c.idx(("imad:in_index",), base + ih * W + iw)
            x = F32(c.ld("ld:in", "in", idx, addr_tags=("lea:addr_in",)))
            gt = c.pred(("setp:gt",), bool(x > mx))
            nan = c.pred(("setp:nan",), bool(x != x))
            cand = c.idx(("imad:argmax",), (ih + h0) * W + iw + w0)
            take = gt or nan
            arg = c.ival(("sel:argmax",), cand if take else arg, old=arg)
            mx = c.val(("sel:max",), x if take else mx, old=mx)
    c.addr("out", ("lea:addr_out",))
    c.addr("indices", ("lea:addr_indices",))
    c.st("st:out", "out", i, mx)
    c.st("st:indices", "indices", i, int(arg))


@program("max_pool_nchw")
def _max_pool_nchw(c: ThreadCtx, p: Mapping[str, Any], t: int) -> None:
    ch, H, W, k, st, pad, d, OH, OW = (int(p[key]) for key in ("channels", "height", "width", "size", "stride", "pad",
                                                             "dilation", "out_h", "out_w"))
    i = prologue(c, t, ch * OH * OW)
    if i is None:
        return
    q, pw = c.idiv("ow", i, OW)
    q, ph = c.idiv("oh", q, OH)
    b, cc = c.idiv("c", q, ch)
    hs = c.idx(("imad:start",), ph * st - pad)
    ws = c.idx(("imad:start",), pw * st - pad)
    he = c.idx(("imnmx:end",), min(c.idx(("imad:end",), hs + (k - 1) * d + 1), H))
    we = c.idx(("imnmx:end",), min(c.idx(("imad:end",), ws + (k - 1) * d + 1), W))
    hs = c.idx(("iadd:start",), dilated_start(hs, d))
    ws = c.idx(("iadd:start",), dilated_start(ws, d))
    plane = c.idx(("imad:plane",), (b * ch + cc) * H * W)
    mx = c.val(("mov:max_init",), F32(-np.inf))
    arg = c.ival(("imad:argmax_init",), hs * W + ws)
    for th in c.loop("h", max(0, -(-(he - hs) // d))):
        for tw in c.loop("w", max(0, -(-(we - ws) // d))):
            hw = c.idx(("imad:in_index",), (hs + th * d) * W + ws + tw * d)
            x = F32(c.ld("ld:in", "in", plane + hw, addr_tags=("lea:addr_in",)))
            take = c.pred(("setp:gt",), bool(x > mx))
            take = c.pred(("setp:nan",), bool(x != x)) or take
            arg = c.ival(("sel:argmax",), hw if take else arg, old=arg)
            mx = c.val(("sel:max",), x if take else mx, old=mx)
    c.addr("out", ("lea:addr_out",))
    c.addr("indices", ("lea:addr_indices",))
    c.st("st:out", "out", i, mx)
    c.st("st:indices", "indices", i, int(arg))


@program("upsample_bilinear")
def _upsample_bilinear(c: ThreadCtx, p: Mapping[str, Any], t: int) -> None:
    ch, H, W, OH, OW = (int(p[k]) for k in ("channels", "height", "width", "out_h", "out_w"))
    align = bool(p.get("align_corners", False))
    i = prologue(c, t, OH * OW)
    if i is None:
        return
    h2, w2 = c.idiv("ow", i, OW)
    with np.errstate(all="ignore"):
        axes = []
        for dst, scale, extent in ((h2, p["rheight"], H), (w2, p["rwidth"], W)):
            d = c.val(("cvt:dst",), F32(dst))
            if align:
                r = c.val(("fmul:src",), F32(scale) * d)
            else:
                half = c.val(("fadd:src_half",), d + F32(0.5))
                r = c.val(("ffma:src",), ffma32(half, F32(scale), F32(-0.5)))
                r = c.val(("fmnmx:src",), F32(0.0) if r < 0 else r, old=r)
            axes.append((r, c.ival(("cvt:src_int",), trunc_i32(float(r))), extent))
        steps = [1 if c.pred(("setp:step",), i1 < extent - 1) else 0 for _, i1, extent in axes]
        lambdas = []
        for r, i1, _ in axes:
            f = c.val(("cvt:lambda",), F32(i1))
            lambdas.append(c.val(("fadd:lambda1",), r - f, old=r))
        (l1, m1) = lambdas
        l0 = c.val(("fadd:lambda0",), F32(1.0) - l1, old=l1)
        m0 = c.val(("fadd:lambda0",), F32(1.0) - m1, old=m1)
        (_, h1, _), (_, w1, _) = axes
        hp, wp = steps
        for plane in c.loop("c", ch):
            taps = []
            for dh, dw in ((0, 0), (0, wp), (hp, 0), (hp, wp)):
                k = c.idx(("imad:in_index",), plane * H * W + (h1 + dh) * W + w1 + dw)
                taps.append(F32(c.ld("ld:in", "in", k, addr_tags=("lea:addr_in",))))
            x00, x01, x10, x11 = taps
            a = c.val(("fmul:tap",), m1 * x01)
            top = c.val(("ffma:row",), ffma32(m0, x00, a), old=a)
            b = c.val(("fmul:tap",), m1 * x11)
            bottom = c.val(("ffma:row",), ffma32(m0, x10, b), old=b)
            e = c.val(("fmul:out",), l1 * bottom)
            y = c.val(("ffma:out",), ffma32(l0, top, e), old=e)
            o = c.idx(("imad:out_index",), (plane * OH + h2) * OW + w2)
            c.st("st:out", "out", o, y, addr_tags=("lea:addr_out",))


@program("col2im")
def _col2im(c: ThreadCtx, p: Mapping[str, Any], t: int) -> None:
    """One image element: the column entries of the windows covering it, h_col outer, w_col
    inner, ascending, summed in float32 from 0 (cuda/col2im.cu)."""
    g = col2im_geometry(p)
    ch, H, W, ks, st, pad, hc, wc = (g[k] for k in ("channels", "height", "width", "ksize", "stride", "pad",
                                                   "height_col", "width_col"))
    i = prologue(c, t, ch * H * W)
    if i is None:
        return
    q, w = c.idiv("w", i, W)
    ci, h = c.idiv("h", q, H)
    w = c.idx(("iadd:pad",), w + pad)
    h = c.idx(("iadd:pad",), h + pad)
    w_late = c.pred(("setp:start",), not w < ks)
    h_late = c.pred(("setp:start",), not h < ks)
    w0 = c.idx(("iadd:range",), c.idiv("start", w - ks, st, mod=False)[0] + 1) if w_late else 0
    h0 = c.idx(("iadd:range",), c.idiv("start", h - ks, st, mod=False)[0] + 1) if h_late else 0
    w1 = c.idx(("imnmx:end",), min(c.idx(("iadd:range",), c.idiv("end", w, st, mod=False)[0] + 1), wc))
    h1 = c.idx(("imnmx:end",), min(c.idx(("iadd:range",), c.idiv("end", h, st, mod=False)[0] + 1), hc))
    cells = hc * wc
    base = c.idx(("imad:offset",), (ci * ks * ks + h * ks + w) * cells)
    step_h = c.idx(("imad:offset",), (1 - st * ks * hc) * wc)
    step_w = c.idx(("imad:offset",), 1 - st * cells)
    val = c.val(("mov:val_init",), 0.0)
    with np.errstate(all="ignore"):
        for dh in c.loop("h_col", h1 - h0):
            for dw in c.loop("w_col", w1 - w0):
                idx = c.idx(("imad:col_index",), base + (h0 + dh) * step_h + (w0 + dw) * step_w)
                x = c.ld("ld:col", "col", idx, addr_tags=("lea:addr_col",))
                val = c.val(("fadd:val",), val + F32(x), old=val)
    c.addr("im", ("lea:addr_im",))
    c.st("st:im", "im", i, val)


# ---------------------------------------------------------------- GroupNorm (kernels.norm)
OPERANDS.update({
    "group_norm_moments": {"x": ("r", 0), "stats": ("w", 0)},
    "group_norm_apply": {"x": ("r", 0), "stats": ("r", 1), "gamma": ("r", 2), "beta": ("r", 3), "out": ("w", 0)},
})
Welford = tuple[np.float32, np.float32, np.float32]  # (mean, m2, nf)


def _welford_step(s: Welford, v: np.float32, k: int, c: ThreadCtx | None) -> Welford:
    """``WelfordOps::reduce`` of one element: through ``c``'s tags for the replayed thread,
    plainly (c None) for the row's other lanes."""
    val = c.val if c is not None else (lambda tags, x, old=0.0: F32(x))
    mean, m2, _ = s
    nf = val(("i2f:nf",), F32(k + 1))
    delta = val(("fadd:delta",), F32(v - mean))
    q = c.fdiv("mean", delta, nf) if c is not None else F32(delta / nf)
    mean = val(("fadd:mean",), F32(mean + q), old=mean)
    d2 = val(("fadd:delta2",), F32(v - mean))
    m2 = val(("ffma:m2",), ffma32(delta, d2, m2), old=m2)
    return mean, m2, nf


def _welford_combine(a: Welford, b: Welford, c: ThreadCtx | None) -> Welford:
    """``WelfordOps::combine`` (kernels.norm.welford_combine), tagged for the replayed thread."""
    val = c.val if c is not None else (lambda tags, x, old=0.0: F32(x))
    pred = c.pred if c is not None else (lambda tags, x: bool(x))
    if pred(("setp:empty",), a[2] == 0):
        return b
    if pred(("setp:empty",), b[2] == 0):
        return a
    delta = val(("fadd:cdelta",), F32(b[0] - a[0]))
    count = val(("fadd:count",), F32(a[2] + b[2]))
    nb = c.fdiv("nb", b[2], count) if c is not None else F32(b[2] / count)
    mean = val(("ffma:cmean",), ffma32(delta, nb, a[0]), old=a[0])
    m2s = val(("fadd:m2sum",), F32(a[1] + b[1]))
    dd = val(("fmul:dd",), F32(F32(delta * delta) * a[2]))
    m2 = val(("ffma:cm2",), ffma32(dd, nb, m2s), old=a[1])
    return mean, m2, count


def _pick(st: tuple, j: int) -> Welford:
    """Lane ``j``'s (mean, m2, nf) out of state tensors."""
    return F32(st[0][j].item()), F32(st[1][j].item()), F32(st[2][j].item())


def _put(st: tuple, j: int, v: Welford) -> None:
    for t, x in zip(st, v):
        t[j] = float(x)


def _warp_reduce(c: ThreadCtx, st: tuple, j: int) -> tuple:
    """``WarpReduce`` over every lane of ``st`` (tensors over the block's lanes), lane ``j``'s
    shuffles and combines through ``c``'s tags."""
    lanes = torch.arange(st[0].shape[-1])
    for o in OFFSETS:
        src = shuffle_partner(lanes, o)
        nxt = warp_level(st, o)
        nxt = tuple(t.clone() for t in nxt)
        if j < st[0].shape[-1]:
            b = _pick(st, int(src[j]))
            b = tuple(c.val(("shfl:state",), v) for v in b)  # type: ignore[assignment]
            _put(nxt, j, _welford_combine(_pick(st, j), b, c))  # type: ignore[arg-type]
        st = nxt
    return st


@program("group_norm_moments")
def _group_norm_moments(c: ThreadCtx, p: Mapping[str, Any], t: int) -> None:
    """One thread of ``RowwiseMomentsCUDAKernel``: its Welford pass over elements j, j+T, ... and
    its shuffles and combines of the reduction are replayed with its tags; the row's other
    lanes are computed fault-free from the input (``kernels.norm.lane_states``), and the
    reduction runs over all of them (``WarpReduce``, and for 512 threads ``BlockReduce``'s second
    stage), so that a fault in this thread's partial state reaches thread 0's (mean, rstd) as on
    the GPU. Thread 0 stores them; for another thread the row's result, changed or not, is
    written to the overlay as thread 0's stores would (the thread itself stores nothing). A
    thread of warp 0 in a 512-thread block also runs the second stage's combines, under the same
    tags; the template counts the first stage's 5 only."""
    row, eps = int(p["row"]), F32(p.get("eps", 1e-5))
    threads = threads_per_row(row)
    r, j = divmod(int(t), threads)
    lane = c.idx(("s2r:tid",), j)
    base = c.idx(("imad:base",), r * row)
    c.addr("x", ("lea:addr_x",))
    xbuf = c.names["x"]
    xs = torch.tensor([float(c.read(xbuf, r * row + i)) for i in range(row)], dtype=torch.float32)
    with np.errstate(all="ignore"):
        st = tuple(v.clone() for v in lane_states(xs, threads))
        s: Welford = (c.val(("mov:init",), 0.0), c.val(("mov:init",), 0.0), c.val(("mov:init",), 0.0))
        trips = -(-(row - lane) // threads) if 0 <= lane < row else 0
        for k in c.loop("welford", trips):
            s = _welford_step(s, F32(c.ld("ld:x", "x", base + lane + k * threads)), k, c)
        _put(st, j, s)
        st = _warp_reduce(c, st, j)
        if threads > WARP:
            st = tuple(v.clone() for v in warp_0_inputs(st))
            st = _warp_reduce(c, st, j)  # lane j of warp 0: its second-stage combines
        mean, m2, nf = _pick(st, 0)
        if c.pred(("setp:lane0",), lane == 0):
            var = c.fdiv("var", m2, nf)
            vm = c.val(("fmnmx:var",), max(var, F32(0.0)) if var == var else var)
            ve = c.val(("fadd:eps",), F32(vm + eps))
            rstd = c.val(("mufu:rsq",), _rsqrt32(ve))
            c.addr("stats", ("lea:addr_stats",))
            c.st("st:mean", "stats", 2 * r, mean)
            c.st("st:rstd", "stats", 2 * r + 1, rstd)
        else:
            sbuf = c.names["stats"]
            var = F32(m2 / nf)
            rstd = _rsqrt32(F32(max(var, F32(0.0)) + eps) if var == var else var)
            c.overlay[(sbuf, 2 * r)] = mean
            c.overlay[(sbuf, 2 * r + 1)] = rstd


def _rsqrt32(v: np.float32) -> np.float32:
    """torch.rsqrt of one float32 (the value kernels.norm.row_moments computes)."""
    return F32(torch.rsqrt(torch.tensor(float(v), dtype=torch.float32)).item())


@program("group_norm_apply")
def _group_norm_apply(c: ThreadCtx, p: Mapping[str, Any], t: int) -> None:
    ch, g, sp = int(p["channels"]), int(p["groups"]), int(p["spatial"])
    i = prologue(c, t, ch * sp)
    if i is None:
        return
    cc, _ = c.idiv("sp", i, sp, mod=False)
    gg, _ = c.idiv("d", cc, ch // g, mod=False)
    c.addr("x", ("lea:addr_x",))
    c.addr("stats", ("lea:addr_stats",))
    x = F32(c.ld("ld:x", "x", i))
    mean = F32(c.ld("ld:mean", "stats", 2 * gg))
    rstd = F32(c.ld("ld:rstd", "stats", 2 * gg + 1))
    with np.errstate(all="ignore"):
        if p.get("affine"):
            c.addr("gamma", ("lea:addr_gamma",))
            c.addr("beta", ("lea:addr_beta",))
            gm = F32(c.ld("ld:gamma", "gamma", cc))
            bt = F32(c.ld("ld:beta", "beta", cc))
            a = c.val(("fmul:a",), F32(rstd * gm))
            b = c.val(("ffma:b",), ffma32(-a, mean, bt))
            y = c.val(("ffma:y",), ffma32(a, x, b))
        else:
            xm = c.val(("fadd:xm",), F32(x - mean))
            y = c.val(("fmul:y",), F32(xm * rstd), old=xm)
    c.addr("out", ("lea:addr_out",))
    c.st("st:out", "out", i, y)
