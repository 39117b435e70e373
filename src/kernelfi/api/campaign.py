"""``Campaign``: a fault-injection campaign on a ``Model``, run, resumed and summarised from
Python, through the same ``run_campaign`` as ``kernelfi campaign``.

The campaign's files live beside its database: ``<db>.files/`` holds the instance's weights
(safetensors) where they are not its factory's own, and the inputs given as a tensor, Dataset or
DataLoader (``.npz``), each named by its content. The database records them (absolute path,
sha256) with the model's source file, so ``kernelfi replay``/``harden``/``summary`` work on it
from any directory, and a file changed since is refused in one line.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from kernelfi.analysis import summarise
from kernelfi.api.inputs import Inputs, as_data
from kernelfi.api.model import Model
from kernelfi.campaign import CampaignConfig, run_campaign
from kernelfi.campaign.campaign import Progress
from kernelfi.data import PrepOptions
from kernelfi.store import Store

__all__ = ["Campaign", "CampaignResult", "summary", "files_dir"]


def files_dir(db: str | os.PathLike[str]) -> Path:
    """Where a campaign's own files (weights, inputs) are written: ``<db>.files/`` beside it."""
    p = Path(db).expanduser().resolve()
    return p.with_name(p.name + ".files")


@dataclass(frozen=True)
class CampaignResult:
    """A campaign's state after ``run``: its id in the database, rows so far, outcome counts
    (the keys ``masked``, ``due``, ``sdc_no_malfunction``, ...) and tool errors (no rate counts
    them), and the notes the run said (defaults that change what is measured)."""

    db: str
    id: int
    n_done: int
    n_planned: int
    counts: dict[str, int]
    tool_errors: int
    notes: tuple[str, ...]

    @property
    def complete(self) -> bool:
        return self.n_done >= self.n_planned


class Campaign:
    """A campaign of ``n`` injections in ``mode`` (``rf``, ``iov``, ``ioa``) into ``model``,
    stored in ``db``. ``inputs``: a tensor (N, C, H, W) of model-ready inputs, ``(x, y)`` with
    labels, a ``Dataset``/``DataLoader`` of ``x`` or ``(x, y)``, or a path/keyword as ``--data``
    takes it (image folder, ``.npz``, ``digits``, ``random``; ``prep`` prepares images).
    The other arguments are ``kernelfi campaign``'s options (``CampaignConfig``).

    ``run`` runs the injections not stored yet: running the same campaign again resumes it and
    ends with the rows of an uninterrupted run. ``summary`` says what ``kernelfi summary`` says.
    """

    def __init__(self, model: Model, inputs: Inputs, db: str | os.PathLike[str], *, mode: str, n: int, seed: int = 0,
                 bit_model: str = "single", warp: bool = False, scope: str = "all", selection: str = "uniform",
                 workers: int = 1, batch: int = 0, n_inputs: int | None = None, select_inputs: str = "all",
                 prep: PrepOptions | None = None, hardening: str | os.PathLike[str] | None = None) -> None:
        self.db = os.fspath(db)
        files = files_dir(self.db)
        spec = model.spec(files)
        if hardening is not None:
            spec = dataclasses.replace(spec, hardening=os.fspath(hardening))
        self.config = CampaignConfig(model=spec, mode=mode, bit_model=bit_model, n=n, seed=seed, warp=warp,
                                     data=as_data(inputs, files), inputs=n_inputs, scope=scope, selection=selection,
                                     batch=batch, workers=workers, prep=prep or PrepOptions(),
                                     select_inputs=select_inputs)

    def run(self, progress: Progress | None = None, stop_after_batches: int | None = None,
            notify: Callable[[str], None] | None = None) -> CampaignResult:
        """Run (or resume) the campaign; ``stop_after_batches``: at most that many batches (of
        ``batch`` injections) this time, the rest on a later ``run``; ``progress(done, counts)``
        after each batch; ``notify(line)`` for each note."""
        notes: list[str] = []

        def say(line: str) -> None:
            notes.append(line)
            if notify is not None:
                notify(line)

        cid = run_campaign(self.config, self.db, progress=progress, stop_after=stop_after_batches, notify=say)
        with Store(self.db, create=False, readonly=True) as store:
            row = store.campaign(cid)
            counts = store.outcome_counts(cid)
        return CampaignResult(self.db, cid, row.n_done, row.meta.n_planned, counts, row.n_tool_errors, tuple(notes))

    def summary(self) -> list[dict[str, Any]]:
        """``summary(db)`` of this campaign's database."""
        return summary(self.db)


def summary(db: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Every campaign of a results database as ``kernelfi summary --format json`` gives it
    (model, weights, data, golden accuracy, outcomes, tool errors)."""
    return [s for s, _ in summarise(db)[0]]
