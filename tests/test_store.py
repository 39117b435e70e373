"""The results store: schema and migrations, refusal of foreign/corrupt files, round trips,
idempotent batches, resume helpers, and survival of ``kill -9`` at random moments."""
from __future__ import annotations

import math
import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from kernelfi._utils import KernelfiError
from kernelfi.store import (
    APPLICATION_ID, CampaignMeta, InjectionRecord, LaunchRow, LayerRow, Migration, Store,
    latest_version,
)
from kernelfi.store import schema
from kernelfi.types import Fault, Propagation, Result, Site

LAUNCHES = [
    LaunchRow(0, "conv1.fill", "fill", 0, "convolutional", {"FP32": 0, "NODEST": 100}, 100, 8),
    LaunchRow(1, "conv1.gemm", "gemm", 0, "convolutional", {"FP32": 5000, "LD": 900}, 100, 64),
    LaunchRow(2, "fc.add_bias", "add_bias", 1, "connected", {"FP32": 10, "LD": 20, "GPR": 30}, 10),
]
LAYERS = [LayerRow(0, "convolutional", "conv1", 100), LayerRow(1, "connected", "fc", 10)]


def meta(**kw: object) -> CampaignMeta:
    base = dict(model="tiny", mode="iov", bit_model="single", seed=7, n_planned=10,
                weights_hash="abc", input_source="digits:test")
    base.update(kw)
    return CampaignMeta(**base)  # type: ignore[arg-type]


def rec(i: int, **kw: object) -> InjectionRecord:
    l = LAUNCHES[i % 3]
    base = dict(id=i, input_id=i % 5, launch=l.index, launch_name=l.name, kernel=l.kernel,
                layer=l.layer, layer_type=l.layer_type, mode="iov", grp="FP32",
                bit_model="single", thread=i, slot=1, tag="fadd:out", element=i, bits=(i % 32,),
                original=1.5, corrupted=-1.5, outcome="sdc_light_malfunction", flags=("x",),
                golden_top1=3, faulty_top1=3,
                propagation=tuple(Propagation(k, k + 1, 100, 0.5 * k, 0.25) for k in range(i % 3)))
    base.update(kw)
    return InjectionRecord(**base)  # type: ignore[arg-type]


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "results.db"


def test_schema_and_migrations_are_recorded(db: Path) -> None:
    with Store(db) as s:
        con = s.connection
        assert s.schema_version() == latest_version() == 2
        assert [r[:2] for r in con.execute("SELECT * FROM migrations")] == [(1, "initial"), (2, "tool_errors")]
        assert con.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert con.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
        assert con.execute("SELECT value FROM kernelfi_meta WHERE key='format'").fetchone()[0] \
            == "kernelfi-results"
        assert s.check() == []


def test_new_migration_is_applied_once_and_recorded(db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    Store(db).close()
    step = Migration(3, "campaign notes", ("ALTER TABLE campaigns ADD COLUMN note TEXT",))
    monkeypatch.setattr(schema, "MIGRATIONS", [*schema.MIGRATIONS, step])
    for _ in range(2):
        with Store(db) as s:
            assert s.schema_version() == 3
            rows = s.connection.execute("SELECT version, name FROM migrations").fetchall()
            assert rows == [(1, "initial"), (2, "tool_errors"), (3, "campaign notes")]


def test_newer_schema_is_refused(db: Path) -> None:
    with Store(db) as s:
        s.connection.execute("PRAGMA user_version=99")
    with pytest.raises(KernelfiError) as e:
        Store(db)
    msg = str(e.value)
    assert msg.startswith(f"{db}: ") and "newer" in msg and "99" in msg and "\n" not in msg


def test_foreign_sqlite_file_is_refused(db: Path) -> None:
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE photos (id INTEGER)")
    con.commit()
    con.close()
    with pytest.raises(KernelfiError) as e:
        Store(db)
    assert str(e.value) == f"{db}: not a kernelfi results database"


@pytest.mark.parametrize("content", [b"id,outcome\n1,masked\n", b"SQLite format 3\x00" + b"\x07" * 5000])
def test_corrupt_file_is_one_line_naming_it(db: Path, content: bytes) -> None:
    db.write_bytes(content)
    with pytest.raises(KernelfiError) as e:
        Store(db)
    msg = str(e.value)
    assert msg.startswith(f"{db}: corrupt or not a database: ") and "\n" not in msg


def test_damaged_kernelfi_database(db: Path) -> None:
    with Store(db) as s:
        cid = s.get_or_create_campaign(meta(), LAUNCHES, LAYERS)
        s.add_results(cid, [rec(i) for i in range(50)])
    data = bytearray(db.read_bytes())
    data[100:4096] = os.urandom(3996)  # page 1 after the header: the schema b-tree
    db.write_bytes(bytes(data))
    with pytest.raises(KernelfiError, match=r"corrupt or not a database"):
        with Store(db) as s:
            s.injections_frame()


def test_missing_file_without_create(db: Path) -> None:
    with pytest.raises(KernelfiError, match=r"no such results database"):
        Store(db, create=False)
    assert not db.exists()


def test_round_trip_keeps_nan_inf_none_and_propagation(db: Path) -> None:
    r = rec(2, original=None, corrupted=math.nan, bits=(30, 31), flags=("nonfinite", "raw=7fc00000"),
            value=None, weight=2.5, seconds=0.125,
            propagation=(Propagation(0, 5, 100, math.inf, math.nan), Propagation(1, 0, 10, 0.0, 0.0)))
    with Store(db) as s:
        cid = s.get_or_create_campaign(meta(), LAUNCHES, LAYERS)
        assert s.add_results(cid, [r, rec(0, bits=(), flags=(), outcome="masked")]) == 2
        assert s.injection(cid, 2) == r
        assert s.injection(cid, 0).bits == () and s.injection(cid, 0).flags == ()
        f = s.injections_frame(cid)
        assert len(f) == 2 and math.isnan(f.set_index("id").loc[2, "corrupted"])
        assert len(s.propagation_frame(cid)) == 2
        assert list(s.launches_frame(cid)["GPR"]) == [0, 0, 30]
        assert list(s.layers_frame()["numel"]) == [100, 10]
        with pytest.raises(KernelfiError, match="no injection 9"):
            s.injection(cid, 9)


def test_record_rebuilds_fault_and_result() -> None:
    fault = Fault("iov", Site(1, "FP32", 12, 3, 7), "double", (4, 5), None, True, 2)
    result = Result("sdc_malfunction", 17, 0.5, 8.0, ("nonfinite",),
                    (Propagation(0, 3, 100, 7.5, 15.0),), 1, 4)
    r = InjectionRecord.build(5, fault, result, LAUNCHES[1], tag="ffma:acc", weight=3.0)
    assert (r.kernel, r.layer, r.launch_name) == ("gemm", 0, "conv1.gemm")
    assert r.fault() == fault and r.result() == result


def test_add_is_idempotent_and_atomic(db: Path) -> None:
    with Store(db) as s:
        cid = s.get_or_create_campaign(meta(), LAUNCHES, LAYERS)
        batch = [rec(i) for i in range(6)]
        assert s.add_results(cid, batch) == 6
        n_prop = len(s.propagation_frame(cid))
        assert s.add_results(cid, batch) == 0  # a replayed batch after a crash
        assert s.add_results(cid, [rec(i) for i in range(4, 9)]) == 3
        assert len(s.injections_frame(cid)) == 9
        assert len(s.propagation_frame(cid)) == n_prop + sum(i % 3 for i in range(6, 9))
        bad = rec(9, launch_name="conv1.oops")
        with pytest.raises(ValueError, match="does not match"):
            s.add_results(cid, [rec(10), bad])
        assert s.done_ids(cid) == set(range(9))  # nothing of the refused batch
        assert s.check() == []


def test_resume_helpers_and_campaign_identity(db: Path) -> None:
    with Store(db) as s:
        cid = s.get_or_create_campaign(meta(), LAUNCHES, LAYERS)
        assert s.get_or_create_campaign(meta(weights_source="/moved/w.safetensors"), LAUNCHES, LAYERS) == cid
        other = s.get_or_create_campaign(meta(seed=8), LAUNCHES, LAYERS)
        assert other != cid
        s.add_results(cid, [rec(i, outcome="masked" if i % 2 else "due") for i in (0, 3, 4)])
        assert s.done_ids(cid) == {0, 3, 4}
        assert s.missing_ids(cid) == [1, 2, 5, 6, 7, 8, 9]
        assert s.outcome_counts(cid)["due"] == 2 and s.outcome_counts(cid)["masked"] == 1
        rows = s.campaigns()
        assert [(c.id, c.n_done) for c in rows] == [(cid, 3), (other, 0)]
        assert rows[0].meta == meta(weights_source="") and rows[0].key == meta().key
        with pytest.raises(KernelfiError, match="different kernel trace"):
            s.get_or_create_campaign(meta(), LAUNCHES[:2], LAYERS)
    with Store(db, create=False) as s:  # and it all survives a reopen
        assert s.done_ids(cid) == {0, 3, 4}


def test_store_and_analysis_do_not_import_torch() -> None:
    code = "import sys, kernelfi.store, kernelfi.analysis; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


# -- kill -9 at random moments --------------------------------------------------------------
BATCH, N_BATCHES = 200, 100
WRITER = textwrap.dedent(f"""
    import sys
    from kernelfi.store import CampaignMeta, InjectionRecord, LaunchRow, LayerRow, Store
    from kernelfi.types import Propagation
    L = [LaunchRow(0, "a.gemm", "gemm", 0, "convolutional", {{"FP32": 9}}, 1)]
    def rec(i):
        return InjectionRecord(id=i, input_id=0, launch=0, launch_name="a.gemm", kernel="gemm",
            layer=0, layer_type="convolutional", mode="iov", grp="FP32", bit_model="single",
            bits=(i % 32,), outcome="masked" if i % 3 else "sdc_malfunction",
            propagation=tuple(Propagation(k, i, 1000, float(i), 1.0) for k in range(1 + i % 4)))
    with Store(sys.argv[1]) as s:
        cid = s.get_or_create_campaign(
            CampaignMeta(model="m", mode="iov", bit_model="single", seed=1,
                         n_planned={BATCH * N_BATCHES}), L, [LayerRow(0, "convolutional", "a", 9)])
        done = s.done_ids(cid)
        print("ready", flush=True)
        for b in range({N_BATCHES}):
            ids = range(b * {BATCH}, (b + 1) * {BATCH})
            if not all(i in done for i in ids):
                s.add_results(cid, [rec(i) for i in ids])
""")


def _check_whole_batches(db: Path) -> int:
    with Store(db, create=False) as s:
        assert s.check() == []
        con = s.connection
        per_batch = dict(con.execute(f"SELECT id / {BATCH}, count(*) FROM injections GROUP BY 1"))
        assert all(n == BATCH for n in per_batch.values()), per_batch
        missing = con.execute(
            """SELECT count(*) FROM injections i WHERE
               (SELECT count(*) FROM propagation p WHERE p.campaign=i.campaign AND p.injection=i.id)
               != 1 + i.id % 4""").fetchone()[0]
        assert missing == 0
        return len(per_batch)


def test_kill_9_leaves_only_whole_batches_and_resume_completes(db: Path) -> None:
    rnd = random.Random(1234)
    kills = 0
    for _ in range(5):
        with subprocess.Popen([sys.executable, "-c", WRITER, str(db)], stdout=subprocess.PIPE) as p:
            assert p.stdout is not None
            p.stdout.readline()  # "ready", or EOF if it already finished
            time.sleep(rnd.uniform(0.0, 0.15))
            if p.poll() is None:
                os.kill(p.pid, signal.SIGKILL)
                kills += 1
        if db.exists():
            _check_whole_batches(db)
    assert kills >= 3, "the writer finished before it could be killed: make it slower"
    subprocess.run([sys.executable, "-c", WRITER, str(db)], check=True, stdout=subprocess.DEVNULL)
    assert _check_whole_batches(db) == N_BATCHES
    with Store(db, create=False) as s:
        (c,) = s.campaigns()
        assert c.n_done == BATCH * N_BATCHES and s.missing_ids(c.id) == []
        r = s.injection(c.id, 4321)
        assert r.outcome == "masked" and len(r.propagation) == 2 and r.propagation[1].max_abs == 4321.0


def _v1(db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A database as version 1 of the schema wrote it, holding a campaign and 20 rows."""
    with monkeypatch.context() as m:
        m.setattr(schema, "MIGRATIONS", schema.MIGRATIONS[:1])
        with Store(db) as s:
            assert s.schema_version() == 1
            cid = s.get_or_create_campaign(meta(), LAUNCHES, LAYERS)
            s.add_results(cid, [rec(i) for i in range(20)])


def test_a_version_1_database_opens_migrated_with_its_rows(db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _v1(db, monkeypatch)
    with Store(db, readonly=True) as s:  # read-only: no migration, no tool errors to show
        assert s.schema_version() == 1 and s.tool_errors(1) == [] and s.campaigns()[0].n_tool_errors == 0
        assert len(s.tool_errors_frame()) == 0
    with Store(db) as s:
        assert s.schema_version() == 2
        assert [s.injection(1, i) for i in range(20)] == [rec(i) for i in range(20)]
        assert s.tool_errors(1) == [] and s.check() == []


def test_a_failing_migration_leaves_the_file_as_it_was(db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _v1(db, monkeypatch)
    before = db.read_bytes()
    broken = Migration(2, "broken", ("CREATE TABLE half (a INTEGER)", "INSERT INTO no_such_table VALUES (1)"))
    monkeypatch.setattr(schema, "MIGRATIONS", [schema.MIGRATIONS[0], broken])
    with pytest.raises(KernelfiError) as e:
        Store(db)
    assert str(e.value).startswith(f"{db}: ") and "no_such_table" in str(e.value) and "\n" not in str(e.value)
    assert db.read_bytes() == before
    with Store(db, readonly=True) as s:
        con = s.connection
        assert s.schema_version() == 1
        assert [r[0] for r in con.execute("SELECT version FROM migrations")] == [1]
        assert con.execute("SELECT count(*) FROM sqlite_master WHERE name='half'").fetchone()[0] == 0
        assert [s.injection(1, i) for i in range(20)] == [rec(i) for i in range(20)]


def test_tool_error_rows_round_trip_and_give_way_to_the_injection(db: Path) -> None:
    from kernelfi.store import ToolErrorRecord
    with Store(db) as s:
        cid = s.get_or_create_campaign(meta(), LAUNCHES, LAYERS)
        err = ToolErrorRecord.build(7, rec(7).fault(), "ValueError: boom", "Traceback ...", replay="kernelfi replay --id 7")
        assert s.add_results(cid, [rec(1), err]) == 2
        assert s.add_results(cid, [err]) == 0  # the same tool error again (a resume that failed again)
        assert s.tool_errors(cid) == [err] and s.done_ids(cid) == {1}  # a tool error is retried on resume
        frame = s.tool_errors_frame()
        assert frame[["id", "launch_name", "kernel", "error"]].values.tolist() == [[7, LAUNCHES[1].name,
                                                                                   LAUNCHES[1].kernel, "ValueError: boom"]]
        assert s.add_results(cid, [rec(7)]) == 1  # it ran this time: the row replaces the tool error
        assert s.tool_errors(cid) == [] and s.done_ids(cid) == {1, 7}
        assert s.add_results(cid, [err]) == 0  # an id with its row never becomes a tool error
        assert s.tool_errors(cid) == []
