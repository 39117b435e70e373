"""Fused fast paths for fault-free stretches of a trace (golden runs and campaign suffixes).

A Darknet conv/connected layer is fill, [im2col], gemm, [normalize, scale_bias], add_bias,
activate_array. When no fault enters any of them, the layer runs as the primitives a native
framework would use (one convolution or linear, one batch-norm), keeping Darknet's semantics
where a fault could tell them apart (ReLU as x*(x>0): -inf -> NaN, NaN stays NaN; max-pool
never picks NaN); a residual shortcut runs as one add, and a max-pool skips the argmax buffer
nobody reads. Values equal the kernel-by-kernel path up to float rounding (summation order,
fused batch-norm); golden and faulty lanes of a batch always share one path, so outcomes
never depend on it (a test runs campaigns both ways).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from kernelfi.kernels import SOFTPLUS_THRESHOLD, activate, conv1x1, fused_conv, rows_linear, slope_of, threshold_of
from kernelfi.types import Launch, Trace

Memory = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Unit:
    kind: str                 # "layer" (conv/connected chain), "shortcut" or "maxpool"
    start: int
    end: int                  # exclusive
    launches: tuple[Launch, ...]
    in_shape: tuple[int, ...] = ()  # per-lane shape of the layer input (1x1 convolutions)


def plan_units(trace: Trace) -> dict[int, Unit]:
    """Fusable launch ranges, keyed by their first launch index."""
    units: dict[int, Unit] = {}
    by_layer: dict[int, list[Launch]] = {}
    for l in trace.launches:
        by_layer.setdefault(l.layer, []).append(l)
    for ls in by_layer.values():
        kinds = [l.kernel for l in ls]
        if any(l.check_after is not None for l in ls):
            continue  # hardened units keep their replicas and voters
        if kinds == ["forward_maxpool"]:
            units[ls[0].index] = Unit("maxpool", ls[0].index, ls[0].index + 1, tuple(ls))
            continue
        if (kinds == ["copy", "shortcut", "activate_array"] and ls[0].params.get("out_offset", 0) == 0
                and _same_shapes(ls[1].params)):
            units[ls[0].index] = Unit("shortcut", ls[0].index, ls[-1].index + 1, tuple(ls))
            continue
        if not kinds or kinds[0] != "fill" or "gemm" not in kinds or kinds.count("gemm") != 1:
            continue
        rest = kinds[kinds.index("gemm") + 1:]
        head = kinds[1:kinds.index("gemm")]
        if head not in ([], ["im2col"]) or rest not in (["add_bias", "activate_array"],
                                                        ["normalize", "scale_bias", "add_bias", "activate_array"]):
            continue
        gemm = ls[kinds.index("gemm")]
        shape = trace.buffer(gemm.reads[1]).shape if not head and not gemm.params.get("trans_b") else ()
        units[ls[0].index] = Unit("layer", ls[0].index, ls[-1].index + 1, tuple(ls), tuple(shape))
    return units


def _same_shapes(p: dict) -> bool:
    """A shortcut adding equal shapes (one add); a mismatched one runs as its kernels."""
    return all(p.get(f"{d}1") == p.get(f"{d}2") for d in "whc")


def shared_weight(mem: Memory, name: str, ndim: int) -> torch.Tensor | None:
    """Weight ``name`` as shared by every lane (``ndim`` dimensions), or None."""
    t = mem[name]
    return t if t.dim() == ndim else None  # a per-lane (faulty) weight copy: no fusion


def launch_activation(launch: Launch) -> tuple[str, float, float]:
    """An activate_array launch's activation, slope and softplus threshold (what ``relu_like`` takes)."""
    return str(launch.params.get("activation", "linear")), slope_of(launch.params), threshold_of(launch.params)


def relu_like(y: torch.Tensor, act: str, slope: float = 0.1, threshold: float = SOFTPLUS_THRESHOLD) -> torch.Tensor:
    """Darknet's activations, in place where possible."""
    if act == "relu":
        # Darknet's x*(x>0) differs from relu only for -inf (-> NaN) and in the sign of zero
        # outputs; the exact form is used whenever a -inf is present (faulty lanes only)
        low = float(y.amin()) if y.numel() else 0.0  # one read-only pass; NaN when any is NaN
        if low == -math.inf or (low != low and bool(torch.isneginf(y).any())):
            return y.mul_((y > 0).to(y.dtype))
        return torch.relu_(y)
    if act == "leaky":
        return torch.where(y > 0, y, y * torch.tensor(slope, dtype=torch.float32))
    if act == "logistic":
        one = torch.tensor(1.0, dtype=torch.float32)
        return one / (one + torch.exp(-y))
    if act == "linear":
        return y
    return activate(y, act, slope, threshold)  # the kernel's own elementwise arithmetic


#: ``tap(gemm, y)``: called with a conv/connected unit's GEMM launch and its product (lanes,
#: M, N) before the epilogue consumes it (the golden run keeps some: ``execution.golden``);
#: for a grouped convolution's one call, its last GEMM and the C it leaves (``groups.run_group``)
Tap = Callable[[Launch, torch.Tensor], None]


def run_unit(unit: Unit, mem: Memory, tap: Tap | None = None) -> bool:
    """Run a fused unit on ``mem``; False when it cannot be fused this time."""
    if unit.kind == "maxpool":
        return _maxpool(unit.launches[0], mem)
    ls = {l.kernel: l for l in unit.launches}
    if unit.kind == "shortcut":
        cp, sc = ls["copy"], ls["shortcut"]
        a, b = mem[cp.reads[0]], mem[sc.reads[1]]
        y = relu_like(torch.add(a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1)),
                       *launch_activation(ls["activate_array"]))
        old = mem.get(sc.writes[0])
        mem[sc.writes[0]] = y.reshape(a.shape) if old is None else y.reshape(old.shape)
        return True
    gemm = ls["gemm"]
    p = gemm.params
    m, n, k = int(p["M"]), int(p["N"]), int(p["K"])
    if p.get("a_offset", 0) or p.get("b_offset", 0) or p.get("c_offset", 0) or p.get("trans_a"):
        return False
    if float(ls["fill"].params.get("value", 0.0)) != 0.0:
        return False
    if p.get("trans_b"):  # connected: input (1 x K) . weights^T
        w = shared_weight(mem, gemm.reads[1], 2)
        if w is None:
            return False
        x = mem[gemm.reads[0]].reshape(-1, k)
        y = rows_linear(x, w)
        channels = n
    else:
        w = shared_weight(mem, gemm.reads[0], 2)
        if w is None:
            return False
        if "im2col" in ls:
            y = fused_conv(mem[ls["im2col"].reads[0]], w, ls["im2col"].params, p)
        else:
            x = mem[gemm.reads[1]]
            if len(unit.in_shape) == 3:  # 1x1 convolution: a GEMM per lane (as the gemm kernel)
                y = conv1x1(x.reshape(x.shape[0], k, n), w)
            else:
                y = torch.matmul(w, x.reshape(x.shape[0], k, n))
        channels = m
    b = y.shape[0]
    if tap is not None:
        tap(gemm, y)
    y = epilogue(ls, mem, y.reshape(b, channels, -1))
    if y is None:
        return False
    out = gemm.writes[0]
    old = mem.get(out)
    shape = tuple(old.shape) if old is not None and old.numel() == y.numel() else None
    mem[out] = y.reshape(shape) if shape else y.reshape(b, -1)
    return True


def epilogue(ls: dict[str, Launch], mem: Memory, y: torch.Tensor) -> torch.Tensor | None:
    """Batch-norm (or bias) and activation of a conv/connected layer on ``y`` (lanes, C, N),
    elementwise; None when a lane carries its own copy of a parameter (no fusion)."""
    bias = shared_weight(mem, ls["add_bias"].reads[1], 1)
    if bias is None:
        return None
    if "normalize" in ls:
        nl, sl = ls["normalize"], ls["scale_bias"]
        mean, var, scale = (shared_weight(mem, nl.reads[1], 1), shared_weight(mem, nl.reads[2], 1), shared_weight(mem, sl.reads[1], 1))
        if mean is None or var is None or scale is None:
            return None
        y = F.batch_norm(y, mean, var, scale, bias, False, 0.0, float(nl.params.get("eps", 1e-5)))
    else:
        y = y.add_(bias.view(1, -1, 1)) if y.is_contiguous() else y + bias.view(1, -1, 1)
    return relu_like(y, *launch_activation(ls["activate_array"]))


#: Blocks of at least this many values and channels are pooled in channels-last layout:
#: PyTorch's NCHW max-pool is 3-7x slower at these sizes here (ResNet-50's 64x112x112 stem pool
#: 3.2 ms against 0.8 ms with both layout copies; AlexNet's 96x55x55 1.25 against 0.19 ms);
#: below them the copies cost more than they save. Both layouts keep the first of equal values
#: (a strict ``>``, as Darknet's kernel), so the values, signed zeros included, are the same
#: bits (``tests/test_fastpath_maxpool.py``).
CHANNELS_LAST_AT = (32768, 16)


def maxpool_window(x: torch.Tensor, size: int, stride: int) -> torch.Tensor:
    """Darknet's max over windows of an already padded (lanes, C, H, W) block: NaN never wins."""
    x = torch.nan_to_num(x, nan=float("-inf"), posinf=float("inf"), neginf=float("-inf"))
    if x.numel() >= CHANNELS_LAST_AT[0] and x.shape[1] >= CHANNELS_LAST_AT[1]:
        return F.max_pool2d(x.contiguous(memory_format=torch.channels_last), size, stride).contiguous()
    return F.max_pool2d(x, size, stride)


def _maxpool(l: Launch, mem: Memory) -> bool:
    """Darknet's max-pool launch as one pooling call: -inf padding on every side as far as
    out_h/out_w reach (a ceil_mode launch's ``CEIL_PAD`` far side included), origin -pad/2."""
    p = l.params
    c, h, w = int(p["channels"]), int(p["height"]), int(p["width"])
    size, stride, pad, oh, ow = (int(p[k]) for k in ("size", "stride", "pad", "out_h", "out_w"))
    x = mem[l.reads[0]]
    b = x.shape[0]
    x = x.reshape(b, c, h, w)
    off = -(pad // 2)
    top = left = max(0, -off)
    bottom = max(0, off + (oh - 1) * stride + size - h)
    right = max(0, off + (ow - 1) * stride + size - w)
    xp = F.pad(x, (left, right, top, bottom), value=float("-inf"))
    r0 = off + top
    xp = xp[:, :, r0:, r0:] if r0 else xp
    y = maxpool_window(xp, size, stride)[:, :, :oh, :ow]
    mem[l.writes[0]] = y.contiguous()
    return True
