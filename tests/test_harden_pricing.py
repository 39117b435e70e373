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


@pytest.fixture(scope="module")
def planned(db: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, Path, str]:
    """(plan, output) of `harden --explain` run twice: on a quiet machine, then with a core kept
    busy; the timer and the fused-path penalty raise if the planner reaches them."""
    import kernelfi.campaign.harden_planner as hp
    import kernelfi.harden.pricing as pricing

    out = tmp_path_factory.mktemp("planned")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pricing, "time_programs", _refuse)        # the only timer the planner reaches
        mp.setattr(hp, "defusion_penalty", _refuse)          # no fused path to lose on a GPU
        quiet = harden(db, out / "quiet.json", "--budget", "5%", "--explain")
        busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        try:
            loaded = harden(db, out / "loaded.json", "--budget", "5%", "--explain")
        finally:
            busy.kill()
            busy.wait()
    return out / "quiet.json", quiet, out / "loaded.json", loaded


def test_same_plan_under_different_cpu_load_without_a_timer(planned: tuple[Path, str, Path, str]) -> None:
    quiet_plan, quiet, loaded_plan, loaded = planned
    assert quiet_plan.read_text() == loaded_plan.read_text()
    assert quiet.replace("quiet.json", "plan") == loaded.replace("loaded.json", "plan")
    plan = Plan.load(quiet_plan)
    assert plan.extra["planner"]["cost"] == "gpu:gtx750ti" and "reps" not in plan.extra["planner"]
    e = plan.expected
    assert e["overhead_modelled"] <= 0.05 and "overhead_measured" not in e
    assert e["overhead"] == pytest.approx(e["overhead_modelled"], rel=1e-9)   # components add up exactly


def test_explain_gives_every_candidate_a_verdict(planned: tuple[Path, str, Path, str], tmp_path: Path) -> None:
    path, out, _, _ = planned
    plan = Plan.load(path)
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
    cid = run_campaign(CampaignConfig(ModelSpec("digits-alexnet", hardening=str(path)), "iov",
                                      "single", n=5, seed=3, inputs=12), str(tmp_path / "v.db"))
    from kernelfi.store import Store
    with Store(tmp_path / "v.db") as s:
        recorded = s.campaign(cid).meta.hardening
    assert "explain" not in recorded and recorded["protect"] == json.loads(path.read_text())["protect"]


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


def test_report_shows_the_modelled_table2_and_the_masked_share(db: Path, planned: tuple[Path, str, Path, str],
                                                               tmp_path: Path) -> None:
    import shutil

    import pandas as pd

    from kernelfi.campaign.session import open_session
    from kernelfi.gputime import get_gpu
    from kernelfi.harden import modelled_overhead
    from kernelfi.report.build import build_report
    from kernelfi.store import Store

    shutil.copy(planned[0], tmp_path / "p.json")
    work = tmp_path / "r.db"
    shutil.copy(db, work)
    hard = run_campaign(CampaignConfig(ModelSpec("digits-alexnet", hardening=str(tmp_path / "p.json")), "iov",
                                       "single", n=30, seed=3, inputs=12), str(work))
    build_report(work, tmp_path / "report")
    html = (tmp_path / "report" / "index.html").read_text(encoding="utf-8")
    table = modelled_overhead(open_session(ModelSpec("digits-alexnet")).program, Plan.load(tmp_path / "p.json"),
                              get_gpu("gtx750ti"))
    assert "Run-time overhead: digits-alexnet, modelled on gpu:gtx750ti" in html
    assert f"{1000 * table.total['plan']:.4f}" in html and f"{100 * table.overhead('full TMR'):+.2f}%" in html
    assert "The AlexNet study, Table 2" in html and "2.0049" in html     # its published whole-model TMR ms
    # the share of the baseline's SDCs masked, by hand from the stored counts and recorded populations
    with Store(work) as s:
        base_id = next(r.id for r in s.campaigns() if r.meta.hardening is None)
        cb, ch = s.outcome_counts(base_id), s.outcome_counts(hard)
        pb, ph = (s.campaign(i).meta.extra["population"] for i in (base_id, hard))
    sdc = [sum(v for k, v in c.items() if k.startswith("sdc_")) / sum(c.values()) for c in (cb, ch)]
    expect = 1.0 - sdc[1] * ph / (sdc[0] * pb)
    got = pd.read_csv(tmp_path / "report" / "tables" / "hardening_masked.csv")
    assert got["sdc_masked_share"].iloc[0] == pytest.approx(expect, rel=1e-9)
    t2 = pd.read_csv(tmp_path / "report" / "tables" / "table2.csv")
    mine = t2[(t2["source"] == "modelled, gpu:gtx750ti") & (t2["kernel"] == "whole model")].set_index("label")["ms"]
    assert mine["plan"] == pytest.approx(1000 * table.total["plan"], rel=1e-12)


def test_report_still_imports_without_torch() -> None:
    """The report rebuilds a model (torch) only to tabulate a plan's overhead, lazily."""
    code = "import sys, kernelfi.report; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "False", out.stderr
