"""Exact bit-level corruption of float32 and int32 values (SASSIFI's bit-flip models).

Flips act on the raw IEEE-754 bits, never through arithmetic, so a flip of bit 30 of 1.0 gives
exactly 2**128 -> inf and a flip of bit 31 exactly negates. Values are carried as Python floats
(exact for float32) or as tensors viewed as int32.
"""
from __future__ import annotations

import struct
from typing import Any

import numpy as np
import torch

from kernelfi._utils import KernelfiError
from kernelfi.types import BitModel


def f32_bits(x: float) -> int:
    """Raw bits of a float32 as an unsigned int."""
    return struct.unpack("<I", struct.pack("<f", np.float32(x)))[0]


def bits_f32(u: int) -> float:
    """float32 whose raw bits are ``u`` (as a Python float, exact)."""
    return float(struct.unpack("<f", struct.pack("<I", int(u) & 0xFFFFFFFF))[0])


def word32(v: Any) -> int:
    """The 32-bit word a register holding ``v`` stores (unsigned): an int32's two's-complement
    bits (an index wider than 32 bits keeps its low 32, as the register does), a float32's
    IEEE-754 bits, read as they are (no round trip through a double)."""
    if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
        return int(v) & 0xFFFFFFFF
    return int(np.float32(v).view(np.uint32))


def signed32(u: int) -> int:
    """The int32 whose bits are the low 32 of ``u``."""
    u = int(u) & 0xFFFFFFFF
    return u - (1 << 32) if u >= 1 << 31 else u


def corrupt_pattern(u: int, bit_model: str, bits: tuple[int, ...], value: int | None, width: int = 32) -> int:
    """Apply a bit model to a raw ``width``-bit pattern (unsigned)."""
    mask = (1 << width) - 1
    bm = BitModel(bit_model)
    if bm is BitModel.NONE:
        return u & mask
    if bm in (BitModel.SINGLE, BitModel.DOUBLE):
        for b in bits:
            if not 0 <= b < width:
                raise KernelfiError(f"bit {b} is outside a {width}-bit value")
            u ^= 1 << b
        return u & mask
    if bm is BitModel.RANDOM:
        if value is None:
            raise KernelfiError("the random-value model needs a drawn value")
        return int(value) & mask
    if bm is BitModel.ZERO:
        return 0
    raise KernelfiError(f"unknown bit model '{bit_model}'")  # pragma: no cover


def corrupt_f32(x: float, bit_model: str, bits: tuple[int, ...], value: int | None) -> float:
    """The float32 ``x`` after the bit model."""
    return bits_f32(corrupt_pattern(f32_bits(x), bit_model, bits, value))


def corrupt_i32(x: int, bit_model: str, bits: tuple[int, ...], value: int | None) -> int:
    """A signed 32-bit integer (index, address offset, counter) after the bit model."""
    return signed32(corrupt_pattern(int(x) & 0xFFFFFFFF, bit_model, bits, value))


def corrupt_tensor(t: torch.Tensor, bit_model: str, bits: tuple[int, ...], value: int | None) -> torch.Tensor:
    """Element-wise bit model on a float32 or int32 tensor (a new tensor)."""
    if t.dtype == torch.float32:
        raw = t.contiguous().view(torch.int32)
    elif t.dtype == torch.int32:
        raw = t.contiguous()
    else:
        raise KernelfiError(f"cannot corrupt a {t.dtype} tensor bit-exactly")
    bm = BitModel(bit_model)
    if bm is BitModel.NONE:
        out = raw.clone()
    elif bm in (BitModel.SINGLE, BitModel.DOUBLE):
        m = 0
        for b in bits:
            m ^= 1 << b
        m = m - (1 << 32) if m >= 1 << 31 else m
        out = torch.bitwise_xor(raw, torch.tensor(m, dtype=torch.int32))
    elif bm is BitModel.RANDOM:
        v = int(value or 0) & 0xFFFFFFFF
        v = v - (1 << 32) if v >= 1 << 31 else v
        out = torch.full_like(raw, v)
    else:
        out = torch.zeros_like(raw)
    return out.view(torch.float32) if t.dtype == torch.float32 else out


def draw_bits(rng: np.random.Generator, bit_model: str, width: int = 32) -> tuple[tuple[int, ...], int | None]:
    """Draw the bit positions (or the random value) a bit model needs, from ``rng``."""
    bm = BitModel(bit_model)
    if bm is BitModel.SINGLE:
        return (int(rng.integers(0, width)),), None
    if bm is BitModel.DOUBLE:
        b = int(rng.integers(0, width - 1))
        return (b, b + 1), None
    if bm is BitModel.RANDOM:
        return (), int(rng.integers(0, 1 << width, dtype=np.uint64))
    return (), None
