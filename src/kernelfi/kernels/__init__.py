"""The kernel catalogue: Darknet's GPU kernels, each as execution + instruction template +
register map (docs/method.md §1–§2, docs/kernels.md).

>>> from kernelfi.kernels import get_kernel
>>> k = get_kernel("add_bias")
>>> k.template({"channels": 2, "spatial": 3}).profile().counts["FP32"]
6

Importing the package registers the twelve kernels of ``kernelfi.types.KERNEL_NAMES`` and those
added for models brought from PyTorch (``broadcast``, ``upsample``, ``local_avgpool``: issue 20; ``pointwise``: scalars, clamp, pad; ``layout``: the channel and pixel shuffles' strided copies, reflect and replicate pads;
``col2im``, the transposed convolution's scatter: ``deconv``).
Layering: this package imports only torch, numpy, ``kernelfi.types`` and ``kernelfi._utils``.
"""
from __future__ import annotations

from ._base import (
    BLOCK,
    EFFECTS,
    WEIGHT_ROLES,
    KernelImpl,
    TagInfo,
    all_kernels,
    cuda_gridsize,
    fma_f32,
    get_kernel,
    ptxas_registers,
    register_kernel,
    unregister_kernel,
)
from . import activation, broadcast, conv, deconv, elementwise, interp, layout, norm, pointwise, pool, pool_dilated, pool_local, softmax  # noqa: F401  (registers the kernels)
from . import hardening  # noqa: F401  (registers the selective-hardening kernels, docs/hardening.md)
from .conv import NON_SQUARE, PAD_AFTER, W_AXIS, dilated_im2col, square_im2col, conv1x1, conv1x1_cols, fused_conv, lane_conv2d, rows_linear
from .activation import ACTIVATIONS, ELU_FAMILY, GELU_BETA, GELU_KAPPA, LEAKY_SLOPE, SOFTPLUS_THRESHOLD, activate, elu_coefs, slope_of, threshold_of
from .sgemm import SGEMM_TILES, SgemmShape, sgemm_shape
from .sgemm import shared_bytes as gemm_shared_bytes
from .softmax import darknet_largest
from .interp import bilinear_scale
from .pool import CEIL_PAD, ceil_pads
from .pool_dilated import dilated_start
from .elementwise import shortcut_geometry, shortcut_indexes
from .broadcast import BINARY_OPS, broadcast_strides
from .layout import PAD2D_KERNELS, pad2d_geometry, pad2d_source, pixel_dims, pixel_geometry, pixel_out_shape, pixel_source, shuffle_geometry, shuffle_source
from .pointwise import SCALAR_OPS, clamp_bounds, pad_geometry, scalar_operand
from .deconv import col2im_geometry

__all__ = [
    "ACTIVATIONS", "BINARY_OPS", "ELU_FAMILY", "SCALAR_OPS", "clamp_bounds", "pad_geometry", "scalar_operand",
    "BLOCK", "CEIL_PAD", "ceil_pads", "dilated_start", "GELU_BETA", "GELU_KAPPA", "NON_SQUARE", "PAD_AFTER", "W_AXIS",
    "LEAKY_SLOPE", "SOFTPLUS_THRESHOLD", "EFFECTS", "SGEMM_TILES", "WEIGHT_ROLES", "KernelImpl", "TagInfo",
    "PAD2D_KERNELS", "pad2d_geometry", "pad2d_source", "pixel_dims", "pixel_geometry", "pixel_out_shape",
    "pixel_source", "shuffle_geometry", "shuffle_source",
    "activate", "all_kernels", "bilinear_scale", "broadcast_strides", "col2im_geometry", "conv1x1", "conv1x1_cols", "cuda_gridsize", "darknet_largest", "dilated_im2col", "fma_f32", "fused_conv",
    "gemm_shared_bytes", "get_kernel", "ptxas_registers", "register_kernel", "rows_linear", "SgemmShape", "sgemm_shape",
    "shortcut_geometry", "shortcut_indexes", "slope_of", "square_im2col", "threshold_of", "unregister_kernel",
]
