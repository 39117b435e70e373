"""Per-thread programs of the selective-hardening kernels (``kernelfi.kernels.hardening``).

Same contract as ``programs.py``: one CUDA thread, instruction tag by instruction tag, replayed
clean and faulty; only the difference reaches the batched output. With these, a campaign on a
hardened model injects into voters, comparators, clamps and ABFT checkers like any kernel.
Voters and comparators work on raw 32-bit patterns (``dtype`` launch param: ``float32`` for
activations, ``int32`` for maxpool indexes), so a flip of their LOP3/SEL result flips a bit of
the stored element whatever its type.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from kernelfi.faults.bits import bits_f32, signed32, word32
from kernelfi.faults.programs import OPERANDS, prologue, program
from kernelfi.faults.replay import F32, ThreadCtx
from kernelfi.kernels.hardening import col_gamma, row_gamma

OPERANDS.update({
    "tmr_vote": {"a": ("r", 0), "b": ("r", 1), "c": ("r", 2), "out": ("w", 0)},
    "dmr_compare": {"a": ("r", 0), "b": ("r", 1), "c": ("r", 2), "out": ("w", 0)},
    "range_clamp": {"x": ("r", 0)},
    "abft_vectors": {"a": ("r", 0), "b": ("r", 1), "vec": ("w", 0)},
    "abft_checksum": {"a": ("r", 0), "b": ("r", 1), "vec": ("r", 2), "sums": ("w", 0)},
    "abft_check": {"c": ("r", 0), "sums": ("r", 1), "flags": ("w", 0)},
    "abft_correct": {"a": ("r", 0), "b": ("r", 1), "c": ("r", 2), "flags": ("r", 3)},
})


def _result(c: ThreadCtx, tag: str, bits: int, p: Mapping[str, Any]) -> Any:
    """The instruction result ``tag`` (a 32-bit pattern) as the element to store, in the
    buffer's type: a float32 register corrupts (and reports) as a float, an int32 as an int."""
    if str(p.get("dtype", "float32")) == "int32":
        return c.ival((tag,), signed32(bits))
    return c.val((tag,), F32(bits_f32(bits)))


@program("tmr_vote")
def _tmr_vote(c: ThreadCtx, p: Mapping[str, Any], t: int) -> None:
    i = prologue(c, t, int(p["n"]))
    if i is None:
        return
    i += int(p.get("offset", 0))  # a host-side pointer offset: no instruction
    for r in ("a", "b", "c"):
        c.addr(r, (f"lea:addr_{r}",))
    ua, ub, uc = (word32(c.ld(f"ld:{r}", r, i)) for r in ("a", "b", "c"))
    m = _result(c, "lop3:vote", (ua & ub) | (ua & uc) | (ub & uc), p)
    c.addr("out", ("lea:addr_out",))
    c.st("st:out", "out", i, m)


@program("dmr_compare")
def _dmr_compare(c: ThreadCtx, p: Mapping[str, Any], t: int) -> None:
    i = prologue(c, t, int(p["n"]))
    if i is None:
        return
    i += int(p.get("offset", 0))
    c.addr("a", ("lea:addr_a",))
    c.addr("b", ("lea:addr_b",))
    ua, ub = word32(c.ld("ld:a", "a", i)), word32(c.ld("ld:b", "b", i))
    if c.pred(("setp:eq",), ua == ub):
        v = ua
    else:  # mismatch: the re-executed element
        c.addr("c", ("lea:addr_c",))
        v = word32(c.ld("ld:c", "c", i))
    m = _result(c, "sel:out", v, p)
    c.addr("out", ("lea:addr_out",))
    c.st("st:out", "out", i, m)


@program("range_clamp")
def _range_clamp(c: ThreadCtx, p: Mapping[str, Any], t: int) -> None:
    i = prologue(c, t, int(p["n"]))
    if i is None:
        return
    lo, hi = F32(p["lo"]), F32(p["hi"])
    c.addr("x", ("lea:addr_x",))
    x = F32(c.ld("ld:x", "x", i))
    low = c.val(("fmnmx:lo",), lo if (np.isnan(x) or x < lo) else x, old=x)   # fmaxf: NaN -> lo
    out = c.val(("fmnmx:hi",), hi if (np.isnan(low) or low > hi) else low, old=low)  # fminf: NaN -> hi
    c.st("st:x", "x", i, out)


# --------------------------------------------------------------------------------------------
# ABFT: operand access as the kernels' templates count it
# --------------------------------------------------------------------------------------------
def _dims(p: Mapping[str, Any]) -> tuple[int, int, int]:
    return int(p["M"]), int(p["N"]), int(p["K"])


def _a_index(p: Mapping[str, Any], r: int, k: int) -> int:
    m, _, kk = _dims(p)
    return int(p.get("a_offset", 0)) + (k * m + r if p.get("trans_a") else r * kk + k)


def _tap(p: Mapping[str, Any], k: int) -> tuple[int, int, int]:
    """(channel, kh, kw) of column-matrix row k (im2col's K order c*ks*ks + kh*ks + kw)."""
    ks = int(p["im2col"]["ksize"])
    ch, r = divmod(k, ks * ks)
    kh, kw = divmod(r, ks)
    return ch, kh, kw


def _b_elem(c: ThreadCtx, p: Mapping[str, Any], k: int, n: int, tap: tuple[int, int, int] | None,
            tag: str, ld_tag: str, addr_tag: str) -> np.float32:
    """B[k][n], read from B or (virtual) from the image tap that im2col would copy."""
    geo = p.get("im2col")
    if not geo:
        _, nn, kk = _dims(p)
        idx = int(p.get("b_offset", 0)) + (n * kk + k if p.get("trans_b") else k * nn + n)
        idx = c.idx((f"imad:{tag}_index",), idx)
        return F32(c.ld(ld_tag, "b", idx, addr_tags=(addr_tag,)))
    ch, kh, kw = tap if tap is not None else _tap(p, k)
    H, W, st, pad = (int(geo[key]) for key in ("height", "width", "stride", "pad"))
    dil, c0 = int(geo.get("dilation", 1)), int(geo.get("channel_offset", 0))
    oh, ow = divmod(n, int(geo["out_w"]))
    h, w = oh * st - pad + kh * dil, ow * st - pad + kw * dil
    valid = c.pred((f"setp:{tag}_pad",), 0 <= h < H and 0 <= w < W)
    idx = c.idx((f"imad:{tag}_index",), ((c0 + ch) * H + h) * W + w)
    v = c.ld(ld_tag, "b", idx, active=valid, addr_tags=(addr_tag,))
    return F32(v) if valid else F32(0.0)


@program("abft_vectors")
def _abft_vectors(c: ThreadCtx, p: Mapping[str, Any], t: int) -> None:
    m, n, kk = _dims(p)
    k = prologue(c, t, kk)
    if k is None:
        return
    tap = None
    if p.get("im2col"):
        ks = int(p["im2col"]["ksize"])
        ch, r = c.idiv("k", k, ks * ks)
        kh, kw = c.idiv("kw", r, ks)
        tap = (ch, kh, kw)
    be, bea, ea, eaa = (c.val(("mov:acc_init",), 0.0) for _ in range(4))
    with np.errstate(all="ignore"):
        for j in c.loop("n", n):
            x = _b_elem(c, p, k, j, tap, "b", "ld:b", "lea:addr_b")
            be = c.val(("fadd:be",), be + x, old=be)
            bea = c.val(("fadd:be_abs",), bea + abs(x), old=bea)
        for i in c.loop("m", m):
            ai = c.idx(("imad:a_index",), _a_index(p, i, k))
            x = F32(c.ld("ld:a", "a", ai, addr_tags=("lea:addr_a",)))
            ea = c.val(("fadd:ea",), ea + x, old=ea)
            eaa = c.val(("fadd:ea_abs",), eaa + abs(x), old=eaa)
    c.addr("vec", ("lea:addr_vec",))
    for q, v in enumerate((be, bea, ea, eaa)):
        c.st("st:vec", "vec", q * kk + k, v)


@program("abft_checksum")
def _abft_checksum(c: ThreadCtx, p: Mapping[str, Any], t: int) -> None:
    m, n, kk = _dims(p)
    t0 = prologue(c, t, m + n)
    if t0 is None:
        return
    row = c.pred(("setp:side",), t0 < m)
    acc = c.val(("mov:acc_init",), 0.0)
    mag = c.val(("mov:acc_init",), 0.0)
    j = t0 - m
    with np.errstate(all="ignore"):
        for k in c.loop("k", kk):
            if row:
                if p.get("im2col"):
                    c.pred(("setp:mat_pad",), True)   # one code path: A has no padding
                ai = c.idx(("imad:mat_index",), _a_index(p, t0, k))
                x = F32(c.ld("ld:mat", "a", ai, addr_tags=("lea:addr_mat",)))
                v = F32(c.ld("ld:vec", "vec", k, addr_tags=("lea:addr_vec",)))
                va = F32(c.ld("ld:vec_abs", "vec", kk + k))
            else:
                x = _b_elem(c, p, k, j, None, "mat", "ld:mat", "lea:addr_mat")
                v = F32(c.ld("ld:vec", "vec", 2 * kk + k, addr_tags=("lea:addr_vec",)))
                va = F32(c.ld("ld:vec_abs", "vec", 3 * kk + k))
            acc = c.val(("ffma:exp",), acc + x * v, old=acc)
            mag = c.val(("ffma:tol",), mag + abs(x) * va, old=mag)
        tol = c.val(("fmul:tol",), mag * F32(row_gamma(p, "abft_checksum") if row else col_gamma(p, "abft_checksum")))
    c.addr("sums", ("lea:addr_sums",))
    pos = t0 if row else j + m
    c.st("st:sums", "sums", pos, acc)
    c.st("st:sums", "sums", m + n + pos, tol)


@program("abft_check")
def _abft_check(c: ThreadCtx, p: Mapping[str, Any], t: int) -> None:
    m, n, _ = _dims(p)
    co = int(p.get("c_offset", 0))
    t0 = prologue(c, t, m + n)
    if t0 is None:
        return
    row = c.pred(("setp:side",), t0 < m)
    s = c.val(("mov:sum_init",), 0.0)
    with np.errstate(all="ignore"):
        for e in c.loop("e", n if row else m):
            ci = co + (t0 * n + e if row else e * n + (t0 - m))
            ci = c.idx(("imad:c_index",), ci)
            s = c.val(("fadd:sum",), s + F32(c.ld("ld:c", "c", ci, addr_tags=("lea:addr_c",))), old=s)
        c.addr("sums", ("lea:addr_sums",))
        ex = F32(c.ld("ld:exp", "sums", t0))
        tol = F32(c.ld("ld:tol", "sums", m + n + t0))
        d = c.val(("fadd:diff",), s - ex)
        ok = c.pred(("setp:within",), bool(abs(d) <= tol))
    flag = c.ival(("sel:flag",), 0 if ok else 1)
    c.addr("flags", ("lea:addr_flags",))
    c.st("st:flag", "flags", t0, flag)


@program("abft_correct")
def _abft_correct(c: ThreadCtx, p: Mapping[str, Any], t: int) -> None:
    """The single-element correction (the hardened trace never injects here: zero golden
    instructions); a multi-element pattern is the batched run's full recomputation."""
    m, n, kk = _dims(p)
    if prologue(c, t, 1) is None:
        return
    rows: list[int] = []
    cols: list[int] = []
    for f in c.loop("f", m + n):
        flag = c.ld("ld:flag", "flags", f, addr_tags=("lea:addr_flags",))
        if word32(flag):  # a nonzero word (a misdirected load may bring a float, inf included)
            (rows if f < m else cols).append(c.idx(("sel:where",), f if f < m else f - m))
    if len(rows) != 1 or len(cols) != 1:
        return
    r, col = rows[0], cols[0]
    acc = c.val(("mov:acc_init",), 0.0)
    with np.errstate(all="ignore"):
        for k in c.loop("k", kk):
            b = _b_elem(c, p, k, col, None, "b", "ld:b", "lea:addr_ab")
            ai = c.idx(("imad:a_index",), _a_index(p, r, k))
            a = F32(c.ld("ld:a", "a", ai))
            acc = c.val(("ffma:acc",), acc + a * b, old=acc)
    c.addr("c", ("lea:addr_c",))
    c.st("st:c", "c", int(p.get("c_offset", 0)) + r * n + col, acc)
