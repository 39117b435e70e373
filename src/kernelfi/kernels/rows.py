"""A few rows times a connected layer's weights at a GEMV's cost, with the padded SGEMM's values.

``conv.rows_linear`` pads a batch of lanes to the row policy (16 rows on the AVX-512 Xeon) so
that every lane gets the same value in any batch; at one lane (a plain forward, a golden run of
one input) that SGEMM multiplies fifteen rows of zeros: 3-4x the time of the one row's GEMV on
AlexNet's 9216x4096 layer. oneMKL's SGEMM computes each element in a fixed order: K cut into
blocks (of 192 on that Xeon, halves of K between 192 and 384, one block up to 192), each block
one chain of fused multiply-adds in increasing k from zero, the block sums added in order.
``rows.c`` computes exactly that chain, reading the weights once. Where it is used is decided
per weight shape and thread count by a self-check against the padded call it replaces (seeded
random rows, every value bit for bit, for each candidate block rule in turn), as the row policy
itself is: a machine whose SGEMM sums in another order keeps the padded call, so values never
depend on whether the C path exists (``KERNELFI_NATIVE=0``, no compiler).
"""
from __future__ import annotations

import ctypes
import threading
from pathlib import Path
from typing import Callable

import torch

from kernelfi._utils import build_c_library

#: The most rows one call of the C path takes (``KF_MAXB`` in rows.c); bigger batches are
#: GEMMs worth their padding.
MAX_ROWS = 8
#: Block lengths tried, in order, as the ``kc`` of MKL's K blocking (192: AVX-512 SGEMM).
BLOCKS: tuple[int, ...] = (192, 128, 256, 384, 96, 64)

_SOURCE = (Path(__file__).parent / "rows.c").read_text()
_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_tried = False
#: (N, K, threads, dtype) -> the block length whose chains equal the padded call, or None
_checked: dict[tuple[int, int, int, torch.dtype], int | None] = {}


def _library() -> ctypes.CDLL | None:
    global _lib, _tried
    if not _tried:
        with _lock:
            if not _tried:
                lib = build_c_library("rows", _SOURCE)
                if lib is not None:
                    i64, ptr = ctypes.c_int64, ctypes.c_void_p
                    lib.kf_rows_linear.argtypes = [ptr, i64, ptr, i64, i64, i64, ptr, ctypes.c_int]
                    lib.kf_rows_linear.restype = None
                _lib, _tried = lib, True
    return _lib


def block_length(k: int, base: int) -> int:
    """MKL's K block for a reduction of ``k`` under a block size ``base``: one block up to
    ``base``, two halves (and the odd one left over) below two blocks, else ``base``."""
    if k <= base:
        return k
    return k // 2 if k < 2 * base else base


def _call(lib: ctypes.CDLL, x: torch.Tensor, w: torch.Tensor, kc: int) -> torch.Tensor:
    b, (n, k) = x.shape[0], w.shape
    y = torch.empty(b, n, dtype=torch.float32)
    lib.kf_rows_linear(x.data_ptr(), b, w.data_ptr(), n, k, kc, y.data_ptr(), torch.get_num_threads())
    return y


def chained_rows(x: torch.Tensor, w: torch.Tensor,
                 padded_call: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor | None:
    """``padded_call(x)`` (x (B, K) times w (N, K) transposed, as the row policy computes it)
    from the C chains, or None where they do not apply: more than ``MAX_ROWS`` rows, not
    contiguous float32 CPU tensors, no library, or chains that this machine's SGEMM does not
    follow for this shape (found once, by calling ``padded_call`` on seeded random rows)."""
    if (x.shape[0] > MAX_ROWS or x.dtype != torch.float32 or w.dtype != torch.float32 or x.device.type != "cpu"
            or w.device.type != "cpu" or not x.is_contiguous() or not w.is_contiguous() or w.dim() != 2):
        return None
    lib = _library()
    if lib is None:
        return None
    n, k = w.shape
    key = (n, k, torch.get_num_threads(), w.dtype)
    if key not in _checked:
        g = torch.Generator().manual_seed(0)
        probe = torch.randn(MAX_ROWS, k, generator=g)
        refs = [(probe, padded_call(probe)), (probe[:1], padded_call(probe[:1]))]
        found = None
        for kc in dict.fromkeys(block_length(k, base) for base in BLOCKS):
            if all(torch.equal(_call(lib, rows.contiguous(), w, kc), ref) for rows, ref in refs):
                found = kc
                break
        _checked[key] = found
    kc = _checked[key]
    return None if kc is None else _call(lib, x, w, kc)
