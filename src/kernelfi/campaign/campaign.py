"""A statistical fault-injection campaign: plan, run in batches, store, resume (SPEC §2-§3).

The store is the single source of truth: a campaign is identified by the hash of what defines
it, so re-running the same command resumes it, runs only the missing injection ids, and ends
with exactly N rows identical to an uninterrupted run (every draw depends on (seed, id) only;
outcomes depend only on the fault and the input).
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Callable, Iterable, Iterator

import torch

from kernelfi import __version__
from kernelfi._utils import KernelfiError
from kernelfi.execution.golden import Golden, lane_numel, live_at_launch
from kernelfi.campaign.planner import PlannedFault, Planner
from kernelfi.execution.runner import Executed, Runner
from kernelfi.campaign.session import ModelSpec, Session, inputs_tensor, open_session, session_inputs
from kernelfi.execution.threads import ENGINE_THREADS
from kernelfi.faults.registers import derating, rf_registers
from kernelfi.store import CampaignMeta, InjectionRecord, LaunchRow, LayerRow, Store
from kernelfi.types import BitModel, Mode, Outcome, Trace


@dataclass(frozen=True)
class CampaignConfig:
    model: ModelSpec
    mode: str
    bit_model: str
    n: int
    seed: int
    warp: bool = False
    data: str | None = None
    inputs: int | None = None  # keep the first N inputs of the data set
    scope: str = "all"
    selection: str = "uniform"
    #: faults per batched run; 0: as many as ``auto_batch`` fits in memory
    batch: int = 0
    #: worker processes (0: one per CPU, ``pool.auto_workers``); rows do not
    #: depend on it (``kernelfi.execution.threads``)
    workers: int = 1
    fast: bool = True
    #: compute only the receptive-field cone after the struck layer (same rows as without)
    cone: bool = True

    def __post_init__(self) -> None:
        try:
            Mode(self.mode)
        except ValueError:
            raise KernelfiError(f"unknown mode '{self.mode}' (known: rf, iov, ioa)") from None
        try:
            BitModel(self.bit_model)
        except ValueError:
            raise KernelfiError(f"unknown bit model '{self.bit_model}' (known: {', '.join(b.value for b in BitModel)})") from None
        if self.n < 1:
            raise KernelfiError(f"-n must be at least 1, got {self.n}")
        if self.batch < 0 or self.workers < 0:
            raise KernelfiError("--batch and --workers must be 0 (auto) or more")


@dataclass
class Prepared:
    """A campaign ready to run: session, inputs, planner; the golden run and the runner on
    first use (``campaign.pool`` puts a shared golden run, or a runner built on the driver's
    checks, in their place before that)."""

    config: CampaignConfig
    session: Session
    input_source: str
    n_inputs: int
    x: torch.Tensor
    planner: Planner
    _golden: Golden | None = None
    _runner: Runner | None = None
    #: seconds ``prepare`` took (model, lowering, inputs): what each worker process pays again
    setup_s: float = 0.0

    @property
    def golden(self) -> Golden:
        if self._golden is None:
            self._golden = Golden.compute(self.session.program, self.x, fast=self.config.fast)
        return self._golden

    @property
    def runner(self) -> Runner:
        if self._runner is None:
            c = self.config
            self._runner = Runner(self.session.program, self.golden, fast=c.fast, cone=c.cone)
        return self._runner

    def meta(self) -> CampaignMeta:
        c = self.config
        return CampaignMeta(
            model=self.session.loaded.info.name, mode=c.mode, bit_model=c.bit_model, seed=c.seed, n_planned=c.n,
            weights_hash=self.session.weights_hash, weights_source=str(self.session.loaded.weights_source),
            input_source=self.input_source, n_inputs=self.n_inputs, warp=c.warp, scope=c.scope,
            selection=c.selection, hardening=self.session.plan,
            derating=derating(self.session.program.trace) if c.mode == Mode.RF.value else None,
            tool_version=__version__,
            extra={"model_spec": asdict(c.model), "population": self.planner.population, "fast": c.fast,
                   "cone": c.cone, "data": c.data, "inputs": c.inputs, "engine_threads": ENGINE_THREADS},
        )

    def launch_rows(self) -> list[LaunchRow]:
        return [LaunchRow.from_launch(l, rf_registers(l).allocated) for l in self.session.program.trace.launches]

    def layer_rows(self) -> list[LayerRow]:
        return [LayerRow.from_spec(s) for s in self.session.program.trace.layers]


def prepare(config: CampaignConfig) -> Prepared:
    t0 = time.perf_counter()
    session = open_session(config.model)
    inputs = session_inputs(session, config.data, config.inputs)
    x = inputs_tensor(inputs)
    planner = Planner(session.program.trace, config.mode, config.bit_model, config.warp, config.seed,
                      x.shape[0], config.scope, config.selection)
    return Prepared(config, session, inputs.source, int(x.shape[0]), x, planner, setup_s=time.perf_counter() - t0)


#: What the lanes of one batch may hold in whole tensors (``auto_batch``)
AUTO_BUDGET = 2 ** 30
AUTO_MAX = 256


def auto_batch(trace: Trace, workspace: bool = False, budget: int = AUTO_BUDGET) -> int:
    """Faults per batch: as many lanes as fit ``budget`` bytes where the trace holds the most
    per-lane data at once (live buffers and the launch's own writes, twice over for the
    kernels' temporaries), between 16 and ``AUTO_MAX``. More lanes per run make each big
    layer's GEMM cheaper per lane (AlexNet's 9216x4096 connected layer: 0.85 ms a row in a
    call of 16 rows, 0.27 ms in one of 256). The im2col workspace counts only with
    ``workspace`` (the plain path): the fast path never materialises it after the struck
    layer, and the struck layer bounds its own lanes (``Runner.whole_chunk``)."""
    live, numel = live_at_launch(trace), lane_numel(trace)
    peak = max((sum(numel(n, l.layer) for n in live[l.index] | set(l.writes) if workspace or n != "workspace")
                for l in trace.launches), default=1)
    return max(16, min(AUTO_MAX, budget // (2 * 4 * max(peak, 1))))


def batches(planned: list[PlannedFault], trace_layers: dict[int, int], size: int) -> Iterator[list[PlannedFault]]:
    """Batches of ``size`` faults in layer order, by input within a layer: a batch spans a few
    consecutive layers when each holds few faults (their lanes share the cone steps and
    whole-tensor layers after the struck ones); same-input faults sit together (a struck layer
    needs one golden row per distinct input)."""
    items = sorted(planned, key=lambda pf: (trace_layers[pf.fault.site.launch], pf.fault.input_id, pf.id))
    for s in range(0, len(items), size):
        yield items[s:s + size]


def to_records(prep: Prepared, executed: Iterable[Executed]) -> list[InjectionRecord]:
    rows = prep.launch_rows_cache if hasattr(prep, "launch_rows_cache") else None
    if rows is None:
        rows = prep.launch_rows()
        prep.launch_rows_cache = rows  # type: ignore[attr-defined]
    return [InjectionRecord.build(e.planned.id, e.planned.fault, e.result, rows[e.planned.fault.site.launch],
                                  tag=e.tag, weight=e.planned.weight, seconds=e.seconds) for e in executed]


Progress = Callable[[int, dict[str, int]], None]
#: Runs the batches somewhere (a process pool, a Ray cluster) and yields each batch's results.
Execute = Callable[[Prepared, list[list[PlannedFault]]], Iterable[list[Executed]]]


def run_campaign(config: CampaignConfig, db: str, progress: Progress | None = None,
                 stop_after: int | None = None, execute: Execute | None = None) -> int:
    """Run (or resume) a campaign into ``db``; returns the campaign id."""
    prep = prepare(config)
    with Store(db) as store:
        cid = store.get_or_create_campaign(prep.meta(), prep.launch_rows(), prep.layer_rows())
        done = store.done_ids(cid)
        threads = store.campaign(cid).meta.extra.get("engine_threads")
        if done and threads != ENGINE_THREADS:
            raise KernelfiError(f"{db}: campaign {cid} was run by an engine on {threads or 'all'} intra-op threads; "
                                f"rows of this version ({ENGINE_THREADS} thread) would differ in the last bits from "
                                "its stored ones: resume it with the version that started it, or use a new database")
        pending = [i for i in range(config.n) if i not in done]
        counts = {o.value: 0 for o in Outcome} | store.outcome_counts(cid)
        if progress:
            progress(len(done), counts)
        planned = [prep.planner.draw(i) for i in pending]
        layer_of = {l.index: l.layer for l in prep.session.program.trace.launches}
        work = list(batches(planned, layer_of, config.batch or auto_batch(prep.session.program.trace, not config.fast)))
        if stop_after is not None:
            work = work[:stop_after]
        n_done = len(done)
        runs = execute(prep, work) if execute is not None else _execute(prep, work, config.workers)
        for executed in runs:
            records = to_records(prep, executed)
            store.add_results(cid, records)
            n_done += len(records)
            for r in records:
                counts[r.outcome] = counts.get(r.outcome, 0) + 1
            if progress:
                progress(n_done, counts)
    return cid


def _execute(prep: Prepared, work: list[list[PlannedFault]], workers: int) -> Iterator[list[Executed]]:
    from kernelfi.campaign.pool import execute_local  # the pool's workers import this module

    return execute_local(prep, work, workers)


def replay(db: str, injection: int, campaign: int | None = None) -> tuple[InjectionRecord, InjectionRecord]:
    """Re-execute one stored injection; returns (stored, replayed)."""
    with Store(db, create=False) as store:
        rows = store.campaigns()
        if not rows:
            raise KernelfiError(f"{db}: no campaigns")
        if campaign is None:
            if len(rows) > 1:
                raise KernelfiError(f"{db}: {len(rows)} campaigns; pick one with --campaign (ids: {', '.join(str(r.id) for r in rows)})")
            crow = rows[0]
        else:
            crow = store.campaign(campaign)
        stored = store.injection(crow.id, injection)
    meta = crow.meta
    extra = dict(meta.extra)
    spec = ModelSpec(**extra["model_spec"])
    config = CampaignConfig(model=spec, mode=meta.mode, bit_model=meta.bit_model, n=meta.n_planned, seed=meta.seed,
                            warp=meta.warp, data=extra.get("data"), inputs=extra.get("inputs"), scope=meta.scope,
                            selection=meta.selection, fast=bool(extra.get("fast", True)),
                            cone=bool(extra.get("cone", True)))
    prep = prepare(config)
    if prep.session.weights_hash != meta.weights_hash:
        raise KernelfiError(f"{db}: campaign {crow.id} used weights {meta.weights_hash[:12]}, now {prep.session.weights_hash[:12]}")
    with torch.no_grad():
        ex = prep.runner.run([prep.planner.draw(injection)])
    rec = to_records(prep, ex)[0]
    import dataclasses
    rec = dataclasses.replace(rec, seconds=stored.seconds)
    return stored, rec
