"""A statistical fault-injection campaign: plan, run in batches, store, resume (SPEC §2-§3).

The store is the single source of truth: a campaign is identified by the hash of what defines
it, so re-running the same command resumes it, runs only the missing injection ids, and ends
with exactly N rows identical to an uninterrupted run (every draw depends on (seed, id) only;
outcomes depend only on the fault and the input).
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Iterable

import torch

from kernelfi._utils import KernelfiError
from kernelfi.campaign.batches import auto_batch, batches
from kernelfi.campaign.pool import execute_local
from kernelfi.campaign.prepared import CampaignConfig, Prepared, prepare
from kernelfi.campaign.session import ModelSpec
from kernelfi.execution import ENGINE_THREADS, Executed
from kernelfi.store import InjectionRecord, Store
from kernelfi.types import Outcome, PlannedFault


def to_records(prep: Prepared, executed: Iterable[Executed]) -> list[InjectionRecord]:
    rows = prep.launch_rows()
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
        runs = execute(prep, work) if execute is not None else execute_local(prep, work, config.workers)
        for executed in runs:
            records = to_records(prep, executed)
            store.add_results(cid, records)
            n_done += len(records)
            for r in records:
                counts[r.outcome] = counts.get(r.outcome, 0) + 1
            if progress:
                progress(n_done, counts)
    return cid


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
    rec = dataclasses.replace(rec, seconds=stored.seconds)
    return stored, rec
