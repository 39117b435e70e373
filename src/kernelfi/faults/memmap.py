"""A simulated device memory map of one inference (docs/method.md §2, IOA).

Buffers are laid out in the trace's allocation order from a cudaMalloc-like base, each start
aligned to 256 bytes (cudaMalloc's minimum alignment), 4-byte elements. A corrupted address
resolves to (buffer, element) when it falls inside a buffer, to padding (harmless: the bytes
between allocations are mapped) when it falls in an alignment gap, and to an illegal or
misaligned address (a crash: DUE) otherwise.
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass

from kernelfi.types import Trace

BASE = 0x13_0000_0000  # a typical first device allocation on Linux/CUDA
ALIGN = 256
ELEM = 4


class Crash(Exception):
    """Illegal or misaligned device address: the kernel aborts (DUE).

    ``kind`` is the flag stored with the injection: ``illegal_address``,
    ``misaligned_address`` or ``shared_out_of_range``.
    """

    def __init__(self, message: str, kind: str = "illegal_address") -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class MemoryMap:
    names: tuple[str, ...]
    starts: tuple[int, ...]
    sizes: tuple[int, ...]  # elements

    @classmethod
    def from_trace(cls, trace: Trace) -> "MemoryMap":
        names, starts, sizes = [], [], []
        addr = BASE
        for b in trace.buffers:
            names.append(b.name)
            starts.append(addr)
            sizes.append(b.numel)
            addr += b.numel * ELEM
            addr = (addr + ALIGN - 1) // ALIGN * ALIGN
        return cls(tuple(names), tuple(starts), tuple(sizes))

    @property
    def end(self) -> int:
        return self.starts[-1] + self.sizes[-1] * ELEM if self.names else BASE

    def address(self, name: str, index: int) -> int:
        i = self.names.index(name)
        return self.starts[i] + ELEM * int(index)

    def resolve(self, address: int) -> tuple[str, int] | None:
        """(buffer, element) at ``address``; None for alignment padding; Crash if illegal."""
        if address % ELEM:
            raise Crash(f"misaligned address 0x{address:x}", "misaligned_address")
        if not BASE <= address < self.end:
            raise Crash(f"illegal address 0x{address:x}")
        i = bisect.bisect_right(self.starts, address) - 1
        off = (address - self.starts[i]) // ELEM
        if off < self.sizes[i]:
            return self.names[i], int(off)
        return None
