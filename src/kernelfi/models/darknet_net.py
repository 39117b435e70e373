"""The native forward of a Darknet network: plain torch, Darknet's inference semantics.

This module is the reference the kernel engine is checked against, so it reproduces Darknet's
GPU path where it differs from torch's usual operators: maxpool pads with -inf at offset
``-(pad/2)`` in C arithmetic and never selects NaN; ReLU is ``x*(x>0)`` (so -inf gives NaN, as
on the GPU); batch norm divides by ``sqrt(var + .00001)`` (the GPU kernel; the CPU path
differs); global average pooling sums then divides.  It is deliberately written layer by layer
from the LayerSpecs rather than as torch modules, so the numbering, shapes and weight keys are
the same objects lowering uses.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from kernelfi._utils import KernelfiError, check_fits, one_line, rng_for
from kernelfi.types import LayerSpec

from .darknet_cfg import BN_EPS, as_chw, build_layers, parse_cfg
from .darknet_weights import read_weights, weight_shapes

__all__ = ["DarknetNet", "load_darknet", "random_state", "activate", "BN_EPS"]

_BUFFER_ROLES: frozenset[str] = frozenset({"rolling_mean", "rolling_variance"})


def activate(x: torch.Tensor, activation: str) -> torch.Tensor:
    """Darknet's activate_kernel formulas, NaN/inf behaviour included (not torch's)."""
    if activation == "linear":
        return x
    if activation == "relu":
        return x * (x > 0).to(x.dtype)
    if activation == "leaky":
        return torch.where(x > 0, x, x * 0.1)
    if activation == "logistic":
        return 1.0 / (1.0 + torch.exp(-x))
    raise KernelfiError(f"unsupported activation {activation!r}")


def _numel(shape: Sequence[int]) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


class DarknetNet(nn.Module):
    """A Darknet network as an ``nn.Module`` whose state dict keys are the LayerSpec keys.

    Tensors live at ``layers.<i>.<role>`` (``weights``, ``biases``, ``scales`` as parameters;
    ``rolling_mean``, ``rolling_variance`` as buffers), so ``state_dict()`` round-trips through
    :func:`read_weights`/:func:`write_weights` and lowering can take its weight buffers from it
    by name.  Parameters do not require grad: this is an inference reference.
    """

    kernelfi_layers: tuple[LayerSpec, ...]
    kernelfi_input_shape: tuple[int, int, int]
    kernelfi_logits_layer: int

    def __init__(self, layers: Sequence[LayerSpec], state: Mapping[str, torch.Tensor],
                 input_shape: Sequence[int]) -> None:
        super().__init__()
        if not layers:
            raise KernelfiError("DarknetNet: no layers")
        self.kernelfi_layers = tuple(layers)
        c, h, w = (int(d) for d in input_shape)
        self.kernelfi_input_shape = (c, h, w)
        last = self.kernelfi_layers[-1]
        #: index of the layer holding the pre-softmax scores (-1: the network input)
        self.kernelfi_logits_layer = last.inputs[0] if last.type == "softmax" else last.index
        self._slots: dict[str, tuple[nn.Module, str]] = {}
        used: set[str] = set()
        for layer in self.kernelfi_layers:
            for role, shape in weight_shapes(layer).items():
                key = layer.weights.get(role)
                if key is None:
                    raise KernelfiError(f"layer {layer.index} ({layer.type}): LayerSpec.weights has no '{role}'")
                if key not in state:
                    raise KernelfiError(one_line(f"layer {layer.index} ({layer.type}): state dict has no '{key}'"))
                t = state[key]
                if tuple(t.shape) != shape:
                    if t.numel() != _numel(shape):
                        raise KernelfiError(one_line(
                            f"layer {layer.index} ({layer.type}): '{key}' has shape {tuple(t.shape)}, "
                            f"expected {shape}"))
                t = t.reshape(shape)
                t = t.detach().to(torch.float32).clone()
                self._register(key, t, buffer=role in _BUFFER_ROLES)
                used.add(key)
        unused = sorted(set(state) - used)
        if unused:
            raise KernelfiError(one_line(f"state dict has keys no layer uses: {', '.join(unused[:5])}"
                                         + (" ..." if len(unused) > 5 else "")))

    def _register(self, key: str, tensor: torch.Tensor, *, buffer: bool) -> None:
        *path, leaf = key.split(".")
        module: nn.Module = self
        for part in path:
            child = module._modules.get(part)
            if child is None:
                child = nn.Module()
                module.add_module(part, child)
            module = child
        if buffer:
            module.register_buffer(leaf, tensor)
        else:
            module.register_parameter(leaf, nn.Parameter(tensor, requires_grad=False))
        self._slots[key] = (module, leaf)

    def tensor(self, key: str) -> torch.Tensor:
        """The current tensor at a state-dict key (survives ``.to()``, which swaps buffers)."""
        module, leaf = self._slots[key]
        return getattr(module, leaf)

    # -- forward -------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The network output (probabilities when the cfg ends with [softmax])."""
        return self.layer_outputs(x)[-1]

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """The pre-softmax scores: the input of a final [softmax], else the final output."""
        if self.kernelfi_logits_layer < 0:
            return self._check_input(x)
        outs = self.layer_outputs(x, upto=self.kernelfi_logits_layer)
        return outs[self.kernelfi_logits_layer]

    def layer_outputs(self, x: torch.Tensor, upto: int | None = None) -> list[torch.Tensor]:
        """Every layer's output, (B, *out_shape), for propagation analysis and debugging."""
        x = self._check_input(x)
        outs: list[torch.Tensor] = []
        for layer in self.kernelfi_layers:
            ins = [x if i == -1 else outs[i] for i in layer.inputs]
            y = self._run(layer, ins)
            outs.append(y.reshape(y.shape[0], *layer.out_shape))
            if upto is not None and layer.index >= upto:
                break
        return outs

    def _check_input(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 3:
            x = x.unsqueeze(0)
        if x.dim() != 4 or tuple(x.shape[1:]) != self.kernelfi_input_shape:
            raise KernelfiError(one_line(
                f"DarknetNet input has shape {tuple(x.shape)}, expected (B, {', '.join(map(str, self.kernelfi_input_shape))})"))
        dtype = next((p.dtype for p in self.parameters()), None)
        if dtype is not None and x.dtype != dtype:
            x = x.to(dtype)
        return x

    def _w(self, layer: LayerSpec, role: str) -> torch.Tensor:
        return self.tensor(layer.weights[role])

    def _run(self, layer: LayerSpec, ins: list[torch.Tensor]) -> torch.Tensor:
        p = layer.params
        x = ins[0]
        batch = x.shape[0]
        if layer.type == "convolutional":
            c, h, w = as_chw(p["in_shape"])
            x = x.reshape(batch, c, h, w)
            n, size, stride, pad, groups = (int(p[k]) for k in ("filters", "size", "stride", "pad", "groups"))
            out_h, out_w = int(layer.out_shape[1]), int(layer.out_shape[2])
            right_h = max(0, (out_h - 1) * stride + size - h - pad)
            right_w = max(0, (out_w - 1) * stride + size - w - pad)
            x = F.pad(x, (pad, right_w, pad, right_h))
            weights = self._w(layer, "weights").reshape(n, c // groups, size, size)
            y = F.conv2d(x, weights, stride=stride, groups=groups)[:, :, :out_h, :out_w]
            return activate(self._bias_or_bn(layer, y), str(p["activation"]))
        if layer.type == "connected":
            y = x.reshape(batch, -1) @ self._w(layer, "weights").t()
            return activate(self._bias_or_bn(layer, y), str(p["activation"]))
        if layer.type == "maxpool":
            c, h, w = as_chw(p["in_shape"])
            x = x.reshape(batch, c, h, w)
            size, stride, pad = int(p["size"]), int(p["stride"]), int(p["pad"])
            out_h, out_w = int(layer.out_shape[1]), int(layer.out_shape[2])
            left = pad // 2  # C: offset = -pad/2 truncates toward zero
            right_h = max(0, (out_h - 1) * stride + size - h - left)
            right_w = max(0, (out_w - 1) * stride + size - w - left)
            # Darknet's GPU kernel: invalid taps read -INFINITY, the running max starts at
            # -INFINITY and only ``val > max`` replaces it, so NaN never wins.
            neg_inf = float("-inf")
            x = torch.where(torch.isnan(x), torch.full_like(x, neg_inf), x)
            x = F.pad(x, (left, right_w, left, right_h), value=neg_inf)
            return F.max_pool2d(x, kernel_size=size, stride=stride)[:, :, :out_h, :out_w]
        if layer.type == "avgpool":
            c, h, w = as_chw(p["in_shape"])
            return x.reshape(batch, c, h * w).sum(dim=2) / float(h * w)
        if layer.type == "shortcut":
            return activate(_shortcut(x, ins[1], p["in_shape"], p.get("add_shape", p["in_shape"])),
                            str(p["activation"]))
        if layer.type == "route":
            return torch.cat([t.reshape(batch, *as_chw(t.shape[1:])) for t in ins], dim=1)
        if layer.type == "dropout":
            return x
        if layer.type == "softmax":
            return _softmax(x.reshape(batch, -1), float(p.get("temperature", 1.0)))
        raise KernelfiError(f"layer {layer.index}: unsupported layer type {layer.type!r}")

    def _bias_or_bn(self, layer: LayerSpec, y: torch.Tensor) -> torch.Tensor:
        shape = (1, -1) + (1,) * (y.dim() - 2)
        if layer.params.get("batch_normalize"):
            mean = self._w(layer, "rolling_mean").reshape(shape)
            var = self._w(layer, "rolling_variance").reshape(shape)
            y = (y - mean) / torch.sqrt(var + float(layer.params.get("eps", BN_EPS)))
            y = y * self._w(layer, "scales").reshape(shape)
        return y + self._w(layer, "biases").reshape(shape)


def _shortcut(x: torch.Tensor, add: torch.Tensor, out_shape: Sequence[int],
              add_shape: Sequence[int]) -> torch.Tensor:
    """Darknet's shortcut on mismatched shapes, written as slices: the output starts as a copy
    of ``x``; over the first min(c1, c2) channels, every ``sample``-th output pixel gets the
    added map's every ``stride``-th pixel added (stride = w1/w2, sample = w2/w1, at least 1)."""
    batch = x.shape[0]
    c2, h2, w2 = as_chw(out_shape)
    c1, h1, w1 = as_chw(add_shape)
    y = x.reshape(batch, c2, h2, w2).clone()
    a = add.reshape(batch, c1, h1, w1)
    stride, sample = max(w1 // w2, 1), max(w2 // w1, 1)
    c, h, w = min(c1, c2), min(h1, h2), min(w1, w2)
    dst = (slice(None), slice(0, c), slice(0, h * sample, sample), slice(0, w * sample, sample))
    y[dst] = y[dst] + a[:, :c, 0:h * stride:stride, 0:w * stride:stride]
    return y.reshape(x.shape)


def _softmax(x: torch.Tensor, temperature: float) -> torch.Tensor:
    """Darknet's softmax_device: max-subtracted (NaN never the max), exp, divide by the sum."""
    largest = torch.where(torch.isnan(x), torch.full_like(x, -float("inf")), x).amax(dim=1, keepdim=True)
    e = torch.exp(x / temperature - largest / temperature)
    return e / e.sum(dim=1, keepdim=True)


def random_state(layers: Sequence[LayerSpec], seed: int = 0) -> dict[str, torch.Tensor]:
    """Seeded weights that keep activations O(1) through deep stacks (He-normal, small biases).

    Each tensor draws from ``rng_for(seed, layer index, role)``, so adding a layer elsewhere
    does not change the weights of the others.
    """
    roles = ("weights", "biases", "scales", "rolling_mean", "rolling_variance")
    state: dict[str, torch.Tensor] = {}
    for layer in layers:
        shapes = weight_shapes(layer)
        for role, shape in shapes.items():
            rng = rng_for(seed, layer.index, roles.index(role))
            if role == "weights":
                fan_in = max(1, int(shape[1]))
                arr = rng.standard_normal(shape, dtype=np.float32) * np.float32(np.sqrt(2.0 / fan_in))
            elif role == "biases":
                arr = rng.standard_normal(shape, dtype=np.float32) * np.float32(0.01)
            elif role == "scales" or role == "rolling_variance":
                arr = rng.uniform(0.8, 1.2, size=shape).astype(np.float32)
            else:  # rolling_mean
                arr = rng.standard_normal(shape, dtype=np.float32) * np.float32(0.05)
            state[layer.weights.get(role, f"{layer.name}.{role}")] = torch.from_numpy(np.ascontiguousarray(arr))
    return state


def check_sizes(name: str, layers: Sequence[LayerSpec]) -> None:
    """Refuse, before allocating, a cfg whose weights or one of whose feature maps (for one input)
    could never fit this machine's memory (``filters=1000000000``): one line naming the layer."""
    total = 0
    for layer in layers:
        w = sum(math.prod(int(d) for d in s) for s in weight_shapes(layer).values())
        out = math.prod(int(d) for d in layer.out_shape)
        total += w
        check_fits(4 * max(w, out), f"{name}: layer {layer.index} ({layer.type}), {w:,} weights and "
                                    f"{out:,} outputs per input")
    check_fits(4 * total, f"{name}: {total:,} weights")


def load_darknet(cfg_path: str | Path, weights_path: str | Path | None = None, seed: int = 0,
                 input_shape: Sequence[int] | None = None) -> DarknetNet:
    """Build a DarknetNet from a cfg and, if given, a ``.weights`` file (else seeded weights)."""
    layers, shape = build_layers(parse_cfg(Path(cfg_path)), input_shape)
    check_sizes(Path(cfg_path).name, layers)
    state = read_weights(weights_path, layers) if weights_path is not None else random_state(layers, seed)
    return DarknetNet(layers, state, shape)
