"""`kernelfi report` and `kernelfi plan-samples` end to end, on a small hand-made database.

The database is written through ``Store`` (no campaign runs: fast and deterministic). Numbers in
the page are checked against independent SQL over the raw rows and statsmodels; the page itself
is loaded in headless Chromium when one is installed (Debian's ``chromium``, which ``.ci/run``
installs), which must decode every image and log no console message.
"""
from __future__ import annotations

import json
import math
import os
import random
import re
import shutil
import sqlite3
import subprocess
from html import escape
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner
from statsmodels.stats.proportion import proportion_confint

from kernelfi.cli import cli
from kernelfi.store import CampaignMeta, InjectionRecord, LaunchRow, LayerRow, Store
from kernelfi.types import OUTCOMES, Propagation

try:
    import fcntl
except ImportError:  # pragma: no cover (Windows: each xdist worker builds its own report)
    fcntl = None  # type: ignore[assignment]

LAYERS = [LayerRow(0, "convolutional", "features.0", 64), LayerRow(1, "maxpool", "features.2", 16),
          LayerRow(2, "connected", "classifier.0", 10), LayerRow(3, "softmax", "softmax", 10)]


def launches(hardened: bool = False) -> list[LaunchRow]:
    rows = [("features.0.fill", "fill", 0, {"GPR": 300, "NODEST": 64}, 64, 7),
            ("features.0.im2col", "im2col", 0, {"LD": 200, "GPR": 600}, 64, 25),
            ("features.0.gemm", "gemm", 0, {"FP32": 2000, "LD": 900}, 64, 27),
            ("features.0.add_bias", "add_bias", 0, {"FP32": 64, "LD": 128, "GPR": 200}, 64, 9),
            ("features.2.forward_maxpool", "forward_maxpool", 1, {"FP32": 60, "GPR": 300}, 16, 26),
            ("classifier.0.gemm", "gemm", 2, {"FP32": 160, "LD": 320}, 10, 27),
            ("classifier.0.add_bias", "add_bias", 2, {"FP32": 10, "LD": 20}, 10, 9),
            ("softmax.softmax", "softmax", 3, {"FP32": 40, "OTHERS": 10}, 1, 22)]
    if hardened:  # a voter after the protected kernel, as a hardened trace has
        rows.insert(4, ("features.0.add_bias.vote", "vote", 0, {"GPR": 300, "LD": 192}, 64, 12))
    types = {l.index: l.type for l in LAYERS}
    return [LaunchRow(i, name, k, layer, types[layer], counts, threads, regs)
            for i, (name, k, layer, counts, threads, regs) in enumerate(rows)]


def make_rows(seed: int, n: int, mode: str, trace: list[LaunchRow], mal: float = 8) -> list[InjectionRecord]:
    rnd = random.Random(seed)
    numel = {l.index: l.numel for l in LAYERS}
    out = []
    for i in range(n):
        l = trace[rnd.randrange(len(trace))]
        outcome = rnd.choices(OUTCOMES, weights=[45, 20 if mode == "rf" else 8, 12, 15, mal])[0]
        prop = []
        if outcome.startswith("sdc_"):
            for k in range(l.layer, 4):
                clean = outcome == "sdc_no_malfunction" and k > l.layer and rnd.random() < 0.5
                prop.append(Propagation(k, 0 if clean else rnd.randint(1, numel[k]), numel[k],
                                        0.0 if clean else 1.5, 0.0 if clean else 0.3))
        out.append(InjectionRecord(
            id=i, input_id=rnd.randrange(5), launch=l.index, launch_name=l.name, kernel=l.kernel,
            layer=l.layer, layer_type=l.layer_type, mode=mode, grp="FP32", bit_model="single",
            bits=(rnd.randrange(32),), outcome=outcome, golden_top1=1,
            faulty_top1=2 if outcome == "sdc_malfunction" else 1, propagation=tuple(prop)))
    return out


def meta(**kw: object) -> CampaignMeta:
    base = dict(model="tiny-alexnet", mode="iov", bit_model="single", seed=1, n_planned=240,
                weights_hash="ab" * 32, input_source="unit-test inputs", n_inputs=5)
    base.update(kw)
    return CampaignMeta(**base)  # type: ignore[arg-type]


#: A native timing of an export as `kernelfi overhead --exported DIR --json FILE` writes it
#: (seconds per forward chosen so that the overheads are round numbers).
NATIVE = {"model": "digits-alexnet", "device": "cpu", "clock": "cpu", "batch": 32, "reps": 20,
          "median_s": {"original": 0.010, "none": 0.0102, "plan": 0.0105, "full-dmr": 0.0235, "full-tmr": 0.030},
          "min_s": {"original": 0.008, "none": 0.008, "plan": 0.0082, "full-dmr": 0.018, "full-tmr": 0.024}}


def build(root: Path) -> tuple[Path, Path]:
    """Write the database and run `kernelfi report` once into ``root``."""
    db = root / "results.db"
    with Store(db) as s:
        iov = s.get_or_create_campaign(meta(), launches(), LAYERS)
        rf = s.get_or_create_campaign(meta(mode="rf", derating=0.25), launches(), LAYERS)
        hard = s.get_or_create_campaign(meta(hardening={"tmr": ["add_bias"]}), launches(True), LAYERS)
        s.add_results(iov, make_rows(1, 240, "iov", launches()))
        s.add_results(rf, make_rows(2, 200, "rf", launches()))
        s.add_results(hard, make_rows(3, 200, "iov", launches(True), mal=1))
    (root / "native.json").write_text(json.dumps([NATIVE]))
    result = CliRunner().invoke(cli, ["report", "--db", str(db), "--out", str(root / "out"),
                                      "--native", str(root / "native.json")])
    assert result.exit_code == 0, result.output
    assert result.output.strip().endswith("index.html")
    (root / "done").touch()
    return db, root / "out"


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(database, output directory) after one `kernelfi report` run.

    Under pytest-xdist every worker would build its own copy (~15 s each on a 2-core CI box), so
    the workers share one build in the session's common temp directory, under a file lock.
    """
    if not os.environ.get("PYTEST_XDIST_WORKER") or fcntl is None:
        return build(tmp_path_factory.mktemp("report"))
    root = tmp_path_factory.getbasetemp().parent / "kernelfi-report"
    root.mkdir(exist_ok=True)
    with open(root / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if (root / "done").exists():
                return root / "results.db", root / "out"
            return build(root)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def html_of(out: Path) -> str:
    return (out / "index.html").read_text(encoding="utf-8")


def row_cells(html: str, table_id: str, first_cell: str) -> list[str]:
    """The <td> elements (raw HTML) of the row of ``table_id`` whose first cell is ``first_cell``."""
    table = re.search(rf'<table id="{re.escape(table_id)}">(.*?)</table>', html, re.S)
    assert table, table_id
    for tr in re.findall(r"<tr[^>]*>(.*?)</tr>", table.group(1), re.S):
        tds = re.findall(r"<td[^>]*>.*?</td>", tr, re.S)
        if tds and re.sub(r"<[^>]+>", "", tds[0]) == first_cell:
            return tds
    raise AssertionError(f"no row {first_cell!r} in {table_id}")


# ------------------------------------------------------------------------------------ plan-samples
@pytest.mark.parametrize("args, expected", [
    (["--margin", "0.01", "--confidence", "0.95"], "9604"),
    (["--margin", "0.05"], "385"),
    (["--margin", "0.031", "--population", "1000000"], "999"),  # Leveugle: 1000 -> ±3.1%
    (["--margin", "0.01", "--p", "0.1"], "3458"),
])
def test_plan_samples(args: list[str], expected: str) -> None:
    result = CliRunner().invoke(cli, ["plan-samples", *args])
    assert result.exit_code == 0 and result.output.strip() == expected


@pytest.mark.parametrize("args", [["--margin", "2"], ["--margin", "0.01", "--p", "1.5"],
                                  ["--margin", "0.01", "--confidence", "1"]])
def test_plan_samples_rejects_bad_values(args: list[str]) -> None:
    result = CliRunner().invoke(cli, ["plan-samples", *args])
    assert result.exit_code == 2 and result.output.count("\n") == 1
    assert result.output.startswith("kernelfi: error:")


def test_report_errors_are_one_line(tmp_path: Path) -> None:
    missing = CliRunner().invoke(cli, ["report", "--db", str(tmp_path / "no.db"), "--out", str(tmp_path / "o")])
    assert missing.exit_code == 2 and "no such results database" in missing.output
    Store(tmp_path / "empty.db").close()
    empty = CliRunner().invoke(cli, ["report", "--db", str(tmp_path / "empty.db"), "--out", str(tmp_path / "o")])
    assert empty.exit_code == 2 and "no injections to report" in empty.output


# ------------------------------------------------------------------------------------ the report
FIGURES = ["overall_intervals"] + [f"p{i}_{k}" for i in (1, 2, 3)
                                   for k in ("kernels", "layers", "propagation", "bits")] + ["hardening_p3_vs_p2"]
TABLES = ["campaigns", "published_studies", "overall", "kernels", "layers", "propagation", "masking",
          "bits", "bit_fields", "verdicts", "fit", "hardening"]


def test_files_exist(report: tuple[Path, Path]) -> None:
    _, out = report
    for name in FIGURES:
        assert (out / "figures" / f"{name}.png").stat().st_size > 1000
        assert (out / "figures" / f"{name}.svg").read_text().lstrip().startswith("<?xml")
    for name in TABLES:
        csv = pd.read_csv(out / "tables" / f"{name}.csv")
        pq = pd.read_parquet(out / "tables" / f"{name}.parquet")
        assert len(csv) == len(pq) > 0 and list(csv.columns) == list(pq.columns)


def test_html_has_every_figure_and_table(report: tuple[Path, Path]) -> None:
    html = html_of(report[1])
    assert len(re.findall(r'<img alt="[^"]+" src="data:image/png;base64,', html)) == len(FIGURES)
    for name in FIGURES:
        assert f'id="fig-{name}"' in html
    ids = ["campaigns", "studies", "overall", "verdicts", "fit", "pvf"]
    ids += [f"{t}-p{i}" for i in (1, 2, 3) for t in ("kernels", "layers", "masking", "bits")]
    for table_id in ids:
        assert f'<table id="table-{table_id}">' in html
    assert "http://" not in html and "https://" not in html  # self-contained
    for word in ("ab" * 32, "unit-test inputs", escape('{"tmr": ["add_bias"]}'), "0.1.0"):
        assert word in html  # campaign metadata


def sql(db: Path, query: str) -> list[tuple]:
    with sqlite3.connect(db) as con:
        return con.execute(query).fetchall()


def test_overall_rate_equals_independent_sql(report: tuple[Path, Path]) -> None:
    db, out = report
    html = html_of(out)
    (k, n), = sql(db, "SELECT SUM(outcome = 'sdc_malfunction'), COUNT(*) FROM injections WHERE campaign = 1")
    cells = row_cells(html, "table-overall", "tiny-alexnet IOV single scope=all")
    mal = cells[3 + 4]  # population, metric, n, then masked, due, no-mal, light, malfunction
    assert f'data-value="{k / n!r}"' in mal and f"{100 * k / n:.2f}%" in mal
    wl, wh = proportion_confint(k, n, alpha=0.05, method="wilson")
    cl, ch = proportion_confint(k, n, alpha=0.05, method="beta")
    assert f"W [{100 * wl:.2f}, {100 * wh:.2f}]%" in mal and f"CP [{100 * cl:.2f}, {100 * ch:.2f}]%" in mal


def test_fit_equals_hand_computation(report: tuple[Path, Path]) -> None:
    db, out = report
    (k, n), = sql(db, "SELECT SUM(outcome LIKE 'sdc_%'), COUNT(*) FROM injections WHERE campaign = 2")
    rows = sql(db, "SELECT registers, threads, n_fp32 + n_ld + n_gpr + n_pr + n_nodest + n_others FROM launches "
                   "WHERE campaign = 2")
    exposed = sum(min(r * 32 * min(t, 5 * 2048), 5 * 65536 * 32) * i for r, t, i in rows) / sum(i for *_, i in rows)
    fit = pd.read_csv(out / "tables" / "fit.csv")
    sdc = fit[(fit["mode"] == "rf") & (fit["outcome"] == "sdc")].iloc[0]
    assert sdc["exposed_bits"] == round(exposed)
    assert math.isclose(sdc["fit"], 1000 / 1e6 * round(exposed) * k / n, rel_tol=1e-12)
    assert f"{sdc['fit']:,.2f}" in html_of(out)


def test_studies_comparison_is_computed_from_the_rows(report: tuple[Path, Path]) -> None:
    db, out = report
    seed = pd.read_csv(out / "tables" / "published_studies.csv")
    assert len(seed) == 6 and set(seed["agrees"]) <= {"yes", "no", "partly", "not tested"}
    top = sql(db, "SELECT kernel, SUM(outcome IN ('sdc_malfunction', 'sdc_light_malfunction')) AS c "
                  "FROM injections WHERE campaign = 2 GROUP BY kernel ORDER BY c DESC, kernel LIMIT 2")
    measured = seed.loc[0, "measured"]
    first, second = top
    if first[1] != second[1]:  # a tie may be listed in either order
        assert measured.startswith(f"RF: {first[0]} ")
    assert "without gemm" in measured  # scope=all: the SASSIFI-comparable ranking is also given
    after = seed.loc[4, "measured"]
    (k, n), = sql(db, "SELECT SUM(outcome = 'sdc_malfunction'), COUNT(*) FROM injections WHERE campaign = 3")
    assert f"after, IOV: SDC Malfunction {100 * k / n:.2f}%" in after
    assert seed.loc[5, "measured"] == "no campaign of this kind in the database"  # no ResNet here


def chromium() -> str | None:
    return shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)


def test_page_renders_in_headless_chromium(report: tuple[Path, Path], tmp_path: Path) -> None:
    exe = chromium()
    if exe is None:
        pytest.skip("chromium is not installed (apt-get install chromium; .ci/run does it)")
    cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0",
           "--virtual-time-budget=10000", "--dump-dom", (report[1] / "index.html").resolve().as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    body = re.search(r"<body([^>]*)>", proc.stdout)
    assert body, proc.stdout[:500]
    attrs = dict(re.findall(r'data-([a-z-]+)="([^"]*)"', body.group(1)))
    assert attrs.get("images-total") == str(len(FIGURES))
    assert attrs.get("images-loaded") == str(len(FIGURES)) and attrs.get("images-ok") == "true"
    assert attrs.get("errors") == ""
    console = [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]
    assert console == []


# ------------------------------------------------------------------------------------ native overhead
def test_native_overhead_of_the_export_is_shown_beside_table2(report: tuple[Path, Path]) -> None:
    """`report --native` shows each variant's median and fastest time and its overhead over the
    original: plan 10.5 / 10 ms = +5.0% (fastest 8.2 / 8 = +2.5%), full DMR 23.5 / 10 = +135.0%,
    full TMR 30 / 10 = +200.0% (24 / 8 = +200.0%)."""
    _, out = report
    html = html_of(out)
    tid = "table-native-digits_alexnet-cpu"
    assert [re.sub(r"<[^>]+>", "", c) for c in row_cells(html, tid, "plan")] == \
        ["plan", "10.500", "8.200", "+5.0%", "+2.5%"]
    assert [re.sub(r"<[^>]+>", "", c) for c in row_cells(html, tid, "full DMR")][3] == "+135.0%"
    assert [re.sub(r"<[^>]+>", "", c) for c in row_cells(html, tid, "full TMR")][3:] == ["+200.0%", "+200.0%"]
    frame = pd.read_csv(out / "tables" / "native_overhead.csv").set_index("variant")
    assert frame.loc["full-dmr", "overhead"] == pytest.approx(1.35)
    assert frame.loc["none", "overhead_fastest"] == pytest.approx(0.0)


def test_report_native_refuses_a_file_that_is_not_a_timing(tmp_path: Path) -> None:
    db = tmp_path / "results.db"    # the timings are read before the database
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"model": "digits-alexnet", "median_s": {"original": 1.0}}))
    r = CliRunner().invoke(cli, ["report", "--db", str(db), "--out", str(tmp_path / "o2"), "--native", str(bad)])
    assert r.exit_code != 0
    assert r.output.strip().splitlines()[-1].startswith(f"kernelfi: error: {bad}: not a native timing of an export (missing device")
    bad.write_text("{not json")
    r = CliRunner().invoke(cli, ["report", "--db", str(db), "--out", str(tmp_path / "o2"), "--native", str(bad)])
    assert r.exit_code != 0 and "cannot read the native timings" in r.output.strip().splitlines()[-1]


def test_the_report_states_the_exports_labels_and_titles() -> None:
    """The report restates harden.export's labels and titles (it reads timings without torch)."""
    from kernelfi.harden.export import LABELS, TITLES
    from kernelfi.report.hardening import NATIVE_LABELS
    from kernelfi.report.sections import NATIVE_TITLES

    assert tuple(LABELS) == NATIVE_LABELS and dict(TITLES) == NATIVE_TITLES
