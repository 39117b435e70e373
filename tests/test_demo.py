"""The demo's closing line (kernelfi.demo.summary) from counts and timings worked out here, and
the demo end to end (slow): every step, the export's native overhead and the report's table."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from kernelfi.cli import cli
from kernelfi.demo import DemoConfig, Run, summary
from kernelfi.harden import OverheadTable, Plan, Protection
from kernelfi.harden.export import NativeOverhead


def test_summary_states_malfunctions_masked_share_plan_and_both_overheads() -> None:
    cfg = DemoConfig(n=100)
    before = {m: Run({"sdc_malfunction": 4, "sdc_light_malfunction": 6, "masked": 90}, 1000.0) for m in ("rf", "iov", "ioa")}
    after = {m: Run({"sdc_malfunction": 0, "sdc_light_malfunction": 5, "masked": 95}, 1100.0) for m in ("rf", "iov", "ioa")}
    # SDCs masked: 1 - 0.05 * 1.1 / 0.10 = 45%; Malfunctions: 1 - 0 = 100%
    cols = ("unhardened", "plan", "full DMR", "full TMR")
    totals = dict(zip(cols, (1.0, 1.04, 2.0, 3.0)))
    table = OverheadTable("digits-alexnet", "gpu:gtx750ti", cols, ("gemm",), {"gemm": 1},
                          {c: {"gemm": t} for c, t in totals.items()}, totals)
    native = NativeOverhead("digits-alexnet", "cpu", "cpu", 32, 20,
                            {"original": 0.010, "none": 0.010, "plan": 0.0112, "full-dmr": 0.021, "full-tmr": 0.0305},
                            {"original": 0.009, "none": 0.009, "plan": 0.010, "full-dmr": 0.019, "full-tmr": 0.028})
    plan = Plan("digits-alexnet", (Protection("layer", "features.5", "range", {"features.5.output": (0.0, 1.0)}),))
    line = summary(cfg, before, after, table, plan, native)
    assert line.startswith("SDC Malfunction (all modes): 12 of 300 (4.00%) -> 0 of 300 (0.00%)")
    assert "SDCs 45.0%, SDC Malfunctions 100.0%" in line
    assert "plan (range of features.5) +4.00% modelled time on gpu:gtx750ti, full DMR +100.0%, full TMR +200.0%" in line
    assert line.endswith("exported, natively on this CPU (medians): plan +12.0%, full DMR +110.0%, full TMR +205.0%")


@pytest.mark.slow
def test_demo_end_to_end_prints_every_step_and_reports_the_native_overhead(tmp_path: Path) -> None:
    r = CliRunner().invoke(cli, ["demo", "-n", "20", "--out", str(tmp_path / "d")])
    assert r.exit_code == 0, r.output
    steps = re.findall(r"^\[(\d)/6\]", r.output, re.M)
    assert steps == ["1", "2", "3", "4", "5", "6"]
    native = json.loads((tmp_path / "d" / "native.json").read_text())
    assert set(native["median_s"]) == {"original", "none", "plan", "full-dmr", "full-tmr"}
    assert (tmp_path / "d" / "export" / "model.py").exists()
    html = (tmp_path / "d" / "report" / "index.html").read_text(encoding="utf-8")
    assert 'id="table-native-digits_alexnet-cpu"' in html and "Errors masked after hardening" in html
    assert "exported, natively on this CPU (medians): plan " in r.output.splitlines()[-2]
