"""A statistical fault-injection campaign: plan, run in batches, store, resume (docs/method.md).

The store is the single source of truth: a campaign is identified by the hash of what defines
it, so re-running the same command resumes it, runs only the missing injection ids, and ends
with exactly N rows identical to an uninterrupted run (every draw depends on (seed, id) only;
outcomes depend only on the fault and the input).
"""
from __future__ import annotations

from typing import Callable, Iterable

from kernelfi._utils import KernelfiError
from kernelfi.campaign.batches import auto_batch, batches
from kernelfi.campaign.pool import execute_local
from kernelfi.campaign.prepared import CampaignConfig, Prepared, prepare
from kernelfi.execution import ENGINE_THREADS, Executed
from kernelfi.store import CampaignMeta, CampaignRow, InjectionRecord, Store
from kernelfi.types import Outcome, PlannedFault


def to_records(prep: Prepared, executed: Iterable[Executed]) -> list[InjectionRecord]:
    rows = prep.launch_rows()
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
        runs = execute(prep, work) if execute is not None else execute_local(prep, work, prep.config.workers)
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
