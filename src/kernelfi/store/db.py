"""``Store``: the one handle on a results database (campaigns, trace, injections, propagation).

Writes are whole batches: ``add_results`` is one ``BEGIN IMMEDIATE … COMMIT`` that inserts
injections and their propagation rows together, so a process killed at any instant leaves
either the whole batch or none of it (SQLite's WAL guarantees the rest). Inserts are idempotent
on (campaign, id): a batch replayed after a crash, or by a second worker, adds nothing twice.
"""
from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from types import TracebackType
from typing import Any, Iterable, Sequence

from kernelfi._utils import KernelfiError, one_line
from kernelfi.types import GROUPS, OUTCOMES, Propagation

from . import schema
from .columns import ERR_COLS, GROUP_COLS, INJ_COLS, REAL_COLS, column, guarded, parse_json, real_in, real_out
from .frames import Frames
from .records import CampaignMeta, CampaignRow, InjectionRecord, LaunchRow, LayerRow, ToolErrorRecord


class Store(Frames):
    """A kernelfi results database. ``Store(path)`` creates it if missing (``create=False``:
    it must exist). Use as a context manager, or call :meth:`close`. One per thread/process."""

    def __init__(self, path: str | Path, create: bool = True, readonly: bool = False) -> None:
        """``readonly``: read it without writing a byte (no migration; works on a read-only
        mount); summary, report and replay open files so."""
        self.path = str(path)
        self.readonly = readonly
        self._con = schema.connect(path, create, readonly)
        self._version = int(self._con.execute("PRAGMA user_version").fetchone()[0])
        self._launch_cache: dict[int, dict[int, tuple[str, str, int, str]]] = {}

    # -- lifecycle ---------------------------------------------------------------------------
    def close(self) -> None:
        self._con.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    @property
    def connection(self) -> sqlite3.Connection:
        """The raw connection, for read-only ad-hoc SQL (tests, notebooks)."""
        return self._con

    @guarded
    def schema_version(self) -> int:
        return int(self._con.execute("PRAGMA user_version").fetchone()[0])

    @guarded
    def check(self) -> list[str]:
        """``PRAGMA integrity_check`` plus foreign-key check; ``[]`` means healthy."""
        rows = [r[0] for r in self._con.execute("PRAGMA integrity_check")]
        problems = [] if rows == ["ok"] else rows
        problems += [f"foreign key: {r}" for r in self._con.execute("PRAGMA foreign_key_check")]
        return problems

    def verify(self) -> None:
        """Refuse a damaged file before anything reads a result from it or writes into it:
        ``PRAGMA quick_check`` (every page and b-tree, not the index contents; about a second per
        few hundred MB). Raises the one-line "damaged" error; healthy files pass silently."""
        try:
            rows = [r[0] for r in self._con.execute("PRAGMA quick_check(1)")]
        except sqlite3.DatabaseError as err:
            rows = [str(err)]
        if rows != ["ok"]:
            raise KernelfiError(one_line(f"{self.path}: damaged results database (quick_check: {rows[0]}); "
                                         "nothing was read from it or written to it"))

    # -- campaigns ---------------------------------------------------------------------------
    @guarded
    def get_or_create_campaign(self, meta: CampaignMeta, launches: Sequence[LaunchRow],
                               layers: Sequence[LayerRow]) -> int:
        """The id of the campaign with ``meta.key``, creating it (with its trace) if new.

        An existing campaign must have been planned on the same trace: resuming against a
        different kernel list would silently mix populations, so that is an error.
        """
        key = meta.key
        con = self._con
        con.execute("BEGIN IMMEDIATE")
        try:
            row = con.execute("SELECT id FROM campaigns WHERE key=?", (key,)).fetchone()
            if row is None:
                cid = self._insert_campaign(meta, key, launches, layers)
            else:
                cid = int(row[0])
            con.execute("COMMIT")
        except BaseException:
            schema.rollback(con)
            raise
        if row is not None:
            self._check_trace(cid, launches, layers)
        return cid

    @guarded
    def has_campaign(self, key: str) -> bool:
        """Is a campaign of this key (``CampaignMeta.key``) stored?"""
        return self._con.execute("SELECT 1 FROM campaigns WHERE key=?", (key,)).fetchone() is not None

    @guarded
    def drop_empty_campaign(self, campaign_id: int) -> bool:
        """Delete a campaign that holds no row (a new campaign whose run failed before its
        first batch), with its trace; one that holds any row is kept. Whether it was deleted."""
        con = self._con
        con.execute("BEGIN IMMEDIATE")
        try:
            rows = con.execute("SELECT count(*) FROM injections WHERE campaign=?", (campaign_id,)).fetchone()[0]
            if self._version >= 2:
                rows += con.execute("SELECT count(*) FROM tool_errors WHERE campaign=?", (campaign_id,)).fetchone()[0]
            if not rows:
                for table in ("launches", "layers", "campaigns"):
                    con.execute(f"DELETE FROM {table} WHERE {'id' if table == 'campaigns' else 'campaign'}=?",
                                (campaign_id,))
            con.execute("COMMIT")
        except BaseException:
            schema.rollback(con)
            raise
        self._launch_cache.pop(campaign_id, None)
        return not rows

    def _insert_campaign(self, meta: CampaignMeta, key: str, launches: Sequence[LaunchRow],
                         layers: Sequence[LayerRow]) -> int:
        cur = self._con.execute(
            """INSERT INTO campaigns (key, created, model, weights_hash, weights_source,
               input_source, n_inputs, seed, mode, bit_model, warp, scope, selection, n_planned,
               hardening, derating, tool_version, extra)
               VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)""",
            (key, schema.now_utc(), meta.model, meta.weights_hash, meta.weights_source,
             meta.input_source, int(meta.n_inputs), int(meta.seed), meta.mode, meta.bit_model,
             int(meta.warp), meta.scope, meta.selection, int(meta.n_planned),
             None if meta.hardening is None else json.dumps(meta.hardening, sort_keys=True),
             meta.derating, meta.tool_version, json.dumps(dict(meta.extra), sort_keys=True)))
        cid = int(cur.lastrowid)  # type: ignore[arg-type]
        self._con.executemany(
            f"""INSERT INTO launches (campaign, idx, name, kernel, layer, layer_type,
                {", ".join(GROUP_COLS)}, threads, registers) VALUES ({",".join("?" * 14)})""",
            [(cid, l.index, l.name, l.kernel, l.layer, l.layer_type,
              *(l.counts[g] for g in GROUPS), l.threads, l.registers) for l in launches])
        self._con.executemany(
            "INSERT INTO layers (campaign, idx, type, name, numel) VALUES (?,?,?,?,?)",
            [(cid, l.index, l.type, l.name, l.numel) for l in layers])
        return cid

    def _check_trace(self, cid: int, launches: Sequence[LaunchRow], layers: Sequence[LayerRow]) -> None:
        stored_l, stored_y = self.launches(cid), self.layers(cid)
        if list(launches) != stored_l or list(layers) != stored_y:
            raise KernelfiError(
                f"{self.path}: campaign {cid} was planned on a different kernel trace "
                "(the model or the lowering changed); use a new --db or a different seed")

    def _row_to_campaign(self, r: sqlite3.Row | tuple[Any, ...], n_done: int, n_tool_errors: int) -> CampaignRow:
        (cid, key, created, model, wh, ws, src, n_inputs, seed, mode, bm, warp, scope, sel,
         n_planned, hardening, derating, version, extra) = r
        meta = CampaignMeta(
            model=model, mode=mode, bit_model=bm, seed=seed, n_planned=n_planned, weights_hash=wh,
            weights_source=ws, input_source=src, n_inputs=n_inputs, warp=bool(warp), scope=scope,
            selection=sel, hardening=None if hardening is None else parse_json(self.path, cid, "hardening", hardening),
            derating=derating, tool_version=version, extra=parse_json(self.path, cid, "extra", extra))
        if not isinstance(meta.extra, dict):
            raise KernelfiError(f"{self.path}: damaged results database: campaign {cid}'s extra is not a JSON object")
        return CampaignRow(int(cid), key, created, meta, n_done, n_tool_errors)

    def _campaign_sql(self) -> str:
        errors = ("(SELECT count(*) FROM tool_errors t WHERE t.campaign = c.id)" if self._version >= 2 else "0")
        return f"""SELECT c.id, c.key, c.created, c.model, c.weights_hash, c.weights_source,
            c.input_source, c.n_inputs, c.seed, c.mode, c.bit_model, c.warp, c.scope, c.selection,
            c.n_planned, c.hardening, c.derating, c.tool_version, c.extra,
            (SELECT count(*) FROM injections i WHERE i.campaign = c.id), {errors} FROM campaigns c"""

    @guarded
    def campaigns(self) -> list[CampaignRow]:
        """Every campaign in creation order, with how many injections (and tool errors) are stored."""
        rows = self._con.execute(self._campaign_sql() + " ORDER BY c.id").fetchall()
        return [self._row_to_campaign(r[:-2], int(r[-2]), int(r[-1])) for r in rows]

    @guarded
    def campaign(self, campaign_id: int) -> CampaignRow:
        r = self._con.execute(self._campaign_sql() + " WHERE c.id=?", (campaign_id,)).fetchone()
        if r is None:
            raise KernelfiError(f"{self.path}: no campaign {campaign_id}")
        return self._row_to_campaign(r[:-2], int(r[-2]), int(r[-1]))

    @guarded
    def update_extra(self, campaign_id: int, updates: dict[str, Any]) -> None:
        """Replace top-level entries of a campaign's ``extra`` (bookkeeping only: ``extra`` is
        not part of the campaign's key, so what it measures cannot change this way). Used to
        record where a resumed campaign's files are now (``campaign.track_files``)."""
        con = self._con
        con.execute("BEGIN IMMEDIATE")
        try:
            row = con.execute("SELECT extra FROM campaigns WHERE id=?", (campaign_id,)).fetchone()
            if row is None:
                raise KernelfiError(f"{self.path}: no campaign {campaign_id}")
            extra = {**json.loads(row[0]), **updates}
            con.execute("UPDATE campaigns SET extra=? WHERE id=?", (json.dumps(extra, sort_keys=True), campaign_id))
            con.execute("COMMIT")
        except BaseException:
            schema.rollback(con)
            raise

    @guarded
    def launches(self, campaign_id: int) -> list[LaunchRow]:
        rows = self._con.execute(
            f"""SELECT idx, name, kernel, layer, layer_type, {", ".join(GROUP_COLS)}, threads,
                registers FROM launches WHERE campaign=? ORDER BY idx""", (campaign_id,))
        return [LaunchRow(r[0], r[1], r[2], r[3], r[4], dict(zip(GROUPS, r[5:11])), r[11], r[12])
                for r in rows]

    @guarded
    def layers(self, campaign_id: int) -> list[LayerRow]:
        rows = self._con.execute(
            "SELECT idx, type, name, numel FROM layers WHERE campaign=? ORDER BY idx", (campaign_id,))
        return [LayerRow(*r) for r in rows]

    # -- injections ----------------------------------------------------------------------------
    @guarded
    def done_ids(self, campaign_id: int) -> set[int]:
        """Ids already stored: a resumed campaign runs ``range(n_planned)`` minus these."""
        return {r[0] for r in self._con.execute(
            "SELECT id FROM injections WHERE campaign=?", (campaign_id,))}

    @guarded
    def missing_ids(self, campaign_id: int) -> list[int]:
        """Planned ids not yet stored, ascending (what ``--resume`` still has to run)."""
        done = self.done_ids(campaign_id)
        return [i for i in range(self.campaign(campaign_id).meta.n_planned) if i not in done]

    @guarded
    def outcome_counts(self, campaign_id: int) -> dict[str, int]:
        """Stored injections per outcome (every category present, zeros included)."""
        counts = dict.fromkeys(OUTCOMES, 0)
        for outcome, n in self._con.execute(
                "SELECT outcome, count(*) FROM injections WHERE campaign=? GROUP BY outcome",
                (campaign_id,)):
            counts[outcome] = int(n)
        return counts

    @guarded
    def golden_predictions(self, campaign_id: int) -> dict[int, int]:
        """Input id -> its fault-free top-1 class, for the inputs the stored injections used."""
        return {int(i): int(p) for i, p in self._con.execute(
            "SELECT input_id, MIN(golden_top1) FROM injections WHERE campaign=? GROUP BY input_id", (campaign_id,))}

    def _launch_index(self, cid: int) -> dict[int, tuple[str, str, int, str]]:
        if cid not in self._launch_cache:
            self._launch_cache[cid] = {
                l.index: (l.name, l.kernel, l.layer, l.layer_type) for l in self.launches(cid)}
        return self._launch_cache[cid]

    @guarded
    def add_results(self, campaign_id: int, rows: Iterable[InjectionRecord | ToolErrorRecord]) -> int:
        """Store a batch atomically; ids already stored are skipped. Returns how many were new.

        The record's launch must be in the campaign's trace with the same names: denormalised
        columns that disagree with the trace would make per-kernel tables lie. A tool error
        (``ToolErrorRecord``) replaces an earlier one of the same id; an injection row of an id
        that was a tool error replaces it (the fault ran cleanly this time).
        """
        rows = list(rows)
        trace = self._launch_index(campaign_id)
        for r in rows:
            want = trace.get(r.launch)
            if isinstance(r, ToolErrorRecord):
                if want is None:
                    raise ValueError(f"tool error {r.id}: launch {r.launch} is not in campaign {campaign_id}'s trace")
            elif want != (r.launch_name, r.kernel, r.layer, r.layer_type):
                raise ValueError(
                    f"injection {r.id}: launch {r.launch} ({r.launch_name}, {r.kernel}, layer "
                    f"{r.layer}) does not match campaign {campaign_id}'s trace ({want})")
        if any(isinstance(r, ToolErrorRecord) for r in rows) and self._version < 2:
            raise KernelfiError(f"{self.path}: opened read-only at schema version {self._version}")
        con = self._con
        sql = (f"INSERT OR IGNORE INTO injections (campaign, {', '.join(INJ_COLS)}) "
               f"VALUES ({','.join('?' * (len(INJ_COLS) + 1))})")
        new = 0
        con.execute("BEGIN IMMEDIATE")
        try:
            for r in rows:
                if isinstance(r, ToolErrorRecord):
                    new += self._add_tool_error(campaign_id, r)
                    continue
                cur = con.execute(sql, (campaign_id, *self._values(r)))
                if cur.rowcount == 1:
                    new += 1
                    con.executemany(
                        "INSERT INTO propagation (campaign, injection, layer, corrupted, numel, "
                        "max_abs, max_rel) VALUES (?,?,?,?,?,?,?)",
                        [(campaign_id, r.id, p.layer, p.corrupted, p.numel, real_in(p.max_abs),
                          real_in(p.max_rel)) for p in r.propagation])
                    if self._version >= 2:
                        con.execute("DELETE FROM tool_errors WHERE campaign=? AND id=?", (campaign_id, r.id))
            con.execute("COMMIT")
        except BaseException:
            schema.rollback(con)
            raise
        return new

    def _add_tool_error(self, cid: int, r: ToolErrorRecord) -> int:
        """Insert (or replace) one tool error, unless the id already has its injection row."""
        con = self._con
        if con.execute("SELECT 1 FROM injections WHERE campaign=? AND id=?", (cid, r.id)).fetchone():
            return 0
        old = con.execute("SELECT 1 FROM tool_errors WHERE campaign=? AND id=?", (cid, r.id)).fetchone()
        con.execute(
            f"INSERT OR REPLACE INTO tool_errors (campaign, {', '.join(ERR_COLS)}, created) "
            f"VALUES ({','.join('?' * (len(ERR_COLS) + 2))})",
            (cid, *(column(r, c) for c in ERR_COLS), schema.now_utc()))
        return 0 if old else 1

    @guarded
    def tool_errors(self, campaign_id: int) -> list[ToolErrorRecord]:
        """The injections the tool failed to run, by id (empty for a file older than version 2)."""
        if self._version < 2:
            return []
        rows = self._con.execute(f"SELECT {', '.join(ERR_COLS)} FROM tool_errors WHERE campaign=? ORDER BY id",
                                 (campaign_id,)).fetchall()
        out = []
        for row in rows:
            d = dict(zip(ERR_COLS, row))
            d["bits"] = tuple(int(b) for b in d["bits"].split(",")) if d["bits"] else ()
            out.append(ToolErrorRecord(**d))
        return out

    @staticmethod
    def _values(r: InjectionRecord) -> tuple[Any, ...]:
        return tuple(column(r, c) for c in INJ_COLS)

    @guarded
    def injection(self, campaign_id: int, id: int) -> InjectionRecord:
        """One stored injection with its propagation (what ``kernelfi replay`` compares to)."""
        row = self._con.execute(
            f"SELECT {', '.join(INJ_COLS)} FROM injections WHERE campaign=? AND id=?",
            (campaign_id, id)).fetchone()
        if row is None:
            raise KernelfiError(f"{self.path}: no injection {id} in campaign {campaign_id}")
        d = dict(zip(INJ_COLS, row))
        d["bits"] = tuple(int(b) for b in d["bits"].split(",")) if d["bits"] else ()
        d["flags"] = tuple(d["flags"].split(",")) if d["flags"] else ()
        for c in REAL_COLS:
            d[c] = real_out(d[c])
        props = self._con.execute(
            "SELECT layer, corrupted, numel, max_abs, max_rel FROM propagation "
            "WHERE campaign=? AND injection=? ORDER BY layer", (campaign_id, id))
        d["propagation"] = tuple(Propagation(l, c, n, real_out(a), real_out(r))  # type: ignore[arg-type]
                                 for l, c, n, a, r in props)
        return InjectionRecord(**d)
