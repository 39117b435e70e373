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

#: Version 2: injections the tool failed to run (an exception inside kernelfi, not an outcome of
#: the fault). Not in ``injections``, so no rate, interval or count of outcomes ever includes them.
_V2: tuple[str, ...] = (
    """CREATE TABLE tool_errors (
        campaign INTEGER NOT NULL REFERENCES campaigns(id) ON DELETE CASCADE,
        id INTEGER NOT NULL,
        input_id INTEGER NOT NULL,
        launch INTEGER NOT NULL,
        mode TEXT NOT NULL,
        grp TEXT NOT NULL,
        bit_model TEXT NOT NULL,
        warp INTEGER NOT NULL,
        thread INTEGER NOT NULL,
        slot INTEGER NOT NULL,
        iteration INTEGER NOT NULL,
        register INTEGER NOT NULL,
        bits TEXT NOT NULL,
        value INTEGER,
        weight REAL NOT NULL CHECK (weight > 0),
        error TEXT NOT NULL,
        traceback TEXT NOT NULL,
        replay TEXT NOT NULL,
        tool_version TEXT NOT NULL,
        created TEXT NOT NULL,
        PRIMARY KEY (campaign, id),
        FOREIGN KEY (campaign, launch) REFERENCES launches(campaign, idx))""",
)

#: Every schema step, oldest first. Append only: never edit a released migration.
MIGRATIONS: list[Migration] = [Migration(1, "initial", _V1), Migration(2, "tool_errors", _V2)]

#: The tables each version must hold (a file missing one is damaged, not merely old).
TABLES: dict[int, tuple[str, ...]] = {
    1: ("kernelfi_meta", "migrations", "campaigns", "launches", "layers", "injections", "propagation"),
    2: ("tool_errors",),
}


def latest_version() -> int:
    return max(m.version for m in MIGRATIONS)


def now_utc() -> str:
    """The time a row is written, as the store records it (UTC, ISO 8601, seconds)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def corrupt(path: str | Path, err: BaseException | str) -> KernelfiError:
    """The one-line error for a file SQLite cannot read as a database."""
    return KernelfiError(one_line(f"{path}: corrupt or not a database: {err}"))


def rollback(con: sqlite3.Connection) -> None:
    """Roll back the open transaction, if SQLite has not already: after SQLITE_FULL or an I/O
    error it rolls back by itself, and an explicit ROLLBACK would then raise "cannot rollback -
    no transaction is active", hiding the error that matters."""
    if con.in_transaction:
        try:
            con.execute("ROLLBACK")
        except sqlite3.Error:  # the real error is the one being raised
            pass


def connect(path: str | Path, create: bool, readonly: bool = False) -> sqlite3.Connection:
    """Open ``path`` as a kernelfi results database, creating or migrating it as needed.

    ``readonly``: open it for reading only (``mode=ro``): nothing is migrated or written, the
    file's bytes stay as they are, and a file on a read-only mount or in a directory this
    process cannot write opens too (``immutable=1``, where SQLite could not create its shared-
    memory file; refused when a write-ahead log holds rows the file does not, see
    docs/store.md).

    Raises :class:`KernelfiError` (one line, naming the file) for a missing file when
    ``create`` is false, a non-SQLite or damaged file, a foreign SQLite database, a database
    written by a newer schema, or one missing a table of its version.
    """
    p = Path(path)
    if not p.exists():
        if not create or readonly:
            raise KernelfiError(f"{path}: no such results database")
        try:
            p.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise KernelfiError(one_line(f"{path}: cannot create its directory: {err.strerror}")) from None
    elif p.is_dir():
        raise KernelfiError(f"{path}: is a directory, not a results database")
    else:
        try:
            with open(p, "rb") as f:  # cheap, exact check before SQLite gets to guess
                head = f.read(len(SQLITE_HEADER))
        except OSError as err:
            raise KernelfiError(one_line(f"{path}: cannot read: {err.strerror}")) from None
        if head and head != SQLITE_HEADER:
            raise corrupt(path, "file is not a database")
        if readonly and not head:
            raise KernelfiError(f"{path}: empty file, not a results database")
    try:
        con = _open(p, readonly)
    except sqlite3.Error as err:
        if readonly and _cannot_open(err):
            return _immutable(p, path)
        raise KernelfiError(one_line(f"{path}: cannot open: {err}")) from None
    try:
        _prepare(con, path, create, readonly)
    except sqlite3.DatabaseError as err:
        con.close()
        if readonly and _cannot_open(err):
            return _immutable(p, path)
        if type(err) is sqlite3.DatabaseError:  # "file is not a database", "malformed"
            raise corrupt(path, err) from None
        raise KernelfiError(one_line(f"{path}: {err}")) from None
    except BaseException:
        con.close()
        raise
    return con


def _open(p: Path, readonly: bool, immutable: bool = False) -> sqlite3.Connection:
    if not readonly:
        return sqlite3.connect(str(p), isolation_level=None, timeout=30.0)
    uri = p.resolve().as_uri() + ("?immutable=1" if immutable else "?mode=ro")
    return sqlite3.connect(uri, uri=True, isolation_level=None, timeout=30.0)


def _cannot_open(err: sqlite3.Error) -> bool:
    """SQLite could not open the file read-only: a WAL database whose shared-memory file it may
    not create (a read-only mount or directory)."""
    return any(s in str(err) for s in ("unable to open", "readonly", "read-only"))


def _immutable(p: Path, path: str | Path) -> sqlite3.Connection:
    """Read a database nobody can be writing (its directory is read-only) without the shared-
    memory file SQLite would create next to it; refused when its write-ahead log holds commits
    the file does not yet (``immutable`` would silently skip them)."""
    wal = Path(str(p) + "-wal")
    if wal.exists() and wal.stat().st_size > 0:
        raise KernelfiError(one_line(
            f"{path}: cannot read it here: its write-ahead log {wal.name} holds rows not yet in the file "
            "and the directory is read-only; copy the file with its -wal and -shm to a writable place"))
    try:
        con = _open(p, readonly=True, immutable=True)
        _prepare(con, path, False, True)
    except sqlite3.DatabaseError as err:
        if type(err) is sqlite3.DatabaseError:
            raise corrupt(path, err) from None
        raise KernelfiError(one_line(f"{path}: cannot open read-only: {err}")) from None
    return con


def _prepare(con: sqlite3.Connection, path: str | Path, create: bool, readonly: bool = False) -> None:
    app_id = con.execute("PRAGMA application_id").fetchone()[0]
    version = con.execute("PRAGMA user_version").fetchone()[0]
    names = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    n_objects = con.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
    fresh = app_id == 0 and version == 0 and n_objects == 0
    if not fresh and not _is_ours(con, app_id):
        raise KernelfiError(f"{path}: not a kernelfi results database")
    if fresh and (not create or readonly):
        raise KernelfiError(f"{path}: not a kernelfi results database")
    if version > latest_version():
        raise KernelfiError(
            f"{path}: written by a newer kernelfi (schema version {version}; this version reads "
            f"up to {latest_version()}); upgrade kernelfi to read it")
    missing = [t for v, tables in sorted(TABLES.items()) if v <= version for t in tables if t not in names]
    if missing:
        raise KernelfiError(f"{path}: damaged results database: table {', '.join(missing)} is missing "
                            f"(schema version {version})")
    con.execute("PRAGMA foreign_keys=ON")
    con.execute("PRAGMA busy_timeout=30000")
    if readonly:
        con.execute("PRAGMA query_only=ON")
        return
    # WAL: readers never block the writer and a commit is one append; NORMAL: see docs/store.md.
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=NORMAL")
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
                rollback(con)
                continue
            for stmt in m.statements:
                con.execute(stmt)
            con.execute("INSERT INTO migrations (version, name, applied_at) VALUES (?, ?, ?)",
                        (m.version, m.name, now_utc()))
            con.execute(f"PRAGMA user_version={int(m.version)}")
            con.execute(f"PRAGMA application_id={APPLICATION_ID}")
            con.execute("COMMIT")
        except BaseException:
            rollback(con)
            raise
        applied.append(m.version)
    return applied
