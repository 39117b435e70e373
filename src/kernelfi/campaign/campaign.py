"""A statistical fault-injection campaign: plan, run in batches, store, resume (docs/method.md).

The store is the single source of truth: a campaign is identified by the hash of what defines
it, so re-running the same command resumes it, runs only the missing injection ids, and ends
with exactly N rows identical to an uninterrupted run (every draw depends on (seed, id) only;
outcomes depend only on the fault and the input).
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable, Iterator, Mapping

import torch

from kernelfi import __version__
from kernelfi._utils import KernelfiError
from kernelfi.campaign.golden import Golden, lane_numel, live_at_launch
from kernelfi.campaign.planner import PlannedFault, Planner
from kernelfi.campaign.runner import Executed, Runner
from kernelfi.campaign.session import (
    SELECT_RULES, InputSelection, ModelSpec, Session, check_data, correct_inputs, inputs_tensor, open_session,
    session_inputs,
)
from kernelfi.campaign.threads import ENGINE_THREADS
from kernelfi.data import InputSet, PrepOptions
from kernelfi.faults.registers import derating, rf_registers
from kernelfi.files import RecordedFile
from kernelfi.models import get_model_info
from kernelfi.store import CampaignMeta, CampaignRow, InjectionRecord, LaunchRow, LayerRow, Store
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
    inputs: int | None = None  # keep the first N inputs of the data set (of those the rule keeps)
    scope: str = "all"
    selection: str = "uniform"
    #: faults per batched run; 0: as many as ``auto_batch`` fits in memory
    batch: int = 0
    #: worker processes (0: one per CPU, ``pool.auto_workers``); rows do not
    #: depend on it (``kernelfi.campaign.threads``)
    workers: int = 1
    fast: bool = True
    #: compute only the receptive-field cone after the struck layer (same rows as without)
    cone: bool = True
    #: how images become inputs (``kernelfi.data.prep``; ``None`` fields: the model's defaults)
    prep: PrepOptions = field(default_factory=PrepOptions)
    #: which inputs of the data to keep: "all", or "correct" (those the model classifies correctly)
    select_inputs: str = "all"
    #: the inputs a rule kept, filled by ``prepare`` (workers and replay load exactly these)
    chosen: InputSelection | None = None
    #: a hardening plan as stored with a campaign, used instead of reading ``model.hardening``
    plan: Mapping[str, Any] | None = None

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
        if self.inputs is not None and self.inputs < 1:
            raise KernelfiError(f"--inputs must be at least 1, got {self.inputs}")
        if self.select_inputs not in SELECT_RULES:
            raise KernelfiError(f"--select-inputs: unknown rule '{self.select_inputs}' (known: {', '.join(SELECT_RULES)})")


@dataclass
class Prepared:
    """A campaign ready to run: session, inputs, planner; the golden run and the runner on
    first use (``campaign.pool`` puts a shared golden run, or a runner built on the driver's
    checks, in their place before that). ``config`` is the campaign's config with the inputs a
    rule chose filled in (``CampaignConfig.chosen``): what workers prepare again."""

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
    #: the inputs as loaded (labels, data-set positions, file and digest)
    inputs: InputSet | None = None
    #: one line for each default or conversion that changes what is measured
    notes: tuple[str, ...] = ()

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

    def files(self) -> dict[str, RecordedFile]:
        """Every file the campaign read (``kernelfi.files``): cfg, weights, plan, data."""
        out = self.session.spec.files()
        loaded = self.session.loaded
        if "weights" in out:  # the registry hashed it already
            out["weights"] = dataclasses.replace(out["weights"], sha256=loaded.weights_hash)
        if self.inputs is not None and self.inputs.path is not None:
            out["data"] = RecordedFile(self.inputs.path, self.inputs.digest, "data")
        return out

    def meta(self) -> CampaignMeta:
        c = self.config
        info = self.session.loaded.info
        files = self.files()
        labels = None if self.inputs is None or self.inputs.y is None else [int(v) for v in self.inputs.y.tolist()]
        data = files["data"].path if "data" in files else c.data
        return CampaignMeta(
            model=info.name, mode=c.mode, bit_model=c.bit_model, seed=c.seed, n_planned=c.n,
            weights_hash=self.session.weights_hash, weights_source=_source(self.session.loaded.weights_source, files),
            input_source=self.input_source, n_inputs=self.n_inputs, warp=c.warp, scope=c.scope,
            selection=c.selection, hardening=self.session.plan,
            derating=derating(self.session.program.trace) if c.mode == Mode.RF.value else None,
            tool_version=__version__,
            extra={"model_spec": asdict(c.model.absolute()), "population": self.planner.population, "fast": c.fast,
                   "cone": c.cone, "data": data, "inputs": c.inputs, "engine_threads": ENGINE_THREADS,
                   "prep": c.prep.to_dict(), "select_inputs": c.select_inputs,
                   "chosen": None if c.chosen is None else c.chosen.to_dict(), "labels": labels,
                   "files": {role: f.to_dict() for role, f in files.items()},
                   "input_shape": list(info.input_shape), "num_classes": info.num_classes},
        )

    def launch_rows(self) -> list[LaunchRow]:
        return [LaunchRow.from_launch(l, rf_registers(l).allocated) for l in self.session.program.trace.launches]

    def layer_rows(self) -> list[LayerRow]:
        return [LayerRow.from_spec(s) for s in self.session.program.trace.layers]


def _source(weights_source: str, files: Mapping[str, RecordedFile]) -> str:
    """The weights' source as the campaign records it: the absolute path of a weights file."""
    return files["weights"].path if "weights" in files else str(weights_source)


def prepare(config: CampaignConfig) -> Prepared:
    """Build the model, load and prepare the inputs (keeping those ``select_inputs`` asks for),
    and plan the faults; no golden run yet."""
    t0 = time.perf_counter()
    check_data(get_model_info(config.model.model), config.data)  # before the model is built: a quick error
    session = open_session(config.model, config.plan)
    notes = list(session.notes)
    chosen = config.chosen
    if chosen is not None:
        inputs = session_inputs(session, config.data, None, config.prep, positions=chosen.positions)
    elif config.select_inputs == "correct":
        inputs, chosen = correct_inputs(session, config.data, config.inputs, config.prep, config.fast)
        config = dataclasses.replace(config, chosen=chosen)
        short = config.inputs is not None and len(chosen.positions) < config.inputs
        notes.append(f"inputs: {chosen.describe()} kept (--select-inputs correct)"
                     + (f"; fewer than the {config.inputs} asked for: the data hold no more" if short else ""))
    else:
        inputs = session_inputs(session, config.data, config.inputs, config.prep)
    source = inputs.source + ("" if chosen is None else f"; {chosen.describe()}")
    x = inputs_tensor(inputs)
    planner = Planner(session.program.trace, config.mode, config.bit_model, config.warp, config.seed,
                      x.shape[0], config.scope, config.selection)
    return Prepared(config, session, source, int(x.shape[0]), x, planner, setup_s=time.perf_counter() - t0,
                    inputs=inputs, notes=(*notes, *inputs.notes))


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
                 stop_after: int | None = None, execute: Execute | None = None,
                 notify: Callable[[str], None] | None = None) -> int:
    """Run (or resume) a campaign into ``db``; returns the campaign id. ``notify`` gets one line
    for each default or conversion that changes what is measured (``Prepared.notes``) and for
    each recorded file that moved or changed since a campaign of the same command, before the
    first ``progress`` call."""
    prep = prepare(config)
    say = notify or (lambda line: None)
    for note in prep.notes:
        say(f"note: {note}")
    with Store(db) as store:
        meta = prep.meta()
        before = store.campaigns()
        cid = store.get_or_create_campaign(meta, prep.launch_rows(), prep.layer_rows())
        for line in track_files(store, before, cid, meta):
            say(f"note: {line}")
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
        runs = execute(prep, work) if execute is not None else _execute(prep, work, prep.config.workers)
        for executed in runs:
            records = to_records(prep, executed)
            store.add_results(cid, records)
            n_done += len(records)
            for r in records:
                counts[r.outcome] = counts.get(r.outcome, 0) + 1
            if progress:
                progress(n_done, counts)
    return cid


#: Fields two campaigns share when they come from the same command (all of ``KEY_FIELDS`` but
#: the digests of the files they read)
_SAME_COMMAND = ("model", "n_inputs", "seed", "mode", "bit_model", "warp", "scope", "selection", "n_planned")


def track_files(store: Store, before: list[CampaignRow], cid: int, meta: CampaignMeta) -> list[str]:
    """Keep a campaign's recorded files current, and say where they moved or changed.

    Resuming with a file that moved (same content, new place) updates the campaign's record, so
    replay and harden find it there. A new campaign whose command matches an earlier one's but
    one of whose files now holds other content (the key differs by its digest) is said in one
    line, so that a changed file never starts a new campaign unnoticed."""
    files = dict(meta.extra.get("files", {}))
    old = next((r for r in before if r.id == cid), None)
    lines = []
    if old is not None:
        recorded = dict(old.meta.extra.get("files", {}))
        moved = {role: f for role, f in files.items()
                 if role in recorded and recorded[role]["path"] != f["path"] and recorded[role]["sha256"] == f["sha256"]}
        for role, f in moved.items():
            lines.append(f"the {role} file moved from {recorded[role]['path']} to {f['path']} (same sha256); "
                         f"campaign {cid} now records it there")
        if moved:
            store.update_extra(cid, {"files": {**recorded, **moved}})
        return lines
    for r in before:
        if any(getattr(r.meta, k) != getattr(meta, k) for k in _SAME_COMMAND):
            continue
        for role, f in files.items():
            then = r.meta.extra.get("files", {}).get(role)
            if then is not None and then["path"] == f["path"] and then["sha256"] and then["sha256"] != f["sha256"]:
                lines.append(f"{f['path']}: the {role} file changed since campaign {r.id} (sha256 {then['sha256'][:12]} "
                             f"then, {f['sha256'][:12]} now): this is a new campaign, {cid}")
    return lines


def _execute(prep: Prepared, work: list[list[PlannedFault]], workers: int) -> Iterator[list[Executed]]:
    from kernelfi.campaign.pool import execute_local  # the pool's workers import this module

    return execute_local(prep, work, workers)
