"""Grouped and depthwise convolutions as one ``F.conv2d(groups=G)`` in the fast path.

Darknet launches a grouped convolution as one im2col+gemm pair per group, and the engine's
fast path runs each pair as its own convolution (``fused_conv``): a depthwise layer of C
channels is C calls (MobileNetV2 at width 0.25 lowers to 3999 launches). A ``GroupRun`` is
the G pairs of one layer; ``run_group`` convolves them in one grouped call, but only where a
one-time self-check per (shapes, lanes, thread count, device) found the grouped call equal,
bit for bit, to the G per-group calls (``grouped_agrees``): oneDNN may sum a grouped
convolution in another order, and campaign rows depend on the per-group values. Elsewhere
the caller runs the pairs as before. Asymmetric padding (``padding='same'`` of an even
kernel) and windows past the padded edge are padded as ``fused_conv`` pads each group
(``edge_padded``), so they run in one call too. ``run_group`` hands the C it leaves to the
golden run's ``tap``: a struck grouped layer restarts from it after any of its G GEMMs
(``execution.starts``), and the pairs after its struck pair run as a tail (``tails``): the
blocks of groups g.. from the same grouped call.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from kernelfi.kernels import fused_conv
from kernelfi.kernels.conv import edge_padded, group_image, im2col_axes, im2col_geometry, no_tf32
from kernelfi.lowering.fastpath import Tap
from kernelfi.types import Launch, Trace

Memory = dict[str, torch.Tensor]
_OFFSETS = ("a_offset", "b_offset", "c_offset")


@dataclass(frozen=True)
class GroupRun:
    """Launches ``start .. end-1``: G im2col+gemm pairs, group g reading input channels
    g*cg.., weights at g*M*K and writing C at g*M*N (one layer's groups, in order); with
    ``first``, only the pairs of groups ``first``..G-1 (a tail: ``tails``)."""

    start: int
    end: int
    groups: int
    first: int = 0

    @property
    def head(self) -> int:
        """The layer's first pair (group 0's im2col)."""
        return self.start - 2 * self.first

    @property
    def whole(self) -> "GroupRun":
        """All G groups of this run's layer."""
        return GroupRun(self.head, self.end, self.groups)


def plan_groups(trace: Trace) -> dict[int, GroupRun]:
    """The grouped convolutions of a trace, keyed by their first launch index."""
    out: dict[int, GroupRun] = {}
    ls = trace.launches
    i = 0
    while i < len(ls):
        run = _group_at(ls, i)
        if run is None:
            i += 1
            continue
        out[i] = run
        i = run.end
    return out


def tails(runs: dict[int, GroupRun]) -> dict[int, GroupRun]:
    """Each grouped convolution's groups g..G-1 (two or more), keyed by group g's im2col:
    what the rest of a struck grouped layer runs after its struck pair. One grouped call of
    all G groups costs about what one group's call does, so the tail takes the blocks of
    groups g.. from that call instead of G-g calls."""
    return {r.start + 2 * g: GroupRun(r.start + 2 * g, r.end, r.groups, g)
            for r in runs.values() for g in range(1, r.groups - 1)}


def _group_at(ls: tuple[Launch, ...] | list[Launch], i: int) -> GroupRun | None:
    first = ls[i]
    if first.kernel != "im2col" or first.check_after is not None:
        return None
    p = first.params
    chans, cg = int(p["channels"]), int(p.get("group_channels", p["channels"]))
    if cg >= chans or chans % cg or int(p.get("channel_offset", 0)) != 0:
        return None
    groups = chans // cg
    if i + 2 * groups > len(ls):
        return None
    g0 = ls[i + 1]
    if g0.kernel != "gemm" or g0.params.get("trans_a") or g0.params.get("trans_b"):
        return None
    m, n, k = int(g0.params["M"]), int(g0.params["N"]), int(g0.params["K"])
    for g in range(groups):
        im, gm = ls[i + 2 * g], ls[i + 2 * g + 1]
        if (im.kernel != "im2col" or gm.kernel != "gemm" or im.layer != first.layer or gm.layer != first.layer
                or im.check_after is not None or gm.check_after is not None or gm.reads[1] != "workspace"
                or im.reads[0] != first.reads[0] or gm.reads[0] != g0.reads[0] or gm.writes[0] != g0.writes[0]):
            return None
        if _strip(im.params, ("channel_offset",)) != _strip(p, ("channel_offset",)) or \
                int(im.params.get("channel_offset", 0)) != g * cg:
            return None
        if _strip(gm.params, _OFFSETS) != _strip(g0.params, _OFFSETS) or int(gm.params.get("b_offset", 0)) or \
                int(gm.params.get("a_offset", 0)) != g * m * k or int(gm.params.get("c_offset", 0)) != g * m * n:
            return None
    return GroupRun(i, i + 2 * groups, groups)


def _strip(p: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    return {k: v for k, v in p.items() if k not in keys}


def accumulate(c: torch.Tensor, conv: torch.Tensor, gemm_params: dict) -> torch.Tensor:
    """C (viewed at c_offset) += a fused convolution's M×N block (a new tensor)."""
    m, n, off = int(gemm_params["M"]), int(gemm_params["N"]), int(gemm_params.get("c_offset", 0))
    b = c.shape[0]
    flat = c.reshape(b, -1)
    block = flat[:, off:off + m * n] + conv.reshape(b, m * n)
    if off == 0 and m * n == flat.shape[1]:
        return block.reshape(c.shape)
    new = flat.clone()
    new[:, off:off + m * n] = block
    return new.reshape(c.shape)


def per_group(run: GroupRun, ls: tuple[Launch, ...] | list[Launch], x: torch.Tensor, w: torch.Tensor,
              c: torch.Tensor) -> torch.Tensor:
    """C after the G pairs run one by one as the engine's pair path runs them (the reference)."""
    for j in range(run.start, run.end, 2):
        c = accumulate(c, fused_conv(x, w, ls[j].params, ls[j + 1].params), ls[j + 1].params)
    return c


def grouped(run: GroupRun, ls: tuple[Launch, ...] | list[Launch], x: torch.Tensor, w: torch.Tensor,
            c: torch.Tensor) -> torch.Tensor:
    """C after the pairs of ``run`` computed as one ``F.conv2d(groups=G)`` of all G groups, the
    whole input padded as each group's ``fused_conv`` pads its channels (``edge_padded``:
    asymmetric padding, and the zeros Darknet's im2col reads past the padded edge); a tail
    (``run.first``) adds only its groups' blocks to C."""
    first, gemm = ls[run.head], ls[run.head + 1]
    geo = im2col_geometry(dict(first.params, channel_offset=0, group_channels=first.params["channels"]), "im2col")
    (kh, kw), st, _, dil = im2col_axes(geo)
    m, n, k = int(gemm.params["M"]), int(gemm.params["N"]), int(gemm.params["K"])
    img, pad = edge_padded(group_image(x, geo, "im2col"), geo)
    cg = int(first.params.get("group_channels"))
    kern = w.reshape(-1)[:run.groups * m * k].reshape(run.groups * m, cg, kh, kw)
    with no_tf32(img.device):
        y = F.conv2d(img, kern, stride=st, padding=pad, dilation=dil, groups=run.groups)
    skip = run.first * m  # output channels of the groups before a tail
    return accumulate(c, y[:, skip:], {"M": run.groups * m - skip, "N": n, "c_offset": skip * n})  # C += the blocks


#: ``grouped_agrees``' verdicts per (input, weight and C shapes, layer params, lanes, thread
#: count, device): oneDNN picks its algorithm from these, never from the values.
_checked: dict[tuple[Any, ...], bool] = {}


def grouped_agrees(run: GroupRun, ls: tuple[Launch, ...] | list[Launch], x: torch.Tensor, w: torch.Tensor,
                   c: torch.Tensor) -> bool:
    """True where the grouped call gives, bit for bit, the per-group calls' C for this shape
    on this machine: a one-time self-check on seeded random operands (as ``lone_agrees``).
    A tail's verdict is its layer's (all G groups): a tail takes blocks of the very call the
    check compared block by block with the per-group calls."""
    run = run.whole
    first, gemm = ls[run.start], ls[run.start + 1]
    key = (tuple(x.shape), tuple(w.shape), tuple(c.shape), tuple(sorted((k, str(v)) for k, v in first.params.items())),
           tuple(sorted((k, str(v)) for k, v in gemm.params.items())), run.groups, torch.get_num_threads(),
           str(x.device), x.dtype, w.dtype, c.dtype)
    if key not in _checked:
        g = torch.Generator().manual_seed(0)
        px = torch.randn(tuple(x.shape), generator=g).to(device=x.device, dtype=x.dtype)
        pw = torch.randn(tuple(w.shape), generator=g).to(device=w.device, dtype=w.dtype)
        pc = torch.zeros(tuple(c.shape), dtype=c.dtype, device=c.device)
        _checked[key] = torch.equal(grouped(run, ls, px, pw, pc), per_group(run, ls, px, pw, pc))
    return _checked[key]


def run_group(run: GroupRun, ls: tuple[Launch, ...] | list[Launch], mem: Memory, tap: Tap | None = None) -> bool:
    """Run a grouped convolution's pairs (or a tail's) as one call on ``mem``; False where it
    must run as its pairs (per-lane weights, or the self-check found the grouped call rounding
    otherwise). ``tap`` sees a whole run's last GEMM launch and the C its G GEMMs leave (lanes,
    C's elements: the fill's values plus every group's block), before the epilogue consumes it
    (the golden run keeps it: ``execution.golden.pre_items``)."""
    gemm = ls[run.start + 1]
    x, w, c = mem[ls[run.start].reads[0]], mem[gemm.reads[0]], mem[gemm.writes[0]]
    if w.dim() != 2 or not grouped_agrees(run, ls, x, w, c):
        return False
    y = grouped(run, ls, x, w, c)
    if tap is not None and not run.first:
        tap(ls[run.end - 1], y.reshape(y.shape[0], -1))
    mem[gemm.writes[0]] = y
    return True
