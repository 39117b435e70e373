"""A campaign never dies on one fault: a fault the tool fails on is a tool-error row, the others
are the rows of a clean run, and summary, report and the exit status say so loudly."""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import pytest

from kernelfi.analysis import outcome_table
from kernelfi.campaign import CampaignConfig, ModelSpec, run_campaign
from kernelfi.execution import Runner
from kernelfi.store import Store
from cli_util import invoke

CFG = CampaignConfig(ModelSpec("digits-alexnet"), "iov", "single", n=96, seed=3, inputs=8, batch=32)
BAD = 37


def rows(db: Path) -> dict[int, object]:
    with Store(db, create=False, readonly=True) as s:
        [c] = s.campaigns()
        return {i: dataclasses.replace(s.injection(c.id, i), seconds=0.0) for i in sorted(s.done_ids(c.id))}


def fail_on(monkeypatch: pytest.MonkeyPatch, bad: int) -> None:
    """Make the runner raise for any batch holding injection ``bad`` (a tool bug on one fault)."""
    real = Runner.run

    def run(self: Runner, batch):  # type: ignore[no-untyped-def]
        if any(pf.id == bad for pf in batch):
            raise RuntimeError(f"simulated tool bug on injection {bad}")
        return real(self, batch)
    monkeypatch.setattr(Runner, "run", run)


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> dict[int, object]:
    db = tmp_path_factory.mktemp("clean") / "clean.db"
    run_campaign(CFG, str(db))
    return rows(db)


def test_one_failing_fault_is_a_tool_error_row_and_the_campaign_goes_on(clean, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "t.db"
    with monkeypatch.context() as m:
        fail_on(m, BAD)
        cid = run_campaign(CFG, str(db))
    got = rows(db)
    assert sorted(got) == [i for i in range(CFG.n) if i != BAD]
    assert got == {i: r for i, r in clean.items() if i != BAD}  # every other row as in a clean run
    with Store(db, create=False, readonly=True) as s:
        [err] = s.tool_errors(cid)
        assert err.id == BAD and err.error == f"RuntimeError: simulated tool bug on injection {BAD}"
        assert "Traceback" in err.traceback and err.replay == f"kernelfi replay --db {db} --campaign {cid} --id {BAD}"
        assert err.fault() == clean[BAD].fault()  # the planned fault's site, bits, input
        assert s.campaign(cid).n_tool_errors == 1 and s.campaign(cid).n_done == CFG.n - 1
        assert sum(s.outcome_counts(cid).values()) == CFG.n - 1
        table = outcome_table(s, [cid])
        assert set(table["n"]) == {CFG.n - 1}  # rates over the injections that ran, not the tool errors
    r = invoke("summary", "--db", str(db))
    assert r.exit_code == 3
    assert "TOOL ERRORS 1 (not in the rates)" in r.stdout
    assert f"the tool failed on 1 fault of campaign {cid}" in r.stderr and f"--id {BAD}" in r.stderr
    assert '"tool_errors": 1' in invoke("summary", "--db", str(db), "--format", "json").stdout
    # replaying it while the bug is there: the error again, exit 3; once fixed, it runs
    with monkeypatch.context() as m:
        fail_on(m, BAD)
        r = invoke("replay", "--db", str(db), "--id", str(BAD))
    assert r.exit_code == 3 and "the tool failed on it: RuntimeError" in r.stdout
    r = invoke("replay", "--db", str(db), "--id", str(BAD))
    assert r.exit_code == 0 and "stored as a tool error" in r.stdout
    # the report lists it first, loudly, and exits 3
    r = invoke("report", "--db", str(db), "--out", str(tmp_path / "rep"))
    assert r.exit_code == 3, r.output
    html = (tmp_path / "rep" / "index.html").read_text()
    assert html.index('id="tool-errors"') < html.index('id="campaigns"') and "kernelfi failed on 1 fault" in html
    # a resume (the tool fixed) runs it again and replaces the tool error with its row
    run_campaign(CFG, str(db))
    assert rows(db) == clean
    with Store(db, create=False, readonly=True) as s:
        assert s.tool_errors(cid) == [] and s.campaign(cid).n_tool_errors == 0
    assert invoke("summary", "--db", str(db)).exit_code == 0


def test_campaign_command_exits_3_with_tool_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fail_on(monkeypatch, 5)
    db = tmp_path / "c.db"
    r = invoke("campaign", "digits-alexnet", "--mode", "rf", "-n", "12", "--inputs", "4",
                                  "--db", str(db), "--quiet", "--workers", "1")
    assert r.exit_code == 3, r.output
    assert "the tool failed on 1 fault of campaign 1" in r.stderr and "injection 5: RuntimeError" in r.stderr


def test_pool_and_ray_workers_isolate_a_failing_fault(monkeypatch: pytest.MonkeyPatch) -> None:
    """What a pool worker and a Ray actor run for a batch (in this process): a failing fault
    comes back as a ToolError, the rest as results, in the batch's order."""
    from kernelfi.campaign import pool
    from kernelfi.campaign.campaign import prepare
    from kernelfi.campaign.isolate import ToolError
    from kernelfi.distributed.worker import ShardWorker

    cfg = dataclasses.replace(CFG, n=8)
    fail_on(monkeypatch, 3)
    monkeypatch.setattr(pool, "_WORKER", prepare(cfg))
    out = pool._worker_run(list(range(8)))
    assert [e.planned.id for e in out] == list(range(8))
    assert [isinstance(e, ToolError) for e in out] == [i == 3 for i in range(8)]
    actor = ShardWorker(cfg, 1, None)
    assert [isinstance(e, ToolError) for e in actor.run(list(range(8)))] == [i == 3 for i in range(8)]


def test_a_batch_failing_only_as_a_whole_keeps_each_fault_s_own_run(monkeypatch: pytest.MonkeyPatch,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    from kernelfi.campaign.campaign import prepare
    from kernelfi.campaign.isolate import run_batch

    prep = prepare(dataclasses.replace(CFG, n=6))
    faults = [prep.planner.draw(i) for i in range(6)]
    alone = [run_batch(prep.runner, [pf])[0].result for pf in faults]
    real = Runner.run

    def run(self: Runner, batch):  # type: ignore[no-untyped-def]
        if len(batch) > 1:
            raise MemoryError("simulated: the batch does not fit")
        return real(self, batch)
    monkeypatch.setattr(Runner, "run", run)
    with caplog.at_level(logging.WARNING, logger="kernelfi.campaign"):
        out = run_batch(prep.runner, faults)
    assert [e.result for e in out] == alone
    assert "failed together (MemoryError: simulated: the batch does not fit) but each ran alone" in caplog.text
