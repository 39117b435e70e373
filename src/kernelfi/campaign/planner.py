"""Campaign planner: (seed, injection id) -> one fully determined fault (docs/method.md §2).

Every draw for injection ``i`` comes from ``rng_for(seed, i)``, so the plan is the same in any
order, any process, after any resume. Uniform selection is SASSIFI's: uniform over all the
mode's dynamic instructions of the inference. Stratified selection spreads injections evenly
over kernels (or layers); each row then carries the weight that reweights it to the uniform
population (population share / sample share of its stratum).
"""
from __future__ import annotations

import numpy as np

from kernelfi._utils import KernelfiError, rng_for
from kernelfi.faults.bits import draw_bits
from kernelfi.faults.registers import rf_registers
from kernelfi.faults.sites import slot_population
from kernelfi.types import BitModel, Fault, Mode, PlannedFault, Site, Trace

SCOPES = ("all", "sassifi")
SELECTIONS = ("uniform", "kernel", "layer")
#: Kernels SASSIFI cannot instrument (closed-source library code: cuBLAS SGEMM).
LIBRARY_KERNELS = frozenset({"gemm"})


class Planner:
    """Precomputes the population once; ``draw(i)`` is then O(log launches)."""

    def __init__(self, trace: Trace, mode: str, bit_model: str, warp: bool, seed: int, n_inputs: int,
                 scope: str = "all", selection: str = "uniform") -> None:
        self.trace, self.mode, self.bit_model, self.warp = trace, Mode(mode).value, BitModel(bit_model).value, warp
        self.seed, self.n_inputs = int(seed), int(n_inputs)
        if scope not in SCOPES:
            raise KernelfiError(f"unknown scope '{scope}' (known: {', '.join(SCOPES)})")
        if selection not in SELECTIONS:
            raise KernelfiError(f"unknown selection '{selection}' (known: {', '.join(SELECTIONS)})")
        if self.n_inputs < 1:
            raise KernelfiError("a campaign needs at least one input")
        self.scope, self.selection = scope, selection
        self.slot_pops: list[np.ndarray] = []
        pops = []
        for launch in trace.launches:
            sp = np.array(slot_population(self.mode, launch.template.slots, launch.template.threads), dtype=np.int64)
            if scope == "sassifi" and launch.kernel in LIBRARY_KERNELS:
                sp[:] = 0
            self.slot_pops.append(sp)
            pops.append(int(sp.sum()))
        self.launch_pop = np.array(pops, dtype=np.int64)
        if self.launch_pop.sum() == 0:
            raise KernelfiError(f"{trace.model}: no {self.mode} fault sites in scope '{scope}'")
        # strata: one per kernel type (or layer) with a non-empty population
        if selection == "uniform":
            keys = [0] * len(trace.launches)
        elif selection == "kernel":
            keys = [l.kernel for l in trace.launches]
        else:
            keys = [l.layer for l in trace.launches]
        strata: dict[object, list[int]] = {}
        for i, k in enumerate(keys):
            if self.launch_pop[i] > 0:
                strata.setdefault(k, []).append(i)
        self.strata = [np.array(v, dtype=np.int64) for _, v in sorted(strata.items(), key=lambda kv: str(kv[0]))]
        self.strata_keys = [k for k, _ in sorted(strata.items(), key=lambda kv: str(kv[0]))]
        total = float(self.launch_pop.sum())
        self.strata_share = [float(self.launch_pop[s].sum()) / total for s in self.strata]
        self.strata_cum = [np.cumsum(self.launch_pop[s]) for s in self.strata]

    @property
    def population(self) -> int:
        return int(self.launch_pop.sum())

    def draw(self, i: int) -> PlannedFault:
        rng = rng_for(self.seed, i)
        k = len(self.strata)
        s = 0 if k == 1 else int(i % k)  # equal allocation across strata, deterministic per id
        cum = self.strata_cum[s]
        r = int(rng.integers(0, int(cum[-1])))
        li = int(self.strata[s][int(np.searchsorted(cum, r, side="right"))])
        launch = self.trace.launches[li]
        sp = self.slot_pops[li]
        r2 = int(rng.integers(0, int(sp.sum())))
        slot = int(np.searchsorted(np.cumsum(sp), r2, side="right"))
        threads = launch.template.threads
        thread = int(rng.integers(0, threads))
        iteration = int(rng.integers(0, max(1, launch.template.slots[slot].count)))
        register = -1
        if self.mode == Mode.RF.value:
            register = int(rng.integers(0, rf_registers(launch).allocated))
        group = launch.template.slots[slot].group
        bits, value = draw_bits(rng, self.bit_model)
        input_id = int(rng.integers(0, self.n_inputs))
        weight = 1.0 if k == 1 else self.strata_share[s] * k
        site = Site(launch=li, group=group, thread=thread, slot=slot, iteration=iteration, register=register)
        return PlannedFault(i, Fault(self.mode, site, self.bit_model, bits, value, self.warp, input_id), weight)
