"""PyTorch's strided copy for a channel shuffle: ``channel_shuffle`` (ShuffleNet's
``x.view(b, g, c//g, h, w).transpose(1, 2).contiguous().view(b, c, h, w)`` and
``nn.ChannelShuffle(g)``), and for a pixel shuffle: ``pixel_shuffle`` (``nn.PixelShuffle(r)``,
``nn.PixelUnshuffle(r)``, their ``F.`` forms).

The views and the transpose launch nothing; the ``.contiguous()`` (or the ``reshape`` of the
transposed view) launches the elementwise copy kernel over a TensorIterator whose input has the
permuted strides. One thread per output element splits its index over the output's coalesced
dims (H*W, g, C/g: the OffsetCalculator's divmods) and sums each index times the input's stride
of that dim: output channel ``co = j*g + i`` reads input channel ``i*(C/g) + j``.

PyTorch CUDA computes ``pixel_shuffle`` as a view of the (C*r*r, H, W) input as (C, r, r, H, W),
a permute to (C, H, r, W, r) and the same contiguous copy: no two of the output's dims coalesce
(their input strides do not chain), so a thread makes four divmods (dx, x, dy, y; the quotient is
c) and sums five index * stride terms; ``pixel_unshuffle`` is the inverse permute of the
(C, H, r, W, r) view of the (C, H*r, W*r) input, its output dims (x, y, dx, dy, c).

``reflection_pad2d`` and ``replication_pad2d`` are PyTorch's ``reflection_pad2d_out_kernel`` and
``replication_pad_forward_kernel2d``: one thread per output element of a plane (the plane is
``blockIdx.y``, no division), the output's (x, y) from one divmod by the output width, the input's
by index arithmetic: reflect ``ix = |ox - l| - |ox - (W + l - 1)| - ox + l + W - 1``, replicate
``ix = min(max(ox, l), W + l - 1) - l`` (rows alike). kernelfi numbers the threads flat over
(C, OH*OW): the plane and the position in it are the thread's block coordinates.
"""
from __future__ import annotations

from typing import Any, ClassVar, Mapping

import torch

from kernelfi._utils import KernelfiError
from kernelfi.types import AddressHalf, Launch

from ._base import lane_flat, p_int, put, ptxas_registers, register_kernel
from ._sass import Stream, StreamKernel, addr, epilogue, idiv, prologue_1d
from .pointwise import PAD_KEYS

Mem = dict[str, torch.Tensor]


def copy_registers(s: Stream, out_first: str) -> Stream:
    """The registers every copy kernel here ends with: the input address (formed from
    ``imad:off_in``), the loaded value, the output address (from ``out_first``), the bounds
    predicate."""
    s.reg("r_in_lo", "address", "lea:addr_in", "imad:off_in", "ld:in")
    s.reg("r_in_hi", "address", "lea:addr_in", "lea:addr_in", "ld:in", half=AddressHalf.HIGH)
    s.reg("r_v", "data", "ld:in", "ld:in", "st:out")
    s.reg("r_out_lo", "address", "lea:addr_out", out_first, "st:out")
    s.reg("r_out_hi", "address", "lea:addr_out", "lea:addr_out", "st:out", half=AddressHalf.HIGH)
    s.reg("p_bounds", "predicate", "setp:bounds", "setp:bounds", "bra:exit")
    return s


def shuffle_geometry(params: Mapping[str, Any]) -> tuple[int, int, int]:
    """(C, g, H*W) of a ``channel_shuffle`` launch; g must divide C."""
    c, g, hw = (p_int(params, k, "channel_shuffle") for k in ("channels", "groups", "spatial"))
    if g < 1 or c % g:
        raise KernelfiError(f"channel_shuffle: groups {g} do not divide {c} channels")
    return c, g, hw


def shuffle_source(co: int, c: int, g: int) -> int:
    """The input channel output channel ``co`` copies: co = j*g + i reads i*(C/g) + j."""
    return (co % g) * (c // g) + co // g


@register_kernel
class ChannelShuffleKernel(StreamKernel):
    """out[j*g + i, s] = in[i*(C/g) + j, s]: the copy of the transposed (g, C/g) view."""

    name: ClassVar[str] = "channel_shuffle"
    regs_allocated: ClassVar[int] = ptxas_registers("channel_shuffle")
    example_params = ({"channels": 4, "groups": 2, "spatial": 1},)

    def run(self, mem: Mem, launch: Launch) -> None:
        c, g, hw = shuffle_geometry(launch.params)
        x = lane_flat(mem, launch.reads[0], c * hw, self.name)[:, :c * hw]
        lanes = x.shape[0]
        y = x.reshape(lanes, g, c // g, hw).transpose(1, 2).reshape(lanes, c * hw)
        put(mem, launch.writes[0], y.contiguous())

    def _threads(self, params: Mapping[str, Any]) -> int:
        c, _, hw = shuffle_geometry(params)
        return c * hw

    def _stream(self, params: Mapping[str, Any]) -> Stream:
        s = Stream()
        prologue_1d(s, "output element i")
        idiv(s, "hw", "i / (H*W)", mod="s = i % (H*W), the position in the map")
        idiv(s, "g", "co / g", mod="the group i = co % g (co = i / (H*W) the output channel; the quotient is j)")
        s.add("GPR", "XMAD", "imad:off_in", 2, "index",
              "source offset s + i*(C/g)*H*W + j*H*W (the permuted strides): a flip reads another element")
        addr(s, "in", "in[off_in]")
        s.add("LD", "LDG", "ld:in", 1, "value", "the input element, the output's value")
        addr(s, "out", "out[i]")
        s.add("NODEST", "STG", "st:out", 1, "store", "stores the output element")
        epilogue(s)
        s.reg("r_id", "index", "imad:index", "imad:index", "lea:addr_out")
        s.reg("r_q", "index", "idiv:hw", "idiv:hw", "imod:g")
        s.reg("r_s", "index", "imod:hw", "imod:hw", "imad:off_in")
        s.reg("r_j", "index", "idiv:g", "idiv:g", "imad:off_in")
        s.reg("r_i", "index", "imod:g", "imod:g", "imad:off_in")
        return copy_registers(s, "lea:addr_out")


def pixel_geometry(params: Mapping[str, Any]) -> tuple[tuple[int, int, int], int, bool]:
    """((C, H, W) of the input, r, inverse) of a ``pixel_shuffle`` launch."""
    c, h, w, r = (p_int(params, k, "pixel_shuffle") for k in ("channels", "height", "width", "factor"))
    inverse = bool(params.get("inverse", False))
    if r < 1 or (not inverse and c % (r * r)) or (inverse and (h % r or w % r)):
        raise KernelfiError(f"pixel_shuffle: factor {r} does not fit a {c}x{h}x{w} input "
                            f"({'H and W' if inverse else 'C'} must divide by {'r' if inverse else 'r*r'})")
    return (c, h, w), r, inverse


def pixel_dims(params: Mapping[str, Any]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The output's dims innermost first (four sizes; the fifth, outermost, is the quotient) and
    the input's stride of each of the five: the OffsetCalculator's kernel arguments."""
    (c, h, w), r, inverse = pixel_geometry(params)
    if not inverse:  # out (C/r^2, H*r, W*r) = in viewed (C/r^2, r, r, H, W) permuted to (c, y, dy, x, dx)
        return (r, w, r, h), (h * w, 1, r * h * w, w, r * r * h * w)
    oh, ow = h // r, w // r  # out (C*r^2, H/r, W/r) = in viewed (C, H/r, r, W/r, r) permuted to (c, dy, dx, y, x)
    return (ow, oh, r, r), (r, r * w, 1, w, h * w)


def pixel_out_shape(params: Mapping[str, Any]) -> tuple[int, int, int]:
    (c, h, w), r, inverse = pixel_geometry(params)
    return (c * r * r, h // r, w // r) if inverse else (c // (r * r), h * r, w * r)


def pixel_source(i: int, params: Mapping[str, Any]) -> int:
    """The input offset output element ``i`` copies (the divmods and the stride sum)."""
    sizes, strides = pixel_dims(params)
    off = 0
    for d, st in zip(sizes, strides):
        i, k = divmod(i, d)
        off += k * st
    return off + i * strides[-1]


@register_kernel
class PixelShuffleKernel(StreamKernel):
    """out = the contiguous copy of the input's (C, r, r, H, W) view permuted to (C, H, r, W, r)
    (``inverse``: of its (C, H/r, r, W/r, r) view permuted to (C, r, r, H/r, W/r))."""

    name: ClassVar[str] = "pixel_shuffle"
    regs_allocated: ClassVar[int] = ptxas_registers("pixel_shuffle")
    example_params = ({"channels": 4, "height": 1, "width": 1, "factor": 2},
                      {"channels": 1, "height": 2, "width": 2, "factor": 2, "inverse": True})

    def run(self, mem: Mem, launch: Launch) -> None:
        (c, h, w), r, inverse = pixel_geometry(launch.params)
        x = lane_flat(mem, launch.reads[0], c * h * w, self.name)[:, :c * h * w]
        lanes = x.shape[0]
        if inverse:
            y = x.reshape(lanes, c, h // r, r, w // r, r).permute(0, 1, 3, 5, 2, 4)
        else:
            y = x.reshape(lanes, c // (r * r), r, r, h, w).permute(0, 1, 4, 2, 5, 3)
        put(mem, launch.writes[0], y.reshape(lanes, c * h * w).contiguous(), pixel_out_shape(launch.params))

    def _threads(self, params: Mapping[str, Any]) -> int:
        (c, h, w), _, _ = pixel_geometry(params)
        return c * h * w

    def _stream(self, params: Mapping[str, Any]) -> Stream:
        inverse = bool(params.get("inverse", False))
        names = ("x", "y", "dx", "dy") if inverse else ("dx", "x", "dy", "y")
        s = Stream()
        prologue_1d(s, "output element i")
        for k, d in enumerate(names):
            idiv(s, f"d{k}", f"dim {k} of the output ({d}: its size a kernel argument)",
                 mod=f"{d}, this thread's index along it")
        s.add("GPR", "XMAD", "imad:off_in", 5, "index", "source offset: the sum of each index times the "
              "input's stride of its dim (the quotient is c): a flip reads another element")
        addr(s, "in", "in[off_in]")
        s.add("LD", "LDG", "ld:in", 1, "value", "the input element, the output's value")
        addr(s, "out", "out[i]")
        s.add("NODEST", "STG", "st:out", 1, "store", "stores the output element")
        epilogue(s)
        s.reg("r_id", "index", "imad:index", "imad:index", "lea:addr_out")
        s.reg("r_q", "index", "idiv:d0", "idiv:d3", "imad:off_in")  # the running quotient, c at the end
        for k in range(4):
            s.reg(f"r_k{k}", "index", f"imod:d{k}", f"imod:d{k}", "imad:off_in")
        return copy_registers(s, "lea:addr_out")


#: padding mode -> kernel.
PAD2D_KERNELS: dict[str, str] = {"reflect": "reflection_pad2d", "replicate": "replication_pad2d"}


def pad2d_geometry(params: Mapping[str, Any], kernel: str) -> tuple[int, ...]:
    """(C, H, W, top, left, OH, OW) of a reflect/replicate pad; pads >= 0 (reflect: < the extent)."""
    g = tuple(p_int(params, k, kernel) for k in PAD_KEYS)  # constant_pad's geometry params
    c, h, w, top, left, oh, ow = g
    bottom, right = oh - h - top, ow - w - left
    if min(top, left, bottom, right) < 0 or min(h, w) < 1:
        raise KernelfiError(f"{kernel}: pads must be >= 0 (top {top}, left {left}, {h}x{w} -> {oh}x{ow})")
    if kernel == "reflection_pad2d" and (max(top, bottom) >= h or max(left, right) >= w):
        raise KernelfiError(f"{kernel}: reflect pads must be smaller than the input ({h}x{w}, pads "
                            f"{(left, right, top, bottom)})")
    return g


def pad2d_source(kernel: str, o: int, pad: int, n: int) -> int:
    """The input row/column output row/column ``o`` copies (pad ``pad`` before an extent ``n``)."""
    if kernel == "reflection_pad2d":
        return abs(o - pad) - abs(o - (n + pad - 1)) - o + pad + n - 1
    return min(max(o, pad), n + pad - 1) - pad


class _Pad2dKernel(StreamKernel):
    """out[c, oy, ox] = in[c, iy(oy), ix(ox)] with PyTorch's reflect/replicate index maps."""

    name: ClassVar[str]

    def run(self, mem: Mem, launch: Launch) -> None:
        c, h, w, top, left, oh, ow = pad2d_geometry(launch.params, self.name)
        x = lane_flat(mem, launch.reads[0], c * h * w, self.name)[:, :c * h * w].reshape(-1, c, h, w)
        iy = torch.tensor([pad2d_source(self.name, o, top, h) for o in range(oh)], device=x.device)
        ix = torch.tensor([pad2d_source(self.name, o, left, w) for o in range(ow)], device=x.device)
        y = x[:, :, iy][:, :, :, ix]
        put(mem, launch.writes[0], y.reshape(y.shape[0], -1).contiguous(), (c, oh, ow))

    def _threads(self, params: Mapping[str, Any]) -> int:
        c, _, _, _, _, oh, ow = pad2d_geometry(params, self.name)
        return c * oh * ow

    def _stream(self, params: Mapping[str, Any]) -> Stream:
        reflect = self.name == "reflection_pad2d"
        s = Stream()
        prologue_1d(s, "output element i (the plane is blockIdx.y)")
        idiv(s, "w", "xy / out_w", mod="ox = xy % out_w (the quotient is oy)")
        if reflect:
            s.add("GPR", "IADD", "iadd:reflect", 4, "index", "ox - l, ox - (W + l - 1) and the rows' (oy - t, oy - (H + t - 1))")
            s.add("GPR", "IABS", "iabs:reflect", 4, "index", "their absolute values: a flip reflects to another element")
            s.add("GPR", "IADD3", "iadd:in_xy", 2, "index", "ix = |ox-l| - |ox-(W+l-1)| - ox + l + W - 1 and iy alike")
        else:
            s.add("GPR", "IMNMX", "imnmx:clamp", 4, "index", "max(ox, l), min(., W + l - 1) and the rows' alike: "
                  "a flip replicates another element")
            s.add("GPR", "IADD", "iadd:in_xy", 2, "index", "ix = the clamped column - l, iy = the clamped row - t")
        s.add("GPR", "XMAD", "imad:off_in", 2, "index", "input offset (plane*H + iy)*W + ix: a flip reads another element")
        addr(s, "in", "in[off_in]")
        s.add("LD", "LDG", "ld:in", 1, "value", "the input element, the output's value")
        s.add("GPR", "XMAD", "imad:off_out", 2, "index", "output offset (plane*OH + oy)*OW + ox: a flip writes "
              "another element")
        addr(s, "out", "out[off_out]")
        s.add("NODEST", "STG", "st:out", 1, "store", "stores the output element")
        epilogue(s)
        first = "iadd:reflect" if reflect else "imnmx:clamp"
        s.reg("r_id", "index", "imad:index", "imad:index", "idiv:w")
        s.reg("r_oy", "index", "idiv:w", "idiv:w", "imad:off_out")
        s.reg("r_ox", "index", "imod:w", "imod:w", "imad:off_out")
        s.reg("r_a", "index", first, first, "iadd:in_xy")
        s.reg("r_b", "index", "iabs:reflect" if reflect else first, "iabs:reflect" if reflect else first, "iadd:in_xy")
        # ptxas (11 registers): ix and iy land in the registers of the terms they sum
        s.reg("r_a", "index", "iadd:in_xy", "iadd:in_xy", "imad:off_in")
        s.reg("r_b", "index", "iadd:in_xy", "iadd:in_xy", "imad:off_in")
        return copy_registers(s, "imad:off_out")


@register_kernel
class ReflectionPad2dKernel(_Pad2dKernel):
    """PyTorch's ``reflection_pad2d_out_kernel`` (``F.pad`` reflect, ``nn.ReflectionPad2d``)."""

    name: ClassVar[str] = "reflection_pad2d"
    regs_allocated: ClassVar[int] = ptxas_registers("reflection_pad2d")
    example_params = ({"channels": 1, "height": 2, "width": 2, "top": 1, "left": 1, "out_h": 4, "out_w": 4},)


@register_kernel
class ReplicationPad2dKernel(_Pad2dKernel):
    """PyTorch's ``replication_pad_forward_kernel2d`` (``F.pad`` replicate, ``nn.ReplicationPad2d``)."""

    name: ClassVar[str] = "replication_pad2d"
    regs_allocated: ClassVar[int] = ptxas_registers("replication_pad2d")
    example_params = ({"channels": 1, "height": 2, "width": 2, "top": 1, "left": 1, "out_h": 4, "out_w": 4},)
