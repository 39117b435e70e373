"""``Store``: the one handle on a results database (campaigns, trace, injections, propagation).

Writes are whole batches: ``add_results`` is one ``BEGIN IMMEDIATE … COMMIT`` that inserts
injections and their propagation rows together, so a process killed at any instant leaves
either the whole batch or none of it (SQLite's WAL guarantees the rest). Inserts are idempotent
on (campaign, id): a batch replayed after a crash, or by a second worker, adds nothing twice.
"""
from __future__ import annotations

import functools
import json
import math
import sqlite3
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence, TypeVar

from kernelfi._utils import KernelfiError, one_line
from kernelfi.types import GROUPS, OUTCOMES, Propagation

from . import schema
from .records import CampaignMeta, CampaignRow, InjectionRecord, LaunchRow, LayerRow

if TYPE_CHECKING:
    import pandas as pd

F = TypeVar("F", bound=Callable[..., Any])
CampaignIds = int | Iterable[int] | None

_INJ_COLS: tuple[str, ...] = (
    "id", "input_id", "launch", "launch_name", "kernel", "layer", "layer_type", "mode", "grp",
    "bit_model", "warp", "thread", "slot", "iteration", "register", "tag", "element", "bits",
    "value", "original", "corrupted", "outcome", "flags", "golden_top1", "faulty_top1", "weight",
    "seconds",
)
_REAL_COLS = ("original", "corrupted")
_GROUP_COLS = tuple(f"n_{g.lower()}" for g in GROUPS)


def _real_in(x: float | None) -> float | str | None:
    """SQLite turns NaN into NULL (= "no value"); store it as the text 'nan' to keep it."""
    if x is None:
        return None
    x = float(x)
    return "nan" if math.isnan(x) else x


def _real_out(x: Any) -> float | None:
    return None if x is None else float(x)


def _guarded(fn: F) -> F:
    """Turn SQLite's damage reports into the one-line, file-naming error the CLI prints."""
    @functools.wraps(fn)
    def wrapper(self: "Store", *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(self, *args, **kwargs)
        except sqlite3.DatabaseError as err:
            if type(err) is sqlite3.DatabaseError:
                raise schema.corrupt(self.path, err) from None
            msg = str(err)
            if any(s in msg for s in ("locked", "readonly", "disk I/O", "unable to open", "full")):
                raise KernelfiError(one_line(f"{self.path}: {msg}")) from None
            raise
    return wrapper  # type: ignore[return-value]


def _ids(campaign_ids: CampaignIds) -> list[int] | None:
    if campaign_ids is None:
        return None
    if isinstance(campaign_ids, int):
        return [campaign_ids]
    return [int(c) for c in campaign_ids]


class Store:
    """A kernelfi results database. ``Store(path)`` creates it if missing (``create=False``:
    it must exist). Use as a context manager, or call :meth:`close`. One per thread/process."""

    def __init__(self, path: str | Path, create: bool = True) -> None:
        self.path = str(path)
        self._con = schema.connect(path, create)
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

    @_guarded
    def schema_version(self) -> int:
        return int(self._con.execute("PRAGMA user_version").fetchone()[0])

    @_guarded
    def check(self) -> list[str]:
        """``PRAGMA integrity_check`` plus foreign-key check; ``[]`` means healthy."""
        rows = [r[0] for r in self._con.execute("PRAGMA integrity_check")]
        problems = [] if rows == ["ok"] else rows
        problems += [f"foreign key: {r}" for r in self._con.execute("PRAGMA foreign_key_check")]
        return problems

    # -- campaigns ---------------------------------------------------------------------------
    @_guarded
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
            con.execute("ROLLBACK")
            raise
        if row is not None:
            self._check_trace(cid, launches, layers)
        return cid

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
                {", ".join(_GROUP_COLS)}, threads, registers) VALUES ({",".join("?" * 14)})""",
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

    def _row_to_campaign(self, r: sqlite3.Row | tuple[Any, ...], n_done: int) -> CampaignRow:
        (cid, key, created, model, wh, ws, src, n_inputs, seed, mode, bm, warp, scope, sel,
         n_planned, hardening, derating, version, extra) = r
        meta = CampaignMeta(
            model=model, mode=mode, bit_model=bm, seed=seed, n_planned=n_planned, weights_hash=wh,
            weights_source=ws, input_source=src, n_inputs=n_inputs, warp=bool(warp), scope=scope,
            selection=sel, hardening=None if hardening is None else json.loads(hardening),
            derating=derating, tool_version=version, extra=json.loads(extra))
        return CampaignRow(int(cid), key, created, meta, n_done)

    _CAMPAIGN_SQL = """SELECT c.id, c.key, c.created, c.model, c.weights_hash, c.weights_source,
        c.input_source, c.n_inputs, c.seed, c.mode, c.bit_model, c.warp, c.scope, c.selection,
        c.n_planned, c.hardening, c.derating, c.tool_version, c.extra,
        (SELECT count(*) FROM injections i WHERE i.campaign = c.id) FROM campaigns c"""

    @_guarded
    def campaigns(self) -> list[CampaignRow]:
        """Every campaign in creation order, with how many injections are stored."""
        rows = self._con.execute(self._CAMPAIGN_SQL + " ORDER BY c.id").fetchall()
        return [self._row_to_campaign(r[:-1], int(r[-1])) for r in rows]

    @_guarded
    def campaign(self, campaign_id: int) -> CampaignRow:
        r = self._con.execute(self._CAMPAIGN_SQL + " WHERE c.id=?", (campaign_id,)).fetchone()
        if r is None:
            raise KernelfiError(f"{self.path}: no campaign {campaign_id}")
        return self._row_to_campaign(r[:-1], int(r[-1]))

    @_guarded
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
            con.execute("ROLLBACK")
            raise

    @_guarded
    def launches(self, campaign_id: int) -> list[LaunchRow]:
        rows = self._con.execute(
            f"""SELECT idx, name, kernel, layer, layer_type, {", ".join(_GROUP_COLS)}, threads,
                registers FROM launches WHERE campaign=? ORDER BY idx""", (campaign_id,))
        return [LaunchRow(r[0], r[1], r[2], r[3], r[4], dict(zip(GROUPS, r[5:11])), r[11], r[12])
                for r in rows]

    @_guarded
    def layers(self, campaign_id: int) -> list[LayerRow]:
        rows = self._con.execute(
            "SELECT idx, type, name, numel FROM layers WHERE campaign=? ORDER BY idx", (campaign_id,))
        return [LayerRow(*r) for r in rows]

    # -- injections ----------------------------------------------------------------------------
    @_guarded
    def done_ids(self, campaign_id: int) -> set[int]:
        """Ids already stored: a resumed campaign runs ``range(n_planned)`` minus these."""
        return {r[0] for r in self._con.execute(
            "SELECT id FROM injections WHERE campaign=?", (campaign_id,))}

    @_guarded
    def missing_ids(self, campaign_id: int) -> list[int]:
        """Planned ids not yet stored, ascending (what ``--resume`` still has to run)."""
        done = self.done_ids(campaign_id)
        return [i for i in range(self.campaign(campaign_id).meta.n_planned) if i not in done]

    @_guarded
    def outcome_counts(self, campaign_id: int) -> dict[str, int]:
        """Stored injections per outcome (every category present, zeros included)."""
        counts = dict.fromkeys(OUTCOMES, 0)
        for outcome, n in self._con.execute(
                "SELECT outcome, count(*) FROM injections WHERE campaign=? GROUP BY outcome",
                (campaign_id,)):
            counts[outcome] = int(n)
        return counts

    @_guarded
    def golden_predictions(self, campaign_id: int) -> dict[int, int]:
        """Input id -> its fault-free top-1 class, for the inputs the stored injections used."""
        return {int(i): int(p) for i, p in self._con.execute(
            "SELECT input_id, MIN(golden_top1) FROM injections WHERE campaign=? GROUP BY input_id", (campaign_id,))}

    def _launch_index(self, cid: int) -> dict[int, tuple[str, str, int, str]]:
        if cid not in self._launch_cache:
            self._launch_cache[cid] = {
                l.index: (l.name, l.kernel, l.layer, l.layer_type) for l in self.launches(cid)}
        return self._launch_cache[cid]

    @_guarded
    def add_results(self, campaign_id: int, rows: Iterable[InjectionRecord]) -> int:
        """Store a batch atomically; ids already stored are skipped. Returns how many were new.

        The record's launch must be in the campaign's trace with the same names: denormalised
        columns that disagree with the trace would make per-kernel tables lie.
        """
        rows = list(rows)
        trace = self._launch_index(campaign_id)
        for r in rows:
            want = trace.get(r.launch)
            if want != (r.launch_name, r.kernel, r.layer, r.layer_type):
                raise ValueError(
                    f"injection {r.id}: launch {r.launch} ({r.launch_name}, {r.kernel}, layer "
                    f"{r.layer}) does not match campaign {campaign_id}'s trace ({want})")
        con = self._con
        sql = (f"INSERT OR IGNORE INTO injections (campaign, {', '.join(_INJ_COLS)}) "
               f"VALUES ({','.join('?' * (len(_INJ_COLS) + 1))})")
        new = 0
        con.execute("BEGIN IMMEDIATE")
        try:
            for r in rows:
                cur = con.execute(sql, (campaign_id, *self._values(r)))
                if cur.rowcount == 1:
                    new += 1
                    con.executemany(
                        "INSERT INTO propagation (campaign, injection, layer, corrupted, numel, "
                        "max_abs, max_rel) VALUES (?,?,?,?,?,?,?)",
                        [(campaign_id, r.id, p.layer, p.corrupted, p.numel, _real_in(p.max_abs),
                          _real_in(p.max_rel)) for p in r.propagation])
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        return new

    @staticmethod
    def _values(r: InjectionRecord) -> tuple[Any, ...]:
        out: list[Any] = []
        for c in _INJ_COLS:
            v = getattr(r, c)
            if c == "bits":
                v = ",".join(str(b) for b in v)
            elif c == "flags":
                v = ",".join(v)
            elif c == "warp":
                v = int(v)
            elif c in _REAL_COLS:
                v = _real_in(v)
            out.append(v)
        return tuple(out)

    @_guarded
    def injection(self, campaign_id: int, id: int) -> InjectionRecord:
        """One stored injection with its propagation (what ``kernelfi replay`` compares to)."""
        row = self._con.execute(
            f"SELECT {', '.join(_INJ_COLS)} FROM injections WHERE campaign=? AND id=?",
            (campaign_id, id)).fetchone()
        if row is None:
            raise KernelfiError(f"{self.path}: no injection {id} in campaign {campaign_id}")
        d = dict(zip(_INJ_COLS, row))
        d["bits"] = tuple(int(b) for b in d["bits"].split(",")) if d["bits"] else ()
        d["flags"] = tuple(d["flags"].split(",")) if d["flags"] else ()
        for c in _REAL_COLS:
            d[c] = _real_out(d[c])
        props = self._con.execute(
            "SELECT layer, corrupted, numel, max_abs, max_rel FROM propagation "
            "WHERE campaign=? AND injection=? ORDER BY layer", (campaign_id, id))
        d["propagation"] = tuple(Propagation(l, c, n, _real_out(a), _real_out(r))  # type: ignore[arg-type]
                                 for l, c, n, a, r in props)
        return InjectionRecord(**d)

    # -- frames ----------------------------------------------------------------------------------
    def _frame(self, sql: str, campaign_ids: CampaignIds, order: str) -> "pd.DataFrame":
        import pandas as pd  # lazily: resume workers and the crash test need no pandas

        ids = _ids(campaign_ids)
        params: list[int] = []
        if ids is not None:
            sql += f" WHERE campaign IN ({','.join('?' * len(ids))})"
            params = ids
        return pd.read_sql_query(f"{sql} ORDER BY {order}", self._con, params=params)

    @_guarded
    def injections_frame(self, campaign_ids: CampaignIds = None) -> "pd.DataFrame":
        """One row per injection (columns as the table; ``warp`` bool; NaN/NULL reals as NaN)."""
        import pandas as pd

        df = self._frame(f"SELECT campaign, {', '.join(_INJ_COLS)} FROM injections",
                         campaign_ids, "campaign, id")
        df["warp"] = df["warp"].astype(bool)
        for c in _REAL_COLS:
            df[c] = pd.to_numeric(df[c], errors="coerce").astype(float)
        return df

    @_guarded
    def propagation_frame(self, campaign_ids: CampaignIds = None) -> "pd.DataFrame":
        """One row per (injection, downstream layer): corrupted, numel, max_abs, max_rel."""
        import pandas as pd

        df = self._frame("SELECT campaign, injection, layer, corrupted, numel, max_abs, max_rel "
                         "FROM propagation", campaign_ids, "campaign, injection, layer")
        for c in ("max_abs", "max_rel"):
            df[c] = pd.to_numeric(df[c], errors="coerce").astype(float)
        return df

    @_guarded
    def launches_frame(self, campaign_ids: CampaignIds = None) -> "pd.DataFrame":
        """The trace profile: one row per launch, a column per instruction group (FP32, LD, …)."""
        df = self._frame(
            f"SELECT campaign, idx AS launch, name, kernel, layer, layer_type, "
            f"{', '.join(f'{c} AS {g}' for c, g in zip(_GROUP_COLS, GROUPS))}, threads, registers "
            "FROM launches", campaign_ids, "campaign, idx")
        return df

    @_guarded
    def layers_frame(self, campaign_ids: CampaignIds = None) -> "pd.DataFrame":
        return self._frame("SELECT campaign, idx AS layer, type, name, numel FROM layers",
                           campaign_ids, "campaign, idx")

    @_guarded
    def campaigns_frame(self) -> "pd.DataFrame":
        """Campaign metadata flattened (hardening/extra as JSON text), plus ``n_done``."""
        import pandas as pd

        rows = []
        for c in self.campaigns():
            m = c.meta
            rows.append({
                "campaign": c.id, "key": c.key, "created": c.created, "model": m.model,
                "mode": m.mode, "bit_model": m.bit_model, "warp": m.warp, "seed": m.seed,
                "n_planned": m.n_planned, "n_done": c.n_done, "weights_hash": m.weights_hash,
                "weights_source": m.weights_source, "input_source": m.input_source,
                "n_inputs": m.n_inputs, "scope": m.scope, "selection": m.selection,
                "hardening": None if m.hardening is None else json.dumps(m.hardening, sort_keys=True),
                "derating": m.derating, "tool_version": m.tool_version,
                "extra": json.dumps(dict(m.extra), sort_keys=True)})
        return pd.DataFrame(rows)
