"""Scalar access to one gemm launch's operands and the SGEMM's float32 re-sums, for the fault
effects of ``faults/gemm.py`` (an output is re-summed from its product terms, from zero, and
C is added as the epilogue does)."""
from __future__ import annotations

from typing import Any, Callable, Mapping

import numpy as np

from kernelfi.faults.memmap import MemoryMap
from kernelfi.faults.replay import F32
from kernelfi.kernels import SgemmShape, sgemm_shape

Writes = dict[tuple[str, int], Any]
Out = tuple[int, int]

class GemmView:
    """Scalar access to a gemm launch's operands for one lane (pre-kernel values)."""

    def __init__(self, params: Mapping[str, Any], names: tuple[str, str, str], read: Callable[[str, int], Any],
                 memmap: MemoryMap, gather: Callable[[str, np.ndarray], np.ndarray]) -> None:
        self.M, self.N, self.K = int(params["M"]), int(params["N"]), int(params["K"])
        self.ta, self.tb = bool(params.get("trans_a")), bool(params.get("trans_b"))
        self.ao, self.bo, self.co = (int(params.get(k, 0)) for k in ("a_offset", "b_offset", "c_offset"))
        self.A, self.B, self.C = names
        self.read, self.memmap, self.gather = read, memmap, gather
        self.shape: SgemmShape = sgemm_shape(params)

    def a_index(self, r: int, k: int) -> int:
        return self.ao + (k * self.M + r if self.ta else r * self.K + k)

    def b_index(self, k: int, c: int) -> int:
        return self.bo + (c * self.K + k if self.tb else k * self.N + c)

    def c_index(self, r: int, c: int) -> int:
        return self.co + r * self.N + c

    def row(self, r: int) -> np.ndarray:
        ks = np.arange(self.K)
        return self.gather(self.A, self.ao + (ks * self.M + r if self.ta else r * self.K + ks)).astype(np.float32)

    def col(self, c: int) -> np.ndarray:
        ks = np.arange(self.K)
        return self.gather(self.B, self.bo + (c * self.K + ks if self.tb else ks * self.N + c)).astype(np.float32)

    def a(self, r: int, k: int) -> np.float32:
        return F32(self.read(self.A, self.a_index(r, k))) if r < self.M and 0 <= k < self.K else F32(0.0)

    def b(self, k: int, c: int) -> np.float32:
        return F32(self.read(self.B, self.b_index(k, c))) if c < self.N and 0 <= k < self.K else F32(0.0)

    def at(self, address: int) -> Any:
        loc = self.memmap.resolve(address)
        return F32(0.0) if loc is None else self.read(*loc)

    def inside(self, r: int, c: int) -> bool:
        return 0 <= r < self.M and 0 <= c < self.N


def accumulate(start: float, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Partial sums start + Σ_{j<=k} a_j b_j in float32 (index k+1; index 0 is ``start``)."""
    with np.errstate(all="ignore"):
        terms = np.concatenate([[np.float32(start)], (a.astype(np.float64) * b.astype(np.float64)).astype(np.float32)])
        return np.add.accumulate(terms, dtype=np.float32)


def final(acc: float, c0: float) -> np.float32:
    """The epilogue: alpha·acc + beta·C with alpha = beta = 1."""
    with np.errstate(all="ignore"):
        return F32(np.float32(acc) + np.float32(c0))
