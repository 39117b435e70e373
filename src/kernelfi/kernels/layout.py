"""PyTorch's strided copy for a channel shuffle: ``channel_shuffle`` (ShuffleNet's
``x.view(b, g, c//g, h, w).transpose(1, 2).contiguous().view(b, c, h, w)`` and
``nn.ChannelShuffle(g)``).

The views and the transpose launch nothing; the ``.contiguous()`` (or the ``reshape`` of the
transposed view) launches the elementwise copy kernel over a TensorIterator whose input has the
permuted strides. One thread per output element splits its index over the output's coalesced
dims (H*W, g, C/g: the OffsetCalculator's divmods) and sums each index times the input's stride
of that dim: output channel ``co = j*g + i`` reads input channel ``i*(C/g) + j``.
"""
from __future__ import annotations

from typing import Any, ClassVar, Mapping

import torch

from kernelfi._utils import KernelfiError
from kernelfi.types import AddressHalf, Launch

from ._base import lane_flat, p_int, put, ptxas_registers, register_kernel
from ._sass import Stream, StreamKernel, addr, epilogue, idiv, prologue_1d

Mem = dict[str, torch.Tensor]


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
        s.reg("r_in_lo", "address", "lea:addr_in", "imad:off_in", "ld:in")
        s.reg("r_in_hi", "address", "lea:addr_in", "lea:addr_in", "ld:in", half=AddressHalf.HIGH)
        s.reg("r_v", "data", "ld:in", "ld:in", "st:out")
        s.reg("r_out_lo", "address", "lea:addr_out", "lea:addr_out", "st:out")
        s.reg("r_out_hi", "address", "lea:addr_out", "lea:addr_out", "st:out", half=AddressHalf.HIGH)
        s.reg("p_bounds", "predicate", "setp:bounds", "setp:bounds", "bra:exit")
        return s
