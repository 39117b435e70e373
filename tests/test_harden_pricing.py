"""The planner priced in modelled GPU time (docs/hardening.md §3, "GPU time model"): the same plan
under different CPU load, no timer and no fused-path penalty under ``gpu:``, and ``harden``
explaining every candidate it weighed (CLI through click's runner)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from kernelfi.campaign import CampaignConfig, ModelSpec, run_campaign
from kernelfi.cli import cli
from kernelfi.harden import Plan
from kernelfi.harden.explain import STATUSES


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("pricing") / "h.db"
    run_campaign(CampaignConfig(ModelSpec("digits-alexnet"), "iov", "single", n=60, seed=3, inputs=12), str(path))
    return path


def harden(db: Path, out: Path, *extra: str) -> str:
    res = CliRunner().invoke(cli, ["harden", "--db", str(db), "--out", str(out), *extra])
    assert res.exit_code == 0, res.output
    return res.output


def _refuse(*args: object, **kwargs: object) -> None:
    raise AssertionError("the GPU-priced planner must not time anything")


def test_same_plan_under_different_cpu_load_without_a_timer(db: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import kernelfi.campaign.harden_planner as hp
    import kernelfi.harden.pricing as pricing

    monkeypatch.setattr(pricing, "time_programs", _refuse)        # the only timer the planner reaches
    monkeypatch.setattr(hp, "defusion_penalty", _refuse)          # no fused path to lose on a GPU
    quiet = harden(db, tmp_path / "quiet.json", "--budget", "5%", "--explain")
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])   # a core kept busy meanwhile
    try:
        loaded = harden(db, tmp_path / "loaded.json", "--budget", "5%", "--explain")
    finally:
        busy.kill()
        busy.wait()
    assert (tmp_path / "quiet.json").read_text() == (tmp_path / "loaded.json").read_text()
    assert quiet.replace("quiet.json", "plan") == loaded.replace("loaded.json", "plan")
    plan = Plan.load(tmp_path / "quiet.json")
    assert plan.extra["planner"]["cost"] == "gpu:gtx750ti" and "reps" not in plan.extra["planner"]
    e = plan.expected
    assert e["overhead_modelled"] <= 0.05 and "overhead_measured" not in e
    assert e["overhead"] == pytest.approx(e["overhead_modelled"], rel=1e-9)   # components add up exactly


def test_explain_gives_every_candidate_a_verdict(db: Path, tmp_path: Path) -> None:
    out = harden(db, tmp_path / "p.json", "--budget", "5%", "--explain")
    plan = Plan.load(tmp_path / "p.json")
    rows = plan.extra["explain"]
    assert rows and all(r["status"] in STATUSES and r["reason"] for r in rows)
    chosen = {(r["technique"], r["name"]) for r in rows if r["status"] == "chosen"}
    assert chosen == {(p.technique, p.name) for p in plan.protect}
    counts = plan.extra["planner"]["candidates"]
    assert sum(counts.values()) == len(rows)
    assert f"weighed {len(rows)} candidates" in out
    for r in rows:                                     # the table prints every candidate's verdict
        assert r["reason"] in out
        assert r["malfunction_removed_sd"] >= 0 and r["cost_s"] > 0
    # one technique per launch: a replicated unit not chosen but sharing a launch with a chosen one is covered
    taken = {r["name"] for r in rows if r["status"] == "chosen" and r["technique"] != "range"}
    for r in rows:
        if r["technique"] != "range" and r["name"] in taken and r["status"] != "chosen":
            assert r["status"] == "covered"
    # the store records the plan without the explanation
    cid = run_campaign(CampaignConfig(ModelSpec("digits-alexnet", hardening=str(tmp_path / "p.json")), "iov",
                                      "single", n=5, seed=3, inputs=12), str(tmp_path / "v.db"))
    from kernelfi.store import Store
    with Store(tmp_path / "v.db") as s:
        recorded = s.campaign(cid).meta.hardening
    assert "explain" not in recorded and recorded["protect"] == json.loads((tmp_path / "p.json").read_text())["protect"]


def test_zero_protections_are_explained(db: Path, tmp_path: Path) -> None:
    out = harden(db, tmp_path / "zero.json", "--budget", "0%")
    plan = Plan.load(tmp_path / "zero.json")
    assert plan.protect == ()
    assert "0 protections" in out and "nothing was chosen" in out
    rows = plan.extra["explain"]
    best = max(rows, key=lambda r: r["malfunction_removed"])
    assert best["status"] == "over_budget" and "0.0 us of the budget left" in best["reason"]
    assert best["reason"] in out


def test_unknown_cost_is_one_line(db: Path, tmp_path: Path) -> None:
    res = CliRunner().invoke(cli, ["harden", "--db", str(db), "--out", str(tmp_path / "x.json"), "--cost", "gpu:s3"])
    assert res.exit_code == 2
    assert res.output.strip() == "kernelfi: error: unknown GPU 's3' (known: gtx750ti, t4, orin, a100, h100)"
    res = CliRunner().invoke(cli, ["harden", "--db", str(db), "--out", str(tmp_path / "x.json"), "--cost", "cheap"])
    assert res.exit_code == 2 and "is not gpu:NAME or measured" in res.output
    assert not (tmp_path / "x.json").exists()
