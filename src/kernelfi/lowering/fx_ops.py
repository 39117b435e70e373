"""The fx lowering's rules for tensor ops with constants, clamps, pads and channel slices.

``FxOps`` adds to ``FxLayers`` (``fx_layers.py``) the rules of the layers a user CNN writes as
tensor arithmetic rather than modules: ``x * c``, ``c - x``, ``x / c`` ... with a Python number
(PyTorch's element kernel with a CPU scalar: layer ``scalar``), ``torch.clamp`` /
``clamp_min`` / ``clamp_max`` / ``Hardtanh`` (PyTorch's clamp kernel: layer ``clamp``),
``F.pad`` / ``ZeroPad2d`` / ``ConstantPad2d`` (``constant_pad_nd``: layer ``pad``), and
``torch.chunk`` / ``torch.split`` / ``x[:, a:b]`` along channels (AlexeyAB's [route] with
groups/group_id, a copy of the channel range: layer ``slice``), and ShuffleNet's channel
shuffle (``x.view(b, g, c//g, h, w).transpose(1, 2).contiguous().view(b, c, h, w)`` and its
spellings, ``nn.ChannelShuffle``: PyTorch's strided copy, layer ``shuffle``), and
``nn.PixelShuffle`` / ``nn.PixelUnshuffle`` / their ``F.`` forms (the same copy of a permuted
view: layer ``pixel_shuffle``). The kernels are
``kernelfi.kernels.pointwise``, ``copy`` and ``kernelfi.kernels.layout``.

The shuffle's 5-D view is tracked symbolically: a view of a (C, H, W) map as (g, C/g, H, W) is an
ordinary reshaped value; swapping its first two dims gives a value marked ``SHUFFLED`` (no
kernel: a transposed view), which only ``.contiguous()`` and a view/reshape/flatten back to
(C, H, W) (or flat) may use; that view is the copy. Any other transpose or permute is refused.
"""
from __future__ import annotations

import math
import numbers
from typing import Any

import torch.fx as fx

from kernelfi._utils import KernelfiError

from .fx_layers import SHUFFLED, SPLIT, FxLayers, Val, layer_name



def number(v: Any) -> bool:
    """A Python int or float operand (not a bool, not a tensor or node)."""
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


class FxOps(FxLayers):
    """Rules of the scalar, clamp, pad and slice layers (see the module docstring)."""

    def _tensor(self, arg: Any, node: fx.Node, what: str) -> Val:
        val = self._val(arg, node)
        if val.layer in (-2, SPLIT):
            raise KernelfiError(f"fx node {node.name}: {what} of a non-tensor value is not supported")
        return val

    def _scalar(self, node: fx.Node, op: str, a: Any, b: Any, base: str) -> bool:
        """``x op c`` / ``c op x`` with c a Python number as PyTorch's element kernel with a CPU
        scalar (layer ``scalar``); False when neither operand is a number (a tensor op)."""
        if not (number(a) or number(b)):
            return False
        if number(a) and number(b):
            raise KernelfiError(f"fx node {node.name}: {op} of two constants is not supported")
        alpha = node.kwargs.get("alpha", 1)
        if alpha != 1 or node.kwargs.get("rounding_mode") is not None or len(node.args) > 2:
            raise KernelfiError(f"fx node {node.name}: {op} with alpha or rounding_mode is not supported")
        tensor, c = (b, a) if number(a) else (a, b)
        if op == "sub" and number(a):
            op = "rsub"
        if op == "div" and number(a):
            raise KernelfiError(f"fx node {node.name}: a constant divided by a tensor is not supported")
        src = self._tensor(tensor, node, op)
        if op == "div" and float(c) == 0.0:
            raise KernelfiError(f"fx node {node.name}: division by the constant 0 is not supported")
        self._add(node, "scalar", layer_name(base, op), (src.layer,), src.shape,
                  {"op": op, "scalar": float(c)})
        return True

    def _clamp(self, node: fx.Node, lo: Any, hi: Any, name: str, kind: str = "clamp") -> None:
        """``torch.clamp(x, lo, hi)`` and its one-sided forms: PyTorch's clamp kernel (NaN passes);
        ``name`` is the layer's (a module's path, else the function's ``base.kind``)."""
        src = self._tensor(node.args[0], node, kind)
        for v in (lo, hi):
            if v is not None and not number(v):
                raise KernelfiError(f"fx node {node.name}: {kind} with a tensor bound is not supported")
        if lo is None and hi is None:
            raise KernelfiError(f"fx node {node.name}: {kind} without bounds is not supported")
        self._add(node, "clamp", name, (src.layer,), src.shape,
                  {"min": None if lo is None else float(lo), "max": None if hi is None else float(hi)})

    def _pad(self, node: fx.Node, pad: Any, value: Any, mode: str, name: str) -> None:
        """``F.pad(x, (l, r[, t, b]), mode, value)``: constant_pad_nd, or PyTorch's reflect /
        replicate pad kernels (pads >= 0, H and W only; reflect pads smaller than the extent);
        ``name`` is the layer's."""
        src = self._tensor(node.args[0], node, "pad")
        if mode not in ("constant", "reflect", "replicate"):
            raise KernelfiError(f"fx node {node.name}: padding mode '{mode}' is not supported "
                                "(constant, reflect, replicate)")
        if len(src.shape) != 3 or not isinstance(pad, (tuple, list)) or len(pad) not in ((2, 4) if mode == "constant" else (4,)) \
                or not all(isinstance(p, int) and p >= 0 for p in pad):
            raise KernelfiError(f"fx node {node.name}: pad {pad!r} of {src.shape} is not supported "
                                "(non-negative (left, right[, top, bottom]) of a (C, H, W) map; reflect/replicate: all four)")
        if mode == "constant" and not number(value if value is not None else 0.0):
            raise KernelfiError(f"fx node {node.name}: pad value {value!r} is not a number")
        left, right, top, bottom = (*pad, 0, 0) if len(pad) == 2 else tuple(pad)
        c, h, w = src.shape
        if mode == "reflect" and (max(left, right) >= w or max(top, bottom) >= h):
            raise KernelfiError(f"fx node {node.name}: reflect pad {tuple(pad)} of {src.shape} is not supported "
                                "(each pad smaller than its extent)")
        params: dict[str, Any] = {"top": top, "left": left}
        params.update({"value": float(value or 0.0)} if mode == "constant" else {"mode": mode})
        self._add(node, "pad", name, (src.layer,), (c, h + top + bottom, w + left + right), params)

    def _split(self, node: fx.Node, sizes: Any, dim: Any, chunks: bool) -> None:
        """``torch.chunk``/``torch.split`` along channels: the channel ranges, no kernel yet
        (each piece used becomes a ``slice`` layer at its ``getitem``)."""
        src = self._tensor(node.args[0], node, "chunk" if chunks else "split")
        if len(src.shape) != 3 or dim not in (1, -3):
            raise KernelfiError(f"fx node {node.name}: {'chunk' if chunks else 'split'} along dim {dim} of "
                                f"{src.shape} is not supported (only channels of a (C, H, W) map)")
        c = src.shape[0]
        if chunks:
            if not isinstance(sizes, int) or sizes < 1:
                raise KernelfiError(f"fx node {node.name}: chunk into {sizes!r} pieces is not supported")
            step = -(-c // sizes)
            parts = [min(step, c - s) for s in range(0, c, step)]
        elif isinstance(sizes, int) and sizes > 0:
            parts = [min(sizes, c - s) for s in range(0, c, sizes)]
        elif isinstance(sizes, (tuple, list)) and all(isinstance(s, int) and s > 0 for s in sizes) and sum(sizes) == c:
            parts = list(sizes)
        else:
            raise KernelfiError(f"fx node {node.name}: split sizes {sizes!r} of {c} channels are not supported")
        starts = [sum(parts[:j]) for j in range(len(parts))]
        self.vals[node] = Val(SPLIT, ())
        self.consts[node] = (src, tuple(zip(starts, parts)))

    def _slice(self, node: fx.Node, src: Val, start: int, size: int, base: str) -> None:
        """Channels [start, start + size) of a map: one copy from ``input + start*H*W``."""
        if size == src.shape[0]:
            self.vals[node] = src  # the whole map: no kernel
            return
        if not node.users:
            return  # a piece nothing reads (``a, b = x.chunk(2, 1)`` with a unused): no copy
        self._add(node, "slice", layer_name(base, "slice"), (src.layer,), (size, *src.shape[1:]),
                  {"start": start})

    def _getitem(self, node: fx.Node, base: str) -> bool:
        """``pieces[i]`` of a chunk/split and ``x[:, a:b]``; False when it is not one of those."""
        holder, key = node.args[0], node.args[1]
        val = self.vals.get(holder) if isinstance(holder, fx.Node) else None
        if val is None or val.layer == -2:
            return False
        if val.layer == SPLIT:
            src, parts = self.consts[holder]
            if not isinstance(key, int) or not -len(parts) <= key < len(parts):
                raise KernelfiError(f"fx node {node.name}: piece {key!r} of {len(parts)} is not supported")
            self._slice(node, src, *parts[key], base)
            return True
        if len(val.shape) != 3 or not isinstance(key, tuple) or not 1 <= len(key) <= 2 or key[0] != slice(None) \
                or (len(key) == 2 and not isinstance(key[1], slice)):
            raise KernelfiError(f"fx node {node.name}: indexing {key!r} of {val.shape} is not supported "
                                "(only a channel slice x[:, a:b])")
        if len(key) == 1:
            self.vals[node] = val
            return True
        sl = key[1]
        if sl.step not in (None, 1) or not all(v is None or isinstance(v, int) for v in (sl.start, sl.stop)):
            raise KernelfiError(f"fx node {node.name}: channel slice {sl} is not supported (whole-number bounds, step 1)")
        start, stop, _ = sl.indices(val.shape[0])
        if stop <= start:
            raise KernelfiError(f"fx node {node.name}: channel slice {sl} of {val.shape[0]} channels is empty")
        self._slice(node, val, start, stop - start, base)
        return True


    def _swap(self, node: fx.Node, dims: tuple[Any, ...], what: str) -> None:
        """``x.transpose(1, 2)`` / ``x.permute(0, 2, 1, 3, 4)`` of a (g, C/g, H, W) view: the
        transposed view (no kernel yet); any other transpose or permute is refused."""
        arg = node.args[0]
        val = self.vals.get(arg) if isinstance(arg, fx.Node) else None
        if val is None or val.layer < -1 or len(val.shape) != 4 or tuple(dims) != (1, 2):
            shape = None if val is None else val.shape
            raise KernelfiError(f"fx node {node.name}: {what} of {shape} is not supported (only the channel "
                                "shuffle's swap of dims 1 and 2 of a (g, C/g, H, W) view)")
        g, k, h, w = val.shape
        self.vals[node] = Val(SHUFFLED, (k, g, h, w))
        self.consts[node] = (Val(val.layer, (g * k, h, w)), g)

    def _shuffled(self, node: fx.Node, target: tuple[int, ...] | None, base: str) -> bool:
        """A use of a transposed view: ``.contiguous()`` (``target`` None) keeps it; a view back to
        (C, H, W) or flat is the strided copy (layer ``shuffle``). False when the input is not one."""
        arg = node.args[0]
        if not isinstance(arg, fx.Node) or arg not in self.vals or self.vals[arg].layer != SHUFFLED:
            return False
        if target is None:
            self.vals[node], self.consts[node] = self.vals[arg], self.consts[arg]
            return True
        src, g = self.consts[arg]
        if target not in (src.shape, (math.prod(src.shape),)):
            raise KernelfiError(f"fx node {node.name}: a view {target} of the transposed {self.vals[arg].shape} "
                                f"is not supported (only back to {src.shape} or flat)")
        self._channel_shuffle(node, src, g, base)
        self.vals[node] = Val(self.vals[node].layer, target)
        return True

    def _channel_shuffle(self, node: fx.Node, src: Val, g: int, base: str) -> None:
        """Channel shuffle of a (C, H, W) map in ``g`` groups: PyTorch's strided copy."""
        if len(src.shape) != 3 or g < 1 or src.shape[0] % g:
            raise KernelfiError(f"fx node {node.name}: channel shuffle in {g} groups of {src.shape} is not supported "
                                "(a (C, H, W) map, g dividing C)")
        self._add(node, "shuffle", base or "shuffle", (src.layer,), src.shape, {"groups": g})

    def _pixel_shuffle(self, node: fx.Node, factor: Any, inverse: bool, name: str) -> None:
        """``pixel_shuffle(x, r)`` / ``pixel_unshuffle(x, r)`` of a (C, H, W) map."""
        src = self._tensor(node.args[0], node, "pixel_unshuffle" if inverse else "pixel_shuffle")
        r = factor if isinstance(factor, int) and not isinstance(factor, bool) else None
        ok = r is not None and r >= 1 and len(src.shape) == 3 and (
            src.shape[1] % r == 0 and src.shape[2] % r == 0 if inverse else src.shape[0] % (r * r) == 0)
        if not ok or r is None:
            raise KernelfiError(f"fx node {node.name}: {'pixel_unshuffle' if inverse else 'pixel_shuffle'} by "
                                f"{factor!r} of {src.shape} is not supported (a whole factor fitting a (C, H, W) map)")
        c, h, w = src.shape
        out = (c * r * r, h // r, w // r) if inverse else (c // (r * r), h * r, w * r)
        self._add(node, "pixel_shuffle", name, (src.layer,), out, {"factor": r, "inverse": inverse})
