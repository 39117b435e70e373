"""The hardening techniques of an exported model, in plain PyTorch (docs/export.md §2).

This file is copied verbatim, from the ``BEGIN RUNTIME`` line on, into every exported
``model.py``, so it imports torch only and nothing of kernelfi: an exported model runs
wherever torch runs. kernelfi imports it too, for its own tests and the fault-coverage check.

Every technique is an ``nn.Module`` without persistent state that is *given* the op it protects
at call time (``wrapper(op, *args)``): the op stays where the original model had it, so the
exported state dict has the original's keys, and a forward hook on the op sees every replica.
"""
from __future__ import annotations

# BEGIN RUNTIME
import hashlib
import operator  # noqa: F401  (model.py replicates a channel slice as operator.getitem)
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_INT_VIEWS = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


class UnrecoverableFault(RuntimeError):
    """DMR's three runs of one op gave three different values for one element: more than one
    fault, which the technique cannot resolve (a detected, unrecoverable error)."""


def bits(t: Tensor) -> Tensor:
    """The same memory as integers of the element size (float32 -> int32): bitwise views."""
    return t.view(_INT_VIEWS[t.element_size()])


def same(a: Tensor, b: Tensor) -> bool:
    """Bit-for-bit equality, compared eight bytes at a time where the layout allows (twice as
    fast as element by element on the CPU; NaN payloads and signed zeros count as bits)."""
    wa, wb = a.reshape(-1), b.reshape(-1)
    if a.is_contiguous() and b.is_contiguous() and (wa.numel() * wa.element_size()) % 8 == 0:
        try:
            return torch.equal(wa.view(torch.int64), wb.view(torch.int64))
        except RuntimeError:  # a storage offset that is not 8-byte aligned
            pass
    return torch.equal(bits(a), bits(b))


def vote(a: Tensor, b: Tensor, c: Tensor) -> Tensor:
    """Bitwise majority ``(a&b)|(a&c)|(b&c)`` of three replicas through their integer views,
    computed as ``(a&b) | (c&(a|b))`` (four passes). On the CPU, where reading a comparison
    costs no device synchronisation, two identical replicas are the majority already: one
    comparison pass then replaces the four."""
    if not a.is_cuda and same(a, b):
        return a
    ia, ib, ic = bits(a), bits(b), bits(c)
    out = ia | ib
    out &= ic
    out |= ia & ib
    return out.view(a.dtype)


def run(op: Callable[..., Tensor], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Tensor:
    """One run of a replicated op; an in-place module (``ReLU(inplace=True)``) or function
    (``F.relu(x, inplace=True)``) gets a copy of its tensors, so a run never overwrites the input
    the next run reads."""
    if getattr(op, "inplace", False) or kwargs.get("inplace", False):
        args = tuple(a.clone() if isinstance(a, Tensor) else a for a in args)
    return op(*args, **kwargs)


class TMR(nn.Module):
    """Three runs of the op, bitwise majority of their outputs: any fault confined to one run
    is out-voted, bit for bit."""

    def forward(self, op: Callable[..., Tensor], *args: Any, **kwargs: Any) -> Tensor:
        return vote(run(op, args, kwargs), run(op, args, kwargs), run(op, args, kwargs))


class DMR(nn.Module):
    """Two runs, compared bit for bit; on a mismatch a third run decides, element by element:
    where the first two differ the third run's value is taken if it equals one of them. If it
    equals neither (three different values: more than one fault) ``UnrecoverableFault`` is
    raised rather than a guess returned. ``reexecuted`` counts the mismatches seen."""

    def __init__(self) -> None:
        super().__init__()
        self.reexecuted = 0

    def forward(self, op: Callable[..., Tensor], *args: Any, **kwargs: Any) -> Tensor:
        a, b = run(op, args, kwargs), run(op, args, kwargs)
        if same(a, b):
            return a
        self.reexecuted += 1
        ia, ib = bits(a), bits(b)
        c = run(op, args, kwargs)
        ic = bits(c)
        differ = ia != ib
        if bool((differ & (ic != ia) & (ic != ib)).any()):
            raise UnrecoverableFault(f"DMR: three runs disagree at {int((differ & (ic != ia) & (ic != ib)).sum())} "
                                     "elements (more than one fault)")
        return torch.where(differ, c, a)


class Clamp(nn.Module):
    """Range restriction (Ranger) to the profiled ``[lo, hi]``: values outside move to the
    nearer bound, NaN goes to ``lo`` (CUDA's ``fmaxf(x, lo)`` would return ``lo``), values
    inside stay bit for bit (a -0.0 at a 0.0 bound too)."""

    def __init__(self, lo: float, hi: float) -> None:
        super().__init__()
        self.lo, self.hi = float(lo), float(hi)

    def forward(self, x: Tensor) -> Tensor:
        y = torch.clamp(x, self.lo, self.hi)
        if bool(torch.isnan(y.sum())):  # rare (a fault): the cheap test first
            y = torch.where(torch.isnan(y), self.lo, y)
        return y

    def extra_repr(self) -> str:
        return f"lo={self.lo!r}, hi={self.hi!r}"


def unit_roundoff(x: Tensor, conv: bool) -> float:
    """The rounding unit of the op's arithmetic: the dtype's, or TF32's (2**-11) where CUDA may
    run float32 convolutions or matmuls in TF32."""
    if x.dtype == torch.float32 and x.is_cuda:
        tf32 = torch.backends.cudnn.allow_tf32 if conv else torch.backends.cuda.matmul.allow_tf32
        if tf32:
            return 2.0 ** -11
    return torch.finfo(x.dtype).eps / 2


def _flags(actual: Tensor, expected: Tensor, magnitude: Tensor, factor: float) -> Tensor:
    """True where a checksum fails: ``|actual - expected| > factor·magnitude``, NaN and inf too."""
    return ~((actual - expected).abs() <= factor * magnitude)


class _ABFT(nn.Module):
    """Huang & Abraham checksums around one product ``C = A·B`` (docs/export.md §2).

    Expected row and column sums of C come from checksum vectors (weight sums, computed once
    by ``refresh``) and are compared with the actual sums of the op's output. A sum is flagged
    when ``|actual - expected| > tol`` or is not finite, with ``tol = 2u(K + 2L + 2)·S``: ``u``
    the rounding unit, ``K`` the inner dimension, ``L`` the length of the summed line and ``S``
    the same sum over the magnitudes of every term, which bounds the float rounding of both
    sides. No flag: the op's own output is returned untouched (bit for bit). One flagged row and
    one flagged column locate one element, recomputed in float64 and rounded (``corrected``);
    any other pattern re-runs the op (``recomputed``). ``path`` names the protected op.
    """

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path
        self.corrected = 0
        self.recomputed = 0

    def forward(self, op: nn.Module, x: Tensor) -> Tensor:
        y = op(x)
        if not hasattr(self, "b"):
            raise RuntimeError(f"ABFT of {self.path}: no checksums (call refresh_checksums() after changing weights)")
        bad_row, bad_col = self.check(op, x, y)
        if not bool(bad_row.any() | bad_col.any()):
            return y
        return self.repair(op, x, y, bad_row, bad_col)

    def check(self, op: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def repair(self, op: nn.Module, x: Tensor, y: Tensor, bad_row: Tensor, bad_col: Tensor) -> Tensor:
        raise NotImplementedError


def _taps(start: int, step: int, count: int, size: int) -> slice:
    """The input indexes ``start + step*o`` (o < count) that fall inside [0, size): what one kernel
    tap reads along one axis over all output positions (zero padding contributes nothing)."""
    first = 0 if start >= 0 else (-start + step - 1) // step
    last = min(count - 1, (size - 1 - start) // step)
    if last < first:
        return slice(0, 0)
    return slice(start + first * step, start + last * step + 1, step)


def _tap_sums(x: Tensor, k: tuple[int, int], s: tuple[int, int], d: tuple[int, int], p: tuple[int, int],
              out: tuple[int, int]) -> Tensor:
    """(N, C, kh, kw): per input channel and kernel tap, the sum of the input over every output
    position, i.e. the row sums of the im2col matrix, without building it or padding x."""
    rows = torch.stack([x[:, :, _taps(i * d[0] - p[0], s[0], out[0], x.shape[2]), :].sum(2) for i in range(k[0])], 2)
    return torch.stack([rows[:, :, :, _taps(j * d[1] - p[1], s[1], out[1], x.shape[3])].sum(3)
                        for j in range(k[1])], 3)


def _group_sums(x: Tensor, w_col: Tensor, w_taps: Tensor, g: int, k: tuple[int, int], s: tuple[int, int],
                d: tuple[int, int], p: tuple[int, int], out: tuple[int, int]) -> Tensor:
    """(N, g, OH, OW): the convolution of x with each group's summed filter ``w_col``. With at
    least as many channels per group as kernel taps it runs as a 1x1 convolution to one channel
    per group and tap (``w_taps``) followed by shifted sums: oneDNN runs a one-filter 3×3
    convolution 3-10x slower than that (measured on resnet50's 3×3 layers, batch 8)."""
    taps = k[0] * k[1]
    if taps == 1 or x.shape[1] // g < taps:
        return F.conv2d(x, w_col, None, s, p, d, g)
    z = F.pad(F.conv2d(x, w_taps, groups=g), (p[1], p[1], p[0], p[0]))
    z = z.view(z.shape[0], g, taps, z.shape[2], z.shape[3])
    acc = None
    for t in range(taps):
        i, j = divmod(t, k[1])
        part = z[:, :, t, i * d[0]: i * d[0] + s[0] * (out[0] - 1) + 1: s[0],
                 j * d[1]: j * d[1] + s[1] * (out[1] - 1) + 1: s[1]]
        acc = part.clone() if acc is None else acc.add_(part)
    assert acc is not None
    return acc


def _rows(taps: Tensor, w: Tensor, g: int) -> Tensor:
    """(N, Co): each output channel's weights dotted with its group's tap sums, one matmul per
    group (a convolution of a kh×kw image by a kh×kw kernel is slow in oneDNN)."""
    n, co = taps.shape[0], w.shape[0]
    t = taps.reshape(n, g, -1).permute(1, 2, 0)                # (g, K, N)
    out = torch.bmm(w.reshape(g, co // g, -1), t)              # (g, Mg, N): the weights read in place
    return out.permute(2, 0, 1).reshape(n, co)


class ABFTConv2d(_ABFT):
    """ABFT of a ``Conv2d`` (zero padding), per sample and group: C = W (Co×K) · im2col(x) (K×P).
    Rows are output channels, summed over the P positions (expected: ``W · tap_sums(x) + P·b``);
    columns are (group, position), summed over the group's channels (expected: a convolution
    with the group's summed filter). Location is per sample: its flagged row and column must
    lie in one group; the element is recomputed from its input patch.

    The magnitude sums S of the tolerances are bounded from above rather than computed exactly,
    which would take |x| through the same work again: for a row, each input channel's total
    ``Σ|x[c]|`` stands for every tap's sum (``Σ_c Σ_ij |W[co,c,i,j]| · Σ|x[c]|``); for a column,
    each tap's largest summed-filter weight over the channels multiplies the channel sum
    ``Σ_c |x[c]|`` (one small convolution of a one-channel image per group)."""

    def refresh(self, conv: nn.Conv2d) -> None:
        w = conv.weight.detach()
        g, co, cg = conv.groups, w.shape[0], w.shape[1]
        b = conv.bias.detach() if conv.bias is not None else w.new_zeros(co)
        w_col = w.reshape(g, co // g, *w.shape[1:]).sum(1)                       # (g, Cg, kh, kw)
        w_col_abs = w.abs().reshape(g, co // g, *w.shape[1:]).sum(1)
        self.register_buffer("b", b.clone(), persistent=False)
        self.register_buffer("w_row_abs", w.abs().sum((2, 3)), persistent=False)    # (Co, Cg)
        self.register_buffer("w_col", w_col, persistent=False)
        self.register_buffer("w_taps", w_col.permute(0, 2, 3, 1).reshape(-1, cg, 1, 1).contiguous(),
                             persistent=False)                                    # one 1x1 filter per group and tap
        self.register_buffer("w_col_max", w_col_abs.amax(1, keepdim=True), persistent=False)  # (g, 1, kh, kw)
        self.register_buffer("b_col", b.reshape(g, co // g).sum(1), persistent=False)
        self.register_buffer("b_col_abs", b.abs().reshape(g, co // g).sum(1), persistent=False)

    def check(self, op: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        g, stride, pad, dil = op.groups, op.stride, op.padding, op.dilation
        n, co, oh, ow = y.shape
        w = op.weight
        k = (w.shape[2], w.shape[3])
        u = unit_roundoff(x, conv=True)
        kk, mg, positions = w.shape[1] * k[0] * k[1], co // g, oh * ow
        row_exp = _rows(_tap_sums(x, k, stride, dil, pad, (oh, ow)), w, g) + positions * self.b
        xa = x.abs()  # (torch.linalg.vector_norm is 10-50x slower than abs + sum here)
        row_mag = _rows(xa.sum((2, 3)), self.w_row_abs, g) + positions * self.b.abs()
        col_exp = _group_sums(x, self.w_col, self.w_taps, g, k, stride, dil, pad, (oh, ow)) + self.b_col.view(1, g, 1, 1)
        channels = xa.reshape(n, g, -1, *x.shape[2:]).sum(2)                                # (N, g, H, W)
        col_mag = F.conv2d(channels, self.w_col_max, None, stride, pad, dil, g) + self.b_col_abs.view(1, g, 1, 1)
        bad_row = _flags(y.sum((2, 3)), row_exp, row_mag, 2 * u * (kk + 2 * positions + 2))
        bad_col = _flags(y.reshape(n, g, mg, oh, ow).sum(2), col_exp, col_mag, 2 * u * (kk + 2 * mg + 2))
        return bad_row, bad_col.flatten(1)

    def repair(self, op: nn.Module, x: Tensor, y: Tensor, bad_row: Tensor, bad_col: Tensor) -> Tensor:
        n_rows, n_cols = bad_row.sum(1).tolist(), bad_col.sum(1).tolist()
        redo = [False] * y.shape[0]
        for n, (nr, nc) in enumerate(zip(n_rows, n_cols)):
            if nr == 0 and nc == 0:
                continue
            if nr == 1 and nc == 1:
                r, c = int(torch.nonzero(bad_row[n])[0]), int(torch.nonzero(bad_col[n])[0])
                group, pos = divmod(c, y.shape[2] * y.shape[3])
                if group == r // (y.shape[1] // op.groups):
                    y[n, r, pos // y.shape[3], pos % y.shape[3]] = self._element(op, x, n, r, pos // y.shape[3],
                                                                               pos % y.shape[3])
                    self.corrected += 1
                    continue
            redo[n] = True
        if any(redo):
            keep = torch.tensor(redo, device=y.device).view(-1, 1, 1, 1)
            y = torch.where(keep, op(x), y)
            self.recomputed += 1
        return y

    def _element(self, op: nn.Module, x: Tensor, n: int, r: int, i: int, j: int) -> Tensor:
        """Output (n, r, i, j) in float64 from the weights and the input patch, rounded."""
        w = op.weight
        cg, (kh, kw) = w.shape[1], w.shape[2:]
        (sh, sw), (ph, pw), (dh, dw) = op.stride, op.padding, op.dilation
        group = r // (w.shape[0] // op.groups)
        xp = F.pad(x[n, group * cg:(group + 1) * cg], (pw, pw, ph, ph))
        patch = xp[:, i * sh: i * sh + dh * (kh - 1) + 1: dh, j * sw: j * sw + dw * (kw - 1) + 1: dw]
        return ((patch.double() * w[r].double()).sum() + self.b[r].double()).to(x.dtype)


class ABFTLinear(_ABFT):
    """ABFT of a ``Linear``: C = X (N×K) · Wᵀ (K×Co), leading dimensions of x folded into N.
    Rows are samples, summed over the outputs (expected: ``X · Σ_co W[co] + Σb``); columns are
    outputs, summed over the samples (expected: ``W · Σ_n X[n] + N·b``). With N = 1 the
    column sums cost as much as the layer itself: checksums pay off with batches."""

    def refresh(self, linear: nn.Linear) -> None:
        w = linear.weight.detach()
        b = linear.bias.detach() if linear.bias is not None else w.new_zeros(w.shape[0])
        self.register_buffer("w_abs", w.abs(), persistent=False)
        self.register_buffer("w_row", w.sum(0), persistent=False)
        self.register_buffer("w_row_abs", w.abs().sum(0), persistent=False)
        self.register_buffer("b", b.clone(), persistent=False)

    def check(self, op: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        x2, y2 = x.reshape(-1, x.shape[-1]), y.reshape(-1, y.shape[-1])
        n, k, co = x2.shape[0], x2.shape[1], y2.shape[1]
        u = unit_roundoff(x, conv=False)
        row_exp = x2 @ self.w_row + self.b.sum()
        row_mag = x2.abs() @ self.w_row_abs + self.b.abs().sum()
        col_exp = op.weight @ x2.sum(0) + n * self.b
        col_mag = self.w_abs @ x2.abs().sum(0) + n * self.b.abs()
        bad_row = _flags(y2.sum(1), row_exp, row_mag, 2 * u * (k + 2 * co + 2))
        bad_col = _flags(y2.sum(0), col_exp, col_mag, 2 * u * (k + 2 * n + 2))
        return bad_row.view(1, -1), bad_col.view(1, -1)

    def repair(self, op: nn.Module, x: Tensor, y: Tensor, bad_row: Tensor, bad_col: Tensor) -> Tensor:
        if int(bad_row.sum()) == 1 and int(bad_col.sum()) == 1:
            n, co = int(torch.nonzero(bad_row[0])[0]), int(torch.nonzero(bad_col[0])[0])
            x2 = x.reshape(-1, x.shape[-1])
            value = (x2[n].double() @ op.weight[co].double() + self.b[co].double()).to(y.dtype)
            y.view(-1, y.shape[-1])[n, co] = value
            self.corrected += 1
            return y
        self.recomputed += 1
        return op(x)


class HardenedModule(nn.Module):
    """Base of every exported variant: keeps the ABFT checksums in step with the weights."""

    def __init__(self) -> None:
        super().__init__()
        self.register_load_state_dict_post_hook(lambda module, keys: module.refresh_checksums())

    def refresh_checksums(self) -> None:
        """Recompute every ABFT module's weight checksums (after loading or editing weights)."""
        for m in self.modules():
            if isinstance(m, _ABFT):
                m.refresh(self.get_submodule(m.path))


def container(**children: nn.Module) -> nn.Module:
    """A plain module holding named children: the original model's submodule tree, so the
    exported state dict has the original's keys."""
    m = nn.Module()
    for name, child in children.items():
        m.add_module(name, child)
    return m


def load_weights(net: nn.Module, path: Any, sha256: str, device: Any) -> nn.Module:
    """Load a safetensors state dict into ``net`` (no pickle), after checking its sha256, and
    return it on ``device`` in eval mode without gradients (inference only)."""
    from safetensors.torch import load as load_safetensors  # imported here: only loading needs it

    data = Path(path).read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != sha256:
        raise ValueError(f"{path}: sha256 {digest[:16]}... is not the exported weights' {sha256[:16]}... "
                         "(a damaged or replaced file)")
    net.load_state_dict(load_safetensors(data))
    return net.to(device).eval().requires_grad_(False)
