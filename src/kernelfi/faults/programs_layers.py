"""Thread programs of the kernels added for models brought from PyTorch (issue 20):
``scale_channels``, ``binary_op``, ``forward_local_avgpool``, ``upsample`` and ``adaptive_avgpool``
(``kernelfi.kernels.broadcast``, ``kernelfi.kernels.pool_local``). Importing the module
registers them in ``programs.PROGRAMS`` (``faults.inject`` does), as ``programs_harden`` does
for the hardening kernels; the new activations are cases of ``programs``' activate_array.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np

from kernelfi.faults.programs import OPERANDS, prologue, program, window_prologue
from kernelfi.faults.replay import F32, ThreadCtx
from kernelfi.kernels import broadcast_strides

OPERANDS.update({
    "scale_channels": {"in": ("r", 0), "scale": ("r", 1), "out": ("w", 0)},
    "binary_op": {"a": ("r", 0), "b": ("r", 1), "out": ("w", 0)},
    "prelu": {"x": ("r", 0), "w": ("r", 1), "out": ("w", 0)},
    "forward_local_avgpool": {"in": ("r", 0), "out": ("w", 0)},
    "upsample": {"x": ("r", 0), "out": ("r", 1)},
    "adaptive_avgpool": {"in": ("r", 0), "out": ("w", 0)},
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
