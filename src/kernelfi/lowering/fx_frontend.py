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
        size = _pair(mod.kernel_size, "kernel", where)
        stride = _pair(mod.stride, "stride", where)
        dil = _pair(mod.dilation, "dilation", where)
        if isinstance(mod.padding, str):
            raise KernelfiError(f"fx node {where}: string padding '{mod.padding}' is not supported")
        pad = _pair(mod.padding, "padding", where)
        if mod.padding_mode != "zeros":
            raise KernelfiError(f"fx node {where}: padding_mode '{mod.padding_mode}' is not supported")
        oh = (h + 2 * pad - dil * (size - 1) - 1) // stride + 1
        ow = (w + 2 * pad - dil * (size - 1) - 1) // stride + 1
        if oh <= 0 or ow <= 0:
            raise KernelfiError(f"fx node {where}: input {src.shape} too small for kernel {size}")
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
                   "activation": "linear"}, weights, open_=True)

    def _batchnorm(self, node: fx.Node, mod: nn.Module, path: str, where: str) -> None:
        src_node = node.args[0]
        layer = self._fusable(src_node, node) if isinstance(src_node, fx.Node) else None
        if layer is None or layer.type not in ("convolutional", "connected") or layer.params["batch_normalize"] \
                or layer.params["activation"] != "linear":
            raise KernelfiError(f"fx node {where}: BatchNorm must directly follow a Conv2d/Linear used only by it")
        if not mod.track_running_stats or mod.running_mean is None:
            raise KernelfiError(f"fx node {where}: BatchNorm without running statistics is not supported")
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

    def _maxpool(self, node: fx.Node, mod: nn.MaxPool2d, path: str, where: str) -> None:
        src = self._val(node.args[0], node)
        c, h, w = src.shape
        size = _pair(mod.kernel_size, "kernel", where)
        stride = _pair(mod.stride if mod.stride is not None else size, "stride", where)
        pad = _pair(mod.padding, "padding", where)
        if _pair(mod.dilation, "dilation", where) != 1 or mod.ceil_mode:
            raise KernelfiError(f"fx node {where}: dilated or ceil_mode max pooling is not supported")
        oh, ow = (h + 2 * pad - size) // stride + 1, (w + 2 * pad - size) // stride + 1
        self._add(node, "maxpool", path, (src.layer,), (c, oh, ow),
                  {"size": size, "stride": stride, "pad": 2 * pad})

    def _avgpool(self, node: fx.Node, mod: nn.Module, path: str, where: str) -> None:
        src = self._val(node.args[0], node)
        c, h, w = src.shape
        if isinstance(mod, nn.AdaptiveAvgPool2d):
            osz = mod.output_size if isinstance(mod.output_size, (tuple, list)) else (mod.output_size, mod.output_size)
            osz = tuple(h if o is None else int(o) for o in osz)
        else:
            size = _pair(mod.kernel_size, "kernel", where)
            stride = _pair(mod.stride or size, "stride", where)
            if _pair(mod.padding, "padding", where) != 0:
                raise KernelfiError(f"fx node {where}: padded average pooling is not supported")
            osz = ((h - size) // stride + 1, (w - size) // stride + 1)
            if osz == (1, 1) and (size != h or size != w):
                raise KernelfiError(f"fx node {where}: local average pooling is not supported (Darknet's avgpool is global)")
        if tuple(osz) == (h, w):
            self.vals[node] = src  # adaptive pooling to the size it already has: no kernel runs
        elif tuple(osz) == (1, 1):
            self._add(node, "avgpool", path, (src.layer,), (c, 1, 1), {})
        else:
            raise KernelfiError(f"fx node {where}: average pooling {h}x{w} -> {osz} is not supported (only global)")

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
            if dim != 1 or any(len(v.shape) != 3 or v.shape[1:] != vals[0].shape[1:] for v in vals):
                raise KernelfiError(f"fx node {node.name}: torch.cat only along channels of equal-size maps is supported")
            c = sum(v.shape[0] for v in vals)
            self._add(node, "route", f"{base}.cat" if base else "cat", tuple(v.layer for v in vals),
                      (c, *vals[0].shape[1:]), {"layers": [v.layer for v in vals]})
        elif fn in _SOFTMAX_FUNCS:
            self._softmax(node, f"{base}.softmax" if base else "softmax")
        elif fn in (F.dropout, F.dropout2d, F.dropout1d, F.alpha_dropout):
            self._pass(node)
        elif fn is getattr:
            self.vals[node] = _Val(-2, ())  # e.g. x.shape: only feeds view/reshape sizes
        elif fn is operator.getitem and node.args[0] in self.vals and self.vals[node.args[0]].layer == -2:
            self.vals[node] = _Val(-2, ())
        else:
            name = getattr(fn, "__name__", str(fn))
            raise KernelfiError(f"fx node {node.name}: function {name} is not supported by the lowering")

    def _method_node(self, node: fx.Node) -> None:
        m = str(node.target)
        base = _module_path(node)
        if m in ("add", "add_"):
            self._add_node(node, node.args[0], node.args[1], base)
        elif m in _ACT_METHODS:
            self._activation(node, _ACT_METHODS[m], f"{node.name} (.{m})")
        elif m in _FLATTEN_METHODS:
            src = self._val(node.args[0], node)
            self.vals[node] = _Val(src.layer, (math.prod(src.shape),))
        elif m == "size":
            self.vals[node] = _Val(-2, ())
        elif m in ("contiguous",):
            self._pass(node)
        elif m == "softmax":
            self._softmax(node, f"{base}.softmax" if base else "softmax")
        else:
            raise KernelfiError(f"fx node {node.name}: tensor method .{m}() is not supported by the lowering")

    def _add_node(self, node: fx.Node, a: Any, b: Any, base: str) -> None:
        va, vb = self._val(a, node), self._val(b, node)
        if va.shape != vb.shape:
            raise KernelfiError(f"fx node {node.name}: residual add of shapes {va.shape} and {vb.shape}")
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
