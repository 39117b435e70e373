"""The report's figures, drawn with matplotlib's object API (no pyplot, so no global backend).

Each function takes analysis tables and returns a ``Figure``; ``render`` turns it into PNG bytes
and SVG text. Labels use kernel names and ``"<index> <type>"`` layer labels (with the model's
layer name under it), never bare numbers, so a figure reads on its own.
"""
from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import PercentFormatter

from .common import COLORS, ERROR_CATEGORIES, LABELS, TABLE_CATEGORIES
from .tables import PopulationTables, ReportData

DPI = 100
#: Layers with fewer injections get no error bar (it would span most of the axis); see the table.
MIN_N_ERRORBAR = 10


@dataclass(frozen=True)
class Rendered:
    """A figure as the report embeds (PNG) and ships (PNG + SVG) it."""

    name: str
    title: str
    png: bytes
    svg: str


def render(name: str, title: str, fig: Figure) -> Rendered:
    """PNG (for ``<img>``) and SVG (scalable, for papers) of one figure."""
    png, svg = io.BytesIO(), io.StringIO()
    fig.savefig(png, format="png", dpi=DPI, bbox_inches="tight")
    fig.savefig(svg, format="svg", bbox_inches="tight")
    return Rendered(name, title, png.getvalue(), svg.getvalue())


def _pivot(df: pd.DataFrame, key: str, value: str) -> pd.DataFrame:
    return df.pivot_table(index=key, columns="outcome", values=value, aggfunc="first")


def _layer_ticks(item: PopulationTables, layers: list[int]) -> list[str]:
    return [f"{item.layer_labels.get(l, l)}\n{item.layer_names.get(l, '')}" for l in layers]


def _legend(ax, cats=ERROR_CATEGORIES[::-1], **kw) -> None:  # type: ignore[no-untyped-def]
    """Legend listed top-down in the order the bars stack (top of the stack first)."""
    kw = {"loc": "upper left", "bbox_to_anchor": (1.01, 1.0), **kw}  # outside: never over a bar
    ax.legend(handles=[Patch(color=COLORS[c], label=LABELS[c]) for c in cats], fontsize=8,
              frameon=False, **kw)


def kernel_figure(item: PopulationTables) -> Figure:
    """As the AlexNet study's Fig. 4–6: per kernel, stacked share of ALL injections by category (sums over kernels
    to 100% with Masked, which is left out so the errors stay visible)."""
    pop = item.population
    t = item.tables["kernels"]
    share, n = _pivot(t, "kernel", "share_of_all"), t.groupby("kernel")["n"].first()
    kernels = item.kernel_order + [k for k in share.index if k not in item.kernel_order]
    fig = Figure(figsize=(9, 4.6))
    ax = fig.subplots()
    x, bottom = np.arange(len(kernels)), np.zeros(len(kernels))
    for cat in ERROR_CATEGORIES:
        v = share.reindex(kernels)[cat].fillna(0.0).to_numpy(float)
        ax.bar(x, v, bottom=bottom, color=COLORS[cat], width=0.65)
        bottom += v
    for xi, k, top in zip(x, kernels, bottom):
        ax.annotate(f"n={int(n.get(k, 0))}", (xi, top), ha="center", va="bottom", fontsize=8,
                    xytext=(0, 2), textcoords="offset points")
    ax.set_xticks(x, kernels, rotation=25, ha="right")
    ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax.set_ylabel(f"share of all {pop.n} injections")
    ax.set_ylim(0, max(float(bottom.max()) * 1.18, 0.01))
    ax.set_title(f"Kernel vulnerability (CKV), {pop.metric}: {pop.label}\n"
                 "errors per kernel as a share of all injections (Masked = the rest)", fontsize=10)
    _legend(ax)
    ax.grid(axis="y", alpha=0.3)
    return fig


def layer_figure(item: PopulationTables) -> Figure:
    """As the AlexNet study's Fig. 7–9: per layer, the rate given the layer (AVF/PVF) per category, with Wilson
    95% error bars (the study had none)."""
    pop = item.population
    t = item.tables["layers"]
    rate = _pivot(t, "layer", "rate")
    lo, hi = _pivot(t, "layer", "rate_wilson_low"), _pivot(t, "layer", "rate_wilson_high")
    layers = sorted(item.layer_labels)
    fig = Figure(figsize=(max(9, 0.75 * len(layers)), 4.8))
    ax = fig.subplots()
    n = t.groupby("layer")["n"].first().reindex(layers)
    few = (n.fillna(0) < MIN_N_ERRORBAR).to_numpy()
    x, w = np.arange(len(layers)), 0.8 / len(ERROR_CATEGORIES)
    top = 0.05
    for i, cat in enumerate(ERROR_CATEGORIES):
        v = rate.reindex(layers)[cat].to_numpy(float)
        err = np.clip(np.vstack([v - lo.reindex(layers)[cat].to_numpy(float),
                                 hi.reindex(layers)[cat].to_numpy(float) - v]), 0.0, None)
        err[:, few] = np.nan  # a 1-injection layer's interval spans most of the axis: table only
        ax.bar(x - 0.4 + w * (i + 0.5), v, w, color=COLORS[cat], yerr=err,
               error_kw={"elinewidth": 0.7, "capsize": 1.5, "ecolor": "#555"})
        top = max(top, float(np.nanmax(np.r_[v + np.nan_to_num(err[1]), 0.0])))
    ax.set_ylim(0, min(1.0, top * 1.25))
    for xi, k in zip(x, n):
        ax.annotate("n=0" if pd.isna(k) else f"n={int(k)}", (xi, 0.99), ha="center", va="top",
                    fontsize=7, xycoords=("data", "axes fraction"))
    ax.set_xticks(x, _layer_ticks(item, layers), rotation=45, ha="right", fontsize=8)
    ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax.set_ylabel(f"{pop.metric}{' (raw)' if pop.metric == 'AVF' else ''}: rate given the layer")
    ax.set_title(f"Layer vulnerability (CLV): {pop.label}\nrate given the layer; Wilson 95% "
                 f"error bars where n ≥ {MIN_N_ERRORBAR}", fontsize=10)
    _legend(ax, cats=ERROR_CATEGORIES)
    ax.grid(axis="y", alpha=0.3)
    return fig


def propagation_figure(item: PopulationTables) -> Figure | None:
    """Heatmap: for SDC injections into layer i (row), the mean share of layer j's output
    elements that differ from golden (column). ``None`` when nothing propagated."""
    t = item.tables["propagation"]
    if t.empty:
        return None
    grid = t.pivot_table(index="injected_layer", columns="layer", values="share_corrupted_mean")
    rows, cols = list(grid.index), list(grid.columns)
    fig = Figure(figsize=(max(7, 0.7 * len(cols) + 3), max(4, 0.45 * len(rows) + 2.5)))
    ax = fig.subplots()
    data = grid.to_numpy(float)
    im = ax.imshow(np.ma.masked_invalid(data), cmap="viridis", vmin=0, vmax=max(np.nanmax(data), 1e-9),
                   aspect="auto")
    for (r, c), v in np.ndenumerate(data):
        if not np.isnan(v):
            ax.text(c, r, f"{100 * v:.0f}" if v >= 0.01 or v == 0 else "<1", ha="center",
                    va="center", fontsize=7, color="white" if v < 0.6 * np.nanmax(data) else "black")
    ax.set_xticks(range(len(cols)), [item.layer_labels.get(c, c) for c in cols], rotation=45,
                  ha="right", fontsize=8)
    n = t.groupby("injected_layer")["n"].first()
    ax.set_yticks(range(len(rows)), [f"{item.layer_labels.get(r, r)} (n={int(n[r])})" for r in rows],
                  fontsize=8)
    ax.set_xlabel("downstream layer")
    ax.set_ylabel("injected layer (SDC injections)")
    fig.colorbar(im, ax=ax, format=PercentFormatter(1.0), label="mean share of elements corrupted")
    ax.set_title(f"Error propagation: {item.population.label}\n"
                 "cell = mean % of the layer's output elements that differ from golden", fontsize=10)
    return fig


def bit_figure(item: PopulationTables) -> Figure | None:
    """Outcome rates per flipped bit 0–31, the float32 sign/exponent/mantissa fields shaded.
    ``None`` for bit models that flip no named bit (random, zero)."""
    t = item.tables["bits"]
    if t.empty:
        return None
    rate, n = _pivot(t, "bit", "rate"), t.groupby("bit")["n"].first()
    bits = list(range(32))
    fig = Figure(figsize=(10, 4.4))
    ax = fig.subplots()
    for x0, x1, name, shade in ((-0.5, 22.5, "mantissa", "#f7f7f7"),
                                (22.5, 30.5, "exponent", "#e0ecf4"), (30.5, 31.5, "sign", "#fde0dd")):
        ax.axvspan(x0, x1, color=shade, zorder=0)
        ax.text((x0 + x1) / 2, 1.01, name, ha="center", va="bottom", fontsize=8,
                transform=ax.get_xaxis_transform())
    bottom = np.zeros(32)
    for cat in ERROR_CATEGORIES:
        v = rate.reindex(bits)[cat].fillna(0).to_numpy(float) if cat in rate else np.zeros(32)
        ax.bar(bits, v, bottom=bottom, color=COLORS[cat], width=0.8, zorder=2)
        bottom += v
    ax.set_xticks(bits, [f"{b}\n{int(n[b]) if b in n.index else 0}" for b in bits], fontsize=7)
    ax.set_xlabel("flipped bit position (second line: injections that flipped it)")
    ax.set_xlim(-0.5, 31.5)
    ax.set_ylim(0, 1.0)
    ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax.set_ylabel("rate given the bit (Masked = the rest)")
    addr = {"ioa": " (IOA: address bits; field names are float32 positions)",
            "rf": " (RF: registers also hold addresses and counters)"}.get(item.population.meta.mode, "")
    ax.set_title(f"Bit sensitivity: {item.population.label}{addr}\n", fontsize=10)
    _legend(ax)
    return fig


def ci_figure(data: ReportData) -> Figure:
    """Every population's overall rates with Wilson (thick) and Clopper–Pearson (thin) 95%
    intervals, one panel per category, so the reader sees how sure each number is."""
    items = data.items
    fig = Figure(figsize=(11, 1.2 + 0.42 * len(items) * 2))
    axes = fig.subplots(1, len(TABLE_CATEGORIES), sharey=True)
    y = np.arange(len(items))[::-1]
    for ax, cat in zip(axes, TABLE_CATEGORIES):
        for yi, item in zip(y, items):
            r = item.tables["overall"].set_index("outcome").loc[cat]
            ax.plot([r["rate_cp_low"], r["rate_cp_high"]], [yi, yi], color="#888", lw=1)
            ax.plot([r["rate_wilson_low"], r["rate_wilson_high"]], [yi, yi], color=COLORS[cat], lw=4,
                    alpha=0.7, solid_capstyle="butt")
            ax.plot([r["rate"]], [yi], "o", color="black", ms=3)
        ax.set_title(LABELS[cat], fontsize=9)
        ax.xaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
        ax.tick_params(axis="x", labelsize=7)
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(y, [i.population.label for i in items], fontsize=8)
    fig.suptitle("Overall rates with 95% intervals: Wilson (thick), Clopper–Pearson (thin)",
                 fontsize=10)
    return fig
