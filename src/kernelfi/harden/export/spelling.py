"""How model.py spells what it rebuilds and calls (docs/export.md §1, §3): the standard
``torch.nn`` constructor of each module type the lowering accepts, and the spelling of each fx
call_function/call_method the lowering accepts (lowering/fx_frontend.py). codegen.py puts them
together into the forward of each variant; a module or call this file does not know is refused
in one line.
"""
from __future__ import annotations

import operator
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from kernelfi._utils import KernelfiError


def _t(v: Any) -> str:
    return repr(tuple(v)) if isinstance(v, (tuple, list)) else repr(v)


def conv_padding(mod: nn.Conv2d, path: str) -> tuple[int, ...] | str:
    """The padding of ``mod`` as numbers where it is symmetric: ``'valid'`` is 0 and ``'same'``
    (stride 1) of an odd kernel pads ``d*(k-1)/2`` on each side, so ABFT's tap sums, which read
    the padding, see numbers. ``'same'`` of an even kernel pads one more after than before,
    which no tuple spells: it stays ``'same'`` (the lowering marks such convolutions not
    ABFT-checkable, so no exported ABFT wrapper reads it)."""
    if not isinstance(mod.padding, str):
        return tuple(mod.padding)
    if mod.padding == "valid":
        return (0,) * len(mod.kernel_size)
    total = [d * (k - 1) for d, k in zip(mod.dilation, mod.kernel_size)]
    if any(t % 2 for t in total):
        return "same"
    return tuple(t // 2 for t in total)


def module_ctor(mod: nn.Module, path: str) -> str:
    """The standard constructor call that rebuilds ``mod`` (its weights come from the state dict)."""
    if any(p.dtype != torch.float32 for p in mod.parameters(recurse=False)):
        raise KernelfiError(f"export: {path} has non-float32 parameters (export float32 models)")
    if isinstance(mod, nn.Conv2d):
        if mod.padding_mode not in ("zeros", "reflect", "replicate"):
            raise KernelfiError(f"export: {path}: padding_mode '{mod.padding_mode}' is not supported")
        mode = "" if mod.padding_mode == "zeros" else f", padding_mode={mod.padding_mode!r}"
        return (f"nn.Conv2d({mod.in_channels}, {mod.out_channels}, kernel_size={_t(mod.kernel_size)}, "
                f"stride={_t(mod.stride)}, padding={_t(conv_padding(mod, path))}, dilation={_t(mod.dilation)}, "
                f"groups={mod.groups}, bias={mod.bias is not None}{mode})")
    if isinstance(mod, nn.ConvTranspose2d):
        if mod.padding_mode != "zeros":
            raise KernelfiError(f"export: {path}: only zero padding is supported")
        return (f"nn.ConvTranspose2d({mod.in_channels}, {mod.out_channels}, kernel_size={_t(mod.kernel_size)}, "
                f"stride={_t(mod.stride)}, padding={_t(mod.padding)}, output_padding={_t(mod.output_padding)}, "
                f"groups={mod.groups}, bias={mod.bias is not None}, dilation={_t(mod.dilation)})")
    if isinstance(mod, nn.Linear):
        return f"nn.Linear({mod.in_features}, {mod.out_features}, bias={mod.bias is not None})"
    if isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d)):
        return (f"nn.{type(mod).__name__}({mod.num_features}, eps={mod.eps!r}, momentum={mod.momentum!r}, "
                f"affine={mod.affine}, track_running_stats={mod.track_running_stats})")
    if isinstance(mod, nn.LeakyReLU):
        return f"nn.LeakyReLU(negative_slope={mod.negative_slope!r}, inplace={mod.inplace})"
    if type(mod) in (nn.ReLU, nn.ReLU6, nn.SiLU, nn.Hardswish, nn.Hardsigmoid, nn.Mish):
        return f"nn.{type(mod).__name__}(inplace={mod.inplace})"
    if type(mod) in (nn.ELU, nn.CELU):
        return f"nn.{type(mod).__name__}(alpha={mod.alpha!r}, inplace={mod.inplace})"
    if type(mod) is nn.GroupNorm:
        return f"nn.GroupNorm({mod.num_groups}, {mod.num_channels}, eps={mod.eps!r}, affine={mod.affine})"
    if isinstance(mod, nn.PReLU):
        return f"nn.PReLU(num_parameters={mod.num_parameters})"
    if type(mod) is nn.Softplus:
        return f"nn.Softplus(beta={mod.beta!r}, threshold={mod.threshold!r})"
    if type(mod) is nn.SELU:
        return f"nn.SELU(inplace={mod.inplace})"
    if type(mod) is nn.Hardtanh:
        return f"nn.Hardtanh({mod.min_val!r}, {mod.max_val!r}, inplace={mod.inplace})"
    if isinstance(mod, nn.GELU):
        return f"nn.GELU(approximate={mod.approximate!r})"
    if type(mod) in (nn.Sigmoid, nn.Tanh, nn.Identity):
        return f"nn.{type(mod).__name__}()"
    if isinstance(mod, nn.Upsample):
        return (f"nn.Upsample(size={_t(mod.size)}, scale_factor={_t(mod.scale_factor)}, mode={mod.mode!r}, "
                f"align_corners={mod.align_corners!r}, recompute_scale_factor={mod.recompute_scale_factor!r})")
    if isinstance(mod, nn.MaxPool2d):
        return (f"nn.MaxPool2d(kernel_size={_t(mod.kernel_size)}, stride={_t(mod.stride)}, padding={_t(mod.padding)}, "
                f"dilation={_t(mod.dilation)}, ceil_mode={mod.ceil_mode})")
    if isinstance(mod, nn.AdaptiveAvgPool2d):
        return f"nn.AdaptiveAvgPool2d({_t(mod.output_size)})"
    if isinstance(mod, nn.AdaptiveMaxPool2d):
        return f"nn.AdaptiveMaxPool2d({_t(mod.output_size)}, return_indices={mod.return_indices})"
    if isinstance(mod, nn.AvgPool2d):
        return (f"nn.AvgPool2d(kernel_size={_t(mod.kernel_size)}, stride={_t(mod.stride)}, padding={_t(mod.padding)}, "
                f"ceil_mode={mod.ceil_mode}, count_include_pad={mod.count_include_pad}, "
                f"divisor_override={mod.divisor_override!r})")
    if type(mod) in (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout):
        return f"nn.{type(mod).__name__}(p={mod.p!r}, inplace={mod.inplace})"
    if isinstance(mod, nn.Flatten):
        return f"nn.Flatten({mod.start_dim}, {mod.end_dim})"
    if isinstance(mod, nn.Softmax):
        return f"nn.Softmax(dim={mod.dim!r})"
    if type(mod) is nn.ZeroPad2d:
        return f"nn.ZeroPad2d({_t(mod.padding)})"
    if type(mod) is nn.ConstantPad2d:
        return f"nn.ConstantPad2d({_t(mod.padding)}, {mod.value!r})"
    if type(mod) in (nn.ReflectionPad2d, nn.ReplicationPad2d):
        return f"nn.{type(mod).__name__}({_t(mod.padding)})"
    if type(mod) is nn.PixelShuffle:
        return f"nn.PixelShuffle({mod.upscale_factor})"
    if type(mod) is nn.PixelUnshuffle:
        return f"nn.PixelUnshuffle({mod.downscale_factor})"
    if type(mod) is nn.ChannelShuffle:
        return f"nn.ChannelShuffle({mod.groups})"
    raise KernelfiError(f"export: {path}: module type {type(mod).__name__} has no standard constructor here")


#: The call_function targets the lowering accepts (lowering/fx_frontend.py) -> how model.py
#: spells them. In-place operators (``a -= b``) run out of place, as the residual add does unless
#: it owns its operand (codegen's ``_Forward.owned``); the export's bitwise check would catch an alias.
_FUNCTIONS: dict[Any, str] = {
    operator.add: "torch.add", operator.iadd: "torch.add", torch.add: "torch.add",
    operator.sub: "torch.sub", operator.isub: "torch.sub", torch.sub: "torch.sub",
    operator.mul: "torch.mul", operator.imul: "torch.mul", torch.mul: "torch.mul",
    torch.mean: "torch.mean", torch.cat: "torch.cat", torch.flatten: "torch.flatten",
    F.relu: "F.relu", torch.relu: "torch.relu", torch.sigmoid: "torch.sigmoid", F.sigmoid: "torch.sigmoid",
    F.leaky_relu: "F.leaky_relu", F.relu6: "F.relu6", torch.tanh: "torch.tanh", F.tanh: "torch.tanh",
    F.silu: "F.silu", F.gelu: "F.gelu", F.hardswish: "F.hardswish", F.hardsigmoid: "F.hardsigmoid",
    F.mish: "F.mish", F.elu: "F.elu", F.selu: "F.selu", F.celu: "F.celu", F.softplus: "F.softplus",
    F.softmax: "F.softmax", torch.softmax: "torch.softmax",
    F.adaptive_avg_pool2d: "F.adaptive_avg_pool2d", F.adaptive_max_pool2d: "F.adaptive_max_pool2d",
    F.interpolate: "F.interpolate",
    F.avg_pool2d: "F.avg_pool2d", F.max_pool2d: "F.max_pool2d",
    operator.truediv: "torch.div", operator.itruediv: "torch.div", torch.div: "torch.div",
    torch.true_divide: "torch.true_divide", torch.clamp: "torch.clamp", torch.clip: "torch.clip",
    torch.clamp_min: "torch.clamp_min", torch.clamp_max: "torch.clamp_max", F.hardtanh: "F.hardtanh",
    F.pad: "F.pad", torch.chunk: "torch.chunk", torch.split: "torch.split",
    torch.transpose: "torch.transpose", F.pixel_shuffle: "F.pixel_shuffle", F.pixel_unshuffle: "F.pixel_unshuffle", operator.floordiv: "operator.floordiv",
}
#: Identities at inference: nothing runs, the variable is the input's.
_ALIAS_FUNCTIONS = (F.dropout, F.dropout1d, F.dropout2d, F.alpha_dropout)
#: Tensor methods the lowering accepts -> the torch function that computes the same (in-place
#: variants out of place), or ``.name`` for a method rendered as a method call (never protected:
#: reshapes and size queries belong to no layer).
_METHODS: dict[str, str] = {
    "add": "torch.add", "add_": "torch.add", "sub": "torch.sub", "sub_": "torch.sub",
    "mul": "torch.mul", "mul_": "torch.mul", "mean": "torch.mean", "relu": "torch.relu", "relu_": "torch.relu",
    "sigmoid": "torch.sigmoid", "sigmoid_": "torch.sigmoid", "tanh": "torch.tanh", "tanh_": "torch.tanh",
    "softmax": "torch.softmax", "flatten": "torch.flatten", "view": ".view", "reshape": ".reshape", "size": ".size",
    "div": "torch.div", "div_": "torch.div", "true_divide": "torch.div", "true_divide_": "torch.div",
    "clamp": "torch.clamp", "clamp_": "torch.clamp", "clip": "torch.clamp", "clip_": "torch.clamp",
    "clamp_min": "torch.clamp_min", "clamp_min_": "torch.clamp_min", "clamp_max": "torch.clamp_max",
    "clamp_max_": "torch.clamp_max", "chunk": "torch.chunk", "split": "torch.split",
    "transpose": ".transpose", "permute": ".permute", "contiguous": ".contiguous",
}


def call_spelling(node: fx.Node) -> str:
    """How ``node`` renders: ``alias`` (no code), ``getattr``/``getitem`` (a size query's parts),
    ``softmax`` (its dim written out), ``add`` (maybe in place), or the spelling of a call."""
    t = node.target
    if node.op == "call_method":
        if t in _METHODS:  # .contiguous() too: of a channel shuffle's transposed view it is the copy
            return _METHODS[str(t)]
    elif t is getattr or t is operator.getitem:
        return "getattr" if t is getattr else "getitem"
    elif any(t is f for f in _ALIAS_FUNCTIONS):
        return "alias"
    else:
        for f, spelling in _FUNCTIONS.items():
            if t is f:
                return spelling
    raise KernelfiError(f"export: fx node {node.name} ({node.op} {t}) has no rendering")
