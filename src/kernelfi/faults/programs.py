"""Per-thread programs of Darknet's kernels, for fault replay (see ``replay.py``).

Each program does what one CUDA thread of the kernel does, instruction tag by instruction tag
(the tags of ``kernelfi.kernels``' templates, docs/kernels.md), in float32. It runs twice per
injection: clean and with the fault, and only the difference is applied to the kernel's
batched output. ``OPERANDS`` names each kernel's buffers from the launch's reads/writes.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Mapping, NamedTuple

import numpy as np

import torch

from kernelfi.faults.replay import F32, ThreadCtx
from kernelfi.kernels import ELU_FAMILY, GELU_BETA, GELU_KAPPA, ceil_pads, elu_coefs, dilated_im2col, fma_f32, shortcut_geometry, threshold_of

Program = Callable[[ThreadCtx, Mapping[str, Any], int], None]
PROGRAMS: dict[str, Program] = {}
#: operand name -> ("r", i) launch.reads[i] or ("w", i) launch.writes[i]
OPERANDS: dict[str, dict[str, tuple[str, int]]] = {
    "fill": {"out": ("w", 0)},
    "copy": {"in": ("r", 0), "out": ("w", 0)},
    "add_bias": {"out": ("r", 0), "bias": ("r", 1)},
    "scale_bias": {"out": ("r", 0), "scale": ("r", 1)},
    "normalize": {"x": ("r", 0), "mean": ("r", 1), "var": ("r", 2)},
    "activate_array": {"x": ("r", 0)},
    "shortcut": {"out": ("r", 0), "add": ("r", 1)},
    "im2col": {"im": ("r", 0), "col": ("w", 0)},
    "forward_maxpool": {"in": ("r", 0), "out": ("w", 0), "indexes": ("w", 1)},
    "forward_avgpool": {"in": ("r", 0), "out": ("w", 0)},
    "softmax": {"in": ("r", 0), "out": ("w", 0)},
}
NEG_INF = F32(-np.inf)
#: Template tags a thread program never executes, with what a fault there does (counted as
#: Masked): the one place such a tag is declared; every other tag a fault can strike is
#: executed by some thread (tests/test_fault_effects.py).
NOT_REPLAYED: dict[tuple[str, str], str] = {
    ("im2col", "imad:grid_stride"): (
        "the grid-stride increment after the thread's one element (threads = elements): the loop exits; a "
        "corrupted index that lands on another element rewrites that element's columns with the values they "
        "hold, a negative one would run out of bounds (not modelled)"),
}


def program(name: str) -> Callable[[Program], Program]:
    def deco(fn: Program) -> Program:
        if name in PROGRAMS:
            raise ValueError(f"thread program '{name}' registered twice")
        PROGRAMS[name] = fn
        return fn
    return deco


def prologue(c: ThreadCtx, t: int, n: int) -> int | None:
    """Darknet's 1-D thread id and its early exit: the element thread ``t`` handles, or None
    for a surplus thread (``kernels._sass.prologue_1d``)."""
    i = c.idx(("s2r:index", "imad:index"), t)
    return i if c.pred(("setp:bounds",), i < n) else None


@program("fill")
def _fill(c: ThreadCtx, p: Mapping[str, Any], t: int) -> None:
    i = prologue(c, t, int(p["n"]))
    if i is None:
        return
    off = c.idx(("imad:offset",), i)
    c.addr("out", ("lea:addr_out",))
    v = c.val(("mov:value",), p.get("value", 0.0))
    c.st("st:out", "out", off, v)


@program("copy")
def _copy(c: ThreadCtx, p: Mapping[str, Any], t: int) -> None:
    i = prologue(c, t, int(p["n"]))
    if i is None:
        return
    oi = c.idx(("imad:offset_in",), i + int(p.get("in_offset", 0)))
    oo = c.idx(("imad:offset_out",), i + int(p.get("out_offset", 0)))
    c.addr("in", ("lea:addr_in",))
    v = c.ld("ld:in", "in", oi)
    c.addr("out", ("lea:addr_out",))
    c.st("st:out", "out", oo, v)


def _channel(c: ThreadCtx, p: Mapping[str, Any], t: int, w: str, fop: str, op: Callable) -> None:
    sp = int(p["spatial"])
    f, o = divmod(t, sp)
    o = c.idx(("s2r:index",), o)
    o = c.idx(("imad:index",), o)
    if not c.pred(("setp:bounds",), o < sp):
        return
    e = c.idx(("imad:offset",), f * sp + o)
    c.addr("out", ("lea:addr_out",))
    c.addr(w, (f"lea:addr_{w}",))
    x = c.ld("ld:out", "out", e)
    b = c.ld(f"ld:{w}", w, f)
    with np.errstate(all="ignore"):
        y = c.val((f"{fop}:out",), op(F32(x), F32(b)), old=x)
    c.st("st:out", "out", e, y)


@program("add_bias")
def _add_bias(c: ThreadCtx, p: Mapping[str, Any], t: int) -> None:
    _channel(c, p, t, "bias", "fadd", lambda x, b: x + b)


@program("scale_bias")
def _scale_bias(c: ThreadCtx, p: Mapping[str, Any], t: int) -> None:
    _channel(c, p, t, "scale", "fmul", lambda x, b: x * b)


@program("normalize")
def _normalize(c: ThreadCtx, p: Mapping[str, Any], t: int) -> None:
    ch, sp = int(p["channels"]), int(p["spatial"])
    i = prologue(c, t, ch * sp)
    if i is None:
        return
    q, _ = c.idiv("spatial", i, sp, mod=False)
    _, f = c.idiv("channel", q, ch)
    c.addr("x", ("lea:addr_x",))
    x = c.ld("ld:x", "x", i)
    c.addr("mean", ("lea:addr_mean",))
    m = c.ld("ld:mean", "mean", f)
    c.addr("var", ("lea:addr_var",))
    v = c.ld("ld:var", "var", f)
    with np.errstate(all="ignore"):
        ve = c.val(("fadd:var_eps",), F32(v) + F32(p.get("eps", 1e-5)))
        sd = c.fsqrt("std", ve)
        cen = c.val(("fadd:centered",), F32(x) - F32(m), old=x)
    y = c.fdiv("out", cen, sd)
    c.st("st:x", "x", i, y)


@program("activate_array")
def _activate(c: ThreadCtx, p: Mapping[str, Any], t: int) -> None:
    i = prologue(c, t, int(p["n"]))
    if i is None:
        return
    c.addr("x", ("lea:addr_x",))
    x = F32(c.ld("ld:x", "x", i))
    act = str(p.get("activation", "linear"))
    if c.pred(("setp:act_switch",), False):
        c.st("st:x", "x", i, F32(0.0))  # the switch's default case returns 0
        return
    with np.errstate(all="ignore"):
        y = _activation_value(c, act, x, F32(p.get("slope", 0.1)), F32(threshold_of(p)))
    c.st("st:x", "x", i, y)


def _clamp6(c: ThreadCtx, y: np.float32) -> np.float32:
    """fminf(fmaxf(y, 0), 6), each a corruptible FMNMX (fmaxf/fminf drop a NaN operand)."""
    low = c.val(("fmnmx:hard_low",), np.fmax(y, F32(0.0)))
    return c.val(("fmnmx:hard_high",), np.fmin(low, F32(6.0)))


def ffma32(a: Any, b: Any, d: Any) -> np.float32:
    """One FFMA, ``a*b + d`` rounded once (``kernels.fma_f32``) on scalars."""
    t = [torch.tensor(F32(v)) for v in (a, b, d)]
    return F32(fma_f32(*t).item())


#: libdevice tanhf's constants (the PTX's hex floats): 2/ln 2, the saturation and branch bounds,
#: and the odd polynomial's coefficients in Horner order.
_TANH_2_LN2 = F32(np.uint32(0x4038AA3B).view(np.float32))
_TANH_SAT = F32(np.uint32(0x41102CB4).view(np.float32))
_TANH_SMALL = F32(np.uint32(0x3F19999A).view(np.float32))
_TANH_POLY = tuple(F32(np.uint32(h).view(np.float32)) for h in (0x3C80F082, 0xBD563CAE, 0x3E085941, 0xBEAAA9ED))


def _tanhf(c: ThreadCtx, v: str, u: np.float32) -> np.float32:
    """libdevice's ``tanhf(u)``, instruction by instruction (``kernels._sass.ftanh``): both branches
    run, the small one's last FFMA is predicated on |u| < 0.6. MUFU.EX2 and MUFU.RCP are taken
    as correctly rounded (the hardware's are within 2 ulp)."""
    au = np.abs(u)
    big = f"ffma:tanhl_{v}"
    e = c.val((big,), au * _TANH_2_LN2)
    e = c.val((f"mufu:tanhl_{v}",), e)                      # RRO: the range-reduced operand
    ex = c.val((f"mufu:tanhl_{v}",), F32(np.exp2(np.float64(e))))
    d = c.val((big,), ex + F32(1.0))
    r = c.val((f"mufu:tanhl_{v}",), F32(1.0 / np.float64(d)))
    t = c.val((big,), ffma32(r, F32(-2.0), F32(1.0)))
    sat = c.pred((f"setp:tanh_{v}",), au >= _TANH_SAT)
    t = c.val((big,), F32(1.0) if sat else t)
    large = c.pred((f"setp:tanh_{v}",), au >= _TANH_SMALL)
    t = c.val((f"lop3:tanh_sign_{v}",), np.copysign(t, u))
    small = f"ffma:tanhs_{v}"
    u2 = c.val((small,), u * u)
    p = _TANH_POLY[0]
    for k in _TANH_POLY[1:]:
        p = c.val((small,), ffma32(u2, p, k))
    p = c.val((small,), ffma32(u2, p, F32(0.0)))
    if large:
        return t
    return c.val((small,), ffma32(u, p, u), old=t)


def _log1pf(c: ThreadCtx, v: str, a: np.float32) -> np.float32:
    """libdevice's ``log1pf(a)`` (``kernels._sass.flog1p``): the main path's value correctly
    rounded (libdevice's is within 1 ulp), a fault in any of its value slots corrupts it; the
    ISETP on the operand's bits picks the main path or the special cases ``a*inf + inf``
    (``-0`` for ``a == 0``)."""
    bits = int(np.float32(a).view(np.uint32))
    main = c.pred((f"setp:log1p_{v}",), bits < 0x7F800000)
    if main:
        r = F32(np.log1p(np.float64(a))) if a == a else F32(a)
        return c.val((f"fadd:log1p_{v}", f"iadd:log1p_{v}", f"i2f:log1p_{v}", f"ffma:log1p_{v}"), r)
    special = F32(a * F32(np.inf) + F32(np.inf))
    return F32(-0.0) if a == 0 else special


def _expm1f(c: ThreadCtx, v: str, a: np.float32) -> np.float32:
    """libdevice's ``expm1f(a)`` (``kernels._sass.fexpm1``): the value correctly rounded
    (libdevice's is within 1 ulp), a fault in a value slot corrupts it; of its five FSETP, the
    first two pick between equally exact forms (masked), a flip of the last three selects +inf,
    -1 or ``a + a``."""
    r = F32(np.expm1(np.float64(a)))
    j = np.rint(np.float64(a) * 1.4426950408889634)
    c.pred((f"setp:expm1_{v}",), abs(a) < F32(0.41))
    c.pred((f"setp:expm1_{v}",), j == 128)
    r = c.val((f"ffma:expm1_{v}", f"mufu:expm1_{v}"), r)
    if c.pred((f"setp:expm1_{v}",), j > 128):
        r = F32(np.inf)
    if c.pred((f"setp:expm1_{v}",), j < -25):
        r = F32(-1.0)
    if c.pred((f"setp:expm1_{v}",), a == 0):
        r = F32(a + a)
    return c.val((f"fsel:expm1_{v}",), r)


def _activation_value(c: ThreadCtx, act: str, x: np.float32, slope: np.float32,
                      threshold: np.float32 = F32(20.0)) -> np.float32:
    """One thread's activation of ``x``, tag by tag (``kernels/activation.py`` templates)."""
    if act == "relu":
        mask = c.val(("fset:relu_mask",), F32(1.0) if x > 0 else F32(0.0))
        return c.val(("fmul:out",), x * mask, old=x)
    if act == "leaky":
        leak = c.val(("fmul:leak",), slope * x)
        return c.val(("fcmp:out",), x if x > 0 else leak, old=x)
    if act in ("logistic", "swish"):
        e = c.fexp("neg_x", -x)
        d = c.val(("fadd:denom",), F32(1.0) + e)
        if act == "logistic":
            return c.fdiv("out", F32(1.0), d)
        sig = c.fdiv("sig", F32(1.0), d)
        return c.val(("fmul:swish",), x * sig, old=x)
    if act == "relu6":
        low = c.val(("fcmp:relu6_low",), x if x > 0 else F32(0.0))
        return c.val(("fcmp:relu6_out",), low if low < 6 else F32(6.0), old=x)
    if act == "tanh":
        m = c.val(("fmul:tanh_2x",), F32(-2.0) * x)
        e = c.fexp("tanh", m)
        d = c.val(("fadd:tanh_denom",), F32(1.0) + e)
        q = c.fdiv("tanh", F32(2.0), d)
        return c.val(("fadd:tanh_out",), q - F32(1.0), old=x)
    if act == "gelu":
        a = c.val(("fmul:gelu_arg",), x * F32(0.7071067811865476))
        er = c.val(("ffma:erf_gelu", "mufu:erf_gelu"), F32(math.erf(float(a))) if a == a else a)
        one = c.val(("fadd:gelu_one",), F32(1.0) + er)
        half = c.val(("fmul:gelu_half",), x * F32(0.5))
        return c.val(("fmul:gelu_out",), half * one, old=x)
    if act == "gelu_tanh":
        sq = c.val(("fmul:gelut_sq",), x * x)
        cube = c.val(("fmul:gelut_cube",), x * sq)
        inner = c.val(("ffma:gelut_inner",), ffma32(cube, F32(GELU_KAPPA), x))
        half = c.val(("fmul:gelut_half",), x * F32(0.5))
        u = c.val(("fmul:gelut_arg",), inner * F32(GELU_BETA))
        th = _tanhf(c, "gelut", u)
        one = c.val(("fadd:gelut_one",), F32(1.0) + th)
        return c.val(("fmul:gelut_out",), half * one, old=x)
    if act == "mish":
        e = c.fexp("mish", x)
        th = _tanhf(c, "mish", _log1pf(c, "mish", e))
        return c.val(("fmul:mish_out",), x * th, old=x)
    if act in ELU_FAMILY:
        pos, ipt, neg = (F32(v) for v in elu_coefs(act, float(slope)))
        if c.pred(("setp:elu_pos",), x > 0):
            return c.val(("fmul:elu_pos",), x * pos, old=x)
        e = _expm1f(c, "elu", c.val(("fmul:elu_in",), x * ipt))
        return c.val(("fmul:elu_neg",), e * neg, old=x)
    if act == "softplus":
        bx = c.val(("fmul:softplus_bx",), x * slope)
        if c.pred(("setp:softplus_th",), bx > threshold):
            return x
        sp = _log1pf(c, "softplus", c.fexp("softplus", bx))
        return c.fdiv("softplus", sp, slope)
    if act in ("hardswish", "hardsigmoid"):
        sh = c.val(("fadd:hard_shift",), x + F32(3.0))
        cl = _clamp6(c, sh)
        if act == "hardswish":
            cl = c.val(("fmul:hard_x",), x * cl)
        return c.val(("fmul:hard_out",), cl * F32(1.0 / 6.0), old=x)
    return x


@program("shortcut")
def _shortcut(c: ThreadCtx, p: Mapping[str, Any], t: int) -> None:
    g = shortcut_geometry((int(p["c1"]), int(p["h1"]), int(p["w1"])), (int(p["c2"]), int(p["h2"]), int(p["w2"])))
    assert g is not None  # the kernel refused the launch otherwise
    i = prologue(c, t, g["minw"] * g["minh"] * g["minc"])
    if i is None:
        return
    # id -> (i, j, k, b) by remainders, as shortcut_kernel does (batch 1: one inference a lane)
    q, col = c.idiv("w", i, g["minw"])
    q, row = c.idiv("h", q, g["minh"])
    q, ch = c.idiv("c", q, g["minc"])
    _, b = c.idiv("batch", q, 1)
    w1, h1, c1, w2, h2, c2 = (g[k] for k in ("w1", "h1", "c1", "w2", "h2", "c2"))
    oi = c.idx(("imad:out_index",), col * g["sample"] + w2 * (row * g["sample"] + h2 * (ch + c2 * b)))
    ai = c.idx(("imad:add_index",), col * g["stride"] + w1 * (row * g["stride"] + h1 * (ch + c1 * b)))
    c.addr("out", ("lea:addr_out",))
    c.addr("add", ("lea:addr_add",))
    o = c.ld("ld:out", "out", oi)
    a = c.ld("ld:add", "add", ai)
    with np.errstate(all="ignore"):
        s = c.val(("fmul:out_scaled",), F32(o) * F32(1.0), old=o)
        y = c.val(("ffma:out",), F32(a) * F32(1.0) + s, old=o)
    c.st("st:out", "out", oi, y)


@program("im2col")
def _im2col(c: ThreadCtx, p: Mapping[str, Any], t: int) -> None:
    H, W, ks = int(p["height"]), int(p["width"]), int(p["ksize"])
    stride, pad, oh, ow = int(p["stride"]), int(p["pad"]), int(p["out_h"]), int(p["out_w"])
    ks_w, stride_w, pad_w = int(p.get("ksize_w", ks)), int(p.get("stride_w", stride)), int(p.get("pad_w", pad))
    dil_h = int(p.get("dilation", 1))
    dil_w = int(p.get("dilation_w", dil_h))
    dilated = dilated_im2col(p)  # PyTorch's dilated im2col_kernel: a tap (i, j) at (i*dil_h, j*dil_w)
    c0, cg = int(p.get("channel_offset", 0)), int(p.get("group_channels", p["channels"]))
    i0 = prologue(c, t, cg * oh * ow)
    if i0 is None:
        return
    q, w_out = c.idiv("ow", i0, ow)
    c_in, h_out = c.idiv("oh", q, oh)
    h_in = c.idx(("imad:hw_in",), h_out * stride - pad)
    w_in = c.idx(("imad:hw_in",), w_out * stride_w - pad_w)
    col0 = c.idx(("imad:col_offset",), (c_in * ks * ks_w * oh + h_out) * ow + w_out)
    im0 = c.idx(("imad:im_offset",), ((c0 + c_in) * H + h_in) * W + w_in)
    c.addr("col", ("lea:addr_col",))
    c.addr("im", ("lea:addr_im",))
    step = 0
    for i in c.loop("kh", ks):
        for j in c.loop("kw", ks_w):
            if dilated:
                h = c.idx(("imad:hw",), h_in + i * dil_h)
                w = c.idx(("imad:hw",), w_in + j * dil_w)
            else:
                h = c.idx(("iadd:hw",), h_in + i)
                w = c.idx(("iadd:hw",), w_in + j)
            valid = c.pred(("setp:pad",), h >= 0 and w >= 0 and h < H and w < W)
            tap = c.idx(("imad:im_elem",), i * dil_h * W + j * dil_w) if dilated else i * W + j
            v = c.ld("ld:im", "im", im0 + tap, active=valid, addr_tags=("lea:addr_im_elem",))
            s = c.val(("sel:value",), v if valid else 0.0)
            c.st("st:col", "col", col0 + step * oh * ow, s)
            c.addr("col", ("iadd:addr_col",))
            step += 1


class Window(NamedTuple):
    """A windowed pool thread's coordinates after ``window_prologue``."""

    j: int          # output column
    i: int          # output row
    k: int          # channel
    b: int          # batch (0)
    h_off: int      # -pad/2
    w_off: int
    out_index: int


def window_prologue(c: ThreadCtx, p: Mapping[str, Any], t: int) -> Window | None:
    """Thread ``t``'s index arithmetic before a pool window (``kernels.pool.window_prologue``:
    forward_maxpool, forward_local_avgpool), None for a surplus thread. A ``CEIL_PAD`` launch
    (the ``*_ceil`` rendering) adds its far-side rows/columns into the extents' dividends, a
    corruptible IADD each."""
    ch, H, W = int(p["channels"]), int(p["height"]), int(p["width"])
    size, stride, pad = int(p["size"]), int(p["stride"]), int(p["pad"])
    idx = prologue(c, t, ch * int(p["out_h"]) * int(p["out_w"]))
    if idx is None:
        return None
    dh, dw = H + pad - size, W + pad - size
    extra = ceil_pads(p)
    if extra is not None:
        dh = c.idx(("iadd:out_hw",), dh + extra[0])
        dw = c.idx(("iadd:out_hw",), dw + extra[1])
    oh, _ = c.idiv("out_h", dh, stride, mod=False)
    ow, _ = c.idiv("out_w", dw, stride, mod=False)
    oh = c.idx(("iadd:out_hw",), oh + 1)
    ow = c.idx(("iadd:out_hw",), ow + 1)
    q, j = c.idiv("ow", idx, ow)
    q, i = c.idiv("oh", q, oh)
    b, k = c.idiv("c", q, ch)
    h_off = c.idx(("iadd:offset",), -(pad // 2))
    w_off = c.idx(("iadd:offset",), -(pad // 2))
    return Window(j, i, k, b, h_off, w_off, c.idx(("imad:out_index",), j + ow * (i + oh * (k + ch * b))))


@program("forward_maxpool")
def _maxpool(c: ThreadCtx, p: Mapping[str, Any], t: int) -> None:
    ch, H, W = int(p["channels"]), int(p["height"]), int(p["width"])
    size, stride = int(p["size"]), int(p["stride"])
    g = window_prologue(c, p, t)
    if g is None:
        return
    j, i, k, b, h_off, w_off, out_index = g
    hs = c.idx(("imad:window",), i * stride + h_off)
    ws = c.idx(("imad:window",), j * stride + w_off)
    mx = c.val(("mov:max_init",), NEG_INF)
    mi = c.ival(("mov:argmax_init",), -1)
    for l in c.loop("l", size):
        for m in c.loop("m", size):
            cur_h = c.idx(("iadd:cur_hw",), hs + l)
            cur_w = c.idx(("iadd:cur_hw",), ws + m)
            index = c.idx(("imad:in_index",), cur_w + W * (cur_h + H * (k + b * ch)))
            valid = c.pred(("setp:valid",), 0 <= cur_h < H and 0 <= cur_w < W)
            v = c.ld("ld:in", "in", index, active=valid, addr_tags=("lea:addr_in",))
            val = c.val(("sel:val",), v if valid else NEG_INF)
            gt = c.pred(("setp:gt",), bool(val > mx))
            mi = c.ival(("sel:argmax",), index if gt else mi, old=mi)
            mx = c.val(("sel:max",), val if gt else mx, old=mx)
    c.addr("out", ("lea:addr_out",))
    c.addr("indexes", ("lea:addr_indexes",))
    c.st("st:out", "out", out_index, mx)
    c.st("st:indexes", "indexes", out_index, int(mi))


@program("forward_avgpool")
def _avgpool(c: ThreadCtx, p: Mapping[str, Any], t: int) -> None:
    ch, H, W = int(p["channels"]), int(p["height"]), int(p["width"])
    idx = prologue(c, t, ch)
    if idx is None:
        return
    b, k = c.idiv("c", idx, ch)
    oi = c.idx(("imad:out_index",), k + ch * b)
    c.addr("out", ("lea:addr_out",))
    c.st("st:out_zero", "out", oi, F32(0.0))
    hw = c.idx(("imad:hw",), H * W)
    c.addr("in", ("lea:addr_in",))
    acc = F32(0.0)
    base = H * W * (k + b * ch)
    with np.errstate(all="ignore"):
        for i in c.loop("i", hw):
            x = c.ld("ld:in", "in", base + i)
            acc = c.val(("fadd:acc",), acc + F32(x), old=acc)
            c.st("st:out_partial", "out", oi, acc)
            c.addr("in", ("iadd:addr_in",))
        d = c.val(("cvt:hw",), F32(hw))
    y = c.fdiv("out", acc, d)
    c.st("st:out", "out", oi, y)


def trunc_i32(x: float) -> int:
    """CUDA's float->int conversion: truncation, saturating, NaN -> 0."""
    if x != x:
        return 0
    if x >= 2**31 - 1:
        return 2**31 - 1
    if x <= -(2**31):
        return -(2**31)
    return int(x)


@program("softmax")
def _softmax(c: ThreadCtx, p: Mapping[str, Any], t: int) -> None:
    n, temp = int(p["n"]), F32(p.get("temperature", 1.0))
    if prologue(c, t, 1) is None:
        return
    off = c.idx(("imad:offset",), 0)
    c.addr("in", ("lea:addr_in",))
    c.addr("out", ("lea:addr_out",))
    largest = c.val(("mov:largest_init",), NEG_INF)
    s = c.val(("mov:sum_init",), 0.0)
    with np.errstate(all="ignore"):
        for i in c.loop("max", n):
            x = c.ld("ld:in_max", "in", off + i)
            iv = c.ival(("cvt:trunc",), trunc_i32(float(x)))
            fv = c.val(("cvt:itof",), F32(iv))
            gt = c.pred(("setp:gt_largest",), bool(fv > largest))
            largest = c.val(("sel:largest",), fv if gt else largest, old=largest)
            c.addr("in", ("iadd:addr_max",))
        lt = c.fdiv("largest", largest, temp)
        for i in c.loop("exp", n):
            x = c.ld("ld:in_exp", "in", off + i)
            xs = c.fdiv("scaled", x, temp)
            sh = c.val(("fadd:shifted",), xs - lt)
            e = c.fexp("shifted", sh)
            s = c.val(("fadd:sum",), s + e, old=s)
            c.st("st:exp", "out", off + i, e)
            c.addr("in", ("iadd:addr_exp",))
        for i in c.loop("norm", n):
            e = c.ld("ld:exp", "out", off + i)
            y = c.fdiv("out", e, s)
            c.st("st:out", "out", off + i, y)
            c.addr("out", ("iadd:addr_norm",))
