"""The results database's schema, its migrations, and opening a file safely.

Why migrations in the file: a results database outlives the tool version that wrote it (months
of campaigns), so every schema change is a numbered migration applied in order inside one
transaction and recorded in ``migrations``; ``PRAGMA user_version`` mirrors the latest version
so the check on open costs one read. ``PRAGMA application_id`` plus a ``kernelfi_meta`` row mark
the file as ours, so a foreign SQLite file is refused instead of being "migrated" into.
"""
from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from kernelfi._utils import KernelfiError, one_line

#: ``PRAGMA application_id``: ASCII "KFI1", how ``file(1)`` and we recognise the database.
APPLICATION_ID = 0x4B464931
FORMAT = "kernelfi-results"
SQLITE_HEADER = b"SQLite format 3\x00"


@dataclass(frozen=True)
class Migration:
    """One schema step: applied when the file's version is below ``version``."""

    version: int
    name: str
    statements: tuple[str, ...]


_OUTCOMES = "'masked','due','sdc_no_malfunction','sdc_light_malfunction','sdc_malfunction'"

_V1: tuple[str, ...] = (
    """CREATE TABLE kernelfi_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)""",
    """CREATE TABLE migrations (
        version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)""",
    """CREATE TABLE campaigns (
        id INTEGER PRIMARY KEY,
        key TEXT NOT NULL UNIQUE,
        created TEXT NOT NULL,
        model TEXT NOT NULL,
        weights_hash TEXT NOT NULL,
        weights_source TEXT NOT NULL,
        input_source TEXT NOT NULL,
        n_inputs INTEGER NOT NULL,
        seed INTEGER NOT NULL,
        mode TEXT NOT NULL CHECK (mode IN ('rf','iov','ioa')),
        bit_model TEXT NOT NULL CHECK (bit_model IN ('none','single','double','random','zero')),
        warp INTEGER NOT NULL CHECK (warp IN (0,1)),
        scope TEXT NOT NULL,
        selection TEXT NOT NULL,
        n_planned INTEGER NOT NULL CHECK (n_planned >= 0),
        hardening TEXT,
        derating REAL CHECK (derating IS NULL OR (derating >= 0 AND derating <= 1)),
        tool_version TEXT NOT NULL,
        extra TEXT NOT NULL DEFAULT '{}')""",
    """CREATE TABLE launches (
        campaign INTEGER NOT NULL REFERENCES campaigns(id) ON DELETE CASCADE,
        idx INTEGER NOT NULL,
        name TEXT NOT NULL,
        kernel TEXT NOT NULL,
        layer INTEGER NOT NULL,
        layer_type TEXT NOT NULL,
        n_fp32 INTEGER NOT NULL, n_ld INTEGER NOT NULL, n_gpr INTEGER NOT NULL,
        n_pr INTEGER NOT NULL, n_nodest INTEGER NOT NULL, n_others INTEGER NOT NULL,
        threads INTEGER NOT NULL,
        registers INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (campaign, idx),
        UNIQUE (campaign, name))""",
    """CREATE TABLE layers (
        campaign INTEGER NOT NULL REFERENCES campaigns(id) ON DELETE CASCADE,
        idx INTEGER NOT NULL,
        type TEXT NOT NULL,
        name TEXT NOT NULL,
        numel INTEGER NOT NULL,
        PRIMARY KEY (campaign, idx))""",
    f"""CREATE TABLE injections (
        campaign INTEGER NOT NULL REFERENCES campaigns(id) ON DELETE CASCADE,
        id INTEGER NOT NULL,
        input_id INTEGER NOT NULL,
        launch INTEGER NOT NULL,
        launch_name TEXT NOT NULL,
        kernel TEXT NOT NULL,
        layer INTEGER NOT NULL,
        layer_type TEXT NOT NULL,
        mode TEXT NOT NULL,
        grp TEXT NOT NULL,
        bit_model TEXT NOT NULL,
        warp INTEGER NOT NULL,
        thread INTEGER NOT NULL,
        slot INTEGER NOT NULL,
        iteration INTEGER NOT NULL,
        register INTEGER NOT NULL,
        tag TEXT NOT NULL,
        element INTEGER NOT NULL,
        bits TEXT NOT NULL,
        value INTEGER,
        original REAL,
        corrupted REAL,
        outcome TEXT NOT NULL CHECK (outcome IN ({_OUTCOMES})),
        flags TEXT NOT NULL,
        golden_top1 INTEGER NOT NULL,
        faulty_top1 INTEGER NOT NULL,
        weight REAL NOT NULL CHECK (weight > 0),
        seconds REAL NOT NULL,
        PRIMARY KEY (campaign, id),
        FOREIGN KEY (campaign, launch) REFERENCES launches(campaign, idx))""",
    """CREATE TABLE propagation (
        campaign INTEGER NOT NULL,
        injection INTEGER NOT NULL,
        layer INTEGER NOT NULL,
        corrupted INTEGER NOT NULL,
        numel INTEGER NOT NULL,
        max_abs REAL,
        max_rel REAL,
        PRIMARY KEY (campaign, injection, layer),
        FOREIGN KEY (campaign, injection) REFERENCES injections(campaign, id) ON DELETE CASCADE)""",
    """CREATE INDEX injections_by_outcome ON injections (campaign, outcome)""",
    f"""INSERT INTO kernelfi_meta (key, value) VALUES ('format', '{FORMAT}')""",
)

#: Every schema step, oldest first. Append only: never edit a released migration.
MIGRATIONS: list[Migration] = [Migration(1, "initial", _V1)]


def latest_version() -> int:
    return max(m.version for m in MIGRATIONS)


def now_utc() -> str:
    """The time a row is written, as the store records it (UTC, ISO 8601, seconds)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def corrupt(path: str | Path, err: BaseException | str) -> KernelfiError:
    """The one-line error for a file SQLite cannot read as a database."""
    return KernelfiError(one_line(f"{path}: corrupt or not a database: {err}"))


def connect(path: str | Path, create: bool) -> sqlite3.Connection:
    """Open ``path`` as a kernelfi results database, creating or migrating it as needed.

    Raises :class:`KernelfiError` (one line, naming the file) for a missing file when
    ``create`` is false, a non-SQLite or damaged file, a foreign SQLite database, or a database
    written by a newer schema.
    """
    p = Path(path)
    if not p.exists():
        if not create:
            raise KernelfiError(f"{path}: no such results database")
        p.parent.mkdir(parents=True, exist_ok=True)
    elif p.is_dir():
        raise KernelfiError(f"{path}: is a directory, not a results database")
    else:
        with open(p, "rb") as f:  # cheap, exact check before SQLite gets to guess
            head = f.read(len(SQLITE_HEADER))
        if head and head != SQLITE_HEADER:
            raise corrupt(path, "file is not a database")
    try:
        con = sqlite3.connect(str(p), isolation_level=None, timeout=30.0)
    except sqlite3.Error as err:
        raise KernelfiError(one_line(f"{path}: cannot open: {err}")) from None
    try:
        _prepare(con, path, create)
    except sqlite3.DatabaseError as err:
        con.close()
        if type(err) is sqlite3.DatabaseError:  # "file is not a database", "malformed"
            raise corrupt(path, err) from None
        raise KernelfiError(one_line(f"{path}: {err}")) from None
    except BaseException:
        con.close()
        raise
    return con


def _prepare(con: sqlite3.Connection, path: str | Path, create: bool) -> None:
    app_id = con.execute("PRAGMA application_id").fetchone()[0]
    version = con.execute("PRAGMA user_version").fetchone()[0]
    n_objects = con.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
    fresh = app_id == 0 and version == 0 and n_objects == 0
    if not fresh and not _is_ours(con, app_id):
        raise KernelfiError(f"{path}: not a kernelfi results database")
    if fresh and not create:
        raise KernelfiError(f"{path}: not a kernelfi results database")
    if version > latest_version():
        raise KernelfiError(
            f"{path}: written by a newer kernelfi (schema version {version}; this version reads "
            f"up to {latest_version()}); upgrade kernelfi to read it")
    # WAL: readers never block the writer and a commit is one append; NORMAL: see docs/store.md.
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=NORMAL")
    con.execute("PRAGMA foreign_keys=ON")
    con.execute("PRAGMA busy_timeout=30000")
    migrate(con)


def _is_ours(con: sqlite3.Connection, app_id: int) -> bool:
    if app_id == APPLICATION_ID:
        return True
    try:  # a file whose header was rewritten by a tool that drops application_id
        row = con.execute("SELECT value FROM kernelfi_meta WHERE key='format'").fetchone()
    except sqlite3.OperationalError:
        return False
    return row is not None and row[0] == FORMAT


def migrate(con: sqlite3.Connection) -> list[int]:
    """Apply every pending migration, each atomically with its ``migrations`` row.

    ``user_version`` and ``application_id`` are written inside the same transaction (SQLite
    keeps them in page 1), so a crash mid-migration leaves the previous version intact.
    Returns the versions applied.
    """
    applied: list[int] = []
    for m in sorted(MIGRATIONS, key=lambda m: m.version):
        con.execute("BEGIN IMMEDIATE")
        try:
            current = con.execute("PRAGMA user_version").fetchone()[0]
            if m.version <= current:  # another process got there first
                con.execute("ROLLBACK")
                continue
            for stmt in m.statements:
                con.execute(stmt)
            con.execute("INSERT INTO migrations (version, name, applied_at) VALUES (?, ?, ?)",
                        (m.version, m.name, now_utc()))
            con.execute(f"PRAGMA user_version={int(m.version)}")
            con.execute(f"PRAGMA application_id={APPLICATION_ID}")
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        applied.append(m.version)
    return applied
