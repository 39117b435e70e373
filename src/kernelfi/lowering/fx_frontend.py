"""torch.fx front end: an ``nn.Module`` -> Darknet-style ``LayerSpec``s.

Why fx and not hooks: the lowering needs the dataflow (which tensor feeds which op, residual
adds, concatenations) without running the model, and fx gives it with the module path of every
node, from which the stable dotted layer names come. Fusion follows Darknet's layer model:
Conv2d[+BatchNorm2d][+activation] -> one convolutional layer; Linear[+BN][+act] -> connected;
residual add [+activation] -> shortcut; torch.cat -> route.
"""
from __future__ import annotations

import math
import operator
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from kernelfi._utils import KernelfiError
from kernelfi.kernels import LEAKY_SLOPE
from kernelfi.types import LayerSpec

_ACT_MODULES: dict[type, str] = {
    nn.ReLU: "relu", nn.Sigmoid: "logistic", nn.ReLU6: "relu6", nn.Tanh: "tanh", nn.SiLU: "swish",
    nn.GELU: "gelu", nn.Hardswish: "hardswish", nn.Hardsigmoid: "hardsigmoid", nn.LeakyReLU: "leaky",
}
_ACT_FUNCS: dict[Any, str] = {
    F.relu: "relu", torch.relu: "relu", torch.sigmoid: "logistic", F.sigmoid: "logistic",
    F.leaky_relu: "leaky", F.relu6: "relu6", torch.tanh: "tanh", F.tanh: "tanh", F.silu: "swish",
    F.gelu: "gelu", F.hardswish: "hardswish", F.hardsigmoid: "hardsigmoid",
}
_ACT_METHODS: dict[str, str] = {"relu": "relu", "relu_": "relu", "sigmoid": "logistic", "sigmoid_": "logistic",
                                "tanh": "tanh", "tanh_": "tanh"}
#: Dropout modules: identities at inference (Darknet's dropout layer, no kernel).
_DROPOUT_MODULES = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)
_ADD_FUNCS = (operator.add, operator.iadd, torch.add)
_SUB_FUNCS = (operator.sub, operator.isub, torch.sub)
_MUL_FUNCS = (operator.mul, operator.imul, torch.mul)
_MEAN_FUNCS = (torch.mean,)
_FLATTEN_METHODS = ("view", "reshape", "flatten")
_SOFTMAX_FUNCS = (F.softmax, torch.softmax)


@dataclass
class _Layer:
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
class _Val:
    """What an fx node evaluates to: a layer's output (-1 = network input), maybe reshaped."""

    layer: int
    shape: tuple[int, ...]


class _Tracer(fx.Tracer):
    """Keeps the library's own activation/pool modules as leaves (the default already does)."""


def _module_path(node: fx.Node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    if stack:
        path = list(stack.values())[-1]
        path = path[0] if isinstance(path, tuple) else path
        return str(path)
    return ""


def _hw(v: Any) -> tuple[int, int]:
    """A PyTorch size argument as (height, width)."""
    if isinstance(v, (tuple, list)):
        return int(v[0]), int(v[-1])
    return int(v), int(v)


def _pair(v: Any, what: str, where: str) -> int:
    if isinstance(v, (tuple, list)):
        if len(set(v)) != 1:
            raise KernelfiError(f"fx node {where}: non-square {what} {tuple(v)} is not supported")
        return int(v[0])
    return int(v)


class FxLowering:
    """Walks an fx graph once and produces LayerSpecs plus a derived state dict."""

    def __init__(self, module: nn.Module, input_shape: tuple[int, ...]) -> None:
        self.module = module
        self.input_shape = tuple(int(d) for d in input_shape)
        self.layers: list[_Layer] = []
        self.vals: dict[fx.Node, _Val] = {}
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
             weights: dict[str, str] | None = None, open_: bool = False) -> _Layer:
        layer = _Layer(len(self.layers), type_, self._name(base), inputs, tuple(out_shape),
                       dict(params or {}), dict(weights or {}), node if open_ else None)
        self.layers.append(layer)
        self.vals[node] = _Val(layer.index, layer.out_shape)
        self.members[layer.index] = [node]
        return layer

    def _val(self, arg: Any, node: fx.Node) -> _Val:
        if not isinstance(arg, fx.Node) or arg not in self.vals:
            raise KernelfiError(f"fx node {node.name} ({node.op} {node.target}): input {arg!r} is not a tensor the lowering tracks")
        return self.vals[arg]

    def _fusable(self, src: fx.Node, node: fx.Node) -> _Layer | None:
        """The open layer that ``node`` may fuse into: its only input, used only by ``node``."""
        val = self.vals.get(src)
        if val is None or val.layer < 0:
            return None
        layer = self.layers[val.layer]
        if layer.open_node is src and len(src.users) == 1 and val.shape == layer.out_shape:
            return layer
        return None

    # ---------------------------------------------------------------- main walk
    def run(self) -> tuple[tuple[LayerSpec, ...], dict[str, torch.Tensor]]:
        try:
            graph = _Tracer().trace(self.module)
        except Exception as exc:  # fx raises many types for untraceable code
            raise KernelfiError(f"torch.fx cannot trace {type(self.module).__name__}: {exc}") from None
        gm = fx.GraphModule(self.module, graph)
        self.graph_module = gm
        modules = dict(gm.named_modules())
        out_val: _Val | None = None
        for node in graph.nodes:
            if node.op == "placeholder":
                if any(v.layer == -1 for v in self.vals.values()):
                    raise KernelfiError(f"fx node {node.name}: models with more than one input are not supported")
                self.vals[node] = _Val(-1, self.input_shape)
            elif node.op == "call_module":
                self._module_node(node, modules[str(node.target)])
            elif node.op == "call_function":
                self._function_node(node, node.target)
            elif node.op == "call_method":
                self._method_node(node)
            elif node.op == "get_attr":
                raise KernelfiError(f"fx node {node.name}: direct use of parameter {node.target} is not supported")
            elif node.op == "output":
                arg = node.args[0]
                if isinstance(arg, (tuple, list)):
                    if len(arg) != 1:
                        raise KernelfiError("fx output: models with several outputs are not supported")
                    arg = arg[0]
                out_val = self._val(arg, node)
        if out_val is None or out_val.layer < 0:
            raise KernelfiError("fx graph: the model output is not produced by any supported layer")
        specs = tuple(
            LayerSpec(l.index, l.type, l.name, l.inputs, l.out_shape, l.params, l.weights)
            for l in self.layers
        )
        return specs, self.state

    # ---------------------------------------------------------------- modules
    def _module_node(self, node: fx.Node, mod: nn.Module) -> None:
        path = str(node.target)
        where = f"{node.name} ({path}: {type(mod).__name__})"
        if isinstance(mod, nn.Conv2d):
            self._conv(node, mod, path, where)
        elif isinstance(mod, nn.Linear):
            src = self._val(node.args[0], node)
            k = math.prod(src.shape)
            if k != mod.in_features:
                raise KernelfiError(f"fx node {where}: expects {mod.in_features} inputs, gets {k}")
            weights = {"weights": f"{path}.weight"}
            if mod.bias is not None:
                weights["biases"] = f"{path}.bias"
            else:
                self.state[f"{path}.__zero_bias"] = torch.zeros(mod.out_features)
                weights["biases"] = f"{path}.__zero_bias"
            self._add(node, "connected", path, (src.layer,), (mod.out_features,),
                      {"output": mod.out_features, "inputs": k, "batch_normalize": False,
                       "activation": "linear"}, weights, open_=True)
        elif isinstance(mod, (nn.BatchNorm2d, nn.BatchNorm1d)):
            self._batchnorm(node, mod, path, where)
        elif type(mod) in _ACT_MODULES:
            act = _ACT_MODULES[type(mod)]
            if isinstance(mod, nn.GELU) and mod.approximate != "none":
                raise KernelfiError(f"fx node {where}: GELU(approximate='{mod.approximate}') is not supported (only the erf form)")
            slope = float(mod.negative_slope) if isinstance(mod, nn.LeakyReLU) else LEAKY_SLOPE
            self._activation(node, act, where, slope)
        elif isinstance(mod, nn.Hardtanh) and (float(mod.min_val), float(mod.max_val)) == (0.0, 6.0):
            self._activation(node, "relu6", where)
        elif isinstance(mod, nn.MaxPool2d):
            self._maxpool(node, mod, path, where)
        elif isinstance(mod, (nn.AdaptiveAvgPool2d, nn.AvgPool2d)):
            self._avgpool(node, mod, path, where)
        elif isinstance(mod, nn.Upsample):
            self._upsample(node, self._val(node.args[0], node), mod.scale_factor, mod.size, mod.mode, where, path)
        elif isinstance(mod, nn.Identity):
            self._pass(node)
        elif isinstance(mod, _DROPOUT_MODULES):
            # Darknet's [dropout] layer: in place, launches nothing at inference
            src = self._val(node.args[0], node)
            self._add(node, "dropout", path, (src.layer,), src.shape, {"probability": float(mod.p)})
        elif isinstance(mod, nn.Flatten):
            src = self._val(node.args[0], node)
            self.vals[node] = _Val(src.layer, (math.prod(src.shape),))
        elif isinstance(mod, nn.Softmax):
            self._softmax(node, path)
        else:
            raise KernelfiError(f"fx node {where}: module type {type(mod).__name__} is not supported by the lowering")

    def _conv(self, node: fx.Node, mod: nn.Conv2d, path: str, where: str) -> None:
        src = self._val(node.args[0], node)
        if len(src.shape) != 3:
            raise KernelfiError(f"fx node {where}: input shape {src.shape} is not (C, H, W)")
        c, h, w = src.shape
        kh, kw = _hw(mod.kernel_size)
        sh, sw = _hw(mod.stride)
        dh, dw = _hw(mod.dilation)
        if isinstance(mod.padding, str):
            if mod.padding == "valid":
                ph = pw = 0
            else:  # 'same' (stride 1): PyTorch pads d*(k-1) in total, the odd one on the far side
                if (dh * (kh - 1)) % 2 or (dw * (kw - 1)) % 2:
                    raise KernelfiError(f"fx node {where}: padding='same' of an even kernel {(kh, kw)} pads asymmetrically, "
                                        "which Darknet's im2col cannot")
                ph, pw = dh * (kh - 1) // 2, dw * (kw - 1) // 2
        else:
            ph, pw = _hw(mod.padding)
        if mod.padding_mode != "zeros":
            raise KernelfiError(f"fx node {where}: padding_mode '{mod.padding_mode}' is not supported")
        oh = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
        ow = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
        if oh <= 0 or ow <= 0:
            raise KernelfiError(f"fx node {where}: input {src.shape} too small for kernel {(kh, kw)}")
        size, stride, pad, dil = kh, sh, ph, dh
        # the width axis only where it differs (Darknet's square layers keep their params)
        wide = {f"{key}_w": v for key, v, hv in (("size", kw, kh), ("stride", sw, sh), ("pad", pw, ph),
                                                  ("dilation", dw, dh)) if (kh, sh, ph, dh) != (kw, sw, pw, dw)}
        # Darknet keeps conv weights as (filters, C/groups*size*size): flatten a view.
        key = f"{path}.weight"
        self.state[f"{path}.__weights2d"] = self.state[key].reshape(mod.out_channels, -1)
        weights = {"weights": f"{path}.__weights2d"}
        if mod.bias is not None:
            weights["biases"] = f"{path}.bias"
        else:
            self.state[f"{path}.__zero_bias"] = torch.zeros(mod.out_channels)
            weights["biases"] = f"{path}.__zero_bias"
        self._add(node, "convolutional", path, (src.layer,), (mod.out_channels, oh, ow),
                  {"filters": mod.out_channels, "size": size, "stride": stride, "pad": pad,
                   "dilation": dil, "groups": mod.groups, "batch_normalize": False,
                   "activation": "linear", **wide}, weights, open_=True)

    def _batchnorm(self, node: fx.Node, mod: nn.Module, path: str, where: str) -> None:
        src_node = node.args[0]
        layer = self._fusable(src_node, node) if isinstance(src_node, fx.Node) else None
        if not mod.track_running_stats or mod.running_mean is None:
            raise KernelfiError(f"fx node {where}: BatchNorm without running statistics is not supported")
        if layer is None or layer.type not in ("convolutional", "connected") or layer.params["batch_normalize"] \
                or layer.params["activation"] != "linear":
            self._standalone_bn(node, mod, path, where)
            return
        n = layer.out_shape[0]
        conv_bias = self.state[layer.weights["biases"]]
        mean = self.state[f"{path}.running_mean"]
        if conv_bias.abs().max().item() != 0.0:
            # (x + b - mean) == (x - (mean - b)): fold the conv bias into the rolling mean.
            key = f"{path}.__folded_mean"
            self.state[key] = mean - conv_bias
            mean_key = key
        else:
            mean_key = f"{path}.running_mean"
        if mod.affine:
            scales, biases = f"{path}.weight", f"{path}.bias"
        else:
            self.state[f"{path}.__ones"] = torch.ones(n)
            self.state[f"{path}.__zeros"] = torch.zeros(n)
            scales, biases = f"{path}.__ones", f"{path}.__zeros"
        layer.weights = {"weights": layer.weights["weights"], "biases": biases, "scales": scales,
                         "rolling_mean": mean_key, "rolling_variance": f"{path}.running_var"}
        layer.params["batch_normalize"] = True
        layer.params["eps"] = float(mod.eps)
        layer.open_node = node
        self.members[layer.index].append(node)
        self.vals[node] = _Val(layer.index, layer.out_shape)

    def _standalone_bn(self, node: fx.Node, mod: nn.Module, path: str, where: str) -> None:
        """Darknet's [batchnorm] layer: BatchNorm after anything but a conv/linear it can fuse into."""
        src = self._val(node.args[0], node)
        c = src.shape[0]
        if getattr(mod, "num_features", c) != c:
            raise KernelfiError(f"fx node {where}: BatchNorm of {mod.num_features} channels on a map of {c}")
        if mod.affine:
            scales, biases = f"{path}.weight", f"{path}.bias"
        else:
            self.state[f"{path}.__ones"] = torch.ones(c)
            self.state[f"{path}.__zeros"] = torch.zeros(c)
            scales, biases = f"{path}.__ones", f"{path}.__zeros"
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

    def _activation(self, node: fx.Node, act: str, where: str, slope: float = LEAKY_SLOPE) -> None:
        src_node = node.args[0]
        if act == "leaky" and node.op == "call_function":
            slope = float(node.kwargs.get("negative_slope", node.args[1] if len(node.args) > 1 else 0.01))
        if act == "gelu" and node.op == "call_function" and node.kwargs.get("approximate", "none") != "none":
            raise KernelfiError(f"fx node {where}: gelu(approximate='{node.kwargs['approximate']}') is not supported (only the erf form)")
        layer = self._fusable(src_node, node) if isinstance(src_node, fx.Node) else None
        if layer is None or layer.type not in ("convolutional", "connected", "shortcut") \
                or layer.params.get("activation") != "linear":
            # Darknet's [activation] layer: copy the input, activate_array on the copy
            src = self._val(src_node, node)
            if src.layer == -2:
                raise KernelfiError(f"fx node {where}: activation '{act}' of a non-tensor value")
            layer = self._add(node, "activation", f"{_module_path(node) or node.name}.act", (src.layer,), src.shape,
                              {"activation": "linear"})
            layer.open_node = None
        layer.params["activation"] = act
        if act == "leaky" and not math.isclose(slope, LEAKY_SLOPE):
            layer.params["slope"] = slope
        layer.open_node = None
        if self.members[layer.index][-1] is not node:
            self.members[layer.index].append(node)
        self.vals[node] = _Val(layer.index, layer.out_shape)

    def _pool_pad(self, h: int, w: int, size: int, stride: int, pad: int, ceil: bool, where: str) -> tuple[int, int, int]:
        """Darknet's total ``pad`` (window origin -pad/2) giving PyTorch's output extents, and
        those extents. ceil_mode adds stride - 1 to the padding's far side, which keeps the
        origin at -pad only for stride <= 2; PyTorch also drops a last window starting in the
        right padding, which Darknet's formula never does: such shapes are refused."""
        def torch_out(n: int) -> int:
            if not ceil:
                return (n + 2 * pad - size) // stride + 1
            o = -(-(n + 2 * pad - size) // stride) + 1
            return o - 1 if (o - 1) * stride >= n + pad else o
        total = 2 * pad
        if ceil and (torch_out(h), torch_out(w)) != ((h + total - size) // stride + 1, (w + total - size) // stride + 1):
            if stride > 2:
                raise KernelfiError(f"fx node {where}: ceil_mode pooling with stride {stride} > 2 is not supported")
            total = 2 * pad + stride - 1
        oh, ow = (h + total - size) // stride + 1, (w + total - size) // stride + 1
        if (oh, ow) != (torch_out(h), torch_out(w)) or oh < 1 or ow < 1:
            raise KernelfiError(f"fx node {where}: pooling {h}x{w} with kernel {size}, stride {stride}, padding {pad}, "
                                f"ceil_mode={ceil}: PyTorch's output {torch_out(h)}x{torch_out(w)} has no Darknet geometry")
        return total, oh, ow

    def _maxpool(self, node: fx.Node, mod: nn.MaxPool2d, path: str, where: str) -> None:
        src = self._val(node.args[0], node)
        c, h, w = src.shape
        size = _pair(mod.kernel_size, "kernel", where)
        stride = _pair(mod.stride if mod.stride is not None else size, "stride", where)
        pad = _pair(mod.padding, "padding", where)
        if _pair(mod.dilation, "dilation", where) != 1:
            raise KernelfiError(f"fx node {where}: dilated max pooling is not supported")
        total, oh, ow = self._pool_pad(h, w, size, stride, pad, bool(mod.ceil_mode), where)
        self._add(node, "maxpool", path, (src.layer,), (c, oh, ow),
                  {"size": size, "stride": stride, "pad": total})

    def _avgpool(self, node: fx.Node, mod: nn.Module, path: str, where: str) -> None:
        src = self._val(node.args[0], node)
        if len(src.shape) != 3:
            raise KernelfiError(f"fx node {where}: input shape {src.shape} is not (C, H, W)")
        c, h, w = src.shape
        if isinstance(mod, nn.AdaptiveAvgPool2d):
            osz = mod.output_size if isinstance(mod.output_size, (tuple, list)) else (mod.output_size, mod.output_size)
            oh_, ow_ = (h if osz[0] is None else int(osz[0]), w if osz[1] is None else int(osz[1]))
            if (oh_, ow_) == (h, w):
                self.vals[node] = src  # adaptive pooling to the size it already has: no kernel runs
                return
            if (oh_, ow_) == (1, 1):
                self._add(node, "avgpool", path, (src.layer,), (c, 1, 1), {})
                return
            if h % oh_ or w % ow_ or h // oh_ != w // ow_:
                raise KernelfiError(f"fx node {where}: adaptive average pooling {h}x{w} -> {oh_}x{ow_} is not supported "
                                    "(only to 1x1 or by an equal whole factor)")
            # equal whole factors: PyTorch's adaptive windows are exactly k x k, stride k
            k = h // oh_
            self._local_avgpool(node, src, path, k, k, 0, False, True, where)
            return
        size = _pair(mod.kernel_size, "kernel", where)
        stride = _pair(mod.stride or size, "stride", where)
        pad = _pair(mod.padding, "padding", where)
        if getattr(mod, "divisor_override", None):
            raise KernelfiError(f"fx node {where}: avg pooling with divisor_override is not supported")
        if (size, stride, pad) == (h, h, 0) and h == w:
            self._add(node, "avgpool", path, (src.layer,), (c, 1, 1), {})  # global: Darknet's [avgpool]
            return
        self._local_avgpool(node, src, path, size, stride, pad, bool(mod.ceil_mode),
                            bool(getattr(mod, "count_include_pad", True)), where)

    def _local_avgpool(self, node: fx.Node, src: _Val, path: str, size: int, stride: int, pad: int, ceil: bool,
                       include_pad: bool, where: str) -> None:
        """AlexeyAB Darknet's [local_avgpool] (PyTorch's count_include_pad divisor when padded)."""
        c, h, w = src.shape
        total, oh, ow = self._pool_pad(h, w, size, stride, pad, ceil, where)
        self._add(node, "local_avgpool", path, (src.layer,), (c, oh, ow),
                  {"size": size, "stride": stride, "pad": total, "count_include_pad": include_pad and pad > 0})

    def _upsample(self, node: fx.Node, src: _Val, scale: Any, size: Any, mode: str, where: str, path: str) -> None:
        """Nearest upsampling by an integer factor: AlexeyAB Darknet's [upsample] (fill + upsample_kernel)."""
        if mode != "nearest":
            raise KernelfiError(f"fx node {where}: upsampling mode '{mode}' is not supported (only nearest)")
        if len(src.shape) != 3:
            raise KernelfiError(f"fx node {where}: input shape {src.shape} is not (C, H, W)")
        c, h, w = src.shape
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

    def _softmax(self, node: fx.Node, path: str) -> None:
        src = self._val(node.args[0], node)
        dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else None)
        if len(src.shape) != 1 and dim not in (1, -1, None):
            raise KernelfiError(f"fx node {node.name}: softmax over dim {dim} of {src.shape} is not supported")
        self._add(node, "softmax", path or "softmax", (src.layer,), (math.prod(src.shape),),
                  {"temperature": 1.0})

    # ---------------------------------------------------------------- functions / methods
    def _function_node(self, node: fx.Node, fn: Callable) -> None:
        base = _module_path(node)
        if fn in _ADD_FUNCS:
            self._add_node(node, node.args[0], node.args[1], base)
        elif fn in _SUB_FUNCS:
            self._binary(node, "sub", node.args[0], node.args[1], base)
        elif fn in _MUL_FUNCS:
            self._binary(node, "mul", node.args[0], node.args[1], base)
        elif fn in _MEAN_FUNCS:
            self._mean(node, base)
        elif fn is F.adaptive_avg_pool2d:
            self._adaptive_fn(node, base)
        elif fn is F.interpolate:
            kw = dict(zip(("input", "size", "scale_factor", "mode"), node.args)) | dict(node.kwargs)
            self._upsample(node, self._val(node.args[0], node), kw.get("scale_factor"), kw.get("size"),
                           str(kw.get("mode", "nearest")), node.name, f"{base}.upsample" if base else "upsample")
        elif fn in (F.avg_pool2d, F.max_pool2d):
            names = ("input", "kernel_size", "stride", "padding", "ceil_mode", "count_include_pad") if fn is F.avg_pool2d \
                else ("input", "kernel_size", "stride", "padding", "dilation", "ceil_mode")
            kw = dict(zip(names, node.args)) | dict(node.kwargs)
            kw.pop("input", None)
            kw.pop("return_indices", None)
            mod = nn.AvgPool2d(**kw) if fn is F.avg_pool2d else nn.MaxPool2d(**kw)
            (self._avgpool if fn is F.avg_pool2d else self._maxpool)(  # type: ignore[operator]
                node, mod, f"{base}.pool" if base else "pool", node.name)
        elif fn in _ACT_FUNCS:
            self._activation(node, _ACT_FUNCS[fn], f"{node.name} ({fn.__name__})")
        elif fn is torch.flatten:
            src = self._val(node.args[0], node)
            start = node.kwargs.get("start_dim", node.args[1] if len(node.args) > 1 else 0)
            if start not in (1,):
                raise KernelfiError(f"fx node {node.name}: torch.flatten(start_dim={start}) is not supported (use 1)")
            self.vals[node] = _Val(src.layer, (math.prod(src.shape),))
        elif fn is torch.cat:
            tensors = node.args[0]
            dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else 0)
            vals = [self._val(t, node) for t in tensors]
            flat = all(len(v.shape) == 1 for v in vals) and dim in (1, -1)
            if not flat and (dim not in (1, -3) or any(len(v.shape) != 3 or v.shape[1:] != vals[0].shape[1:] for v in vals)):
                raise KernelfiError(f"fx node {node.name}: torch.cat only along channels of equal-size maps "
                                    "(or of flat vectors) is supported")
            c = sum(v.shape[0] for v in vals)
            self._add(node, "route", f"{base}.cat" if base else "cat", tuple(v.layer for v in vals),
                      (c, *vals[0].shape[1:]), {"layers": [v.layer for v in vals]})
        elif fn in _SOFTMAX_FUNCS:
            self._softmax(node, f"{base}.softmax" if base else "softmax")
        elif fn in (F.dropout, F.dropout2d, F.dropout1d, F.alpha_dropout):
            self._pass(node)
        elif fn is getattr:
            self.vals[node] = _Val(-2, ())  # e.g. x.shape: only feeds view/reshape sizes
            src = node.args[0]
            if node.args[1] == "shape" and isinstance(src, fx.Node) and src in self.vals and self.vals[src].layer != -2:
                self.consts[node] = (None, *self.vals[src].shape)
        elif fn is operator.getitem and node.args[0] in self.vals and self.vals[node.args[0]].layer == -2:
            self.vals[node] = _Val(-2, ())
            held = self.consts.get(node.args[0])
            if isinstance(held, tuple):
                try:
                    self.consts[node] = held[node.args[1]]
                except (TypeError, IndexError):
                    pass
        else:
            name = getattr(fn, "__name__", str(fn))
            raise KernelfiError(f"fx node {node.name}: function {name} is not supported by the lowering")

    def _method_node(self, node: fx.Node) -> None:
        m = str(node.target)
        base = _module_path(node)
        if m in ("add", "add_"):
            self._add_node(node, node.args[0], node.args[1], base)
        elif m in ("sub", "sub_"):
            self._binary(node, "sub", node.args[0], node.args[1], base)
        elif m in ("mul", "mul_"):
            self._binary(node, "mul", node.args[0], node.args[1], base)
        elif m == "mean":
            self._mean(node, base)
        elif m in _ACT_METHODS:
            self._activation(node, _ACT_METHODS[m], f"{node.name} (.{m})")
        elif m in _FLATTEN_METHODS:
            src = self._val(node.args[0], node)
            self.vals[node] = _Val(src.layer, self._reshaped(node, src) if m != "flatten" else (math.prod(src.shape),))
        elif m == "size":
            self.vals[node] = _Val(-2, ())
            src = self._val(node.args[0], node)
            full = (None, *src.shape)
            dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
            self.consts[node] = full if dim is None else full[int(dim)]
        elif m in ("contiguous",):
            self._pass(node)
        elif m == "softmax":
            self._softmax(node, f"{base}.softmax" if base else "softmax")
        else:
            raise KernelfiError(f"fx node {node.name}: tensor method .{m}() is not supported by the lowering")

    def _reshaped(self, node: fx.Node, src: _Val) -> tuple[int, ...]:
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
        name = f"{base}.{op}" if base else op
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
        self._add(node, "avgpool", f"{base}.mean" if base else "mean", (src.layer,), (c, 1, 1), {})
        if not keep:
            self.vals[node] = _Val(self.vals[node].layer, (c,))

    def _adaptive_fn(self, node: fx.Node, base: str) -> None:
        """``F.adaptive_avg_pool2d(x, size)`` as the module of that size."""
        size = node.kwargs.get("output_size", node.args[1] if len(node.args) > 1 else None)
        self._avgpool(node, nn.AdaptiveAvgPool2d(size), f"{base}.avgpool" if base else "avgpool", node.name)

    def _add_node(self, node: fx.Node, a: Any, b: Any, base: str) -> None:
        va, vb = self._val(a, node), self._val(b, node)
        if va.shape != vb.shape:
            self._binary(node, "add", a, b, base)
            return
        # Darknet's shortcut copies its previous layer's output and adds the `from` layer.
        self._add(node, "shortcut", f"{base}.add" if base else "add", (va.layer, vb.layer), va.shape,
                  {"from": vb.layer, "activation": "linear"}, open_=True)


@dataclass(frozen=True)
class FxLowered:
    """A lowering together with the fx graph it walked: ``members`` maps each layer index to
    the names of the graph nodes fused into it (a conv, its BatchNorm, its activation), in
    graph order, so a launch of that layer can be mapped back to the PyTorch op it belongs to
    (``kernelfi.harden.export``). Nodes that only reshape or pass values on are no member."""

    graph_module: fx.GraphModule
    layers: tuple[LayerSpec, ...]
    state: dict[str, torch.Tensor]
    members: dict[int, tuple[str, ...]]


def lower_fx(module: nn.Module, input_shape: tuple[int, ...]) -> FxLowered:
    """``layers_from_module`` plus the fx graph and the node members of every layer."""
    low = FxLowering(module, input_shape)
    layers, state = low.run()
    assert low.graph_module is not None
    return FxLowered(low.graph_module, layers, state,
                     {i: tuple(n.name for n in nodes) for i, nodes in low.members.items()})


def layers_from_module(module: nn.Module, input_shape: tuple[int, ...]) -> tuple[tuple[LayerSpec, ...], dict[str, torch.Tensor]]:
    """Lower a PyTorch model to LayerSpecs and the state dict they reference.

    The caller's model is never modified: derived tensors (flattened conv weights, folded
    BN means, zero biases) live only in the returned dict, under ``__``-prefixed keys.
    """
    return FxLowering(module, input_shape).run()
