"""A campaign never dies on one fault: one batch's run, with the faults the tool fails on isolated.

Every place that runs batches (this process, the pool's workers, Ray actors) runs them through
``run_batch``. When a batch raises, it runs again fault by fault to find the faults the tool
itself fails on; those become tool errors (``ToolError``: the exception and its traceback, stored
as their own kind of row, never as an outcome), and the others run again as one batch without
them, as a clean run would have batched them. A batch that fails only as a whole (no fault fails
alone) keeps each fault's own run and is logged. Only ``Exception`` is caught: an interrupt
(Ctrl-C) or a worker's exit still stops the campaign, and what was stored stays.
"""
from __future__ import annotations

import logging
import traceback
from dataclasses import dataclass

import torch

from kernelfi._utils import one_line
from kernelfi.execution import Executed, Runner
from kernelfi.types import PlannedFault

log = logging.getLogger("kernelfi.campaign")


@dataclass(frozen=True)
class ToolError:
    """A fault the tool failed to run: ``error`` in one line, ``traceback`` in full."""

    planned: PlannedFault
    error: str
    traceback: str

    @classmethod
    def of(cls, planned: PlannedFault, err: BaseException) -> "ToolError":
        text = one_line(f"{type(err).__name__}: {err}")[:500]
        return cls(planned, text, "".join(traceback.format_exception(type(err), err, err.__traceback__)))


#: What one fault of a batch came to: its result, or the tool's failure on it
Done = Executed | ToolError


def _run(runner: Runner, batch: list[PlannedFault]) -> list[Executed]:
    with torch.no_grad():
        return runner.run(batch)


def run_batch(runner: Runner, batch: list[PlannedFault]) -> list[Done]:
    """``runner.run(batch)``, in the batch's order, with every fault the tool fails on as a
    ``ToolError`` instead of an exception that would end the campaign."""
    try:
        return list(_run(runner, batch))
    except Exception as err:  # noqa: BLE001 - isolated below, fault by fault
        if len(batch) == 1:
            return [ToolError.of(batch[0], err)]
        first = err
    alone: dict[int, Done] = {}
    for pf in batch:
        try:
            alone[pf.id] = _run(runner, [pf])[0]
        except Exception as err:  # noqa: BLE001 - this fault's tool error
            alone[pf.id] = ToolError.of(pf, err)
    failed = [pf.id for pf in batch if isinstance(alone[pf.id], ToolError)]
    rest = [pf for pf in batch if pf.id not in failed]
    if not failed:
        log.warning("a batch of %d faults (ids %d..%d) failed together (%s) but each ran alone; "
                    "their rows are their own runs'", len(batch), batch[0].id, batch[-1].id,
                    one_line(f"{type(first).__name__}: {first}"))
    elif rest:
        try:
            again = {e.planned.id: e for e in _run(runner, rest)}
            alone.update(again)
        except Exception:  # noqa: BLE001 - keep each fault's own run
            pass
    return [alone[pf.id] for pf in batch]
