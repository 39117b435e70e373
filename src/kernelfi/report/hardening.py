"""Before/after hardening (the AlexNet study's Fig. 10–15 and Table 2): pair each hardened
population with its baseline.

A hardened campaign is paired with the unhardened population of the same model, mode, bit
model, warp and scope (preferring the same weights and inputs). Its trace has extra kernels (the
replicas, voters and checks), so kernel axes are the union, baseline kernels first. The share of
the baseline's errors the hardened model masks (the ResNet study's 93.38% figure) and the plan's
modelled Table 2 (kernelfi.gputime, on the GPU the plan was priced on) are here too.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import PercentFormatter


from .common import COLORS, ERROR_CATEGORIES, LABELS, TABLE_CATEGORIES
from .tables import PopulationTables, ReportData

if TYPE_CHECKING:   # the model is rebuilt (torch) only when a plan's overhead is tabulated
    from kernelfi.harden import OverheadTable

_SAME = ("model", "mode", "bit_model", "warp", "scope")
_PREFER = ("weights_hash", "input_source")


def pairs(data: ReportData) -> list[tuple[PopulationTables, PopulationTables]]:
    """(baseline, hardened) for every hardened population that has a baseline in the DB."""
    out = []
    base = [i for i in data.items if not i.population.hardened]
    for h in (i for i in data.items if i.population.hardened):
        hm = h.population.meta
        same = [b for b in base if all(getattr(b.population.meta, f) == getattr(hm, f) for f in _SAME)]
        same.sort(key=lambda b: (-sum(getattr(b.population.meta, f) == getattr(hm, f) for f in _PREFER),
                                 -b.population.n))
        if same:
            out.append((same[0], h))
    return out


def plan_text(hardening: object) -> str:
    """The hardening plan as compact JSON (what the campaign stored)."""
    return json.dumps(hardening, sort_keys=True, separators=(",", ": "), default=str)


def comparison_table(before: PopulationTables, after: PopulationTables) -> pd.DataFrame:
    """Overall rate per category before and after, with Wilson and Clopper–Pearson intervals."""
    cols = ["n", "rate", "rate_wilson_low", "rate_wilson_high", "rate_cp_low", "rate_cp_high"]
    b = before.tables["overall"].set_index("outcome")[cols].add_prefix("before_")
    a = after.tables["overall"].set_index("outcome")[cols].add_prefix("after_")
    out = b.join(a).reindex(list(TABLE_CATEGORIES)).reset_index()
    with np.errstate(divide="ignore", invalid="ignore"):
        out["reduction"] = out["before_rate"] / out["after_rate"]
    out.insert(0, "hardening", plan_text(after.population.meta.hardening))
    out.insert(0, "after", after.population.label)
    out.insert(0, "before", before.population.label)
    return out


def _paired(ax, groups: list, labels: list[str], before: pd.DataFrame, after: pd.DataFrame) -> None:  # type: ignore[no-untyped-def]
    x = np.arange(len(groups))
    for offset, table, hatch in ((-0.2, before, None), (0.2, after, "///")):
        bottom = np.zeros(len(groups))
        for cat in ERROR_CATEGORIES:
            v = table.reindex(groups)[cat].fillna(0).to_numpy(float) if cat in table else 0 * x
            ax.bar(x + offset, v, 0.38, bottom=bottom, color=COLORS[cat], hatch=hatch,
                   edgecolor="white" if hatch else None, linewidth=0)
            bottom += v
    ax.set_xticks(x, labels, rotation=30, ha="right", fontsize=8)
    ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax.grid(axis="y", alpha=0.3)


def hardening_figure(before: PopulationTables, after: PopulationTables) -> Figure:
    """Side by side per kernel (share of all injections, CKV) and per layer (rate given the
    layer, CLV): left bar of each pair = baseline, right hatched bar = hardened."""
    def piv(item: PopulationTables, name: str, key: str, value: str) -> pd.DataFrame:
        return item.tables[name].pivot_table(index=key, columns="outcome", values=value, aggfunc="first")

    kb, ka = piv(before, "kernels", "kernel", "share_of_all"), piv(after, "kernels", "kernel", "share_of_all")
    order = before.kernel_order + [k for k in after.kernel_order if k not in before.kernel_order]
    kernels = [k for k in order if k in kb.index or k in ka.index]
    lb, la = piv(before, "layers", "layer", "rate"), piv(after, "layers", "layer", "rate")
    layers = sorted(set(lb.index) | set(la.index))
    fig = Figure(figsize=(max(10, 0.8 * max(len(kernels), len(layers))), 8.6))
    ax1, ax2 = fig.subplots(2, 1)
    _paired(ax1, kernels, kernels, kb, ka)
    ax1.set_ylabel("share of all injections (CKV)")
    names = {**before.layer_labels, **after.layer_labels}
    _paired(ax2, layers, [str(names.get(l, l)) for l in layers], lb, la)
    ax2.set_ylabel(f"{after.population.metric}: rate given the layer (CLV)")
    handles = [Patch(color=COLORS[c], label=LABELS[c]) for c in ERROR_CATEGORIES]
    handles += [Patch(facecolor="#999", label="before (left)"),
                Patch(facecolor="#999", hatch="///", edgecolor="white", label="after (right, hatched)")]
    fig.legend(handles=handles, fontsize=8, frameon=False, ncols=6, loc="lower center")
    m = after.population.meta
    fig.suptitle(f"Before / after hardening: {m.model} {m.mode.upper()} {m.bit_model} scope={m.scope}\n"
                 f"baseline n={before.population.n}, hardened n={after.population.n}", fontsize=10)
    fig.tight_layout(rect=(0, 0.04, 1, 1))  # room for the legend below, clear of every bar
    return fig


# --------------------------------------------------------------------------------------------
# The ResNet study's "errors masked after hardening" and the plan's modelled Table 2
# --------------------------------------------------------------------------------------------
def growth(before: PopulationTables, after: PopulationTables) -> float:
    """P_after / P_before: how many more fault sites the hardened model offers per inference
    (its replicas, voters and checkers), from the populations the campaigns recorded; NaN when
    a campaign predates that record."""
    pb = before.population.meta.extra.get("population")
    pa = after.population.meta.extra.get("population")
    return float(pa) / float(pb) if pb and pa else float("nan")


def masked_share(rate_before: float, rate_after: float, grow: float) -> float:
    """Share of the baseline's errors that the hardened model masks (docs/report.md): errors per
    inference at the same fault rate per executed instruction are ``rate × P``, so the share is
    ``1 − rate_after·P_after / (rate_before·P_before)``; NaN without errors before."""
    if not rate_before or math.isnan(grow):
        return float("nan")
    return 1.0 - rate_after * grow / rate_before


def masked_table(found: list[tuple[PopulationTables, PopulationTables]]) -> pd.DataFrame:
    """Per (baseline, hardened) pair: the SDC and Malfunction rates, the population growth and
    the share of the baseline's SDCs (and Malfunctions) the hardened model masks."""
    rows = []
    for b, h in found:
        ob, oh = b.tables["overall"].set_index("outcome"), h.tables["overall"].set_index("outcome")
        g = growth(b, h)
        rows.append({"before": b.population.label, "after": h.population.label, "population_growth": g,
                     "sdc_before": float(ob.loc["sdc", "rate"]), "sdc_after": float(oh.loc["sdc", "rate"]),
                     "sdc_masked_share": masked_share(float(ob.loc["sdc", "rate"]), float(oh.loc["sdc", "rate"]), g),
                     "malfunction_before": float(ob.loc["sdc_malfunction", "rate"]),
                     "malfunction_after": float(oh.loc["sdc_malfunction", "rate"]),
                     "malfunction_masked_share": masked_share(float(ob.loc["sdc_malfunction", "rate"]),
                                                              float(oh.loc["sdc_malfunction", "rate"]), g)})
    return pd.DataFrame(rows)


#: The GPU of a plan priced otherwise (``--cost measured``): the AlexNet study's.
STUDY_GPU = "gtx750ti"


def plan_gpu(plan: Mapping[str, Any]) -> str:
    """The GPU a plan was priced on (``planner.cost``), else the AlexNet study's GTX 750 Ti."""
    planner = plan.get("planner")
    cost = str(planner.get("cost", "")) if isinstance(planner, Mapping) else ""
    return cost[4:] if cost.startswith("gpu:") else STUDY_GPU


def plan_table2(after: PopulationTables, db: str | Path) -> OverheadTable:
    """The modelled Table 2 of a hardened population's plan, on the GPU it was priced on: the
    model is rebuilt as the campaign recorded it (``campaign.stored``; a KernelfiError when a
    file it read has moved or changed)."""
    from kernelfi.campaign.session import open_session
    from kernelfi.campaign.stored import stored_config
    from kernelfi.gputime import get_gpu
    from kernelfi.harden import modelled_overhead

    meta = after.population.meta
    plan = meta.hardening or {}
    session = open_session(stored_config(meta, db).model)
    return modelled_overhead(session.program, plan, get_gpu(plan_gpu(plan)))


# --------------------------------------------------------------------------------------------
# The exported model's native run time (measured elsewhere: kernelfi overhead --exported)
# --------------------------------------------------------------------------------------------
#: The timed labels of an export (kernelfi.harden.export.LABELS, restated: the report reads
#: timings without importing torch), in report order.
NATIVE_LABELS = ("original", "none", "plan", "full-dmr", "full-tmr")
NATIVE_KEYS = ("model", "device", "clock", "batch", "reps", "median_s", "min_s")


def check_native(record: Mapping[str, Any], where: str) -> Mapping[str, Any]:
    """A native timing record (``NativeOverhead.to_dict()``) as read from a file: every key and
    label present, else a KernelfiError naming what is missing."""
    from kernelfi._utils import KernelfiError

    missing = [k for k in NATIVE_KEYS if k not in record]
    missing += [f"{k}.{lab}" for k in ("median_s", "min_s") if k in record and isinstance(record[k], Mapping)
                for lab in NATIVE_LABELS if lab not in record[k]]
    if missing:
        raise KernelfiError(f"{where}: not a native timing of an export (missing {', '.join(missing[:4])}); "
                            "write one with `kernelfi overhead --exported DIR --json FILE`")
    return record


def native_frame(records: tuple[Mapping[str, Any], ...]) -> pd.DataFrame:
    """One row per (timing, variant): median and fastest seconds and the overheads over the
    original model they give."""
    rows = []
    for r in records:
        med, low = r["median_s"], r["min_s"]
        for lab in NATIVE_LABELS:
            rows.append({"model": r["model"], "device": r["device"], "clock": r["clock"], "batch": int(r["batch"]),
                         "reps": int(r["reps"]), "variant": lab, "median_s": float(med[lab]),
                         "min_s": float(low[lab]), "overhead": float(med[lab]) / float(med["original"]) - 1.0,
                         "overhead_fastest": float(low[lab]) / float(low["original"]) - 1.0})
    return pd.DataFrame(rows)
