"""Campaign-level guarantees: sanity runs, reproducibility, kill -9 + resume, replay."""
from __future__ import annotations

import dataclasses
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kernelfi.campaign import CampaignConfig, ModelSpec, replay, run_campaign
from kernelfi.store import Store


def rows(db: Path, cid: int = 1) -> list:
    with Store(db, create=False) as s:
        df_ids = sorted(s.done_ids(cid))
        return [dataclasses.replace(s.injection(cid, i), seconds=0.0) for i in df_ids]


@pytest.mark.parametrize("model", ["digits-alexnet", "digits-resnet"])
def test_bit_model_none_is_all_masked(tmp_path: Path, model: str) -> None:
    cfg = CampaignConfig(ModelSpec(model), mode="iov", bit_model="none", n=500, seed=5, inputs=40)
    cid = run_campaign(cfg, str(tmp_path / "n.db"))
    with Store(tmp_path / "n.db") as s:
        counts = s.outcome_counts(cid)
    assert counts.get("masked") == 500, counts


def test_same_seed_same_rows_and_batching_does_not_matter(tmp_path: Path) -> None:
    a, b = tmp_path / "a.db", tmp_path / "b.db"
    run_campaign(CampaignConfig(ModelSpec("digits-alexnet"), "iov", "single", n=120, seed=9, inputs=30), str(a))
    run_campaign(CampaignConfig(ModelSpec("digits-alexnet"), "iov", "single", n=120, seed=9, inputs=30, batch=7), str(b))
    ra, rb = rows(a), rows(b)
    assert len(ra) == 120 and ra == rb
    assert len({r.outcome for r in ra}) >= 3  # a real mix of outcomes, not a constant


CMD = [sys.executable, "-m", "kernelfi.cli", "campaign", "digits-alexnet", "--mode", "iov", "-n", "150",
       "--seed", "4", "--inputs", "30", "--batch", "4", "--quiet", "--db"]


def test_kill_9_then_resume_gives_exactly_n_identical_rows(tmp_path: Path) -> None:
    ref, db = tmp_path / "ref.db", tmp_path / "killed.db"
    run_campaign(CampaignConfig(ModelSpec("digits-alexnet"), "iov", "single", n=150, seed=4, inputs=30, batch=4),
                 str(ref))
    rng = random.Random(1)
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1] / "src"))
    kills = 0
    for _ in range(5):
        p = subprocess.Popen(CMD + [str(db)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(3.0, 6.0))
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
            kills += 1
        p.wait()
    subprocess.run(CMD + [str(db)], env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert kills >= 1
    with Store(db) as s:
        assert s.check() == []
    assert rows(db) == rows(ref)


def test_replays_match_their_rows(tmp_path: Path) -> None:
    db = tmp_path / "r.db"
    for mode in ("iov", "ioa", "rf"):
        run_campaign(CampaignConfig(ModelSpec("digits-alexnet"), mode, "single", n=40, seed=2, inputs=20), str(db))
    rng = random.Random(0)
    for cid in (1, 2, 3):
        for i in rng.sample(range(40), 7 if cid < 3 else 6):
            stored, again = replay(str(db), i, cid)
            assert stored == again, (cid, i)


def test_worker_processes_give_the_same_rows(tmp_path: Path) -> None:
    a, b = tmp_path / "one.db", tmp_path / "two.db"
    base = dict(mode="iov", bit_model="single", n=64, seed=11, inputs=16, batch=8)
    run_campaign(CampaignConfig(ModelSpec("digits-alexnet"), **base), str(a))
    run_campaign(CampaignConfig(ModelSpec("digits-alexnet"), workers=2, **base), str(b))
    assert rows(a) == rows(b) and len(rows(a)) == 64


def test_auto_batch_by_hand() -> None:
    """The tiny network holds at most 32 floats per lane outside the workspace (the input and
    the conv output, both live at the first fill) and 176 with it (input 16 + conv output 16 +
    im2col workspace 9x16 at the im2col launch); a lane costs twice that in float32."""
    from kernelfi.campaign.batches import AUTO_MAX, auto_batch
    from tiny import tiny_program

    t = tiny_program().trace
    assert auto_batch(t, budget=2 * 4 * 32 * 40) == 40
    assert auto_batch(t, budget=2 * 4 * 32 * 40 - 1) == 39
    assert auto_batch(t, True, budget=2 * 4 * 176 * 20) == 20
    assert auto_batch(t, True, budget=2 * 4 * 176 * 20 - 1) == 19
    assert auto_batch(t, budget=1) == 16 and auto_batch(t, budget=1 << 40) == AUTO_MAX


def test_auto_workers_counts_cpus_and_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    """One worker per CPU of the affinity mask, fewer where the memory available holds fewer
    (at least one)."""
    from kernelfi.campaign import pool as C

    monkeypatch.setattr(C.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5}, raising=False)
    monkeypatch.setattr(C, "_mem_available", lambda: 10 << 30)
    assert C.auto_workers() == 6
    assert C.auto_workers(1 << 30) == 6
    assert C.auto_workers(3 << 30) == 3  # 10 GiB hold three 3 GiB workers
    assert C.auto_workers(11 << 30) == 1
    monkeypatch.setattr(C, "_mem_available", lambda: None)  # no /proc/meminfo: CPUs only
    assert C.auto_workers(11 << 30) == 6


def test_pool_workers_and_driver_give_the_rows_of_one_process() -> None:
    """Every batch in worker processes (the driver idle), and with the driver working while
    they start: the same results as one process, fault for fault."""
    from kernelfi.campaign.batches import batches
    from kernelfi.campaign.prepared import prepare
    from kernelfi.campaign.pool import execute_local

    cfg = CampaignConfig(ModelSpec("digits-resnet"), "iov", "single", n=36, seed=4, inputs=6)

    def results(workers: int, driver: bool = True) -> dict[int, str]:
        prep = prepare(cfg)
        layer_of = {l.index: l.layer for l in prep.session.program.trace.launches}
        work = list(batches([prep.planner.draw(i) for i in range(cfg.n)], layer_of, 6))
        out = {e.planned.id: repr(e.result) for b in execute_local(prep, work, workers, driver) for e in b}
        assert sorted(out) == list(range(cfg.n))
        return out

    one = results(1)
    assert results(2, driver=False) == one
    assert results(2) == one


def test_prepared_shares_its_golden_run_and_checks_explicitly() -> None:
    """The driver computes its golden run into shared memory and reads that copy only; a worker
    maps it and builds its runner on the driver's checks. Sharing after the runner is built,
    or taking the driver's run after computing its own, is refused (no silent second copy)."""
    from kernelfi.campaign.prepared import prepare

    cfg = CampaignConfig(ModelSpec("digits-alexnet"), "iov", "single", n=4, seed=1, inputs=3)
    driver = prepare(cfg)
    shared = driver.share_golden()
    assert driver.golden.block is shared.flat
    checks = driver.runner.checks()
    assert driver.runner.golden is driver.golden
    with pytest.raises(RuntimeError, match="runner is built"):
        driver.share_golden()
    worker = prepare(cfg)
    worker.use_shared(shared, checks)
    assert worker.golden.block is shared.flat and worker.runner.checks() == checks
    with pytest.raises(RuntimeError, match="own golden run"):
        worker.use_shared(shared, checks)
    alone = prepare(cfg)
    alone.use_shared(None, checks)  # no room to share: its own run, the driver's checks
    assert alone.golden.block is None and alone.runner.checks() == checks


def test_resuming_a_campaign_of_another_engine_arithmetic_is_refused(tmp_path: Path) -> None:
    """A campaign started by an engine that ran on all threads (before ``engine_threads`` was
    recorded) is not resumed with one-thread rows: one clear error, its rows untouched."""
    import json
    import sqlite3

    from kernelfi._utils import KernelfiError

    db = tmp_path / "old.db"
    cfg = CampaignConfig(ModelSpec("digits-alexnet"), "iov", "single", n=30, seed=3, inputs=8, batch=10)
    run_campaign(cfg, str(db), stop_after=1)
    before = rows(db)
    with sqlite3.connect(db) as con:
        (extra,) = con.execute("SELECT extra FROM campaigns").fetchone()
        old = json.loads(extra)
        assert old["engine_threads"] == 1
        del old["engine_threads"]
        con.execute("UPDATE campaigns SET extra=?", (json.dumps(old),))
    with pytest.raises(KernelfiError, match="intra-op threads.*new database"):
        run_campaign(cfg, str(db))
    assert rows(db) == before and len(before) == 10
