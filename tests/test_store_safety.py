"""The store checks itself: a damaged file is refused in one line and never written, read-only
commands leave the file as it is (and read it where it cannot be written), a full disk is one
line with the rows before it kept."""
from __future__ import annotations

import dataclasses
import errno
import os
import shutil
import sqlite3
from pathlib import Path

import pytest

from kernelfi.campaign import CampaignConfig, ModelSpec, run_campaign
from kernelfi.store import Store, schema
from cli_util import invoke, one_line

N, BATCH = 3000, 256
CFG = CampaignConfig(ModelSpec("digits-alexnet"), "iov", "single", n=N, seed=1, inputs=8, batch=BATCH)
CAMPAIGN = ["campaign", "digits-alexnet", "--mode", "iov", "-n", str(N), "--seed", "1", "--inputs", "8",
            "--batch", str(BATCH), "--quiet", "--workers", "1", "--db"]


@pytest.fixture(scope="module")
def half(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A half-done campaign: 6 of its 12 batches stored (1536 rows), the file checkpointed."""
    db = tmp_path_factory.mktemp("half") / "half.db"
    run_campaign(CFG, str(db), stop_after=6)
    assert not Path(str(db) + "-wal").exists()
    return db


def copy(src: Path, dst: Path) -> Path:
    shutil.copy(src, dst)
    return dst


def _ids(db: Path) -> set[int]:
    with Store(db, create=False, readonly=True) as s:
        return s.done_ids(1)


def state(db: Path) -> tuple[bytes, int]:
    return db.read_bytes(), db.stat().st_mtime_ns


def readers(db: Path, out: Path) -> list[list[str]]:
    return [["summary", "--db", str(db)], ["report", "--db", str(db), "--out", str(out)],
            ["replay", "--db", str(db), "--id", "5"]]


def test_a_damaged_file_is_refused_by_every_command_and_never_written(half: Path, tmp_path: Path) -> None:
    db = copy(half, tmp_path / "damaged.db")
    data = bytearray(db.read_bytes())
    for frac in (1 / 3, 1 / 2, 2 / 3):  # 256 bytes XOR-ed at a third, half and two thirds
        at = int(len(data) * frac)
        data[at:at + 256] = bytes(b ^ 0xFF for b in data[at:at + 256])
    db.write_bytes(bytes(data))
    before = state(db)
    for args in readers(db, tmp_path / "rep") + [CAMPAIGN + [str(db)]]:
        one_line(invoke(*args), "damaged.db: damaged results database (quick_check:", "nothing was")
        assert state(db) == before
    assert not (tmp_path / "rep" / "index.html").exists()


@pytest.mark.parametrize("damage,needle", [
    ("DROP TABLE propagation", "table propagation is missing"),
    ("UPDATE campaigns SET extra = '{\"model_spec\": '", "campaign 1's extra is not valid JSON"),
    ("UPDATE campaigns SET hardening = '[1,'", "campaign 1's hardening is not valid JSON"),
    ("UPDATE campaigns SET extra = '[1, 2]'", "campaign 1's extra is not a JSON object"),
])
def test_a_dropped_table_or_broken_json_is_one_line(half: Path, tmp_path: Path, damage: str, needle: str) -> None:
    db = copy(half, tmp_path / "broken.db")
    with sqlite3.connect(db) as con:
        con.execute("PRAGMA foreign_keys=OFF")
        con.execute(damage)
    con.close()
    commands = readers(db, tmp_path / "rep") + ([CAMPAIGN + [str(db)]] if "DROP" in damage or "{" in damage else [])
    for args in commands:
        one_line(invoke(*args), "broken.db: damaged results database", needle)


def test_read_only_commands_leave_the_file_as_it_is(half: Path, tmp_path: Path) -> None:
    db = copy(half, tmp_path / "ro.db")
    os.utime(db, ns=(1_000_000_000, 1_000_000_000))
    before = state(db)
    r = invoke("summary", "--db", str(db))
    assert r.exit_code == 0 and "n=1536/3000" in r.stdout
    r = invoke("replay", "--db", str(db), "--id", str(min(_ids(half))))
    assert r.exit_code == 0 and "matches the stored row" in r.stdout, r.output
    assert invoke("report", "--db", str(db), "--out", str(tmp_path / "rep")).exit_code == 0
    assert state(db) == before


def test_an_old_file_is_read_without_being_migrated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "v1.db"
    with monkeypatch.context() as m:
        m.setattr(schema, "MIGRATIONS", schema.MIGRATIONS[:1])
        run_campaign(dataclasses.replace(CFG, n=40), str(db))
    before = state(db)
    r = invoke("summary", "--db", str(db))
    assert r.exit_code == 0 and "n=40/40" in r.stdout
    assert state(db) == before
    with Store(db, readonly=True) as s:
        assert s.schema_version() == 1


def _wal_snapshot(half: Path, where: Path, name: str) -> Path:
    """A copy of ``half`` plus a write-ahead log holding a commit the file does not (a writer
    that never checkpointed), without the shared-memory file."""
    live = where / f"{name}.live"
    live.mkdir()
    writer = Store(copy(half, live / "w.db"))
    try:
        writer.connection.execute("PRAGMA wal_autocheckpoint=0")
        writer.connection.execute("UPDATE campaigns SET created = 'written after the last checkpoint'")
        for suffix in ("", "-wal"):
            shutil.copy(str(live / "w.db") + suffix, str(where / name) + suffix)
    finally:
        writer.close()
    return where / name


def test_where_sqlite_cannot_open_read_only_the_file_is_read_immutable(half: Path, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """On a read-only mount SQLite cannot open a WAL database with mode=ro ("unable to open
    database file": it may not create the -shm file); simulated here (as root every directory
    is writable), the file is read as immutable; where a write-ahead log holds rows the file
    does not, one line. ``test_on_a_read_only_mount`` does it for real where it can mount."""
    real = schema._open

    def no_shm(p: Path, readonly: bool, immutable: bool = False) -> sqlite3.Connection:
        if readonly and not immutable:
            raise sqlite3.OperationalError("unable to open database file")
        return real(p, readonly, immutable)
    db = copy(half, tmp_path / "mounted.db")
    snap = _wal_snapshot(half, tmp_path, "w.db")
    monkeypatch.setattr(schema, "_open", no_shm)
    before = state(db)
    r = invoke("summary", "--db", str(db))
    assert r.exit_code == 0 and "n=1536/3000" in r.stdout, r.output
    assert state(db) == before and not Path(str(db) + "-shm").exists()
    one_line(invoke("summary", "--db", str(snap)), "w.db: cannot read it here",
             "write-ahead log w.db-wal holds rows not yet in the file")


def test_on_a_read_only_mount(half: Path, tmp_path: Path) -> None:
    """The same on a real read-only tmpfs (needs root and mount(2); skipped elsewhere)."""
    import subprocess

    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root with CAP_SYS_ADMIN)")
    try:
        copy(half, mnt / "half.db")
        _wal_snapshot(half, mnt, "w.db")
        subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
        r = invoke("summary", "--db", str(mnt / "half.db"))
        assert r.exit_code == 0 and "n=1536/3000" in r.stdout, r.output
        r = invoke("replay", "--db", str(mnt / "half.db"), "--id", str(min(_ids(half))))
        assert r.exit_code == 0 and "matches the stored row" in r.stdout, r.output
        one_line(invoke("summary", "--db", str(mnt / "w.db")), "cannot read it here")
        one_line(invoke(*CAMPAIGN, str(mnt / "half.db")), "half.db")  # a campaign cannot write there
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_a_full_disk_is_one_line_and_keeps_the_rows_before(half: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """SQLITE_FULL, simulated with max_page_count (the pages of about three batches more):
    one line naming the file and its disk, the batches committed before intact, and the same
    rows as a campaign that had room."""
    db = tmp_path / "full.db"
    real = schema._open

    def small(p: Path, readonly: bool, immutable: bool = False) -> sqlite3.Connection:
        con = real(p, readonly, immutable)
        if not readonly:
            con.execute("PRAGMA max_page_count=100")
        return con
    monkeypatch.setattr(schema, "_open", small)
    line = one_line(invoke(*CAMPAIGN, str(db)), "full.db: database or disk is full", "the disk holding",
                    "MiB free", "the rows stored before are kept")
    assert "cannot rollback" not in line
    monkeypatch.undo()
    with Store(db, create=False) as s:
        assert s.check() == []
        [c] = s.campaigns()
        done = sorted(s.done_ids(c.id))
        assert 0 < len(done) < N and len(done) % BATCH == 0
        kept = [dataclasses.replace(s.injection(c.id, i), seconds=0.0) for i in done[:50]]
    with Store(half, create=False, readonly=True) as s:
        ref = {i: dataclasses.replace(s.injection(1, i), seconds=0.0) for i in s.done_ids(1)}
    assert all(ref.get(r.id, r) == r for r in kept)


def test_a_report_onto_a_full_disk_is_one_line(half: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def full(self: Path, data: bytes) -> int:
        raise OSError(errno.ENOSPC, "No space left on device", str(self))
    monkeypatch.setattr(Path, "write_bytes", full)
    one_line(invoke("report", "--db", str(half), "--out", str(tmp_path / "rep")),
             "cannot write the report: No space left on device", str(tmp_path / "rep"))
