"""torch.fx front end: an ``nn.Module`` -> Darknet-style ``LayerSpec``s.

Why fx and not hooks: the lowering needs the dataflow (which tensor feeds which op, residual
adds, concatenations) without running the model, and fx gives it with the module path of every
node, from which the stable dotted layer names come. Fusion follows Darknet's layer model:
Conv2d[+BatchNorm2d][+activation] -> one convolutional layer; Linear[+BN][+act] -> connected;
residual add [+activation] -> shortcut; torch.cat -> route. What does not fuse becomes its own
Darknet (AlexeyAB) layer or PyTorch kernel: [activation], [batchnorm], [scale_channels] (SE),
[local_avgpool], [upsample], PyTorch's adaptive pool and bilinear upsample and broadcasting ``a - b``/``a * b``
(docs/kernels.md, "Kernels for models brought from PyTorch"; the rules are ``fx_layers.py``),
arithmetic with a Python number, clamp, constant pad and channel slices (``fx_ops.py``).
"""
from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from kernelfi._utils import KernelfiError
from kernelfi.kernels import LEAKY_SLOPE, SOFTPLUS_THRESHOLD
from kernelfi.types import LayerSpec

from .fx_layers import Val, hw, layer_name, module_path, pair
from .fx_ops import FxOps

_ACT_MODULES: dict[type, str] = {
    nn.ReLU: "relu", nn.Sigmoid: "logistic", nn.ReLU6: "relu6", nn.Tanh: "tanh", nn.SiLU: "swish",
    nn.GELU: "gelu", nn.Hardswish: "hardswish", nn.Hardsigmoid: "hardsigmoid", nn.LeakyReLU: "leaky",
    nn.Mish: "mish", nn.ELU: "elu", nn.SELU: "selu", nn.CELU: "celu",
    nn.Softplus: "softplus",
}
_ACT_FUNCS: dict[Any, str] = {
    F.relu: "relu", torch.relu: "relu", torch.sigmoid: "logistic", F.sigmoid: "logistic",
    F.leaky_relu: "leaky", F.relu6: "relu6", torch.tanh: "tanh", F.tanh: "tanh", F.silu: "swish",
    F.gelu: "gelu", F.hardswish: "hardswish", F.hardsigmoid: "hardsigmoid",
    F.mish: "mish", F.elu: "elu", F.selu: "selu", F.celu: "celu",
    F.softplus: "softplus",
}
_ACT_METHODS: dict[str, str] = {"relu": "relu", "relu_": "relu", "sigmoid": "logistic", "sigmoid_": "logistic",
                                "tanh": "tanh", "tanh_": "tanh"}
#: Dropout modules: identities at inference (Darknet's dropout layer, no kernel).
_DROPOUT_MODULES = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)
_ADD_FUNCS = (operator.add, operator.iadd, torch.add)
_SUB_FUNCS = (operator.sub, operator.isub, torch.sub)
_MUL_FUNCS = (operator.mul, operator.imul, torch.mul)
_DIV_FUNCS = (operator.truediv, operator.itruediv, torch.div, torch.true_divide)
#: clamp functions and methods -> which bounds their positional arguments are
_CLAMP_FUNCS: dict[Any, tuple[str, ...]] = {torch.clamp: ("min", "max"), torch.clip: ("min", "max"),
                                            torch.clamp_min: ("min",), torch.clamp_max: ("max",)}
_CLAMP_METHODS: dict[str, tuple[str, ...]] = {"clamp": ("min", "max"), "clamp_": ("min", "max"),
                                              "clip": ("min", "max"), "clip_": ("min", "max"),
                                              "clamp_min": ("min",), "clamp_min_": ("min",),
                                              "clamp_max": ("max",), "clamp_max_": ("max",)}
_MEAN_FUNCS = (torch.mean,)
_FLATTEN_METHODS = ("view", "reshape", "flatten")


def _swapped(node: fx.Node, dims: Any) -> tuple[int, ...]:
    """The two dims of a 5-D ``transpose(d0, d1)``, normalised and sorted."""
    if len(dims) != 2 or not all(isinstance(d, int) for d in dims):
        raise KernelfiError(f"fx node {node.name}: transpose of dims {tuple(dims)} is not supported")
    return tuple(sorted(int(d) % 5 for d in dims))


def _permuted(dims: Any) -> tuple[int, ...]:
    """``permute(0, 2, 1, 3, 4)`` as the swap (1, 2); any other order as itself (refused)."""
    norm = tuple(int(d) % 5 if isinstance(d, int) else d for d in dims)
    return (1, 2) if norm == (0, 2, 1, 3, 4) else tuple(dims)
_SOFTMAX_FUNCS = (F.softmax, torch.softmax)


#: GELU's ``approximate`` -> the activate_array case: the erf form or the tanh form.
_GELU_FORMS = {"none": "gelu", "tanh": "gelu_tanh"}


def _gelu_form(approximate: Any, where: str) -> str:
    """The activate_array case of a GELU by its ``approximate`` argument (PyTorch knows two)."""
    if approximate not in _GELU_FORMS:
        raise KernelfiError(f"fx node {where}: GELU(approximate={approximate!r}) is not supported "
                            f"(only {', '.join(map(repr, _GELU_FORMS))})")
    return _GELU_FORMS[approximate]


class _Tracer(fx.Tracer):
    """Keeps the library's own activation/pool modules as leaves (the default already does)."""


class FxLowering(FxOps):
    """Walks an fx graph once and produces LayerSpecs plus a derived state dict (the state, the
    helpers and the issue-20 layer rules are ``fx_layers.FxLayers``; scalars, clamps, pads and
    channel slices ``fx_ops.FxOps``)."""

    # ---------------------------------------------------------------- main walk
    def run(self) -> tuple[tuple[LayerSpec, ...], dict[str, torch.Tensor]]:
        try:
            graph = _Tracer().trace(self.module)
        except Exception as exc:  # fx raises many types for untraceable code
            raise KernelfiError(f"torch.fx cannot trace {type(self.module).__name__}: {exc}") from None
        gm = fx.GraphModule(self.module, graph)
        self.graph_module = gm
        modules = dict(gm.named_modules())
        out_val: Val | None = None
        for node in graph.nodes:
            if node.op == "placeholder":
                if any(v.layer == -1 for v in self.vals.values()):
                    raise KernelfiError(f"fx node {node.name}: models with more than one input are not supported")
                self.vals[node] = Val(-1, self.input_shape)
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
        elif isinstance(mod, nn.ConvTranspose2d):
            self._deconv(node, mod, path, where)
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
            if isinstance(mod, nn.GELU):
                act = _gelu_form(mod.approximate, where)
            slope = float(mod.negative_slope) if isinstance(mod, nn.LeakyReLU) else (
                float(mod.alpha) if isinstance(mod, (nn.ELU, nn.CELU)) else (
                    float(mod.beta) if isinstance(mod, nn.Softplus) else LEAKY_SLOPE))
            threshold = float(mod.threshold) if isinstance(mod, nn.Softplus) else SOFTPLUS_THRESHOLD
            self._activation(node, act, where, slope, threshold)
        elif isinstance(mod, nn.PReLU):
            src = self._val(node.args[0], node)
            k = int(mod.num_parameters)
            channels = src.shape[0] if src.shape else 1
            if k not in (1, channels):
                raise KernelfiError(f"fx node {where}: PReLU({k}) on {channels} channels (num_parameters is 1 or C)")
            self._add(node, "prelu", path, (src.layer,), src.shape, {"num_parameters": k},
                      {"weights": f"{path}.weight"})
        elif isinstance(mod, nn.GroupNorm):
            src = self._val(node.args[0], node)
            if len(src.shape) != 3:
                raise KernelfiError(f"fx node {where}: GroupNorm on shape {src.shape} (kernelfi lowers (C, H, W) maps)")
            affine = bool(mod.affine)
            weights = {"scales": f"{path}.weight", "biases": f"{path}.bias"} if affine else {}
            self._add(node, "group_norm", path, (src.layer,), src.shape,
                      {"groups": int(mod.num_groups), "eps": float(mod.eps), "affine": affine}, weights)
        elif isinstance(mod, nn.modules.instancenorm._InstanceNorm):
            # PyTorch's instance_norm (Normalization.cpp) reshapes to (1, N*C, H, W) and calls
            # batch_norm with the input's statistics: cuDNN's (closed) batch-norm kernels where
            # _batch_norm_impl_index picks cuDNN, else the native batch_norm_collect_statistics_kernel
            # (its own 2-D block Welford and reduction) + batch_norm_transform_input_kernel
            raise KernelfiError(f"fx node {where}: {type(mod).__name__} is not lowered (PyTorch runs it as batch_norm "
                                "in training mode: cuDNN's batch-norm kernels, or batch_norm_collect_statistics_kernel "
                                "+ batch_norm_transform_input_kernel; kernelfi models neither; GroupNorm(C, C) "
                                "computes the same values)")
        elif isinstance(mod, nn.LayerNorm):
            # layer_norm_kernel.cu (LayerNormKernelImplInternal). A float32 (C, H, W) row with N = C*H*W a
            # multiple of 4 and 16-byte aligned tensors takes ONE fused launch, vectorized_layer_norm_kernel
            # (blocks of 32 x num_threads()/32): float4 loads, cuWelfordOnlineSum (mean += delta * (1/count),
            # not WelfordOps' delta / n), a shuffle-down cuWelfordCombine (nA*meanA + nB*meanB), a tree over
            # warps in shared memory (not BlockReduce), rstd = rsqrt(m2/N + eps) without a max(., 0), then
            # y = gamma[j] * (rstd * (x - mean)) + beta[j] in the same thread. None of that is the per-thread
            # work of group_norm_moments/group_norm_apply, so reusing them would not be faithful. Other N take
            # RowwiseMomentsCUDAKernel (always 512 threads, rsqrt(var + eps), no clamp) +
            # LayerNormForwardCUDAKernel ((x - mean) * rstd * gamma[j] + beta[j], 256 threads).
            raise KernelfiError(f"fx node {where}: LayerNorm is not lowered (PyTorch's vectorized_layer_norm_kernel "
                                "or its 512-thread RowwiseMomentsCUDAKernel block reduction, which kernelfi does not "
                                "model; GroupNorm(1, C) normalises a (C, H, W) map over the same elements)")
        elif isinstance(mod, nn.Hardtanh) and (float(mod.min_val), float(mod.max_val)) == (0.0, 6.0):
            self._activation(node, "relu6", where)
        elif isinstance(mod, nn.Hardtanh):  # hardtanh calls clamp
            self._clamp(node, float(mod.min_val), float(mod.max_val), path, "hardtanh")
        elif isinstance(mod, (nn.PixelShuffle, nn.PixelUnshuffle)):
            inverse = isinstance(mod, nn.PixelUnshuffle)
            self._pixel_shuffle(node, mod.downscale_factor if inverse else mod.upscale_factor, inverse, path)
        elif isinstance(mod, nn.ChannelShuffle):
            self._channel_shuffle(node, self._val(node.args[0], node), int(mod.groups), path)
        elif isinstance(mod, (nn.ZeroPad2d, nn.ConstantPad2d)):
            self._pad(node, tuple(mod.padding), float(mod.value), "constant", path)
        elif isinstance(mod, (nn.ReflectionPad2d, nn.ReplicationPad2d)):
            self._pad(node, tuple(mod.padding), None, "reflect" if isinstance(mod, nn.ReflectionPad2d) else "replicate",
                      path)
        elif isinstance(mod, nn.MaxPool2d):
            self._maxpool(node, mod, path, where)
        elif isinstance(mod, (nn.AdaptiveAvgPool2d, nn.AvgPool2d)):
            self._avgpool(node, mod, path, where)
        elif isinstance(mod, nn.AdaptiveMaxPool2d):
            self._adaptive_maxpool(node, mod.output_size, bool(mod.return_indices), path, where)
        elif isinstance(mod, nn.Upsample):
            self._upsample(node, self._val(node.args[0], node), mod.scale_factor, mod.size, mod.mode, where, path,
                           mod.align_corners, mod.recompute_scale_factor)
        elif isinstance(mod, nn.Identity):
            self._pass(node)
        elif isinstance(mod, _DROPOUT_MODULES):
            # Darknet's [dropout] layer: in place, launches nothing at inference
            src = self._val(node.args[0], node)
            self._add(node, "dropout", path, (src.layer,), src.shape, {"probability": float(mod.p)})
        elif isinstance(mod, nn.Flatten):
            src = self._val(node.args[0], node)
            self.vals[node] = Val(src.layer, (math.prod(src.shape),))
        elif isinstance(mod, nn.Softmax):
            self._softmax(node, path)
        else:
            raise KernelfiError(f"fx node {where}: module type {type(mod).__name__} is not supported by the lowering")

    def _conv(self, node: fx.Node, mod: nn.Conv2d, path: str, where: str) -> None:
        src = self._val(node.args[0], node)
        if len(src.shape) != 3:
            raise KernelfiError(f"fx node {where}: input shape {src.shape} is not (C, H, W)")
        c, h, w = src.shape
        kh, kw = hw(mod.kernel_size)
        sh, sw = hw(mod.stride)
        dh, dw = hw(mod.dilation)
        if isinstance(mod.padding, str):
            if mod.padding == "valid":
                ph = pw = 0
            else:  # 'same' (stride 1): PyTorch pads d*(k-1) in total, the odd one on the far side
                ph, pw = dh * (kh - 1) // 2, dw * (kw - 1) // 2
        else:
            ph, pw = hw(mod.padding)
        # bottom/right: the rest of 'same''s total (an even kernel pads one more there)
        ah, aw = (dh * (kh - 1) - ph, dw * (kw - 1) - pw) if mod.padding == "same" else (ph, pw)
        if mod.padding_mode != "zeros":
            # PyTorch pads with F.pad(mode) (_reversed_padding_repeated_twice), then convolves unpadded
            if mod.padding_mode not in ("reflect", "replicate") or isinstance(mod.padding, str):
                raise KernelfiError(f"fx node {where}: padding_mode '{mod.padding_mode}' is not supported"
                                    + (" with string padding" if mod.padding_mode in ("reflect", "replicate") else ""))
            if ph or pw:
                self._pad(node, (pw, pw, ph, ph), None, mod.padding_mode, f"{path}.pad")
                src = self.vals[node]
                h, w = src.shape[1:]
            ph = pw = ah = aw = 0
        oh = (h + ph + ah - dh * (kh - 1) - 1) // sh + 1
        ow = (w + pw + aw - dw * (kw - 1) - 1) // sw + 1
        if oh <= 0 or ow <= 0:
            raise KernelfiError(f"fx node {where}: input {src.shape} too small for kernel {(kh, kw)}")
        size, stride, pad, dil = kh, sh, ph, dh
        # the width axis only where it differs (Darknet's square layers keep their params)
        wide = {f"{key}_w": v for key, v, hv in (("size", kw, kh), ("stride", sw, sh), ("pad", pw, ph),
                                                  ("dilation", dw, dh)) if (kh, sh, ph, dh) != (kw, sw, pw, dw)}
        # the bottom/right padding only where it differs from the top/left (im2col's PAD_AFTER)
        if (ah, aw) != (ph, pw):
            wide.update({"pad_h_after": ah, "pad_w_after": aw})
        # Darknet keeps conv weights as (filters, C/groups*size*size): flatten a view.
        weights = self._matrix_weights(path, mod.out_channels, mod.out_channels, mod.bias is not None)
        self._add(node, "convolutional", path, (src.layer,), (mod.out_channels, oh, ow),
                  {"filters": mod.out_channels, "size": size, "stride": stride, "pad": pad,
                   "dilation": dil, "groups": mod.groups, "batch_normalize": False,
                   "activation": "linear", **wide}, weights, open_=True)

    def _matrix_weights(self, path: str, rows: int, filters: int, bias: bool) -> dict[str, str]:
        """A (transposed) convolution's weights as the gemm reads them: ``path.weight`` viewed
        as a ``rows``-row matrix (Darknet's (filters, C/groups*k*k) for a convolution, the
        (C_in, C_out*k*k) A of a transposed one), and its bias (zeros where it has none)."""
        self.state[f"{path}.__weights2d"] = self.state[f"{path}.weight"].reshape(rows, -1)
        weights = {"weights": f"{path}.__weights2d"}
        if bias:
            weights["biases"] = f"{path}.bias"
        else:
            self.state[f"{path}.__zero_bias"] = torch.zeros(filters)
            weights["biases"] = f"{path}.__zero_bias"
        return weights

    def _deconv(self, node: fx.Node, mod: nn.ConvTranspose2d, path: str, where: str) -> None:
        """``ConvTranspose2d`` -> a [deconvolutional] layer (gemm with A transposed, col2im):
        square kernel, stride, padding and output_padding; groups 1, dilation 1, zero padding."""
        src = self._val(node.args[0], node)
        if len(src.shape) != 3:
            raise KernelfiError(f"fx node {where}: input shape {src.shape} is not (C, H, W)")
        geo = {"kernel": hw(mod.kernel_size), "stride": hw(mod.stride), "padding": hw(mod.padding),
               "output_padding": hw(mod.output_padding)}
        odd = [f"non-square {k} {v}" for k, v in geo.items() if v[0] != v[1]]
        odd += [f"groups={mod.groups}"] * (mod.groups != 1) + [f"dilation={tuple(mod.dilation)}"] * (hw(mod.dilation) != (1, 1))
        odd += [f"padding_mode '{mod.padding_mode}'"] * (mod.padding_mode != "zeros")
        odd += ["an output_size argument"] * (len(node.args) > 1 or node.kwargs.get("output_size") is not None)
        if odd:
            raise KernelfiError(f"fx node {where}: ConvTranspose2d with {', '.join(odd)} is not supported")
        c, h, w = src.shape
        k, st, pad, op = (geo[key][0] for key in ("kernel", "stride", "padding", "output_padding"))
        oh, ow = ((n - 1) * st - 2 * pad + k + op for n in (h, w))
        if oh <= 0 or ow <= 0 or c != mod.in_channels:
            raise KernelfiError(f"fx node {where}: input {src.shape} gives no {mod.out_channels}-channel output")
        # the gemm's A: PyTorch's (C_in, C_out, k, k) weight as the (C_in, C_out*k*k) matrix
        weights = self._matrix_weights(path, mod.in_channels, mod.out_channels, mod.bias is not None)
        self._add(node, "deconvolutional", path, (src.layer,), (mod.out_channels, oh, ow),
                  {"filters": mod.out_channels, "size": k, "stride": st, "pad": pad, "output_padding": op,
                   "batch_normalize": False, "activation": "linear"}, weights, open_=True)

    def _batchnorm(self, node: fx.Node, mod: nn.Module, path: str, where: str) -> None:
        src_node = node.args[0]
        layer = self._fusable(src_node, node) if isinstance(src_node, fx.Node) else None
        if not mod.track_running_stats or mod.running_mean is None:
            raise KernelfiError(f"fx node {where}: BatchNorm without running statistics is not supported")
        if layer is None or layer.type not in ("convolutional", "deconvolutional", "connected") \
                or layer.params["batch_normalize"] \
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
        scales, biases = self._bn_affine(mod, path, n)
        layer.weights = {"weights": layer.weights["weights"], "biases": biases, "scales": scales,
                         "rolling_mean": mean_key, "rolling_variance": f"{path}.running_var"}
        layer.params["batch_normalize"] = True
        layer.params["eps"] = float(mod.eps)
        layer.open_node = node
        self.members[layer.index].append(node)
        self.vals[node] = Val(layer.index, layer.out_shape)

    def _activation(self, node: fx.Node, act: str, where: str, slope: float = LEAKY_SLOPE,
                    threshold: float = SOFTPLUS_THRESHOLD) -> None:
        src_node = node.args[0]
        if act == "leaky" and node.op == "call_function":
            slope = float(node.kwargs.get("negative_slope", node.args[1] if len(node.args) > 1 else 0.01))
        if act in ("elu", "celu") and node.op == "call_function":
            slope = float(node.kwargs.get("alpha", node.args[1] if len(node.args) > 1 else 1.0))
        if act == "softplus" and node.op == "call_function":
            slope = float(node.kwargs.get("beta", node.args[1] if len(node.args) > 1 else 1.0))
            threshold = float(node.kwargs.get("threshold", node.args[2] if len(node.args) > 2 else SOFTPLUS_THRESHOLD))
        if act == "gelu" and node.op == "call_function":
            act = _gelu_form(node.kwargs.get("approximate", "none"), where)
        layer = self._fusable(src_node, node) if isinstance(src_node, fx.Node) else None
        if layer is None or layer.type not in ("convolutional", "deconvolutional", "connected", "shortcut") \
                or layer.params.get("activation") != "linear":
            # Darknet's [activation] layer: copy the input, activate_array on the copy
            src = self._val(src_node, node)
            if src.layer == -2:
                raise KernelfiError(f"fx node {where}: activation '{act}' of a non-tensor value")
            layer = self._add(node, "activation", f"{module_path(node) or node.name}.act", (src.layer,), src.shape,
                              {"activation": "linear"})
            layer.open_node = None
        layer.params["activation"] = act
        if act in ("leaky", "elu", "celu", "softplus") and slope != LEAKY_SLOPE:
            layer.params["slope"] = slope  # leaky's slope, ELU's and CELU's alpha, Softplus's beta
        if act == "softplus" and threshold != SOFTPLUS_THRESHOLD:
            layer.params["threshold"] = threshold
        layer.open_node = None
        if self.members[layer.index][-1] is not node:
            self.members[layer.index].append(node)
        self.vals[node] = Val(layer.index, layer.out_shape)

    def _maxpool(self, node: fx.Node, mod: nn.MaxPool2d, path: str, where: str) -> None:
        src = self._val(node.args[0], node)
        c, h, w = src.shape
        size = pair(mod.kernel_size, "kernel", where)
        stride = pair(mod.stride if mod.stride is not None else size, "stride", where)
        pad = pair(mod.padding, "padding", where)
        dilation = pair(mod.dilation, "dilation", where)
        if dilation != 1:   # PyTorch's max_pool_forward_nchw (Darknet's maxpool has no dilation)
            self._dilated_maxpool(node, src, path, size, stride, pad, dilation, bool(mod.ceil_mode), where)
            return
        total, oh, ow, extra = self._pool_pad(h, w, size, stride, pad, bool(mod.ceil_mode), where)
        self._add(node, "maxpool", path, (src.layer,), (c, oh, ow),
                  {"size": size, "stride": stride, "pad": total, **extra})

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
            # PyTorch's adaptive_average_pool kernel (Darknet has no adaptive pool)
            self._add(node, "adaptive_avgpool", path, (src.layer,), (c, oh_, ow_), {})
            return
        size = pair(mod.kernel_size, "kernel", where)
        stride = pair(mod.stride or size, "stride", where)
        pad = pair(mod.padding, "padding", where)
        divisor = getattr(mod, "divisor_override", None)
        if divisor is not None and (not isinstance(divisor, int) or divisor == 0):
            raise KernelfiError(f"fx node {where}: avg pooling divisor_override={divisor!r} (PyTorch needs a nonzero int)")
        if divisor is None and (size, stride, pad) == (h, h, 0) and h == w:
            self._add(node, "avgpool", path, (src.layer,), (c, 1, 1), {})  # global: Darknet's [avgpool]
            return
        self._local_avgpool(node, src, path, size, stride, pad, bool(mod.ceil_mode),
                            bool(getattr(mod, "count_include_pad", True)), where, divisor)

    def _softmax(self, node: fx.Node, path: str) -> None:
        src = self._val(node.args[0], node)
        dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else None)
        if len(src.shape) != 1 and dim not in (1, -1, None):
            raise KernelfiError(f"fx node {node.name}: softmax over dim {dim} of {src.shape} is not supported")
        self._add(node, "softmax", path or "softmax", (src.layer,), (math.prod(src.shape),),
                  {"temperature": 1.0})

    # ---------------------------------------------------------------- functions / methods
    def _function_node(self, node: fx.Node, fn: Callable) -> None:
        base = module_path(node)
        if fn in (operator.floordiv, operator.mul) and self._size_arith(node, fn):
            pass
        elif fn in _ADD_FUNCS:
            self._add_node(node, node.args[0], node.args[1], base)
        elif fn in _SUB_FUNCS:
            self._arith(node, "sub", base)
        elif fn in _MUL_FUNCS:
            self._arith(node, "mul", base)
        elif fn in _DIV_FUNCS:
            self._arith(node, "div", base)
        elif fn in _CLAMP_FUNCS:
            self._clamp_node(node, _CLAMP_FUNCS[fn], base)
        elif fn is F.hardtanh:
            kw = dict(zip(("input", "min_val", "max_val"), node.args)) | dict(node.kwargs)
            self._clamp(node, kw.get("min_val", -1.0), kw.get("max_val", 1.0), layer_name(base, "hardtanh"), "hardtanh")
        elif fn is F.pad:
            kw = dict(zip(("input", "pad", "mode", "value"), node.args)) | dict(node.kwargs)
            self._pad(node, kw.get("pad"), kw.get("value"), str(kw.get("mode", "constant")), layer_name(base, "pad"))
        elif fn in (torch.chunk, torch.split):
            self._split_node(node, fn is torch.chunk)
        elif fn is operator.getitem and self._getitem(node, base):
            pass
        elif fn in _MEAN_FUNCS:
            self._mean(node, base)
        elif fn is F.adaptive_avg_pool2d:
            self._adaptive_fn(node, base)
        elif fn is F.adaptive_max_pool2d:
            kw = dict(zip(("input", "output_size", "return_indices"), node.args)) | dict(node.kwargs)
            self._adaptive_maxpool(node, kw.get("output_size"), bool(kw.get("return_indices", False)),
                                   layer_name(base, "pool"), node.name)
        elif fn is F.interpolate:
            kw = dict(zip(("input", "size", "scale_factor", "mode", "align_corners", "recompute_scale_factor",
                           "antialias"), node.args)) | dict(node.kwargs)
            if kw.get("antialias"):
                raise KernelfiError(f"fx node {node.name}: interpolation with antialias=True is not supported")
            self._upsample(node, self._val(node.args[0], node), kw.get("scale_factor"), kw.get("size"),
                           str(kw.get("mode", "nearest")), node.name, layer_name(base, "upsample"),
                           kw.get("align_corners"), kw.get("recompute_scale_factor"))
        elif fn in (F.avg_pool2d, F.max_pool2d):
            names = ("input", "kernel_size", "stride", "padding", "ceil_mode", "count_include_pad",
                     "divisor_override") if fn is F.avg_pool2d \
                else ("input", "kernel_size", "stride", "padding", "dilation", "ceil_mode")
            kw = dict(zip(names, node.args)) | dict(node.kwargs)
            kw.pop("input", None)
            kw.pop("return_indices", None)
            mod = nn.AvgPool2d(**kw) if fn is F.avg_pool2d else nn.MaxPool2d(**kw)
            (self._avgpool if fn is F.avg_pool2d else self._maxpool)(  # type: ignore[operator]
                node, mod, layer_name(base, "pool"), node.name)
        elif fn in _ACT_FUNCS:
            self._activation(node, _ACT_FUNCS[fn], f"{node.name} ({fn.__name__})")
        elif fn in (F.pixel_shuffle, F.pixel_unshuffle):
            inverse = fn is F.pixel_unshuffle
            kw = dict(zip(("input", "factor"), node.args)) | dict(node.kwargs)
            factor = kw.get("factor", kw.get("downscale_factor" if inverse else "upscale_factor"))
            self._pixel_shuffle(node, factor, inverse, layer_name(base, "pixel_unshuffle" if inverse else "pixel_shuffle"))
        elif fn is torch.transpose:
            self._swap(node, _swapped(node, node.args[1:3]), "torch.transpose")
        elif fn is torch.flatten and self._shuffled(node, self._flat_target(node), base):
            pass
        elif fn is torch.flatten:
            src = self._val(node.args[0], node)
            start = node.kwargs.get("start_dim", node.args[1] if len(node.args) > 1 else 0)
            if start not in (1,):
                raise KernelfiError(f"fx node {node.name}: torch.flatten(start_dim={start}) is not supported (use 1)")
            self.vals[node] = Val(src.layer, (math.prod(src.shape),))
        elif fn is torch.cat:
            tensors = node.args[0]
            dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else 0)
            vals = [self._val(t, node) for t in tensors]
            flat = all(len(v.shape) == 1 for v in vals) and dim in (1, -1)
            if not flat and (dim not in (1, -3) or any(len(v.shape) != 3 or v.shape[1:] != vals[0].shape[1:] for v in vals)):
                raise KernelfiError(f"fx node {node.name}: torch.cat only along channels of equal-size maps "
                                    "(or of flat vectors) is supported")
            c = sum(v.shape[0] for v in vals)
            self._add(node, "route", layer_name(base, "cat"), tuple(v.layer for v in vals),
                      (c, *vals[0].shape[1:]), {"layers": [v.layer for v in vals]})
        elif fn in _SOFTMAX_FUNCS:
            self._softmax(node, layer_name(base, "softmax"))
        elif fn in (F.dropout, F.dropout2d, F.dropout1d, F.alpha_dropout):
            self._pass(node)
        elif fn is getattr:
            self.vals[node] = Val(-2, ())  # e.g. x.shape: only feeds view/reshape sizes
            src = node.args[0]
            if node.args[1] == "shape" and isinstance(src, fx.Node) and src in self.vals and self.vals[src].layer != -2:
                self.consts[node] = (None, *self.vals[src].shape)
        elif fn is operator.getitem and node.args[0] in self.vals and self.vals[node.args[0]].layer == -2:
            self.vals[node] = Val(-2, ())
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
        base = module_path(node)
        if m in ("add", "add_"):
            self._add_node(node, node.args[0], node.args[1], base)
        elif m in ("sub", "sub_"):
            self._arith(node, "sub", base)
        elif m in ("mul", "mul_"):
            self._arith(node, "mul", base)
        elif m in ("div", "div_", "true_divide", "true_divide_"):
            self._arith(node, "div", base)
        elif m in _CLAMP_METHODS:
            self._clamp_node(node, _CLAMP_METHODS[m], base)
        elif m in ("chunk", "split"):
            self._split_node(node, m == "chunk")
        elif m == "mean":
            self._mean(node, base)
        elif m in _ACT_METHODS:
            self._activation(node, _ACT_METHODS[m], f"{node.name} (.{m})")
        elif m in ("transpose", "permute"):
            dims = node.args[1:]
            if m == "permute" and len(dims) == 1 and isinstance(dims[0], (tuple, list)):
                dims = tuple(dims[0])
            self._swap(node, _swapped(node, dims) if m == "transpose" else _permuted(dims), f".{m}{tuple(dims)}")
        elif m == "contiguous" and self._shuffled(node, None, base):
            pass
        elif m in _FLATTEN_METHODS and self._shuffled(
                node, self._flat_target(node) if m == "flatten" else self._reshaped(node, self.vals[node.args[0]]),
                base):
            pass
        elif m in _FLATTEN_METHODS:
            src = self._val(node.args[0], node)
            self.vals[node] = Val(src.layer, self._reshaped(node, src) if m != "flatten" else (math.prod(src.shape),))
        elif m == "size":
            self.vals[node] = Val(-2, ())
            src = self._val(node.args[0], node)
            full = (None, *src.shape)
            dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
            self.consts[node] = full if dim is None else full[int(dim)]
        elif m in ("contiguous",):
            self._pass(node)
        elif m == "softmax":
            self._softmax(node, layer_name(base, "softmax"))
        else:
            raise KernelfiError(f"fx node {node.name}: tensor method .{m}() is not supported by the lowering")

    def _flat_target(self, node: fx.Node) -> tuple[int, ...] | None:
        """The per-sample shape ``flatten(x, start, end)`` gives (None when x is not tracked)."""
        val = self.vals.get(node.args[0]) if isinstance(node.args[0], fx.Node) else None
        if val is None:
            return None
        kw = dict(zip(("input", "start_dim", "end_dim"), node.args)) | dict(node.kwargs)
        nd = len(val.shape) + 1
        start, end = (int(kw.get(k, d)) % nd for k, d in (("start_dim", 0), ("end_dim", -1)))
        if start == 0:
            return (math.prod(val.shape),)
        return (*val.shape[:start - 1], math.prod(val.shape[start - 1:end]), *val.shape[end:])

    def _size_arith(self, node: fx.Node, fn: Callable) -> bool:
        """``c // g``, ``g * k`` of size values (``x.size()``): a size value (ShuffleNet's view sizes)."""
        args = node.args[:2]
        if not any(isinstance(a, fx.Node) and a in self.vals and self.vals[a].layer == -2 for a in args):
            return False
        got = [self.consts.get(a) if isinstance(a, fx.Node) else a for a in args]
        self.vals[node] = Val(-2, ())
        if all(isinstance(v, int) and not isinstance(v, bool) for v in got):
            self.consts[node] = fn(*got)
        return True

    def _adaptive_fn(self, node: fx.Node, base: str) -> None:
        """``F.adaptive_avg_pool2d(x, size)`` as the module of that size."""
        size = node.kwargs.get("output_size", node.args[1] if len(node.args) > 1 else None)
        self._avgpool(node, nn.AdaptiveAvgPool2d(size), layer_name(base, "avgpool"), node.name)

    def _arith(self, node: fx.Node, op: str, base: str) -> None:
        """``a op b``: with a Python number, the scalar kernel; else the tensor rules."""
        a, b = node.args[0], node.args[1] if len(node.args) > 1 else node.kwargs.get("other")
        if self._scalar(node, op, a, b, base):
            return
        if op == "div":
            raise KernelfiError(f"fx node {node.name}: division of two tensors is not supported")
        self._binary(node, op, a, b, base)

    def _clamp_node(self, node: fx.Node, names: tuple[str, ...], base: str) -> None:
        """``torch.clamp(x, lo, hi)``, ``x.clamp(min=lo)``, ``clamp_min``, ``clamp_max``, ``clip``."""
        kw = dict(zip(names, node.args[1:])) | dict(node.kwargs)
        kind = str(getattr(node.target, "__name__", node.target)).rstrip("_")
        self._clamp(node, kw.get("min"), kw.get("max"), layer_name(base, kind), kind)

    def _split_node(self, node: fx.Node, chunks: bool) -> None:
        """``torch.chunk(x, k, dim)`` / ``torch.split(x, n, dim)`` (and the methods)."""
        names = ("input", "chunks" if chunks else "split_size_or_sections", "dim")
        kw = dict(zip(names, node.args)) | dict(node.kwargs)
        sizes = kw.get("chunks", kw.get("split_size_or_sections", kw.get("split_size")))
        self._split(node, sizes, kw.get("dim", 0), chunks)

    def _add_node(self, node: fx.Node, a: Any, b: Any, base: str) -> None:
        if self._scalar(node, "add", a, b, base):
            return
        va, vb = self._val(a, node), self._val(b, node)
        if va.shape != vb.shape:
            self._binary(node, "add", a, b, base)
            return
        # Darknet's shortcut copies its previous layer's output and adds the `from` layer.
        self._add(node, "shortcut", layer_name(base, "add"), (va.layer, vb.layer), va.shape,
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
