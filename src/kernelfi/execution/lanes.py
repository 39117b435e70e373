"""The rows of a batch's tensors and what a batch's stages find, as named types.

A batch's stages (the struck layer, the receptive-field cone, whole tensors after it) hold faulty
lanes as rows of tensors, beside golden rows of the same inputs. Which row holds what changes
from stage to stage: golden rows are dropped once no lane needs them, retired lanes leave, the
struck layer runs on golden rows alone. So a row says what it holds (``GoldenLane`` or
``FaultyLane``), and what a fault's lane finds is recorded once, in ``BatchState``, keyed by the
fault's index in the batch, whichever row its lane occupies in a stage.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import NamedTuple, Sequence, Union

import torch

from kernelfi.faults.inject import LaneEffect
from kernelfi.types import Outcome, PlannedFault, Propagation, Result


@dataclass(frozen=True)
class GoldenLane:
    """A row holding the fault-free run of input ``input_id``."""

    input_id: int


@dataclass(frozen=True)
class FaultyLane:
    """A row holding the run of fault ``fault`` (its index in the batch, ``BatchState``'s key)."""

    fault: int


Lane = Union[GoldenLane, FaultyLane]


def golden_rows(lanes: Sequence[Lane]) -> dict[int, int]:
    """Input id -> the row of its golden lane, for the golden lanes among ``lanes``."""
    return {lane.input_id: row for row, lane in enumerate(lanes) if isinstance(lane, GoldenLane)}


class GoldenSource(enum.Enum):
    """Where a faulty lane's golden values are."""

    BATCH = "batch"  # a golden lane among the batch's own rows
    CACHE = "cache"  # the golden cache (``Golden.buffers``), by input


class GoldenRow(NamedTuple):
    """The golden values a faulty lane is compared with: row ``row`` of the batch's tensors
    (``GoldenSource.BATCH``), or the golden cache's row of input ``row`` (``CACHE``)."""

    source: GoldenSource
    row: int


class LaneRun(NamedTuple):
    """Faulty lanes in consecutive rows ``first`` .. ``end - 1`` that share one golden row;
    ``at`` is the first one's position among the lanes compared (where its figures go)."""

    at: int
    first: int
    end: int
    golden: GoldenRow


@dataclass
class BatchState:
    """What the stages of one batch find, every field keyed by the fault's index in ``faults``."""

    faults: Sequence[PlannedFault]
    #: per input, the golden run's top-1 class
    golden_top1: torch.Tensor
    #: what each fault did inside its kernel (``faults.inject``), recorded when its launch runs
    effects: dict[int, LaneEffect] = field(default_factory=dict)
    #: per fault followed past its struck layer, one row per layer its corruption was measured in
    propagation: dict[int, list[Propagation]] = field(default_factory=dict)
    #: the faults whose outcome is known
    results: dict[int, Result] = field(default_factory=dict)

    def input_of(self, fault: int) -> int:
        return self.faults[fault].fault.input_id

    def finish(self, fault: int, outcome: Outcome, flags: tuple[str, ...] = (), propagated: bool = False,
               top1: tuple[int, int] | None = None) -> None:
        """Record fault ``fault``'s result: its outcome, what its kernel did, its propagation rows
        where ``propagated`` (they end at the layer it was judged after), and the (golden,
        faulty) top-1 classes where the output was classified (default: the golden run's)."""
        effect = self.effects[fault]
        golden_top1 = int(self.golden_top1[self.input_of(fault)]) if top1 is None else top1[0]
        self.results[fault] = Result(
            outcome=outcome.value, element=effect.element, original=effect.original, corrupted=effect.corrupted,
            flags=tuple(effect.flags) + tuple(f for f in flags if f not in effect.flags),
            propagation=tuple(self.propagation[fault]) if propagated else (), golden_top1=golden_top1,
            faulty_top1=golden_top1 if top1 is None else top1[1])
