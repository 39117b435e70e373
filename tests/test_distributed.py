"""Campaigns on Ray: rows identical to a local run, killed workers lose nothing, drivers resume.

The Ray tests start one local Ray instance (2 CPUs) per test process and skip, with the reason,
only where Ray cannot be imported. digits-alexnet on 4 random inputs with small batches gives
~14 batches for two workers in a few seconds.
"""
from __future__ import annotations

import dataclasses
import os
import signal
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from kernelfi._utils import KernelfiError
from kernelfi.campaign import CampaignConfig, ModelSpec, run_campaign
from kernelfi.cli import cli
from kernelfi.store import InjectionRecord, Store

N, SEED, BATCH = 48, 7, 4
CONFIG = CampaignConfig(model=ModelSpec("digits-alexnet"), mode="rf", bit_model="single", n=N, seed=SEED,
                        batch=BATCH, data="random", inputs=4)
CLI_ARGS = ["campaign", "digits-alexnet", "--mode", "rf", "-n", str(N), "--seed", str(SEED), "--batch", str(BATCH),
            "--data", "random", "--inputs", "4", "--quiet"]


def runner() -> CliRunner:
    """A runner with stderr kept apart (the default from click 8.2; an option before)."""
    try:
        return CliRunner(mix_stderr=False)  # type: ignore[call-arg]
    except TypeError:
        return CliRunner()


def rows(db: Path) -> list[InjectionRecord]:
    """Every row of the only campaign, with the timing zeroed (the one field allowed to differ)."""
    with Store(db, create=False) as store:
        [camp] = store.campaigns()
        return [dataclasses.replace(store.injection(camp.id, i), seconds=0.0)
                for i in sorted(store.done_ids(camp.id))]


@pytest.fixture(scope="module")
def local_rows(tmp_path_factory: pytest.TempPathFactory) -> list[InjectionRecord]:
    db = tmp_path_factory.mktemp("local") / "local.db"
    run_campaign(CONFIG, str(db))
    out = rows(db)
    assert [r.id for r in out] == list(range(N))
    return out


@pytest.fixture(scope="module")
def ray_local():  # type: ignore[no-untyped-def]
    try:  # not importorskip: a broken Ray install must skip with its error too, on any pytest
        import ray
    except ImportError as err:
        pytest.skip(f"Ray cannot be imported ({err}); pip install 'kernelfi[ray]'")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


# ---------------------------------------------------------------------------------- no Ray needed
def test_missing_ray_is_one_line_with_install_hint(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    from kernelfi.distributed import require_ray

    with pytest.raises(KernelfiError, match=r"pip install 'kernelfi\[ray\]'"):
        require_ray()
    res = runner().invoke(cli, CLI_ARGS + ["--db", str(tmp_path / "x.db"), "--executor", "ray"])
    assert res.exit_code == 2
    err = res.stderr.strip()
    assert len(err.splitlines()) == 1 and "pip install 'kernelfi[ray]'" in err, err
    assert not (tmp_path / "x.db").exists()  # failed before touching anything


def test_address_needs_ray_executor(tmp_path: Path) -> None:
    res = runner().invoke(cli, CLI_ARGS + ["--db", str(tmp_path / "x.db"), "--address", "auto"])
    assert res.exit_code == 2 and "--address needs --executor ray" in res.stderr


def test_worker_must_prepare_the_same_campaign() -> None:
    from kernelfi.distributed.executor import RayExecutor

    expect = {"weights_hash": "abc", "population": 10, "n_inputs": 4}
    RayExecutor._check({"pid": 1, "node": "n", "error": None, **expect}, expect)
    with pytest.raises(KernelfiError, match="weights_hash"):
        RayExecutor._check({"pid": 1, "node": "n", "error": None, **expect, "weights_hash": "xyz"}, expect)
    with pytest.raises(KernelfiError, match="could not prepare"):
        RayExecutor._check({"pid": 1, "node": "n", "error": "FileNotFoundError: w.pt"}, expect)


# ---------------------------------------------------------------------------------- on Ray
def test_cli_ray_matches_local(ray_local, local_rows, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    db = tmp_path / "ray.db"
    res = runner().invoke(cli, CLI_ARGS + ["--db", str(db), "--executor", "ray", "--workers", "2"])
    assert res.exit_code == 0, res.output + str(res.exception)
    assert rows(db) == local_rows


def test_killed_worker_loses_nothing_and_driver_resumes(ray_local, local_rows, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from kernelfi.distributed import ray_executor

    db = str(tmp_path / "ray.db")

    # 1. the driver dies after a few batches: they are stored, the rest are not
    class DriverDied(Exception):
        pass

    def die(done: int, counts: dict[str, int]) -> None:
        if done >= 3 * BATCH:
            raise DriverDied

    crashed = ray_executor(workers=2)
    with pytest.raises(DriverDied):
        run_campaign(CONFIG, db, progress=die, execute=crashed)
    crashed.close()  # what the end of a crashed driver's process does: its actors go
    partial = rows(Path(db))
    assert 0 < len(partial) < N and all(r in local_rows for r in partial)

    # 2. the same command again, and a worker is SIGKILLed as soon as results flow; four batches
    #    in flight per worker make sure the victim is busy (an idle one is restarted unnoticed)
    ex = ray_executor(workers=2, depth=4)
    killed: list[int] = []

    def kill(done: int, counts: dict[str, int]) -> None:
        if done > len(partial) and not killed:
            pid = ex.worker_pids()[0]  # reported by the actor itself (os.getpid() in its ping)
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    run_campaign(CONFIG, db, progress=kill, execute=ex)
    assert killed and ex.stats.deaths >= 1 and ex.stats.retried >= 1, ex.stats
    final = rows(Path(db))
    assert len(final) == N
    assert final == local_rows


def test_losing_every_worker_stops_with_a_resumable_error(ray_local, local_rows, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from kernelfi.distributed import ray_executor

    db = str(tmp_path / "ray.db")
    ex = ray_executor(workers=2, max_restarts=0, depth=4)

    def kill_all(done: int, counts: dict[str, int]) -> None:
        for pid in ex.worker_pids() if done else ():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:  # already gone
                pass

    with pytest.raises(KernelfiError, match="Ray workers died.*re-run the same command to resume"):
        run_campaign(CONFIG, db, progress=kill_all, execute=ex)
    stored = rows(Path(db))
    assert len(stored) < N and all(r in local_rows for r in stored)  # what was stored is right
