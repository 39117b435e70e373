"""The fx lowering's state and helpers, and the rules of the layers issue 20 added.

``FxLowering`` (``fx_frontend.py``) walks the graph and dispatches each node; this module holds
what every rule shares (the layers under construction, the value of each node, naming) and the
rules for the layers beyond Darknet's classic ones: standalone BatchNorm, pass-through nodes,
ceil_mode / local / padded pooling geometry, nearest upsampling, ``view``/``reshape`` shapes,
broadcasting ``a - b``/``a * b``/``a + b`` (and the squeeze-and-excitation multiply), and
``x.mean((2, 3))``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn

from kernelfi._utils import KernelfiError
from kernelfi.kernels import CEIL_PAD, bilinear_scale


#: A node whose value is the tuple of ``torch.chunk``/``torch.split``: its layer index (fx_ops).
SPLIT = -3
#: A node whose value is the transposed (C/g, g, H, W) view of a channel shuffle: its layer index (fx_ops).
SHUFFLED = -4


def layer_name(base: str, kind: str) -> str:
    """A function node's layer name: ``base.kind`` inside a module, else ``kind``."""
    return f"{base}.{kind}" if base else kind


@dataclass
class FxLayer:
    """A layer under construction; frozen into a LayerSpec at the end."""

    index: int
    type: str
    name: str
    inputs: tuple[int, ...]
    out_shape: tuple[int, ...]
    params: dict[str, Any] = field(default_factory=dict)
    weights: dict[str, str] = field(default_factory=dict)
    open_node: fx.Node | None = None  # node whose single use may still fuse into this layer


@dataclass(frozen=True)
class Val:
    """What an fx node evaluates to: a layer's output (-1 = network input), maybe reshaped."""

    layer: int
    shape: tuple[int, ...]


def module_path(node: fx.Node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    if stack:
        path = list(stack.values())[-1]
        path = path[0] if isinstance(path, tuple) else path
        return str(path)
    return ""


def hw(v: Any) -> tuple[int, int]:
    """A PyTorch size argument as (height, width)."""
    if isinstance(v, (tuple, list)):
        return int(v[0]), int(v[-1])
    return int(v), int(v)


def pair(v: Any, what: str, where: str) -> int:
    if isinstance(v, (tuple, list)):
        if len(set(v)) != 1:
            raise KernelfiError(f"fx node {where}: non-square {what} {tuple(v)} is not supported")
        return int(v[0])
    return int(v)


class FxLayers:
    """The lowering's state and the shared helpers and issue-20 rules (see the module docstring)."""

    def __init__(self, module: nn.Module, input_shape: tuple[int, ...]) -> None:
        self.module = module
        self.input_shape = tuple(int(d) for d in input_shape)
        self.layers: list[FxLayer] = []
        self.vals: dict[fx.Node, Val] = {}
        self.state: dict[str, torch.Tensor] = {k: v.detach() for k, v in module.state_dict().items()}
        self.names: set[str] = set()
        #: size values (``x.size()``, ``x.shape[1]``): node -> its value, None for the batch size
        self.consts: dict[fx.Node, Any] = {}
        #: layer index -> the fx nodes it fuses, in graph order (what the export maps back to modules)
        self.members: dict[int, list[fx.Node]] = {}
        self.graph_module: fx.GraphModule | None = None

    # ---------------------------------------------------------------- helpers
    def _name(self, base: str) -> str:
        name, k = base, 1
        while name in self.names:
            name = f"{base}.{k}"
            k += 1
        self.names.add(name)
        return name

    def _shape(self, layer: int) -> tuple[int, ...]:
        return self.input_shape if layer < 0 else self.layers[layer].out_shape

    def _add(self, node: fx.Node, type_: str, base: str, inputs: tuple[int, ...],
             out_shape: tuple[int, ...], params: dict[str, Any] | None = None,
             weights: dict[str, str] | None = None, open_: bool = False) -> FxLayer:
        layer = FxLayer(len(self.layers), type_, self._name(base), inputs, tuple(out_shape),
                       dict(params or {}), dict(weights or {}), node if open_ else None)
        self.layers.append(layer)
        self.vals[node] = Val(layer.index, layer.out_shape)
        self.members[layer.index] = [node]
        return layer

    def _val(self, arg: Any, node: fx.Node) -> Val:
        if not isinstance(arg, fx.Node) or arg not in self.vals:
            raise KernelfiError(f"fx node {node.name} ({node.op} {node.target}): input {arg!r} is not a tensor the lowering tracks")
        if self.vals[arg].layer == SPLIT:  # a chunk/split tuple, used only through [i]
            raise KernelfiError(f"fx node {node.name}: the pieces of {arg.name} are used other than by index")
        if self.vals[arg].layer == SHUFFLED:  # a transposed view, used only by a view back
            raise KernelfiError(f"fx node {node.name}: the transposed view {arg.name} is used other than by "
                                ".contiguous() or a view back to (C, H, W)")
        return self.vals[arg]

    def _fusable(self, src: fx.Node, node: fx.Node) -> FxLayer | None:
        """The open layer that ``node`` may fuse into: its only input, used only by ``node``."""
        val = self.vals.get(src)
        if val is None or val.layer < 0:
            return None
        layer = self.layers[val.layer]
        if layer.open_node is src and len(src.users) == 1 and val.shape == layer.out_shape:
            return layer
        return None

    def _bn_affine(self, mod: nn.Module, path: str, c: int) -> tuple[str, str]:
        """State keys of a BatchNorm's scales and biases (ones and zeros when it is not affine)."""
        if mod.affine:
            return f"{path}.weight", f"{path}.bias"
        self.state[f"{path}.__ones"] = torch.ones(c)
        self.state[f"{path}.__zeros"] = torch.zeros(c)
        return f"{path}.__ones", f"{path}.__zeros"

    def _standalone_bn(self, node: fx.Node, mod: nn.Module, path: str, where: str) -> None:
        """Darknet's [batchnorm] layer: BatchNorm after anything but a conv/linear it can fuse into."""
        src = self._val(node.args[0], node)
        c = src.shape[0]
        if getattr(mod, "num_features", c) != c:
            raise KernelfiError(f"fx node {where}: BatchNorm of {mod.num_features} channels on a map of {c}")
        scales, biases = self._bn_affine(mod, path, c)
        self._add(node, "batchnorm", path, (src.layer,), src.shape, {"eps": float(mod.eps)},
                  {"scales": scales, "biases": biases, "rolling_mean": f"{path}.running_mean",
                   "rolling_variance": f"{path}.running_var"})

    def _pass(self, node: fx.Node) -> None:
        """A node whose output is its input (Identity, Dropout in eval, ``.contiguous()``): no
        kernel; an open layer it passes on stays open to what follows it."""
        src_node = node.args[0]
        val = self._val(src_node, node)
        self.vals[node] = val
        if isinstance(src_node, fx.Node) and val.layer >= 0:
            layer = self.layers[val.layer]
            if layer.open_node is src_node and len(src_node.users) == 1:
                layer.open_node = node

    def _pool_pad(self, h: int, w: int, size: int, stride: int, pad: int, ceil: bool,
                  where: str) -> tuple[int, int, int, dict[str, int]]:
        """Darknet's total ``pad`` (window origin -pad/2) giving PyTorch's output extents, those
        extents, and the far-side ``ceil_pad_h``/``ceil_pad_w`` params where they are needed.

        PyTorch's ceil_mode rounds the extent up but drops a last window that would start in the
        right padding (it must start inside the input or the left padding). Up to stride 2 the
        far side's padding grows by stride - 1 within ``pad`` (the origin -pad/2 stays at
        -padding), as before; a larger stride would move the origin, so such a pool keeps
        ``pad`` = 2*padding and adds the rows/columns its last window reaches past the padded
        input as ``CEIL_PAD`` params (``kernels.pool``): every window, tap and the
        count_include_pad divisor (clipped to the padded input, not the overhang) are PyTorch's."""
        def torch_out(n: int) -> int:
            if not ceil:
                return (n + 2 * pad - size) // stride + 1
            o = -(-(n + 2 * pad - size) // stride) + 1
            return o - 1 if (o - 1) * stride >= n + pad else o

        def darknet_out(n: int, total: int) -> int:
            return (n + total - size) // stride + 1

        want = (torch_out(h), torch_out(w))
        if min(want) < 1:
            raise KernelfiError(f"fx node {where}: pooling {h}x{w} with kernel {size}, stride {stride}, padding {pad}, "
                                f"ceil_mode={ceil}: PyTorch's output {want[0]}x{want[1]} is empty")
        total = 2 * pad
        if ceil and want != (darknet_out(h, total), darknet_out(w, total)) and stride <= 2:
            total = 2 * pad + stride - 1
        if want == (darknet_out(h, total), darknet_out(w, total)):
            return total, want[0], want[1], {}
        total = 2 * pad  # ceil_mode with stride > 2: the far-side rows/columns as params
        extra = {key: max(0, (o - 1) * stride + size - (n + total))
                 for key, o, n in zip(CEIL_PAD, want, (h, w))}
        return total, want[0], want[1], extra

    def _local_avgpool(self, node: fx.Node, src: Val, path: str, size: int, stride: int, pad: int, ceil: bool,
                       include_pad: bool, where: str, divisor: int | None = None) -> None:
        """AlexeyAB Darknet's [local_avgpool] (PyTorch's count_include_pad divisor when padded, its
        divisor_override when given: param ``divisor``, only then)."""
        c, h, w = src.shape
        total, oh, ow, extra = self._pool_pad(h, w, size, stride, pad, ceil, where)
        if divisor is not None:
            extra = {**extra, "divisor": int(divisor)}
            include_pad = False   # divisor_override wins over count_include_pad in PyTorch's kernel
        self._add(node, "local_avgpool", path, (src.layer,), (c, oh, ow),
                  {"size": size, "stride": stride, "pad": total, "count_include_pad": include_pad and pad > 0, **extra})

    def _dilated_maxpool(self, node: fx.Node, src: Val, path: str, size: int, stride: int, pad: int, dilation: int,
                         ceil: bool, where: str) -> None:
        """A dilated ``MaxPool2d``: PyTorch's max_pool_forward_nchw, its output extents
        (pooling_output_shape: ``(n + 2*pad - d*(k - 1) - 1 [+ stride - 1 with ceil_mode])/stride + 1``,
        less one where ceil_mode's last window would start in the right padding)."""
        c, h, w = src.shape
        if pad > size // 2:
            raise KernelfiError(f"fx node {where}: max pooling padding {pad} is more than half the kernel {size}")

        def out(n: int) -> int:
            o = (n + 2 * pad - dilation * (size - 1) - 1 + (stride - 1 if ceil else 0)) // stride + 1
            return o - 1 if ceil and (o - 1) * stride >= n + pad else o

        oh, ow = out(h), out(w)
        if min(oh, ow) < 1:
            raise KernelfiError(f"fx node {where}: dilated max pooling {h}x{w} gives an empty {oh}x{ow} output")
        self._add(node, "maxpool_dilated", path, (src.layer,), (c, oh, ow),
                  {"size": size, "stride": stride, "pad": pad, "dilation": dilation})

    def _adaptive_maxpool(self, node: fx.Node, output_size: Any, return_indices: bool, path: str,
                          where: str) -> None:
        """``AdaptiveMaxPool2d`` / ``F.adaptive_max_pool2d``: PyTorch's adaptivemaxpool kernel (Darknet
        has no adaptive pool); to the input's own size every window is one tap, so no kernel runs."""
        if return_indices:
            raise KernelfiError(f"fx node {where}: adaptive max pooling with return_indices=True is not supported")
        src = self._val(node.args[0], node)
        if len(src.shape) != 3:
            raise KernelfiError(f"fx node {where}: input shape {src.shape} is not (C, H, W)")
        c, h, w = src.shape
        osz = output_size if isinstance(output_size, (tuple, list)) else (output_size, output_size)
        if len(osz) != 2 or any(not isinstance(o, (int, type(None))) for o in osz):
            raise KernelfiError(f"fx node {where}: adaptive max pooling to {output_size!r} (not fixed sizes)")
        oh, ow = (h if osz[0] is None else int(osz[0]), w if osz[1] is None else int(osz[1]))
        if min(oh, ow) < 1:
            raise KernelfiError(f"fx node {where}: adaptive max pooling to {oh}x{ow} is empty")
        if (oh, ow) == (h, w):
            self.vals[node] = src
            return
        self._add(node, "adaptive_maxpool", path, (src.layer,), (c, oh, ow), {})

    def _upsample(self, node: fx.Node, src: Val, scale: Any, size: Any, mode: str, where: str, path: str,
                  align_corners: Any = None, recompute: Any = None) -> None:
        """Nearest upsampling by an integer factor: AlexeyAB Darknet's [upsample] (fill +
        upsample_kernel); bilinear: PyTorch's upsample_bilinear2d kernel (Darknet has none)."""
        if mode not in ("nearest", "bilinear"):
            raise KernelfiError(f"fx node {where}: upsampling mode '{mode}' is not supported (only nearest, bilinear)")
        if len(src.shape) != 3:
            raise KernelfiError(f"fx node {where}: input shape {src.shape} is not (C, H, W)")
        c, h, w = src.shape
        if mode == "bilinear":
            self._bilinear(node, src, scale, size, bool(align_corners), bool(recompute), where, path)
            return
        if size is not None:
            sz = size if isinstance(size, (tuple, list)) else (size, size)
            factors = {int(sz[0]) / h, int(sz[1]) / w}
        else:
            sc = scale if isinstance(scale, (tuple, list)) else (scale, scale)
            factors = {float(v) for v in sc}
        if len(factors) != 1 or not float(next(iter(factors))).is_integer() or next(iter(factors)) < 1:
            raise KernelfiError(f"fx node {where}: upsampling by {sorted(factors)} is not supported (one whole factor)")
        st = int(next(iter(factors)))
        self._add(node, "upsample", path, (src.layer,), (c, h * st, w * st), {"stride": st, "scale": 1.0})

    def _bilinear(self, node: fx.Node, src: Val, scale: Any, size: Any, align: bool, recompute: bool,
                  where: str, path: str) -> None:
        """PyTorch's upsample_bilinear2d: the output size and the scales F.interpolate hands the
        kernel (a scale factor reaches it unless ``recompute_scale_factor``; a size never does)."""
        c, h, w = src.shape
        if size is not None:
            sz = tuple(size) if isinstance(size, (tuple, list)) else (size, size)
            oh, ow = int(sz[0]), int(sz[1])
            factors: tuple[float | None, float | None] = (None, None)
        else:
            sc = tuple(scale) if isinstance(scale, (tuple, list)) else (scale, scale)
            if len(sc) != 2 or any(v is None or float(v) <= 0 for v in sc):
                raise KernelfiError(f"fx node {where}: upsampling by {sc} is not supported (positive scale factors)")
            # F.interpolate: floor(float(in) * scale) in double
            oh, ow = (int(math.floor(float(n) * float(v))) for n, v in zip((h, w), sc))
            factors = (None, None) if recompute else (float(sc[0]), float(sc[1]))
        if oh < 1 or ow < 1:
            raise KernelfiError(f"fx node {where}: bilinear upsampling of {h}x{w} to {oh}x{ow} is empty")
        if (oh, ow) == (h, w):
            self._pass(node)  # PyTorch copies the input: nothing to inject into
            return
        self._add(node, "upsample_bilinear", path, (src.layer,), (c, oh, ow),
                  {"align_corners": align, "rheight": bilinear_scale(h, oh, align, factors[0]),
                   "rwidth": bilinear_scale(w, ow, align, factors[1])})

    def _reshaped(self, node: fx.Node, src: Val) -> tuple[int, ...]:
        """The per-sample shape of ``x.view(...)``/``x.reshape(...)``: the sizes after the batch
        dimension when they are known (ints, ``x.size(i)``, one -1), else flattened."""
        dims = node.args[1:]
        if len(dims) == 1 and isinstance(dims[0], (tuple, list)):
            dims = tuple(dims[0])
        total = math.prod(src.shape)
        sizes: list[int] = []
        for d in dims[1:]:
            v = self.consts.get(d) if isinstance(d, fx.Node) else d
            if not isinstance(v, int):
                return (total,)
            sizes.append(v)
        if sizes.count(-1) == 1:
            known = math.prod(x for x in sizes if x != -1)
            sizes[sizes.index(-1)] = total // known if known else 0
        if not sizes or math.prod(sizes) != total or any(x < 1 for x in sizes):
            return (total,)
        return tuple(sizes)

    def _binary(self, node: fx.Node, op: str, a: Any, b: Any, base: str) -> None:
        """``a - b``, ``a * b`` (and ``a + b`` of different shapes): PyTorch's broadcasting
        element kernel, or AlexeyAB Darknet's scale_channels for a map times a per-channel
        (C, 1, 1) scale (a squeeze-and-excitation block)."""
        if not isinstance(a, fx.Node) or not isinstance(b, fx.Node):
            raise KernelfiError(f"fx node {node.name}: {op} with a constant operand is not supported")
        va, vb = self._val(a, node), self._val(b, node)
        if -2 in (va.layer, vb.layer):
            raise KernelfiError(f"fx node {node.name}: {op} of a size value is not supported")
        sa, sb = va.shape, vb.shape
        if len(sa) != len(sb) or len(sa) not in (1, 3):
            raise KernelfiError(f"fx node {node.name}: {op} of shapes {sa} and {sb} is not supported "
                                "(both (C, H, W) or both flat)")
        try:
            out = tuple(torch.broadcast_shapes(sa, sb))
        except RuntimeError:
            raise KernelfiError(f"fx node {node.name}: {op} of shapes {sa} and {sb}: they do not broadcast") from None
        name = layer_name(base, op)
        if op == "mul" and len(out) == 3:
            for m, sc in ((va, vb), (vb, va)):
                if m.shape == out and sc.shape == (out[0], 1, 1) and out[1] * out[2] > 1:
                    self._add(node, "scale_channels", name, (m.layer, sc.layer), out, {})
                    return
        full = lambda sh: sh if len(sh) == 3 else (sh[0], 1, 1)  # noqa: E731
        self._add(node, "binary", name, (va.layer, vb.layer), out,
                  {"op": op, "a": full(sa), "b": full(sb)}, open_=True)

    def _mean(self, node: fx.Node, base: str) -> None:
        """``x.mean((2, 3))`` (keepdim or not): Darknet's global avgpool."""
        src = self._val(node.args[0], node)
        dims = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else None)
        keep = bool(node.kwargs.get("keepdim", node.args[2] if len(node.args) > 2 else False))
        dims = tuple(dims) if isinstance(dims, (tuple, list)) else (dims,)
        if len(src.shape) != 3 or sorted(int(d) % 4 for d in dims if d is not None) != [2, 3]:
            raise KernelfiError(f"fx node {node.name}: mean over dims {dims} of {src.shape} is not supported "
                                "(only the spatial mean, dims (2, 3))")
        c = src.shape[0]
        self._add(node, "avgpool", layer_name(base, "mean"), (src.layer,), (c, 1, 1), {})
        if not keep:
            self.vals[node] = Val(self.vals[node].layer, (c,))
