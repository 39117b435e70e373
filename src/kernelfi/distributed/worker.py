"""The Ray actor body: one prepared model per worker, batches addressed by injection id.

A plain class (wrapped with ``ray.remote`` by the executor) so that importing this module never
needs Ray. The worker rebuilds the campaign from its config — model, golden run, planner — once,
then turns lists of injection ids into results. Faults are drawn here from (seed, id), exactly
as the local pool does, so the driver ships a few integers per batch instead of faults.
"""
from __future__ import annotations

import os
import socket
import traceback
from typing import Any

import torch

from kernelfi.campaign import CampaignConfig, Prepared, prepare
from kernelfi.campaign.isolate import Done, run_batch


class ShardWorker:
    """One model copy. ``info()`` doubles as the readiness ping the executor waits on."""

    def __init__(self, config: CampaignConfig, threads: int, cwd: str | None) -> None:
        torch.set_num_threads(max(1, threads))  # Ray gave us ``threads`` CPUs; do not oversubscribe
        if cwd and os.path.isdir(cwd):
            os.chdir(cwd)  # relative --weights/--data/--hardening resolve as on the driver
        self.prep: Prepared | None = None
        self.error: str | None = None
        try:
            self.prep = prepare(config)
        except Exception as err:  # report, do not crash: a restart would fail the same way
            self.error = "".join(traceback.format_exception_only(type(err), err)).strip()

    def info(self) -> dict[str, Any]:
        """Who and where this worker is, and what it prepared (the driver checks it matches)."""
        out: dict[str, Any] = {"pid": os.getpid(), "node": socket.gethostname(), "error": self.error}
        if self.prep is not None:
            out["weights_hash"] = self.prep.session.weights_hash
            out["population"] = self.prep.planner.population
            out["n_inputs"] = self.prep.n_inputs
        return out

    def run(self, ids: list[int]) -> list[Done]:
        """Execute one batch (ids of one layer, as ``campaign.batches`` grouped them); a fault
        the tool fails on comes back as a ``ToolError`` (``campaign.isolate``)."""
        assert self.prep is not None, self.error
        return run_batch(self.prep.runner, [self.prep.planner.draw(i) for i in ids])
