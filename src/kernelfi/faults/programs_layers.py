"""Thread programs of the kernels added for models brought from PyTorch (issue 20):
``scale_channels``, ``binary_op``, ``forward_local_avgpool``, ``upsample``, ``adaptive_avgpool`` and
``upsample_bilinear`` (``kernelfi.kernels.broadcast``, ``kernelfi.kernels.pool_local``,
``kernelfi.kernels.interp``), ``scalar_op``, ``clamp``, ``constant_pad``
(``kernelfi.kernels.pointwise``), ``channel_shuffle``, ``pixel_shuffle``, ``reflection_pad2d``, ``replication_pad2d``
(``kernelfi.kernels.layout``), and the transposed convolution's ``col2im``
(``kernelfi.kernels.deconv``). Importing the module
registers them in ``programs.PROGRAMS`` (``faults.inject`` does), as ``programs_harden`` does
for the hardening kernels; the new activations are cases of ``programs``' activate_array.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np

from kernelfi.faults.programs import OPERANDS, ffma32, prologue, program, window_prologue
from kernelfi.faults.replay import F32, ThreadCtx
from kernelfi.kernels import broadcast_strides, clamp_bounds, col2im_geometry, pad_geometry, pad2d_geometry, pixel_dims, scalar_operand, shuffle_geometry

OPERANDS.update({
    "scale_channels": {"in": ("r", 0), "scale": ("r", 1), "out": ("w", 0)},
    "binary_op": {"a": ("r", 0), "b": ("r", 1), "out": ("w", 0)},
    "prelu": {"x": ("r", 0), "w": ("r", 1), "out": ("w", 0)},
    "forward_local_avgpool": {"in": ("r", 0), "out": ("w", 0)},
    "upsample": {"x": ("r", 0), "out": ("r", 1)},
    "adaptive_avgpool": {"in": ("r", 0), "out": ("w", 0)},
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
    q, ow = c.idiv("ow", i, OW)
    plane, oh = c.idiv("oh", q, OH)
    prods = [c.idx(("imad:bounds",), v) for v in (oh * H, (oh + 1) * H, ow * W, (ow + 1) * W)]
    quot = [c.fdiv("bounds", c.val(("cvt:bounds",), F32(v)), F32(d)) for v, d in zip(prods, (OH, OH, OW, OW))]
    h0, h1, w0, w1 = (c.ival(("cvt:bounds",), _bound(v, up)) for v, up in zip(quot, (False, True, False, True)))
    kh = c.idx(("iadd:extent",), h1 - h0)
    kw = c.idx(("iadd:extent",), w1 - w0)
    base = c.idx(("imad:in_base",), plane * H * W + h0 * W + w0)
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


def _truncate(x: np.float32) -> int:
    """F2I.TRUNC of a (maybe corrupted) source coordinate: saturating, NaN -> 0."""
    if x != x:
        return 0
    if not math.isfinite(x):
        return 2**31 - 1 if x > 0 else -(2**31)
    return max(-(2**31), min(2**31 - 1, int(x)))


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
            axes.append((r, c.ival(("cvt:src_int",), _truncate(r)), extent))
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
