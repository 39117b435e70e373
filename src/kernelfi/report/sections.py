"""The report's sections as HTML, each from tables already computed (no analysis here)."""
from __future__ import annotations

import json

import math
from html import escape
from typing import TYPE_CHECKING, Any, Mapping

import pandas as pd

from .common import LABELS, TABLE_CATEGORIES, interval, pct, slug
from .figures import Rendered
from .studies import COMMON_NOTE
from .html import Cell, figure, num, rate_cell, table
from .tables import PopulationTables, ReportData

if TYPE_CHECKING:
    from kernelfi.harden import OverheadTable


def _rate(r: pd.Series, prefix: str = "rate", extra: str = "") -> Cell:
    return rate_cell(r[prefix], r[f"{prefix}_wilson_low"], r[f"{prefix}_wilson_high"],
                     r[f"{prefix}_cp_low"], r[f"{prefix}_cp_high"], extra)


def _plan_cell(plan_json: str) -> Cell:
    """What a campaign's plan protects, in one line each; the full JSON folded away."""
    if not plan_json:
        return "none (unhardened)"
    try:
        plan = json.loads(plan_json)
        items = [f"{p.get('technique', '?')}: {p.get('target', '?')} {p.get('name', '?')}" for p in plan.get("protect", [])]
    except (ValueError, AttributeError, TypeError):
        items = []
    head = "<br>".join(escape(i) for i in items) or "hardened"
    return (f"{head}<details><summary>plan JSON</summary><pre class=\"plan\">{escape(plan_json)}</pre></details>", None)


def campaigns(data: ReportData) -> str:
    heads = ["id", "model", "mode", "bit model", "warp", "scope", "selection", "seed", "injections",
             "inputs", "golden accuracy", "weights (SHA-256, source)", "derating", "tool", "hardening plan", "created"]
    rows: list[list[Cell]] = []
    for r in data.campaigns.itertuples():
        rows.append([str(r.campaign), r.model, r.mode.upper(), r.bit_model, "yes" if r.warp else "no",
                     r.scope, r.selection, str(r.seed), f"{r.n_done} / {r.n_planned}",
                     (f"{r.n_inputs}: {escape(r.input_source)}<br><small>{escape(r.data)}</small>", None),
                     r.golden_accuracy,
                     (f'<code class="hash">{escape(r.weights_hash)}</code><br><small>{escape(str(r.weights_source))}</small>', None),
                     "–" if pd.isna(r.derating) else f"{r.derating:.4f}", r.tool_version,
                     _plan_cell(r.hardening), r.created])
    return ('<h2 id="campaigns">Campaigns</h2><p class="note">One row per campaign in '
            f"<code>{escape(data.db)}</code>. Campaigns that sample the same fault population are "
            "pooled into one <i>population</i> below.</p>" + table(heads, rows, "table-campaigns"))


def tool_errors(data: ReportData) -> str:
    """The faults kernelfi failed to run, first on the page: the tool's failures, not results."""
    df = data.tool_errors
    if df.empty:
        return ""
    rows: list[list[Cell]] = [[str(r.campaign), str(r.id), f"{r.launch} {r.launch_name}", r.kernel,
                               r.mode.upper(), (f"<code>{escape(r.error)}</code>", None),
                               (f"<code>{escape(r.replay)}</code>", None), r.tool_version] for r in df.itertuples()]
    per = df.groupby("campaign").size()
    which = ", ".join(f"campaign {c}: {n}" for c, n in per.items())
    return ('<h2 id="tool-errors">Tool errors</h2><p class="alarm"><b>kernelfi failed on '
            f"{len(df):,} fault{'s' * (len(df) != 1)}</b> ({escape(which)}): an exception inside the tool, "
            "not an outcome of the fault. They are in no rate, interval or count below (every figure is "
            "over the injections that ran); resuming the campaign runs them again. Please report them "
            "with the replay command's output.</p>"
            + table(["campaign", "id", "launch", "kernel", "mode", "error", "replay", "tool"], rows, "table-tool-errors"))


def studies(df: pd.DataFrame) -> str:
    heads = ["finding", "published studies", "measured in this database", "agrees", "basis", "why it may differ"]
    rows: list[list[Cell]] = [[r.finding, r.published, (escape(r.measured).replace("\n", "<br>"), None), r.agrees,
                               r.basis, r.why_it_may_differ] for r in df.itertuples()]
    return ('<h2 id="studies">Comparison with the published studies</h2><p class="note">Each finding of the '
            "published studies (<i>Analyzing the Resilience of Convolutional Neural Networks Implemented on "
            "GPUs: Alexnet as a Case Study</i>, the AlexNet study; <i>Soft Error Resilience of Deep Residual "
            "Networks for Object Recognition</i>, the ResNet study, from its abstract) beside what this database "
            "measured, computed from the tables of this report and stated as measured. Nothing in the tool is "
            "tuned to match. 'agrees' is a plain reading of the point estimates, not a test: check the "
            f"intervals. What every row shares: {escape(COMMON_NOTE)}</p>"
            + table(heads, rows, "table-studies", [r.agrees if r.agrees != "not tested" else "" for r in df.itertuples()]))


def overall(data: ReportData, ci: Rendered) -> str:
    heads = ["population", "metric", "n"] + [LABELS[c] for c in TABLE_CATEGORIES]
    rows = []
    for item in data.items:
        o = item.tables["overall"].set_index("outcome")
        cells: list[Cell] = [item.population.label, item.population.metric, num(item.population.n)]
        for c in TABLE_CATEGORIES:
            extra = ""
            if item.population.metric == "AVF" and not math.isnan(o.loc[c, "rate_derated"]):
                extra = f"derated AVF {pct(o.loc[c, 'rate_derated'])}"
            cells.append(_rate(o.loc[c], extra=extra))
        rows.append(cells)
    return ('<h2 id="overall">Overall rates</h2><p class="note">Rate of each outcome over all '
            "injections of a population (PVF for IOV/IOA, raw AVF for RF; the derated AVF multiplies "
            "by the allocated share of the register file). W = Wilson, CP = Clopper–Pearson, "
            "95%.</p>" + table(heads, rows, "table-overall")
            + figure(ci, "Dot: estimate; thick bar: Wilson 95%; thin bar: Clopper–Pearson 95%."))


def verdicts(df: pd.DataFrame, margin: float) -> str:
    o = df[df["scope"] == "overall"]
    rows = [[r.label, LABELS[r.outcome], num(r.n), (pct(r.rate), r.rate), (f"±{100 * r.margin:.2f}%", r.margin),
             "yes" if r.reached else "no", num(r.needed), num(r.more)] for r in o.itertuples()]
    k = df[df["scope"] == "kernel"]
    summary = "".join(
        f"<li>{escape(lab)}: {int(g['reached'].sum())} of {len(g)} per-kernel rates reached "
        f"±{100 * margin:.2f}%; the widest needs {int(g['more'].max()):,} more injections "
        f"({escape(str(g.loc[g['more'].idxmax(), 'group']))}, "
        f"{LABELS[g.loc[g['more'].idxmax(), 'outcome']]}).</li>"
        for lab, g in k.groupby("label", sort=False))
    return (f'<h2 id="verdicts">Sample size</h2><p class="note">Did each rate reach the margin asked '
            f"for (±{100 * margin:.2f}% at 95%, Wilson half-width)? <i>needed</i> is the number of "
            "injections whose Wilson interval at the observed rate is that narrow (Leveugle et al. "
            "plan before a campaign with <code>kernelfi plan-samples</code>); <i>more</i> = needed − n. "
            "Per-kernel verdicts are in <code>tables/verdicts.csv</code>.</p>"
            + table(["population", "outcome", "n", "rate", "Wilson half-width", "reached", "needed", "more"],
                    rows, "table-verdicts") + f"<ul>{summary}</ul>")


def fit(df: pd.DataFrame, raw: float, budget: float) -> str:
    rf = df[df["mode"] == "rf"]
    rows = [[r.label, LABELS[r.outcome], (f"{pct(r.rate)} {interval(r.rate_wilson_low, r.rate_wilson_high)}", r.rate),
             num(r.exposed_bits), (f"{r.derating_recomputed:.4f} / {r.derating_stored:.4f}", r.derating_recomputed),
             num(r.fit, "{:,.2f}"), (f"[{r.fit_low:,.2f}, {r.fit_high:,.2f}]", r.fit_high),
             r.verdict] for r in rf.itertuples()]
    pvf = df[df["mode"] != "rf"]
    prow = [[r.label, LABELS[r.outcome], (f"{pct(r.rate)} {interval(r.rate_wilson_low, r.rate_wilson_high)}", r.rate)]
            for r in pvf.itertuples()]
    text = (f'<h2 id="fit">FIT estimate</h2><p class="note">FIT<sub>SDC</sub> = raw FIT per bit × exposed '
            f"bits × AVF<sub>SDC</sub>, with a raw rate of {raw:g} FIT/Mbit (1 Mbit = 10<sup>6</sup> bits; "
            f"IEC 61508 quotes 700–1200) against a budget of {budget:g} FIT (ASIL-D: 10). "
            "<b>Exposed bits</b> = allocated registers × 32 × resident threads per launch "
            "(resident ≤ 5 SMs × 2048 threads, capped at the 10.5 Mbit register file of the AlexNet "
            "study's GTX 750 Ti), averaged over the inference weighted by each launch's dynamic instructions; "
            "it pairs with the <i>raw</i> AVF (a flip in an allocated register). Their ratio to the "
            "whole register file is the campaign's derating (shown recomputed / stored: they should "
            "agree). The inference is assumed to run back to back (100% duty cycle); only the "
            "register file is counted. Verdict: <i>meets</i> = whole interval ≤ budget, "
            "<i>exceeds</i> = whole interval above, else <i>inconclusive</i>.</p>")
    if rows:
        text += table(["population", "outcome", "raw AVF (Wilson 95%)", "exposed bits",
                       "derating recomputed / stored", "FIT", "FIT interval", "verdict"], rows, "table-fit")
    else:
        text += "<p>No RF campaign in the database: no FIT estimate.</p>"
    if prow:
        text += ("<p class=\"note\">IOV/IOA campaigns measure a PVF: the probability that one corrupted "
                 "dynamic instruction output ends in the outcome. A FIT would need a raw error rate per "
                 "executed instruction, which is not known, so only the per-instruction vulnerability "
                 "is given.</p>" + table(["population", "outcome", "PVF (Wilson 95%)"], prow, "table-pvf"))
    return text


def kernels(item: PopulationTables) -> str:
    t = item.tables["kernels"]
    order = [k for k in item.kernel_order if k in set(t["kernel"])]
    rows = []
    for k in order:
        g = t[t["kernel"] == k].set_index("outcome")
        cells: list[Cell] = [k, num(g["n"].iloc[0])]
        for c in TABLE_CATEGORIES:
            r = g.loc[c]
            cells.append(_rate(r, "share_of_all", f"given the kernel {pct(r['rate'])}"))
        rows.append(cells)
    return table(["kernel", "n"] + [LABELS[c] for c in TABLE_CATEGORIES], rows, f"table-kernels-{item.population.key}")


def layers(item: PopulationTables) -> str:
    t = item.tables["layers"]
    rows = []
    for l in sorted(set(t["layer"])):
        g = t[t["layer"] == l].set_index("outcome")
        rows.append([item.layer_labels.get(l, str(l)), item.layer_names.get(l, ""), num(g["n"].iloc[0])]
                    + [_rate(g.loc[c]) for c in TABLE_CATEGORIES])
    return table(["layer", "name", "n"] + [LABELS[c] for c in TABLE_CATEGORIES], rows,
                 f"table-layers-{item.population.key}")


def masking(item: PopulationTables) -> str:
    t = item.tables["masking"]
    if t.empty:
        return "<p>No No-Malfunction SDCs: nothing was masked downstream.</p>"
    rows = [[item.layer_labels.get(r.injected_layer, str(r.injected_layer)),
             "none recorded" if r.masked_at < 0 else item.layer_labels.get(r.masked_at, str(r.masked_at)),
             num(r.count), (pct(r.share), r.share)] for r in t.itertuples()]
    return ("<p class=\"note\">Where No-Malfunction SDCs die out: the first layer (from the injected one "
            "on) whose output equals golden.</p>"
            + table(["injected layer", "masked at layer", "count", "share"], rows, f"table-masking-{item.population.key}"))


def bit_fields(item: PopulationTables) -> str:
    t = item.tables["bit_fields"]
    if t.empty:
        return ""
    rows = []
    for f in ("sign", "exponent", "mantissa", "other"):
        g = t[t["field"] == f].set_index("outcome")
        if not g.empty:
            rows.append([f, num(g["n"].iloc[0])] + [_rate(g.loc[c]) for c in TABLE_CATEGORIES])
    return table(["field", "n"] + [LABELS[c] for c in TABLE_CATEGORIES], rows, f"table-bits-{item.population.key}")


def hardening(cmp: pd.DataFrame) -> str:
    rows = []
    for r in cmp.itertuples():
        b = rate_cell(r.before_rate, r.before_rate_wilson_low, r.before_rate_wilson_high,
                      r.before_rate_cp_low, r.before_rate_cp_high)
        a = rate_cell(r.after_rate, r.after_rate_wilson_low, r.after_rate_wilson_high,
                      r.after_rate_cp_low, r.after_rate_cp_high)
        red = ("–" if not math.isfinite(r.reduction) or r.reduction == 0 else
               f"×{r.reduction:.2f} lower" if r.reduction >= 1 else f"×{1 / r.reduction:.2f} higher")
        rows.append([LABELS[r.outcome], b, a, red])
    plan = escape(str(cmp["hardening"].iloc[0]))
    return (f"<p class=\"note\">{escape(str(cmp['before'].iloc[0]))} (n={int(cmp['before_n'].iloc[0]):,}) → "
            f"{escape(str(cmp['after'].iloc[0]))} (n={int(cmp['after_n'].iloc[0]):,}); plan <code>{plan}</code></p>"
            + table(["outcome", "before", "after", "change"], rows))


def masked(frame: pd.DataFrame) -> str:
    """The share of the baseline's errors each hardened population masks (docs/report.md)."""
    if frame.empty:
        return ""
    rows = [[escape(r.before), escape(r.after), num(r.population_growth, "×{:.4f}"),
             (f"{pct(r.sdc_before)} → {pct(r.sdc_after)}", r.sdc_after), (pct(r.sdc_masked_share), r.sdc_masked_share),
             (f"{pct(r.malfunction_before)} → {pct(r.malfunction_after)}", r.malfunction_after),
             (pct(r.malfunction_masked_share), r.malfunction_masked_share)] for r in frame.itertuples()]
    return ("<h3>Errors masked after hardening</h3><p class=\"note\">The ResNet study's \"93.38% of the injected "
            "errors masked\", defined here as the share of the baseline's SDCs (and of its Malfunctions) that the "
            "hardened model masks per inference, at the same fault rate per executed instruction: 1 − rate after × "
            "P<sub>after</sub>/P<sub>before</sub> / rate before, where P is the mode's number of fault sites (the "
            "hardened model's replicas and voters add sites). Rates are per injection, from the overall tables.</p>"
            + table(["baseline", "hardened", "sites P_after/P_before", "SDC before → after", "SDCs masked",
                     "Malfunction before → after", "Malfunctions masked"], rows, "table-masked"))


def table2(ours: OverheadTable, study: Mapping[str, tuple[int, float, float, float, float]],
           study_overhead: Mapping[str, float], techniques: list[str]) -> str:
    """A plan's modelled Table 2 beside the AlexNet study's published one."""
    labs = ("unhardened", "plan", "full DMR", "full TMR")
    rows: list[list[Cell]] = []
    for k in ours.kernels:
        rows.append([k, num(ours.invocations.get(k, 0))]
                    + [num(1000 * ours.seconds[lab][k], "{:.4f}") for lab in labs if lab in ours.labels])
    rows.append(["whole model", "1"] + [num(1000 * ours.total[lab], "{:.4f}") for lab in labs if lab in ours.labels])
    rows.append(["overhead", ""] + [("–" if lab == "unhardened" else f"{100 * ours.overhead(lab):+.2f}%", None)
                                    for lab in labs if lab in ours.labels])
    srows: list[list[Cell]] = [[k, num(v[0])] + [num(x, "{:.4f}") for x in v[1:]] for k, v in study.items()]
    srows.append(["overhead", "", "–"] + [f"+{100 * study_overhead[lab]:.2f}%" for lab in labs[1:]])
    heads = ["kernel", "invocations"] + [f"{lab} (ms)" for lab in labs]
    return (f"<h3>Run-time overhead: {escape(ours.model)}, modelled on {escape(ours.device)}</h3>"
            f"<p class=\"note\">Plan: {escape('; '.join(techniques)) or 'nothing protected'}. Modelled time per "
            "kernel type (kernelfi.gputime, docs/hardening.md \"GPU time model\"; hardening launches charged to the "
            "kernel type they protect; conditional re-executions not run), beside the AlexNet study's published "
            "Table 2 (its own AlexNet on a GTX 750 Ti; no gemm row there: cuBLAS is not instrumented).</p>"
            + table(heads[:2] + [h for h, lab in zip(heads[2:], labs) if lab in ours.labels], rows,
                    f"table-table2-{slug(ours.model)}")
            + "<p class=\"note\">The AlexNet study, Table 2 (as published):</p>" + table(heads, srows, "table-table2-study"))


#: harden.export.TITLES, restated: the report reads timings without importing torch
NATIVE_TITLES = {"original": "original model", "none": "export, no hardening", "plan": "plan",
                  "full-dmr": "full DMR", "full-tmr": "full TMR"}


def native(records: tuple[Mapping[str, Any], ...]) -> str:
    """The exported model's native overhead (docs/export.md §5), one table per timing given."""
    if not records:
        return ("<h3>Native overhead of the exported model</h3><p class=\"note\">No native timing given: export the "
                "plan (<code>kernelfi export MODEL --hardening plan.json --out DIR</code>), time it "
                "(<code>kernelfi overhead --exported DIR --json native.json</code>) and pass "
                "<code>--native native.json</code> to <code>kernelfi report</code>.</p>")
    html = []
    for r in records:
        rows: list[list[Cell]] = []
        for lab, title in NATIVE_TITLES.items():
            med, low = float(r["median_s"][lab]), float(r["min_s"][lab])
            over = [("–", None)] * 2 if lab == "original" else [
                (f"{100 * (med / float(r['median_s']['original']) - 1):+.1f}%", None),
                (f"{100 * (low / float(r['min_s']['original']) - 1):+.1f}%", None)]
            rows.append([title, num(1000 * med, "{:.3f}"), num(1000 * low, "{:.3f}")] + over)
        html.append(f"<h3>Native overhead of the exported model: {escape(str(r['model']))}, {escape(str(r['device']))}</h3>"
                    f"<p class=\"note\">The plan exported as plain PyTorch (<code>kernelfi export</code>) and timed on "
                    f"the machine that ran the timing, not modelled: one forward of {int(r['batch'])} inputs per sample, "
                    f"{int(r['reps'])} interleaved repetitions (order rotated each time), {escape(str(r['clock']))} "
                    "clock; medians and fastest runs against the original model (docs/export.md §5). A shared machine's "
                    "load moves these figures from run to run; the modelled table above does not move.</p>"
                    + table(["variant", "median ms", "fastest ms", "overhead (medians)", "overhead (fastest)"], rows,
                            f"table-native-{slug(str(r['model']))}-{slug(str(r['device']))}"))
    return "".join(html)
