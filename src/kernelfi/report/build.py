"""``build_report``: a results database in, ``DIR/index.html`` + figures + tables out.

Layout of DIR: ``index.html`` (self-contained), ``figures/<name>.png|.svg``,
``tables/<name>.csv|.parquet`` (every table the page shows, in full, long format, with every
interval column). Re-running overwrites the files it writes and leaves others alone.
"""
from __future__ import annotations

import datetime as _dt
import json
from dataclasses import dataclass
from html import escape
from pathlib import Path

import pandas as pd

from kernelfi.version import __version__
from kernelfi._utils import KernelfiError
from kernelfi.store import Store

from . import sections
from .budget import fit_table, verdict_table
from .figures import (
    Rendered, bit_figure, ci_figure, kernel_figure, layer_figure, propagation_figure, render,
)
from .hardening import comparison_table, hardening_figure, masked_table, pairs, plan_table2, plan_text
from .html import figure, page
from .studies import STUDY_OVERHEAD, STUDY_TABLE2, studies_table, table2_frame
from .tables import PER_POPULATION, ReportData, collect, stacked


@dataclass(frozen=True)
class ReportOptions:
    """What the user can set: the FIT assumptions and the sample-size target."""

    raw_fit_per_mbit: float = 1000.0
    fit_budget: float = 10.0
    margin: float = 0.01
    confidence: float = 0.95
    exposed_bits: float | None = None  # override the RF exposed bits (see budget.py)


def _export(name: str, df: pd.DataFrame, out: Path) -> None:
    """CSV and Parquet; object columns that are not plain text become JSON text (Parquet needs one type)."""
    df = df.copy()
    for c in df.columns:
        if df[c].dtype == object and not df[c].map(lambda v: v is None or isinstance(v, str)).all():
            df[c] = df[c].map(lambda v: v if isinstance(v, str) else json.dumps(v, default=str))
    df.to_csv(out / f"{name}.csv", index=False)
    df.to_parquet(out / f"{name}.parquet", index=False)


def _save(r: Rendered, out: Path) -> Rendered:
    (out / f"{r.name}.png").write_bytes(r.png)
    (out / f"{r.name}.svg").write_text(r.svg, encoding="utf-8")
    return r


def _population_section(item, figs: Path) -> str:  # type: ignore[no-untyped-def]
    pop = item.population
    key = pop.key
    html = [f'<h2 id="{key}">{escape(pop.label)}</h2><p class="note">Campaigns '
            f"{', '.join(map(str, pop.campaigns))}; {pop.n:,} injections; metric {pop.metric}.</p>",
            "<h3>Kernel vulnerability (CKV)</h3>",
            figure(_save(render(f"{key}_kernels", f"Kernel vulnerability, {pop.label}", kernel_figure(item)), figs),
                   "Bars: each kernel's errors as a share of <i>all</i> injections (the AlexNet study's Fig. 4–6; "
                   "with Masked they sum to 100% over kernels). Table: the same share with intervals, and "
                   "the rate given the kernel."),
            sections.kernels(item), "<h3>Layer vulnerability (CLV)</h3>",
            figure(_save(render(f"{key}_layers", f"Layer {pop.metric}, {pop.label}", layer_figure(item)), figs),
                   "Bars: rate of each outcome given the layer was injected (the AlexNet study's Fig. 7–9), with "
                   "Wilson 95% error bars; n = injections in the layer."),
            sections.layers(item), "<h3>Error propagation</h3>"]
    prop = propagation_figure(item)
    html.append(figure(_save(render(f"{key}_propagation", f"Error propagation, {pop.label}", prop), figs),
                       "Rows: injected layer (SDC injections only); columns: downstream layers; cell: mean "
                       "percentage of the layer's output elements that differ from golden.")
                if prop is not None else "<p>No SDC propagated: no propagation heatmap.</p>")
    html += [sections.masking(item), "<h3>Bit sensitivity</h3>"]
    bits = bit_figure(item)
    html.append(figure(_save(render(f"{key}_bits", f"Bit sensitivity, {pop.label}", bits), figs),
                       "Rate of each outcome given the flipped bit (stacked; Masked is the rest).")
                if bits is not None else f"<p>Bit model {escape(pop.meta.bit_model)} flips no named bit.</p>")
    html.append(sections.bit_fields(item))
    return "".join(html)


def _hardening_section(data: ReportData, figs: Path) -> tuple[str, dict[str, pd.DataFrame]]:
    found = pairs(data)
    html = ['<h2 id="hardening">Before / after hardening</h2>']
    tables = []
    if not found:
        html.append("<p>No hardened campaign with an unhardened baseline of the same model, mode and "
                    "scope in this database (run a campaign with <code>--hardening PLAN.json</code>).</p>")
    for before, after in found:
        name = f"hardening_{after.population.key}_vs_{before.population.key}"
        fig = render(name, f"Before/after hardening, {after.population.label}", hardening_figure(before, after))
        cmp = comparison_table(before, after)
        tables.append(cmp)
        html.append(figure(_save(fig, figs), "Per kernel (top, share of all injections) and per layer "
                           "(bottom, rate given the layer): left bar baseline, right hatched bar hardened "
                           "(the AlexNet study's Fig. 10–15)."))
        html.append(sections.hardening(cmp))
    masked = masked_table(found)
    html.append(sections.masked(masked))
    overheads = []
    for after in {plan_text(h.population.meta.hardening): h for _, h in found}.values():   # one per plan
        techniques = [f"{p.get('technique')} of {p.get('target')} {p.get('name')}"
                      for p in (after.population.meta.hardening or {}).get("protect", [])]
        try:
            t2 = plan_table2(after, data.db)
        except KernelfiError as err:   # weights moved or changed: say so, keep the report
            html.append(f"<p>No modelled overhead for {escape(after.population.label)}: {escape(str(err))}</p>")
            continue
        overheads.append(t2)
        html.append(sections.table2(t2, STUDY_TABLE2, STUDY_OVERHEAD, techniques))
    out = {"hardening": pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(),
           "hardening_masked": masked, "table2": table2_frame(overheads)}
    return "".join(html), out


def build_report(db: str | Path, out: str | Path, options: ReportOptions = ReportOptions()) -> Path:
    """Write the report of every population in ``db`` under ``out``; returns ``out/index.html``.

    ``db`` is opened read-only and checked first (a damaged file is refused); a disk that fills
    up, or any other failure to write ``out``, is one line naming the file."""
    try:
        return _build(db, out, options)
    except OSError as err:
        where = err.filename or out
        raise KernelfiError(f"{where}: cannot write the report: {err.strerror or err}") from None


def _build(db: str | Path, out: str | Path, options: ReportOptions) -> Path:
    with Store(db, create=False, readonly=True) as store:
        store.verify()
        data = collect(store, options.confidence)
    out = Path(out)
    figs, tabs = out / "figures", out / "tables"
    try:
        for d in (figs, tabs):
            d.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise KernelfiError(f"{out}: cannot create the report directory: {err.strerror}") from None

    verdicts = pd.concat([verdict_table(i, options.margin, options.confidence) for i in data.items],
                         ignore_index=True)
    fits = pd.concat([fit_table(i, options.raw_fit_per_mbit, options.fit_budget, options.exposed_bits)
                      for i in data.items], ignore_index=True)
    studies = studies_table(data)
    ci = _save(render("overall_intervals", "Overall rates with 95% intervals", ci_figure(data)), figs)
    hard_html, hard_tables = _hardening_section(data, figs)
    body = [f'<p class="note">Database <code>{escape(str(db))}</code>, generated '
            f"{_dt.datetime.now(_dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')} by kernelfi {__version__}. "
            f"Figures are also in <code>figures/</code> (PNG, SVG), every table in <code>tables/</code> "
            f"(CSV, Parquet). How to read each part: <code>docs/report.md</code>.</p>",
            sections.tool_errors(data), sections.campaigns(data), sections.studies(studies), sections.overall(data, ci),
            sections.verdicts(verdicts, options.margin),
            sections.fit(fits, options.raw_fit_per_mbit, options.fit_budget)]
    body += [_population_section(i, figs) for i in data.items]
    body.append(hard_html)
    nav = [("tool-errors", "Tool errors")] if not data.tool_errors.empty else []
    nav += [("campaigns", "Campaigns"), ("studies", "Published studies"), ("overall", "Overall"),
           ("verdicts", "Sample size"), ("fit", "FIT")]
    nav += [(i.population.key, i.population.label) for i in data.items] + [("hardening", "Hardening")]
    index = out / "index.html"
    index.write_text(page(f"kernelfi report: {Path(db).name}", nav, body), encoding="utf-8")
    exports = {name: stacked(data, name) for name in PER_POPULATION}
    exports.update(campaigns=data.campaigns, published_studies=studies, verdicts=verdicts, fit=fits, tool_errors=data.tool_errors,
                   **hard_tables)
    for name, df in exports.items():
        _export(name, df, tabs)
    return index


__all__ = ["ReportOptions", "build_report"]
