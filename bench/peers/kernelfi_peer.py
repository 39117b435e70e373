"""kernelfi's campaign engine on the IOV site equivalent to a neuron fault.

A neuron fault (site, element, bit, input) becomes an IOV single-bit fault on the instruction
that produces that element: the ``fadd:out`` instruction of thread ``flat`` in the layer's
``add_bias`` launch. The faults run through ``Runner`` in the campaign's own batches
(``kernelfi.campaign.campaign.batches``: layer order, consecutive layers sharing a batch), exactly as a campaign
runs them: golden-prefix reuse, batched suffix, early stop.
"""
from __future__ import annotations

import time

import torch

from kernelfi.campaign.campaign import auto_batch, batches
from kernelfi.campaign.golden import Golden
from kernelfi.campaign.planner import PlannedFault
from kernelfi.campaign.runner import Runner
from kernelfi.lowering import Program
from kernelfi.types import BitModel, Fault, Mode, Result, Site

from .common import KERNELFI_CATEGORY, NeuronFault, NeuronSite


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

    def __init__(self, program: Program, x: torch.Tensor, sites: list[NeuronSite], batch: int = 0) -> None:
        #: faults per batch: the campaign's own default (``auto_batch``) unless given
        self.program, self.sites, self.batch = program, sites, batch or auto_batch(program.trace)
        self.golden = Golden.compute(program, x)
        self.runner = Runner(program, self.golden)
        self.layer_of = {l.index: l.layer for l in program.trace.launches}

    def plan(self, faults: list[NeuronFault]) -> list[list[PlannedFault]]:
        """The campaign's batches: layer then input order, at most ``self.batch`` faults each."""
        return list(batches(to_planned(faults, self.sites), self.layer_of, self.batch))

    def run_batch(self, batch: list[PlannedFault]) -> dict[int, Result]:
        with torch.no_grad():
            return {e.planned.id: e.result for e in self.runner.run(batch)}

    def run(self, faults: list[NeuronFault]) -> tuple[list[str], float, list[Result]]:
        """Categories of ``faults`` (in order), seconds, and kernelfi's own results."""
        result: dict[int, Result] = {}
        t0 = time.perf_counter()
        for b in self.plan(faults):
            result.update(self.run_batch(b))
        secs = time.perf_counter() - t0
        raw = [result[f.id] for f in faults]
        return [KERNELFI_CATEGORY[r.outcome] for r in raw], secs, raw
