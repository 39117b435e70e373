"""What a launch must move to and from DRAM, and the shared memory its blocks hold.

Cache-reuse assumption (docs/hardening.md, "GPU time model"): within a launch every operand
element crosses DRAM once (perfect reuse in registers, shared memory and L1/L2: a tiled gemm
reads A, B and C once and writes C once); between launches nothing is reused (every launch
starts from DRAM, even when its input was written by the launch before and would still be in
L2). Only the elements a launch touches count, from its parameters: the im2col workspace is
sized for the largest layer, a route copy writes a slice, a voter reads its range.

A kernel without an entry here (a kernel registered by a user) moves its buffers whole: each
read buffer once and each written buffer once. Every kernelfi buffer is 32-bit (float32 or
int32), so elements are 4 bytes.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, TypeVar

from kernelfi._utils import KernelfiError
from kernelfi.kernels import gemm_shared_bytes
from kernelfi.types import Launch, Trace

#: Bytes of one buffer element (every kernelfi buffer is float32 or int32).
ELEMENT = 4

Footprint = Callable[[Mapping[str, Any]], tuple[int, int]]   # params -> (elements read, written)
_FOOTPRINTS: dict[str, Footprint] = {}
F = TypeVar("F", bound=Footprint)


def footprint(*kernels: str) -> Callable[[F], F]:
    """Decorator: register the DRAM footprint of kernels (refuses a kernel registered twice)."""
    def deco(fn: F) -> F:
        for k in kernels:
            if k in _FOOTPRINTS:
                raise KernelfiError(f"gputime: kernel '{k}' already has a DRAM footprint")
            _FOOTPRINTS[k] = fn
        return fn
    return deco


def _i(p: Mapping[str, Any], key: str, default: int | None = None) -> int:
    if key not in p and default is not None:
        return default
    try:
        return int(p[key])
    except (KeyError, TypeError, ValueError):
        raise KernelfiError(f"gputime: launch parameter '{key}' is missing or not an integer") from None


@footprint("fill")
def _fill(p: Mapping[str, Any]) -> tuple[int, int]:
    return 0, _i(p, "n")


@footprint("copy", "activate_array", "range_clamp", "softmax")
def _stream(p: Mapping[str, Any]) -> tuple[int, int]:
    n = _i(p, "n")
    return n, n


@footprint("shortcut")
def _shortcut(p: Mapping[str, Any]) -> tuple[int, int]:
    n = _i(p, "n")
    return 2 * n, n


@footprint("add_bias", "scale_bias")
def _bias(p: Mapping[str, Any]) -> tuple[int, int]:
    c, sp = _i(p, "channels"), _i(p, "spatial")
    return c * sp + c, c * sp


@footprint("normalize")
def _normalize(p: Mapping[str, Any]) -> tuple[int, int]:
    c, sp = _i(p, "channels"), _i(p, "spatial")
    return c * sp + 2 * c, c * sp


@footprint("forward_maxpool")
def _maxpool(p: Mapping[str, Any]) -> tuple[int, int]:
    c = _i(p, "channels")
    return c * _i(p, "height") * _i(p, "width"), 2 * c * _i(p, "out_h") * _i(p, "out_w")  # output + indexes


@footprint("forward_avgpool")
def _avgpool(p: Mapping[str, Any]) -> tuple[int, int]:
    c = _i(p, "channels")
    return c * _i(p, "height") * _i(p, "width"), c


def _image(g: Mapping[str, Any]) -> int:
    """Elements of the image an im2col (or a virtual one) reads: its group's channels."""
    return _i(g, "group_channels", _i(g, "channels")) * _i(g, "height") * _i(g, "width")


@footprint("im2col")
def _im2col(p: Mapping[str, Any]) -> tuple[int, int]:
    k = _i(p, "ksize")
    return _image(p), _i(p, "group_channels", _i(p, "channels")) * k * _i(p, "ksize_w", k) * _i(p, "out_h") * _i(p, "out_w")


def _mnk(p: Mapping[str, Any]) -> tuple[int, int, int]:
    return _i(p, "M"), _i(p, "N"), _i(p, "K")


def _b_elements(p: Mapping[str, Any]) -> int:
    """B's footprint: K×N, or the image when the ABFT kernels read B virtually."""
    _, n, k = _mnk(p)
    geo = p.get("im2col")
    return _image(geo) if isinstance(geo, Mapping) else k * n


@footprint("gemm")
def _gemm(p: Mapping[str, Any]) -> tuple[int, int]:
    m, n, k = _mnk(p)
    return m * k + k * n + m * n, m * n    # C is read too (beta = 1)


@footprint("abft_vectors")
def _abft_vectors(p: Mapping[str, Any]) -> tuple[int, int]:
    m, _, k = _mnk(p)
    return m * k + _b_elements(p), 4 * k


@footprint("abft_checksum")
def _abft_checksum(p: Mapping[str, Any]) -> tuple[int, int]:
    m, n, k = _mnk(p)
    return m * k + _b_elements(p) + 4 * k, 2 * (m + n)


@footprint("abft_check")
def _abft_check(p: Mapping[str, Any]) -> tuple[int, int]:
    m, n, _ = _mnk(p)
    return m * n + 2 * (m + n), m + n


@footprint("abft_correct")
def _abft_correct(p: Mapping[str, Any]) -> tuple[int, int]:
    m, n, k = _mnk(p)       # when it runs: the flags, one row of A and one column of B, one element
    return m + n + 2 * k, 1


@footprint("tmr_vote")
def _vote(p: Mapping[str, Any]) -> tuple[int, int]:
    n = _i(p, "n")
    return 3 * n, n


@footprint("dmr_compare")
def _compare(p: Mapping[str, Any]) -> tuple[int, int]:
    n = _i(p, "n")
    return 2 * n, n          # the re-execution's copy is read only on a mismatch


def dram_bytes(launch: Launch, trace: Trace) -> tuple[int, int]:
    """(bytes read, bytes written) of one launch under the assumption above."""
    fn = _FOOTPRINTS.get(launch.kernel)
    if fn is not None:
        r, w = fn(launch.params)
    else:
        r = sum(trace.buffer(b).numel for b in dict.fromkeys(launch.reads))
        w = sum(trace.buffer(b).numel for b in dict.fromkeys(launch.writes))
    return ELEMENT * r, ELEMENT * w


def shared_bytes(launch: Launch) -> int:
    """Shared memory one block of the launch holds: the SGEMM's two buffers of A and B lines, else 0."""
    return gemm_shared_bytes(launch.params) if launch.kernel == "gemm" else 0
