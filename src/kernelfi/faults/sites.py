"""Which dynamic instructions each mode can strike (docs/method.md §2), as counts per launch slot.

- IOV: every instruction that writes a register (SASSIFI's GPPR: all groups but NODEST).
- IOA: memory instructions' addresses (loads and stores) and, for the other register writers,
  the destination register index (the result lands in a wrong register).
- RF:  a point in time (any dynamic instruction) and a register of the executing thread; the
  population is all dynamic instructions × allocated registers, so it is drawn by instruction.
"""
from __future__ import annotations

from kernelfi.types import GPPR, InstrSlot, Mode


def is_store(slot: InstrSlot) -> bool:
    return slot.tag.startswith("st:") or slot.opcode.upper().startswith(("ST", "RED", "ATOM"))


def eligible(mode: str, slot: InstrSlot) -> bool:
    """Whether ``mode`` can inject into one dynamic execution of ``slot``."""
    m = Mode(mode)
    if m is Mode.IOV:
        return slot.group in GPPR
    if m is Mode.IOA:
        return slot.group in GPPR or is_store(slot)
    return True  # RF: any instruction is a point in time


def slot_population(mode: str, slots: tuple[InstrSlot, ...], threads: int) -> list[int]:
    """Dynamic instructions of each slot that ``mode`` can strike."""
    return [threads * s.count if eligible(mode, s) else 0 for s in slots]
