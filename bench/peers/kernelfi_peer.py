"""kernelfi's campaign engine on the IOV site equivalent to a neuron fault.

A neuron fault (site, element, bit, input) becomes an IOV single-bit fault on the instruction
that produces that element: the ``fadd:out`` instruction of thread ``flat`` in the layer's
``add_bias`` launch. The faults run through ``Runner`` in the campaign's own batches
(``kernelfi.campaign.batches``: layer order, consecutive layers sharing a batch), exactly as a campaign
runs them: golden-prefix reuse, batched suffix, early stop.

``KernelfiPool`` runs them as ``kernelfi campaign --workers N`` does: N worker processes, each
with its own model, golden run and runner on one engine thread, taking whole batches. The rows
are the same as in one process (``kernelfi.execution.threads``).
"""
from __future__ import annotations

import multiprocessing as mp
import os
import time
from typing import Any

import torch

from kernelfi.campaign.batches import auto_batch, batches
from kernelfi.execution.golden import Golden, SharedGolden
from kernelfi.campaign.planner import PlannedFault
from kernelfi.campaign.pool import set_up
from kernelfi.execution.runner import Runner
from kernelfi.lowering import Program
from kernelfi.types import BitModel, Fault, Mode, Result, Site

from .common import NeuronFault, NeuronSite, neuron_sites
from .models import build


def to_planned(faults: list[NeuronFault], sites: list[NeuronSite]) -> list[PlannedFault]:
    out = []
    for f in faults:
        s = sites[f.site]
        site = Site(launch=s.launch, group="FP32", thread=f.flat, slot=s.slot, iteration=0)
        out.append(PlannedFault(f.id, Fault(Mode.IOV.value, site, BitModel.SINGLE.value, (f.bit,), None, False,
                                            f.input), 1.0))
    return out


class KernelfiPeer:
    name = "kernelfi"

    def __init__(self, program: Program, x: torch.Tensor, sites: list[NeuronSite], batch: int = 0,
                 golden: Golden | None = None) -> None:
        #: faults per batch: the campaign's own default (``auto_batch``) unless given
        self.program, self.sites, self.batch = program, sites, batch or auto_batch(program.trace)
        self.golden = golden if golden is not None else Golden.compute(program, x)
        self.runner = Runner(program, self.golden)
        self.layer_of = {l.index: l.layer for l in program.trace.launches}

    def plan(self, faults: list[NeuronFault]) -> list[list[PlannedFault]]:
        """The campaign's batches: layer then input order, at most ``self.batch`` faults each."""
        return list(batches(to_planned(faults, self.sites), self.layer_of, self.batch))

    def run_batch(self, batch: list[PlannedFault]) -> dict[int, Result]:
        with torch.no_grad():
            return {e.planned.id: e.result for e in self.runner.run(batch)}

    def run_batches(self, batches: list[list[PlannedFault]]) -> dict[int, Result]:
        out: dict[int, Result] = {}
        for b in batches:
            out.update(self.run_batch(b))
        return out

    def stats(self) -> tuple[int, dict[str, int]]:
        """Cone units and the cone's counters (windows computed, their elements...)."""
        return len(self.runner.cone.units), dict(self.runner.cone.stats)


_PEER: KernelfiPeer | None = None


def _init(name: str, batch: int, shared: SharedGolden, ready: Any) -> None:
    def make() -> None:
        global _PEER
        torch.set_num_threads(1)
        b = build(name)
        _PEER = KernelfiPeer(b.program, b.x, neuron_sites(b.program, b.module), batch, shared.golden())
    set_up(ready, make)


def _run(batch: list[PlannedFault]) -> tuple[dict[int, Result], int, tuple[int, dict[str, int]]]:
    assert _PEER is not None
    return _PEER.run_batch(batch), os.getpid(), _PEER.stats()


class KernelfiPool:
    """``workers`` processes set up as a campaign's: this process computes the golden run into
    shared memory, each worker (spawned) builds the bench model ``name`` itself and maps that
    run; ``run_batches`` hands each worker one whole batch at once."""

    name = "kernelfi"

    def __init__(self, name: str, program: Program, x: torch.Tensor, sites: list[NeuronSite], workers: int) -> None:
        self.program, self.sites, self.workers = program, sites, workers
        self.batch = auto_batch(program.trace)
        self.layer_of = {l.index: l.layer for l in program.trace.launches}
        ctx = mp.get_context("spawn")
        ready = ctx.Value("i", 0)
        shared = SharedGolden.of(Golden.compute(program, x, share=True), program.trace.output)
        self.pool = ctx.Pool(workers, initializer=_init, initargs=(name, self.batch, shared, ready))
        self._stats: dict[int, tuple[int, dict[str, int]]] = {}
        deadline = time.monotonic() + 900
        while ready.value < workers:  # every worker's set-up (model, golden run) before timing
            if ready.value < 0 or time.monotonic() > deadline:
                self.pool.terminate()
                raise RuntimeError("a kernelfi worker failed to set up (its traceback is above)" if ready.value < 0
                                   else f"kernelfi workers not ready after 900 s ({ready.value}/{workers})")
            time.sleep(0.05)

    plan = KernelfiPeer.plan

    def run_batches(self, batches: list[list[PlannedFault]]) -> dict[int, Result]:
        out: dict[int, Result] = {}
        for res, pid, st in self.pool.map(_run, batches, chunksize=1):
            out.update(res)
            self._stats[pid] = st
        return out

    def stats(self) -> tuple[int, dict[str, Any]]:
        units = max((u for u, _ in self._stats.values()), default=0)
        total: dict[str, int] = {}
        for _, st in self._stats.values():
            for k, v in st.items():
                total[k] = total.get(k, 0) + v
        return units, total

    def close(self) -> None:
        self.pool.close()
        self.pool.join()

