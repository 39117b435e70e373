"""The fused max-pool (``fastpath.maxpool_window``) against Darknet's own rule, bit for bit.

``forward_maxpool_layer_kernel`` walks a window in row-major order from ``max = -INFINITY`` and
keeps a value only where ``val > max``: NaN never wins, an all-NaN window gives -inf, and of
equal values (+0.0 and -0.0) the first stays. The reference here is that walk, vectorised over
windows with ``torch.where`` (no pooling primitive), on blocks that take the channels-last path
and blocks that stay NCHW.
"""
from __future__ import annotations

import math

import pytest
import torch

from kernelfi.lowering.fastpath import CHANNELS_LAST_AT, maxpool_window


def _darknet_walk(x: torch.Tensor, size: int, stride: int) -> torch.Tensor:
    b, c, h, w = x.shape
    oh, ow = (h - size) // stride + 1, (w - size) // stride + 1
    best = torch.full((b, c, oh, ow), -math.inf)
    for i in range(size):
        for j in range(size):
            val = x[:, :, i:i + stride * (oh - 1) + 1:stride, j:j + stride * (ow - 1) + 1:stride]
            best = torch.where(val > best, val, best)
    return best


def _nasty(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """Normal values with signed zeros in place of the negatives, and NaN / +-inf sprinkled."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g)
    zeros = torch.where(torch.rand(shape, generator=g) < 0.5, -0.0, 0.0)
    x = torch.where(x < 0, zeros, x)
    flat = x.view(-1)
    flat[::53] = math.nan
    flat[::71] = -math.inf
    flat[::89] = math.inf
    return x


@pytest.mark.parametrize(("shape", "size", "stride"), [
    ((1, 64, 57, 57), 3, 2),   # channels-last path (ResNet's stem pool, smaller)
    ((3, 32, 27, 27), 3, 2),   # channels-last path, several lanes
    ((2, 4, 9, 9), 2, 2),      # NCHW path: too few channels
    ((1, 16, 8, 8), 3, 1),     # NCHW path: too few values
])
def test_maxpool_window_is_darknets_walk_bit_for_bit(shape: tuple[int, ...], size: int, stride: int) -> None:
    x = _nasty(shape, seed=sum(shape))
    got = maxpool_window(x, size, stride)
    ref = _darknet_walk(x, size, stride)
    assert got.is_contiguous()
    assert torch.equal(got.view(torch.int32), ref.view(torch.int32))
    channels_last = x.numel() >= CHANNELS_LAST_AT[0] and x.shape[1] >= CHANNELS_LAST_AT[1]
    assert channels_last == (shape[1] >= 32)


def test_all_nan_window_gives_minus_inf_and_first_zero_wins() -> None:
    x = torch.zeros(1, 32, 32, 32)
    x[0, :, :2, :2] = math.nan           # window (0, 0) all NaN
    x[0, :, 2, 2] = -0.0                 # window (1, 1) of stride 2: -0.0 first, then +0.0
    y = maxpool_window(x, 2, 2)
    assert torch.isneginf(y[0, :, 0, 0]).all()
    assert torch.equal(y[0, :, 1, 1].view(torch.int32), torch.full((32,), -0.0).view(torch.int32))


@pytest.mark.parametrize(("shape", "size", "stride", "pad", "ceil"), [
    ((1, 64, 58, 58), 3, 3, 0, (2, 2)),   # channels-last path: ceil_mode stride 3, 20 outputs a side (19 floor)
    ((2, 4, 10, 8), 3, 4, 2, (1, 1)),     # NCHW path: padded, stride 4
    ((1, 16, 11, 9), 2, 5, 0, (0, 1)),    # NCHW path: stride above the kernel, one axis exact
])
def test_ceil_pad_launch_fast_path_is_the_kernel_bit_for_bit(shape: tuple[int, ...], size: int, stride: int,
                                                             pad: int, ceil: tuple[int, int]) -> None:
    # a CEIL_PAD launch (ceil_mode past stride 2): the fused path pads the far side as far as
    # out_h/out_w reach, exactly where the kernel's windows read -inf
    from kernelfi.kernels import get_kernel
    from kernelfi.lowering.fastpath import Unit, run_unit
    from kernelfi.types import Launch, ThreadTemplate

    b, c, h, w = shape
    oh, ow = (h + pad + ceil[0] - size) // stride + 1, (w + pad + ceil[1] - size) // stride + 1
    params = dict(channels=c, height=h, width=w, size=size, stride=stride, pad=pad, out_h=oh, out_w=ow,
                  ceil_pad_h=ceil[0], ceil_pad_w=ceil[1])
    launch = Launch(0, 0, "t", "t", "forward_maxpool", ("x",), ("o", "i"), params,
                    template=ThreadTemplate(threads=0, block=1, slots=()))
    x = _nasty(shape, seed=sum(shape)).reshape(b, -1)
    kernel, fast = {"x": x}, {"x": x}
    get_kernel("forward_maxpool").run(kernel, launch)
    assert run_unit(Unit("maxpool", 0, 1, (launch,)), fast)
    assert fast["o"].shape == (b, c, oh, ow)
    assert torch.equal(fast["o"].reshape(b, -1).view(torch.int32), kernel["o"].reshape(b, -1).view(torch.int32))
