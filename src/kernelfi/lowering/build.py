"""LayerSpecs -> the kernel trace Darknet would launch (docs/method.md §1), plus the weight tensors.

One function per Darknet layer type emits its launches in Darknet's order; buffers are
allocated in Darknet's order (input, then per layer its weights and outputs, workspace last)
so the IOA memory map is faithful.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from kernelfi._utils import KernelfiError
from kernelfi.kernels import CEIL_PAD, LEAKY_SLOPE, PAD2D_KERNELS, PAD_AFTER, get_kernel, shortcut_geometry
from kernelfi.types import BufferSpec, LayerSpec, Launch, Trace

_WEIGHT_ROLES = ("weights", "biases", "scales", "rolling_mean", "rolling_variance")


def _chw(shape: tuple[int, ...]) -> tuple[int, int, int]:
    """A layer shape as Darknet's (c, h, w): a flat (F,) output is F x 1 x 1."""
    dims = tuple(int(d) for d in shape)
    if len(dims) == 3:
        return dims  # type: ignore[return-value]
    return (math.prod(dims), 1, 1)


def activation_params(p: dict[str, Any], n: int) -> dict[str, Any]:
    """activate_array's launch parameters for a layer's activation (a slope only when not Darknet's)."""
    out: dict[str, Any] = {"n": n, "activation": str(p.get("activation", "linear"))}
    if "slope" in p and float(p["slope"]) != LEAKY_SLOPE:
        out["slope"] = float(p["slope"])
    if "threshold" in p:
        out["threshold"] = float(p["threshold"])
    return out


def _ceil_params(p: dict[str, Any]) -> dict[str, int]:
    """A windowed pool layer's far-side ``CEIL_PAD`` launch params (ceil_mode past stride 2),
    only where the layer has them: every other pool launch keeps Darknet's params."""
    return {k: int(p[k]) for k in CEIL_PAD if k in p}


@dataclass
class _Builder:
    layers: tuple[LayerSpec, ...]
    state: dict[str, torch.Tensor]
    input_shape: tuple[int, ...]
    buffers: list[BufferSpec] = field(default_factory=list)
    launches: list[Launch] = field(default_factory=list)
    weights: dict[str, torch.Tensor] = field(default_factory=dict)
    out_buf: dict[int, str] = field(default_factory=dict)  # layer index -> buffer of its output
    workspace: tuple[int, int] = (0, 0)

    # ------------------------------------------------------------------ helpers
    def buf(self, layer: int) -> str:
        return "input" if layer < 0 else self.out_buf[layer]

    def shape(self, layer: int) -> tuple[int, ...]:
        return self.input_shape if layer < 0 else self.layers[layer].out_shape

    def chw(self, layer: int) -> tuple[int, int, int]:
        """A layer's output as the (C, H, W) map a convolution or pool reads: a connected
        layer's F outputs are an F x 1 x 1 map, as Darknet sets its out_h = out_w = 1."""
        shape = self.shape(layer)
        if len(shape) == 1:
            return int(shape[0]), 1, 1
        c, h, w = shape
        return int(c), int(h), int(w)

    def alloc(self, name: str, shape: tuple[int, ...], kind: str, dtype: str = "float32") -> str:
        self.buffers.append(BufferSpec(name, tuple(int(d) for d in shape), kind, dtype))
        return name

    def weight(self, spec: LayerSpec, role: str, shape: tuple[int, ...]) -> str:
        key = spec.weights.get(role)
        if key is None or key not in self.state:
            raise KernelfiError(f"layer {spec.index} ({spec.type} {spec.name}): missing {role} tensor '{key}'")
        t = self.state[key].detach().to(torch.float32).reshape(-1)
        if t.numel() != math.prod(shape):
            raise KernelfiError(f"layer {spec.index} ({spec.name}): {role} has {t.numel()} values, expected {math.prod(shape)}")
        name = f"{spec.name}.{role}"
        self.weights[name] = t.reshape(shape).contiguous()
        return self.alloc(name, shape, "weight")

    def launch(self, spec: LayerSpec, kernel: str, reads: tuple[str, ...], writes: tuple[str, ...],
               params: dict[str, Any], suffix: str = "") -> None:
        impl = get_kernel(kernel)
        self.launches.append(Launch(
            index=len(self.launches), layer=spec.index, layer_type=spec.type,
            name=f"{spec.name}.{kernel}{suffix}", kernel=kernel, reads=reads, writes=writes,
            params=params, template=impl.template(params)))

    def bias_and_activation(self, spec: LayerSpec, out: str, channels: int, spatial: int) -> None:
        p = spec.params
        if p.get("batch_normalize"):
            eps = float(p.get("eps", 1e-5))
            self.launch(spec, "normalize", (out, f"{spec.name}.rolling_mean", f"{spec.name}.rolling_variance"), (out,),
                        {"channels": channels, "spatial": spatial, "eps": eps})
            self.launch(spec, "scale_bias", (out, f"{spec.name}.scales"), (out,), {"channels": channels, "spatial": spatial})
        self.launch(spec, "add_bias", (out, f"{spec.name}.biases"), (out,), {"channels": channels, "spatial": spatial})
        self.launch(spec, "activate_array", (out,), (out,), activation_params(p, channels * spatial))

    def alloc_params(self, spec: LayerSpec, wshape: tuple[int, ...], n: int) -> None:
        self.weight(spec, "weights", wshape)
        self.weight(spec, "biases", (n,))
        if spec.params.get("batch_normalize"):
            for role in ("scales", "rolling_mean", "rolling_variance"):
                self.weight(spec, role, (n,))

    # ------------------------------------------------------------------ layer types
    def convolutional(self, spec: LayerSpec) -> None:
        p = spec.params
        src = spec.inputs[0]
        c, h, w = self.chw(src)
        filters, size, stride = int(p["filters"]), int(p["size"]), int(p["stride"])
        pad, groups, dil = int(p["pad"]), int(p.get("groups", 1)), int(p.get("dilation", 1))
        _, oh, ow = spec.out_shape
        # a non-square kernel/stride/padding/dilation: the width axis in *_w (im2col's W_AXIS)
        wide = {f"{key}_w": int(p[f"{src_key}_w"]) for key, src_key in
                (("ksize", "size"), ("stride", "stride"), ("pad", "pad"), ("dilation", "dilation"))
                if f"{src_key}_w" in p}
        wide.update({key: int(p[key]) for key in PAD_AFTER.values() if key in p})  # asymmetric padding
        size_w = wide.get("ksize_w", size)
        cg, mg = c // groups, filters // groups
        k, n = cg * size * size_w, oh * ow
        self.alloc_params(spec, (filters, k), filters)
        out = self.alloc(f"{spec.name}.output", spec.out_shape, "activation")
        self.out_buf[spec.index] = out
        self.launch(spec, "fill", (), (out,), {"n": filters * n, "value": 0.0})
        direct = size == 1 and stride == 1 and pad == 0 and dil == 1 and all(v == (0 if "pad" in key else 1)
                                                                            for key, v in wide.items())
        for g in range(groups):
            sfx = f".g{g}" if groups > 1 else ""
            if direct:
                b, b_off = self.buf(src), g * cg * n
            else:
                self.launch(spec, "im2col", (self.buf(src),), ("workspace",),
                            {"channels": c, "height": h, "width": w, "ksize": size, "stride": stride,
                             "pad": pad, "dilation": dil, "out_h": oh, "out_w": ow,
                             "channel_offset": g * cg, "group_channels": cg, **wide}, sfx)
                self.workspace = (max(self.workspace[0], k), max(self.workspace[1], n))
                b, b_off = "workspace", 0
            self.launch(spec, "gemm", (f"{spec.name}.weights", b, out), (out,),
                        {"M": mg, "N": n, "K": k, "trans_a": False, "trans_b": False,
                         "a_offset": g * mg * k, "b_offset": b_off, "c_offset": g * mg * n}, sfx)
        self.bias_and_activation(spec, out, filters, n)

    def deconvolutional(self, spec: LayerSpec) -> None:
        # Darknet's [deconvolutional] layer (forward_deconvolutional_layer_gpu), PyTorch's
        # slow_conv_transpose2d: columns = W^T . X (the gemm's beta = 0 as a fill of the columns
        # and the beta = 1 gemm), col2im scatters them onto the output, then bias/BN/activation
        p = spec.params
        src = spec.inputs[0]
        c, h, w = self.chw(src)
        filters, size, stride, pad = int(p["filters"]), int(p["size"]), int(p["stride"]), int(p["pad"])
        _, oh, ow = spec.out_shape
        m, n = filters * size * size, h * w
        self.alloc_params(spec, (c, m), filters)   # PyTorch's (C_in, C_out, k, k), flattened
        out = self.alloc(f"{spec.name}.output", spec.out_shape, "activation")
        self.out_buf[spec.index] = out
        self.workspace = (max(self.workspace[0], m), max(self.workspace[1], n))
        self.launch(spec, "fill", (), ("workspace",), {"n": m * n, "value": 0.0})
        self.launch(spec, "gemm", (f"{spec.name}.weights", self.buf(src), "workspace"), ("workspace",),
                    {"M": m, "N": n, "K": c, "trans_a": True, "trans_b": False,
                     "a_offset": 0, "b_offset": 0, "c_offset": 0})
        self.launch(spec, "col2im", ("workspace",), (out,),
                    {"channels": filters, "height": oh, "width": ow, "ksize": size, "stride": stride,
                     "pad": pad, "height_col": h, "width_col": w})
        self.bias_and_activation(spec, out, filters, oh * ow)

    def connected(self, spec: LayerSpec) -> None:
        src = spec.inputs[0]
        k = math.prod(self.shape(src))
        n = int(spec.out_shape[0])
        self.alloc_params(spec, (n, k), n)
        out = self.alloc(f"{spec.name}.output", spec.out_shape, "activation")
        self.out_buf[spec.index] = out
        self.launch(spec, "fill", (), (out,), {"n": n, "value": 0.0})
        self.launch(spec, "gemm", (self.buf(src), f"{spec.name}.weights", out), (out,),
                    {"M": 1, "N": n, "K": k, "trans_a": False, "trans_b": True,
                     "a_offset": 0, "b_offset": 0, "c_offset": 0})
        self.bias_and_activation(spec, out, n, 1)

    def maxpool(self, spec: LayerSpec) -> None:
        p = spec.params
        c, h, w = self.chw(spec.inputs[0])
        _, oh, ow = spec.out_shape
        out = self.alloc(f"{spec.name}.output", spec.out_shape, "activation")
        idx = self.alloc(f"{spec.name}.indexes", spec.out_shape, "index", "int32")
        self.out_buf[spec.index] = out
        self.launch(spec, "forward_maxpool", (self.buf(spec.inputs[0]),), (out, idx),
                    {"channels": c, "height": h, "width": w, "size": int(p["size"]),
                     "stride": int(p["stride"]), "pad": int(p["pad"]), "out_h": oh, "out_w": ow,
                     **_ceil_params(p)})

    def avgpool(self, spec: LayerSpec) -> None:
        c, h, w = self.chw(spec.inputs[0])
        out = self.alloc(f"{spec.name}.output", spec.out_shape, "activation")
        self.out_buf[spec.index] = out
        self.launch(spec, "forward_avgpool", (self.buf(spec.inputs[0]),), (out,),
                    {"channels": c, "height": h, "width": w})

    def local_avgpool(self, spec: LayerSpec) -> None:
        # AlexeyAB's [local_avgpool] layer: forward_local_avgpool_layer_kernel
        p = spec.params
        c, h, w = self.chw(spec.inputs[0])
        _, oh, ow = spec.out_shape
        out = self.alloc(f"{spec.name}.output", spec.out_shape, "activation")
        self.out_buf[spec.index] = out
        params: dict[str, Any] = {"channels": c, "height": h, "width": w, "size": int(p["size"]),
                                  "stride": int(p["stride"]), "pad": int(p["pad"]), "out_h": oh, "out_w": ow}
        if p.get("count_include_pad"):
            params["count_include_pad"] = True
        if "divisor" in p:   # PyTorch's divisor_override, only where given
            params["divisor"] = int(p["divisor"])
        params.update(_ceil_params(p))
        self.launch(spec, "forward_local_avgpool", (self.buf(spec.inputs[0]),), (out,), params)

    def adaptive_avgpool(self, spec: LayerSpec) -> None:
        # PyTorch's adaptive_average_pool (AdaptiveAvgPool2d to other than 1x1)
        c, h, w = self.chw(spec.inputs[0])
        _, oh, ow = spec.out_shape
        out = self.alloc(f"{spec.name}.output", spec.out_shape, "activation")
        self.out_buf[spec.index] = out
        self.launch(spec, "adaptive_avgpool", (self.buf(spec.inputs[0]),), (out,),
                    {"channels": c, "height": h, "width": w, "out_h": oh, "out_w": ow})

    def maxpool_dilated(self, spec: LayerSpec) -> None:
        # PyTorch's max_pool_forward_nchw (a dilated MaxPool2d): the output and its argmax
        p = spec.params
        c, h, w = self.chw(spec.inputs[0])
        _, oh, ow = spec.out_shape
        out = self.alloc(f"{spec.name}.output", spec.out_shape, "activation")
        idx = self.alloc(f"{spec.name}.indices", spec.out_shape, "index", "int32")
        self.out_buf[spec.index] = out
        self.launch(spec, "max_pool_nchw", (self.buf(spec.inputs[0]),), (out, idx),
                    {"channels": c, "height": h, "width": w, "size": int(p["size"]), "stride": int(p["stride"]),
                     "pad": int(p["pad"]), "dilation": int(p["dilation"]), "out_h": oh, "out_w": ow})

    def adaptive_maxpool(self, spec: LayerSpec) -> None:
        # PyTorch's adaptivemaxpool (AdaptiveMaxPool2d): the output and the argmax it always writes
        c, h, w = self.chw(spec.inputs[0])
        _, oh, ow = spec.out_shape
        out = self.alloc(f"{spec.name}.output", spec.out_shape, "activation")
        idx = self.alloc(f"{spec.name}.indices", spec.out_shape, "index", "int32")
        self.out_buf[spec.index] = out
        self.launch(spec, "adaptive_maxpool", (self.buf(spec.inputs[0]),), (out, idx),
                    {"channels": c, "height": h, "width": w, "out_h": oh, "out_w": ow})

    def upsample_bilinear(self, spec: LayerSpec) -> None:
        # PyTorch's upsample_bilinear2d_out_frame: one thread per output pixel, a loop over planes
        c, h, w = self.chw(spec.inputs[0])
        _, oh, ow = spec.out_shape
        out = self.alloc(f"{spec.name}.output", spec.out_shape, "activation")
        self.out_buf[spec.index] = out
        self.launch(spec, "upsample_bilinear", (self.buf(spec.inputs[0]),), (out,),
                    {"channels": c, "height": h, "width": w, "out_h": oh, "out_w": ow,
                     "align_corners": bool(spec.params["align_corners"]), "rheight": float(spec.params["rheight"]),
                     "rwidth": float(spec.params["rwidth"])})

    def upsample(self, spec: LayerSpec) -> None:
        # AlexeyAB's [upsample] layer: fill the output with 0, then upsample_kernel adds scale*x
        c, h, w = self.chw(spec.inputs[0])
        out = self.alloc(f"{spec.name}.output", spec.out_shape, "activation")
        self.out_buf[spec.index] = out
        self.launch(spec, "fill", (), (out,), {"n": math.prod(spec.out_shape), "value": 0.0})
        self.launch(spec, "upsample", (self.buf(spec.inputs[0]), out), (out,),
                    {"channels": c, "height": h, "width": w, "stride": int(spec.params["stride"]),
                     "scale": float(spec.params.get("scale", 1.0))})

    def shortcut(self, spec: LayerSpec) -> None:
        a, b = spec.inputs
        n = math.prod(spec.out_shape)
        out = self.alloc(f"{spec.name}.output", spec.out_shape, "activation")
        self.out_buf[spec.index] = out
        self.launch(spec, "copy", (self.buf(a),), (out,), {"n": n, "out_offset": 0})
        # Darknet's shortcut_gpu(batch, w, h, c of the `from` layer, ..., out_w, out_h, out_c)
        (c1, h1, w1), (c2, h2, w2) = _chw(self.shape(b)), _chw(spec.out_shape)
        if shortcut_geometry((c1, h1, w1), (c2, h2, w2)) is None:
            raise KernelfiError(f"layer {spec.index} ({spec.name}): cannot add {(c1, h1, w1)} onto {(c2, h2, w2)} "
                                "(Darknet's shortcut needs equal width and height ratios)")
        self.launch(spec, "shortcut", (out, self.buf(b)), (out,),
                    {"w1": w1, "h1": h1, "c1": c1, "w2": w2, "h2": h2, "c2": c2})
        self.launch(spec, "activate_array", (out,), (out,), activation_params(spec.params, n))

    def activation(self, spec: LayerSpec) -> None:
        # Darknet's [activation] layer (activation_layer.c): copy the input, activate the copy
        n = math.prod(spec.out_shape)
        out = self.alloc(f"{spec.name}.output", spec.out_shape, "activation")
        self.out_buf[spec.index] = out
        self.launch(spec, "copy", (self.buf(spec.inputs[0]),), (out,), {"n": n, "out_offset": 0})
        self.launch(spec, "activate_array", (out,), (out,), activation_params(spec.params, n))

    def batchnorm(self, spec: LayerSpec) -> None:
        # Darknet's [batchnorm] layer at inference (batchnorm_layer.c): copy the input, then
        # normalize, scale_bias and add_bias on the copy
        c, h, w = _chw(spec.out_shape)
        for role in ("scales", "biases", "rolling_mean", "rolling_variance"):
            self.weight(spec, role, (c,))
        out = self.alloc(f"{spec.name}.output", spec.out_shape, "activation")
        self.out_buf[spec.index] = out
        self.launch(spec, "copy", (self.buf(spec.inputs[0]),), (out,), {"n": c * h * w, "out_offset": 0})
        self.launch(spec, "normalize", (out, f"{spec.name}.rolling_mean", f"{spec.name}.rolling_variance"), (out,),
                    {"channels": c, "spatial": h * w, "eps": float(spec.params.get("eps", 1e-5))})
        self.launch(spec, "scale_bias", (out, f"{spec.name}.scales"), (out,), {"channels": c, "spatial": h * w})
        self.launch(spec, "add_bias", (out, f"{spec.name}.biases"), (out,), {"channels": c, "spatial": h * w})

    def scale_channels(self, spec: LayerSpec) -> None:
        # AlexeyAB's [scale_channels] layer: the map (inputs[0]) times a per-channel scale (inputs[1])
        c, h, w = _chw(spec.out_shape)
        out = self.alloc(f"{spec.name}.output", spec.out_shape, "activation")
        self.out_buf[spec.index] = out
        self.launch(spec, "scale_channels", (self.buf(spec.inputs[0]), self.buf(spec.inputs[1])), (out,),
                    {"channels": c, "spatial": h * w})

    def prelu(self, spec: LayerSpec) -> None:
        # PyTorch's prelu: out = x > 0 ? x : w*x, w per channel (num_parameters = C) or one
        k = int(spec.params["num_parameters"])
        w = self.weight(spec, "weights", (k,))
        out = self.alloc(f"{spec.name}.output", spec.out_shape, "activation")
        self.out_buf[spec.index] = out
        self.launch(spec, "prelu", (self.buf(spec.inputs[0]), w), (out,),
                    {"out": _chw(spec.out_shape), "w": (k, 1, 1)})

    def group_norm(self, spec: LayerSpec) -> None:
        # PyTorch's GroupNorm forward: RowwiseMomentsCUDAKernel (mean, rstd per group) and the
        # element pass (kernels.norm); gamma/beta as the layer's scales/biases when affine
        c, h, w = _chw(spec.out_shape)
        g, affine = int(spec.params["groups"]), bool(spec.params["affine"])
        stats = self.alloc(f"{spec.name}.stats", (g, 2), "workspace")
        self.launch(spec, "group_norm_moments", (self.buf(spec.inputs[0]),), (stats,),
                    {"rows": g, "row": c // g * h * w, "eps": float(spec.params["eps"])})
        reads: tuple[str, ...] = (self.buf(spec.inputs[0]), stats)
        if affine:
            reads += (self.weight(spec, "scales", (c,)), self.weight(spec, "biases", (c,)))
        out = self.alloc(f"{spec.name}.output", spec.out_shape, "activation")
        self.out_buf[spec.index] = out
        self.launch(spec, "group_norm_apply", reads, (out,),
                    {"channels": c, "groups": g, "spatial": h * w, "affine": affine})

    def binary(self, spec: LayerSpec) -> None:
        # PyTorch's broadcasting add/sub/mul element kernel
        a, b = spec.inputs
        out = self.alloc(f"{spec.name}.output", spec.out_shape, "activation")
        self.out_buf[spec.index] = out
        self.launch(spec, "binary_op", (self.buf(a), self.buf(b)), (out,),
                    {"op": str(spec.params["op"]), "out": _chw(spec.out_shape),
                     "a": tuple(spec.params["a"]), "b": tuple(spec.params["b"])})

    def scalar(self, spec: LayerSpec) -> None:
        # PyTorch's element kernel with a CPU scalar: the number is a launch argument
        out = self.alloc(f"{spec.name}.output", spec.out_shape, "activation")
        self.out_buf[spec.index] = out
        self.launch(spec, "scalar_op", (self.buf(spec.inputs[0]),), (out,),
                    {"n": math.prod(spec.out_shape), "op": str(spec.params["op"]),
                     "scalar": float(spec.params["scalar"])})

    def clamp(self, spec: LayerSpec) -> None:
        # PyTorch's clamp kernel (clamp_min / clamp_max keep one bound; hardtanh calls clamp)
        out = self.alloc(f"{spec.name}.output", spec.out_shape, "activation")
        self.out_buf[spec.index] = out
        bounds = {k: float(spec.params[k]) for k in ("min", "max") if spec.params.get(k) is not None}
        self.launch(spec, "clamp", (self.buf(spec.inputs[0]),), (out,), {"n": math.prod(spec.out_shape), **bounds})

    def pad(self, spec: LayerSpec) -> None:
        # PyTorch's constant_pad_nd, one thread per output element (reflect / replicate: its
        # reflection_pad2d_out_kernel / replication_pad_forward_kernel2d)
        c, h, w = self.chw(spec.inputs[0])
        _, oh, ow = spec.out_shape
        out = self.alloc(f"{spec.name}.output", spec.out_shape, "activation")
        self.out_buf[spec.index] = out
        mode = str(spec.params.get("mode", "constant"))
        if mode != "constant":
            if mode not in PAD2D_KERNELS:
                raise KernelfiError(f"layer {spec.index} ({spec.name}): padding mode '{mode}' has no kernel")
            self.launch(spec, PAD2D_KERNELS[mode], (self.buf(spec.inputs[0]),), (out,),
                        {"channels": c, "height": h, "width": w, "top": int(spec.params["top"]),
                         "left": int(spec.params["left"]), "out_h": oh, "out_w": ow})
            return
        self.launch(spec, "constant_pad", (self.buf(spec.inputs[0]),), (out,),
                    {"channels": c, "height": h, "width": w, "top": int(spec.params["top"]),
                     "left": int(spec.params["left"]), "out_h": oh, "out_w": ow,
                     "value": float(spec.params.get("value", 0.0))})

    def shuffle(self, spec: LayerSpec) -> None:
        # PyTorch's elementwise copy of the transposed (g, C/g) view (.contiguous() / reshape)
        c, h, w = _chw(spec.out_shape)
        out = self.alloc(f"{spec.name}.output", spec.out_shape, "activation")
        self.out_buf[spec.index] = out
        self.launch(spec, "channel_shuffle", (self.buf(spec.inputs[0]),), (out,),
                    {"channels": c, "groups": int(spec.params["groups"]), "spatial": h * w})

    def pixel_shuffle(self, spec: LayerSpec) -> None:
        # PyTorch's pixel_shuffle / pixel_unshuffle: a view, a permute and the contiguous copy
        c, h, w = self.chw(spec.inputs[0])
        out = self.alloc(f"{spec.name}.output", spec.out_shape, "activation")
        self.out_buf[spec.index] = out
        self.launch(spec, "pixel_shuffle", (self.buf(spec.inputs[0]),), (out,),
                    {"channels": c, "height": h, "width": w, "factor": int(spec.params["factor"]),
                     "inverse": bool(spec.params.get("inverse", False))})

    def slice(self, spec: LayerSpec) -> None:
        # AlexeyAB's [route] with groups/group_id: copy one channel range (a chunk, a split piece)
        c, h, w = _chw(spec.out_shape)
        out = self.alloc(f"{spec.name}.output", spec.out_shape, "activation")
        self.out_buf[spec.index] = out
        self.launch(spec, "copy", (self.buf(spec.inputs[0]),), (out,),
                    {"n": c * h * w, "out_offset": 0, "in_offset": int(spec.params["start"]) * h * w})

    def route(self, spec: LayerSpec) -> None:
        out = self.alloc(f"{spec.name}.output", spec.out_shape, "activation")
        self.out_buf[spec.index] = out
        offset = 0
        for j, src in enumerate(spec.inputs):
            n = math.prod(self.shape(src))
            self.launch(spec, "copy", (self.buf(src),), (out,), {"n": n, "out_offset": offset}, f".{j}")
            offset += n

    def dropout(self, spec: LayerSpec) -> None:
        # Darknet's dropout is in place and launches nothing at inference: the output is the input.
        self.out_buf[spec.index] = self.buf(spec.inputs[0])

    def softmax(self, spec: LayerSpec) -> None:
        n = math.prod(spec.out_shape)
        out = self.alloc(f"{spec.name}.output", spec.out_shape, "activation")
        self.out_buf[spec.index] = out
        self.launch(spec, "softmax", (self.buf(spec.inputs[0]),), (out,),
                    {"n": n, "temperature": float(spec.params.get("temperature", 1.0))})


def build_trace(model: str, layers: tuple[LayerSpec, ...], state: dict[str, torch.Tensor],
                input_shape: tuple[int, ...], append_softmax: bool = True) -> tuple[Trace, dict[str, torch.Tensor]]:
    """Emit the trace; append a softmax layer when the model ends in raw scores.

    The seeds' outcome classes need output probabilities, and Darknet nets end in softmax;
    torchvision models return logits, so a softmax (the seed's 'softmax' kernel) is appended.
    """
    layers = tuple(layers)
    if not layers:
        raise KernelfiError(f"{model}: no layers to lower")
    if append_softmax and layers[-1].type != "softmax":
        last = layers[-1]
        n = math.prod(last.out_shape)
        layers = layers + (LayerSpec(len(layers), "softmax", "softmax", (last.index,), (n,), {"temperature": 1.0}),)
    b = _Builder(layers, state, tuple(int(d) for d in input_shape))
    b.alloc("input", b.input_shape, "input")
    for spec in layers:
        emit = getattr(b, spec.type, None)
        if emit is None:
            raise KernelfiError(f"layer {spec.index} ({spec.name}): layer type '{spec.type}' has no kernel lowering")
        emit(spec)
    if b.workspace != (0, 0):
        b.alloc("workspace", b.workspace, "workspace")
    final = layers[-1]
    logits_layer = final.inputs[0] if final.type == "softmax" else final.index
    trace = Trace(model=model, input_shape=b.input_shape, layers=layers, buffers=tuple(b.buffers),
                  launches=tuple(b.launches), logits=b.buf(logits_layer), output=b.buf(final.index))
    return trace, b.weights
