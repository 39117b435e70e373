"""A statistical fault-injection campaign: plan, run in batches, store, resume (docs/method.md).

The store is the single source of truth: a campaign is identified by the hash of what defines
it, so re-running the same command resumes it, runs only the missing injection ids, and ends
with exactly N rows identical to an uninterrupted run (every draw depends on (seed, id) only;
outcomes depend only on the fault and the input).
"""
from __future__ import annotations

import itertools
import os
from typing import Callable, Iterable, Iterator

from kernelfi._utils import KernelfiError
from kernelfi.campaign.batches import auto_batch, batches
from kernelfi.campaign.isolate import Done, ToolError
from kernelfi.campaign.pool import execute_local
from kernelfi.campaign.prepared import CampaignConfig, Prepared, prepare
from kernelfi.execution import ENGINE_THREADS
from kernelfi.store import CampaignMeta, CampaignRow, InjectionRecord, Store, ToolErrorRecord
from kernelfi.types import Outcome, PlannedFault


def to_records(prep: Prepared, executed: Iterable[Done], replay: str = "") -> list[InjectionRecord | ToolErrorRecord]:
    """Store rows of a batch's results; a tool error's row carries ``replay`` with its id
    appended (the command that re-runs that one injection)."""
    rows = prep.launch_rows()
    out: list[InjectionRecord | ToolErrorRecord] = []
    for e in executed:
        pf = e.planned
        if isinstance(e, ToolError):
            out.append(ToolErrorRecord.build(pf.id, pf.fault, e.error, e.traceback, weight=pf.weight,
                                             replay=f"{replay} --id {pf.id}" if replay else ""))
        else:
            out.append(InjectionRecord.build(pf.id, pf.fault, e.result, rows[pf.fault.site.launch], tag=e.tag,
                                             weight=pf.weight, seconds=e.seconds))
    return out


Progress = Callable[[int, dict[str, int]], None]
#: Runs the batches somewhere (a process pool, a Ray cluster) and yields each batch's results
#: (``isolate.run_batch``: a fault the tool fails on is a ``ToolError``, not an exception).
Execute = Callable[[Prepared, list[list[PlannedFault]]], Iterable[list[Done]]]


#: Injection ids drawn and sorted into batches at a time (``pending_work``): a campaign of any
#: size holds this many planned faults at most (drawing them takes a few seconds), and one of
#: up to this many injections is batched exactly as a whole list of its faults would be
PLAN_CHUNK = 1 << 16


def pending_work(prep: Prepared, pending: Iterable[int], size: int,
                 chunk: int | None = None) -> Iterator[list[list[PlannedFault]]]:
    """The batches of the ids ``pending`` (ascending), drawn lazily ``chunk`` ids at a time, one
    list of batches per chunk (what an executor runs at once): the fault of id i is
    ``planner.draw(i)`` whatever the chunking, and no list of all ids is ever made
    (``-n 10**12`` starts at once)."""
    layer_of = {l.index: l.layer for l in prep.session.program.trace.launches}
    ids, chunk = iter(pending), chunk or PLAN_CHUNK
    while True:
        part = [prep.planner.draw(i) for i in itertools.islice(ids, chunk)]
        if not part:
            return
        yield list(batches(part, layer_of, size))


def run_campaign(config: CampaignConfig, db: str, progress: Progress | None = None,
                 stop_after: int | None = None, execute: Execute | None = None,
                 notify: Callable[[str], None] | None = None) -> int:
    """Run (or resume) a campaign into ``db``; returns the campaign id.

    ``notify`` gets one line for each default or conversion that changes what is measured
    (``Prepared.notes``) and for each recorded file that moved or changed since a campaign of
    the same command, before the first ``progress`` call. An existing file is checked first
    (``Store.verify``: a damaged one is refused before a byte is written). A new campaign whose
    run fails before its first row is stored leaves no row behind. Faults the tool fails on are
    stored as tool errors and the campaign goes on."""
    prep = prepare(config)
    say = notify or (lambda line: None)
    for note in prep.notes:
        say(f"note: {note}")
    if os.path.exists(db) and os.path.getsize(db) > 0:  # checked before anything (a migration) writes
        with Store(db, create=False, readonly=True) as existing:
            existing.verify()
    with Store(db) as store:
        meta = prep.meta()
        before = store.campaigns()
        new = not store.has_campaign(meta.key)
        cid = store.get_or_create_campaign(meta, prep.launch_rows(), prep.layer_rows())
        stored = False
        try:
            for line in track_files(store, before, cid, meta):
                say(f"note: {line}")
            stored = _run_into(store, cid, prep, db, progress, stop_after, execute)
        finally:
            if new and not stored:
                store.drop_empty_campaign(cid)
    return cid


def _run_into(store: Store, cid: int, prep: Prepared, db: str, progress: Progress | None,
              stop_after: int | None, execute: Execute | None) -> bool:
    """The campaign's pending batches into ``store``; whether any row was stored."""
    config = prep.config
    done = store.done_ids(cid)
    threads = store.campaign(cid).meta.extra.get("engine_threads")
    if done and threads != ENGINE_THREADS:
        raise KernelfiError(f"{db}: campaign {cid} was run by an engine on {threads or 'all'} intra-op threads; "
                            f"rows of this version ({ENGINE_THREADS} thread) would differ in the last bits from "
                            "its stored ones: resume it with the version that started it, or use a new database")
    counts = {o.value: 0 for o in Outcome} | store.outcome_counts(cid)
    if progress:
        progress(len(done), counts)
    pending = (i for i in range(config.n) if i not in done)
    size = config.batch or auto_batch(prep.session.program.trace, not config.fast)
    n_done, stored = len(done), bool(done)
    again = f"kernelfi replay --db {db} --campaign {cid}"
    left = stop_after
    for work in pending_work(prep, pending, size):
        if left is not None:
            work, left = work[:left], left - min(left, len(work))
        runs = execute(prep, work) if execute is not None else execute_local(prep, work, config.workers)
        for executed in runs:
            records = to_records(prep, executed, again)
            store.add_results(cid, records)
            stored = True
            n_done += len(records)
            for r in records:
                key = "tool_error" if isinstance(r, ToolErrorRecord) else r.outcome
                counts[key] = counts.get(key, 0) + 1
            if progress:
                progress(n_done, counts)
        if left == 0:
            break
    return stored


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
        for role, f in files.items():  # same key, other content (a model's source): never mixed into its rows
            then = recorded.get(role, {}).get("sha256")
            if then and f["sha256"] and then != f["sha256"]:
                raise KernelfiError(f"{f['path']}: the campaign's {role} file changed since campaign {cid} (sha256 "
                                    f"{then[:12]} then, {f['sha256'][:12]} now); restore it, or use a new database")
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
