"""The comparison with the published studies: each finding beside what THIS database measured.

The published studies are "Analyzing the Resilience of Convolutional Neural Networks Implemented
on GPUs: Alexnet as a Case Study" (the AlexNet study) and "Soft Error Resilience of Deep Residual
Networks for Object Recognition" (the ResNet study, IEEE Access 2020). Every "measured" cell is
computed from the analysis tables of the populations named in its "basis" cell; nothing is
tuned, filtered or re-weighted to look like the papers. Where the database has no campaign of
the right kind the row says so, and the "why it may differ" cell describes the models actually
compared (input size, classes, weights), as the campaigns recorded them. "agrees" is a plain
reading of the measured numbers against the claim (yes / partly / no / not tested), not a
statistical test; the intervals are in the tables below it.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import pandas as pd

from .common import interval, pct
from .hardening import growth, masked_share, pairs
from .tables import PopulationTables, ReportData

if TYPE_CHECKING:
    from kernelfi.harden import OverheadTable

MODES: tuple[str, ...] = ("rf", "ioa", "iov")

#: The AlexNet study's Table 2 (GTX 750 Ti, milliseconds) as published: kernel type ->
#: (invocations, unhardened, its selective hardening, full DMR, full TMR), kernel names in
#: kernelfi's terms (the study's Maxpool, Activation). gemm (cuBLAS, which SASSIFI does not
#: instrument) has no row. Its DMR column sums to 1.3366 ms; its whole-model row says 1.3158 ms,
#: the figure its +97.461% comes from.
STUDY_TABLE2: dict[str, tuple[int, float, float, float, float]] = {
    "im2col": (5, 0.0002303, 0.0104156, 0.0208312, 0.0312468),
    "add_bias": (5, 0.000708, 0.0035207, 0.0070414, 0.0105621),
    "forward_maxpool": (4, 0.0237066, 0.0237066, 0.0474132, 0.0711198),
    "activate_array": (8, 0.4267208, 0.3935817, 0.7871634, 1.1807451),
    "fill": (5, 0.0948266, 0.14224, 0.2844858, 0.4267258),
    "softmax": (1, 0.1201457, 0.0948267, 0.1896534, 0.2844801),
    "whole model": (1, 0.666338, 0.6682913, 1.3157572, 2.0048797),
}
#: Its whole-model overheads as published: the plan (TMR of im2col and add_bias), full DMR, full TMR.
STUDY_OVERHEAD: dict[str, float] = {"plan": 0.002923, "full DMR": 0.97461, "full TMR": 2.00881}
#: Said once above the table: the differences every row shares.
COMMON_NOTE = ("The AlexNet study injected an ImageNet-size AlexNet (227×227×3 input, 7 classes) on a "
               "GTX 750 Ti with SASSIFI on real SASS, the ResNet study ResNet-50/101/152 on ImageNet; this "
               "tool executes each kernel as per-thread instruction templates on the CPU, on the model and "
               "inputs named in the basis column, so instruction counts, register maps and classifier "
               "margins differ.")


def model_of(item: PopulationTables) -> str:
    """``digits-alexnet (1×32×32 input, 10 classes, embedded weights)``, from what the campaign
    recorded (older databases: the class count from the last layer's size)."""
    meta = item.population.meta
    shape = meta.extra.get("input_shape")
    classes = meta.extra.get("num_classes")
    if classes is None and item.layer_sizes:
        classes = item.layer_sizes[max(item.layer_sizes)]
    src = str(meta.weights_source)
    weights = ("embedded trained weights" if src == "embedded" else "seeded random weights (untrained)"
               if src.startswith("random") else f"weights {src.replace(chr(92), '/').rsplit('/', 1)[-1]}")
    parts = ([f"{'×'.join(str(d) for d in shape)} input"] if shape else []) + \
        ([f"{classes} classes"] if classes else []) + [weights]
    return f"{meta.model} ({', '.join(parts)})"


def _compared(basis: list[PopulationTables]) -> str:
    """The distinct models of a row's basis, described."""
    return "; ".join(dict.fromkeys(model_of(i) for i in basis)) or "no campaign of this kind"


def _classes(basis: list[PopulationTables]) -> str:
    found = sorted({str(i.population.meta.extra.get("num_classes") or i.layer_sizes.get(max(i.layer_sizes), ""))
                    for i in basis if i.layer_sizes})
    return "/".join(c for c in found if c) or "its"


def _pick(data: ReportData, family: str, mode: str) -> tuple[PopulationTables | None, bool]:
    """The unhardened population of ``family`` (substring of the model name) and ``mode`` that
    best matches the published study's setup: SASSIFI scope, single-bit, not warp-wide, then
    the largest."""
    cands = [i for i in data.items if family in i.population.meta.model.lower()
             and i.population.meta.mode == mode and not i.population.hardened]
    if not cands:
        return None, False
    cands.sort(key=lambda i: (i.population.meta.scope != "sassifi", i.population.meta.bit_model != "single",
                              i.population.meta.warp, -i.population.n))
    return cands[0], cands[0].population.meta.scope == "sassifi"


def _val(item: PopulationTables, table: str, key: str, cats: tuple[str, ...],
         value: str = "share_of_all") -> pd.Series:
    t = item.tables[table]
    return t[t["outcome"].isin(cats)].groupby(key)[value].sum().sort_values(ascending=False, kind="stable")


def _basis(items: list[PopulationTables]) -> str:
    return "; ".join(f"{i.population.label} (n={i.population.n})" for i in items) or "–"


def _agree(hits: list[float]) -> str:
    """``hits``: per mode, 1 = the claim holds, 0.5 = half of it (one of two names), 0 = not."""
    return "not tested" if not hits else "yes" if all(h == 1 for h in hits) else \
        "partly" if any(h > 0 for h in hits) else "no"


def _row(finding: str, published: str, measured: list[str], hits: list[float],
         basis: list[PopulationTables], why: str) -> dict[str, str]:
    return {"finding": finding, "published": published,
            "measured": "\n".join(measured) or "no campaign of this kind in the database",
            "agrees": _agree(hits), "basis": _basis(basis), "why_it_may_differ": why}


def top_kernels(data: ReportData) -> dict[str, str]:
    measured: list[str] = []
    hits: list[float] = []
    basis: list[PopulationTables] = []
    fallback = False
    for mode in MODES:
        item, sassifi = _pick(data, "alexnet", mode)
        if item is None:
            continue
        basis.append(item)
        fallback |= not sassifi
        s = _val(item, "kernels", "kernel", ("sdc_malfunction", "sdc_light_malfunction"))
        top = list(s.index[:2])
        text = f"{mode.upper()}: " + ", ".join(f"{k} {pct(s[k])}" for k in top)
        if not sassifi and "gemm" in s.index:
            rest = s.drop("gemm")
            text += " (without gemm: " + ", ".join(f"{k} {pct(rest[k])}" for k in rest.index[:2]) + ")"
        measured.append(text)
        hits.append(len(set(top) & {"im2col", "add_bias"}) / 2)
    why = ("Kernel shares follow how many dynamic instructions each kernel executes, which depends "
           f"on the layer sizes: compared here, {_compared(basis)}; the study's AlexNet takes 227×227×3. ")
    if fallback:
        why += ("No SASSIFI-scope campaign in the database: measured on scope=all, where gemm "
                "(cuBLAS, which SASSIFI cannot instrument) is injected too; the ranking without "
                "gemm is shown in brackets. ")
    return _row("Top-2 vulnerable kernels (AlexNet, SASSIFI scope), by SDC Malfunction + SDC Light-"
                "Malfunction share of all injections", "im2col and add_bias, in all three modes",
                measured, hits, basis, why)


def softmax_reliable(data: ReportData) -> dict[str, str]:
    measured, hits, basis = [], [], []
    for mode in MODES:
        item, _ = _pick(data, "alexnet", mode)
        if item is None:
            continue
        soft = [l for l, lab in item.layer_labels.items() if lab.endswith(" softmax")]
        if not soft:
            continue
        basis.append(item)
        s = _val(item, "layers", "layer", ("due", "sdc"))
        n = item.tables["layers"].groupby("layer")["n"].first()
        share = float(s.get(soft[0], 0.0))
        hit = int(n.get(soft[0], 0))
        instr = item.launches.assign(_i=item.launches[["FP32", "LD", "GPR", "PR", "NODEST", "OTHERS"]].sum(axis=1))
        frac = float(instr.loc[instr["layer"] == soft[0], "_i"].sum() / instr["_i"].sum())
        lower = [item.layer_labels[l] for l in s.index if l != soft[0] and s[l] < share]
        given = float(_val(item, "layers", "layer", ("due", "sdc"), "rate").get(soft[0], 0.0))
        if hit == 0:
            measured.append(f"{mode.upper()}: no injection landed in softmax (it is {pct(frac)} of the "
                            "dynamic instructions): its error share is 0 by construction, not testable")
            continue
        measured.append(f"{mode.upper()}: softmax errors {pct(share)} of all injections ({hit} "
                        f"injections, rate given softmax {pct(given)}; it is "
                        f"{pct(frac)} of the dynamic instructions); layers with a lower error share: "
                        f"{', '.join(lower) or 'none'}")
        hits.append(not lower)
    return _row("Softmax is the most reliable layer", "no error generated in softmax",
                measured, hits, basis,
                f"Softmax runs once on a {_classes(basis)}-value vector (the study's: 7 values), so it is a tiny "
                "part of the fault population (the study's own first reason); a near-zero share needs no "
                f"special resilience. Compared here: {_compared(basis)}. ")


def _picked(data: ReportData, family: str = "alexnet") -> list[tuple[str, PopulationTables]]:
    """(mode, population) for each mode that has a population of ``family`` (``_pick``)."""
    out = []
    for mode in MODES:
        item, _ = _pick(data, family, mode)
        if item is not None:
            out.append((mode, item))
    return out


def early_layers(data: ReportData) -> dict[str, str]:
    measured, hits = [], []
    basis = [item for _, item in _picked(data)]
    for mode, item in _picked(data):
        s = _val(item, "layers", "layer", ("sdc",))
        convs = [l for l, lab in sorted(item.layer_labels.items()) if lab.endswith(" convolutional")][:2]
        top = list(s.index[:2])
        measured.append(f"{mode.upper()}: " + ", ".join(f"{item.layer_labels[l]} {pct(s[l])}" for l in top))
        hits.append(len(set(top) & set(convs)) / 2)
    return _row("The early convolutional layers are the most vulnerable (top-2 layers by SDC share "
                "of all injections)", "layers 0 and 2 (the first two convolutions), IOA and IOV",
                measured, hits, basis,
                "Early layers have the largest outputs, hence the most instructions, in both models; "
                f"how much larger depends on the input size: compared here, {_compared(basis)}; the study's "
                "AlexNet takes 227×227×3. ")


def due_vs_sdc(data: ReportData) -> dict[str, str]:
    measured, hits = [], []
    basis = [item for _, item in _picked(data)]
    for mode, item in _picked(data):
        o = item.tables["overall"].set_index("outcome")
        due, ml = float(o.loc["due", "rate"]), float(o.loc[["sdc_malfunction", "sdc_light_malfunction"], "rate"].sum())
        measured.append(f"{mode.upper()}: DUE {pct(due)} {interval(o.loc['due', 'rate_wilson_low'], o.loc['due', 'rate_wilson_high'])}"
                        f" vs SDC Malfunction + SDC Light-Malfunction {pct(ml)}")
        hits.append(due > ml if mode == "rf" else ml > due)
    return _row("RF injections are DUE-heavy; IOA and IOV are SDC-heavy", "RF: more DUE than "
                "SDC Malfunction + SDC Light-Malfunction; IOA/IOV: more SDC Malfunction + SDC Light-Malfunction than DUE",
                measured, hits, basis,
                "RF DUEs come from flipped address registers and loop counters: how many live "
                "registers hold them is set by each kernel's declared register map, and hangs by the "
                "watchdog. IOA DUEs depend on how densely the simulated memory map is packed. ")


def _overhead(plan: object) -> str:
    """An overhead the plan itself states (top level or its ``expected`` block: the planner's
    estimate, not a measurement); the results database holds no run times."""
    if isinstance(plan, dict):
        for scope in (plan, plan.get("expected")):
            if isinstance(scope, dict):
                for k, v in scope.items():
                    if "overhead" in str(k).lower():
                        return f"plan states {k} = {v}"
    return "overhead not recorded in the results database"


def malfunction(data: ReportData, family: str, published: str, masked: bool) -> dict[str, str]:
    measured, hits, basis = [], [], []
    before = []
    for mode in MODES:
        item, _ = _pick(data, family, mode)
        if item is not None:
            basis.append(item)
            before.append(float(item.tables["overall"].set_index("outcome").loc["sdc_malfunction", "rate"]))
            o = item.tables["overall"].set_index("outcome").loc["sdc_malfunction"]
            measured.append(f"before, {mode.upper()}: {pct(o['rate'])} {interval(o['rate_wilson_low'], o['rate_wilson_high'])}")
    if before:
        measured.append(f"mean over modes {pct(sum(before) / len(before))}")
    for b, h in pairs(data):
        if family not in h.population.meta.model.lower():
            continue
        basis.append(h)
        ob = b.tables["overall"].set_index("outcome")
        oa = h.tables["overall"].set_index("outcome")
        text = (f"after, {h.population.meta.mode.upper()}: SDC Malfunction {pct(oa.loc['sdc_malfunction', 'rate'])} "
                f"{interval(oa.loc['sdc_malfunction', 'rate_wilson_low'], oa.loc['sdc_malfunction', 'rate_wilson_high'])}")
        if masked:
            share = masked_share(float(ob.loc["sdc", "rate"]), float(oa.loc["sdc", "rate"]), growth(b, h))
            text += (f", Masked {pct(oa.loc['masked', 'rate'])}, Masked + SDC No-Malfunction "
                     f"{pct(oa.loc['masked', 'rate'] + oa.loc['sdc_no_malfunction', 'rate'])}, "
                     f"baseline SDCs masked per inference {pct(share)}")
        measured.append(text + f" ({_overhead(h.population.meta.hardening)})")
        hits.append(oa.loc["sdc_malfunction", "rate"] < ob.loc["sdc_malfunction", "rate"])
    if before and not hits:
        measured.append("no hardened campaign of this model in the database")
    return _row(f"{'AlexNet' if family == 'alexnet' else 'ResNet'}: SDC Malfunction before → after "
                "selective hardening", published, measured, hits, basis,
                "SDC Malfunction depends on the classifier's margins and the number of classes (compared here: "
                f"{_compared(basis)}; the studies': ImageNet-trained models, the AlexNet study's fine-tuned to "
                "7 classes), and on which kernels the plan protects. 'agrees' only asks whether hardening "
                "lowered the rate. ")


def studies_table(data: ReportData) -> pd.DataFrame:
    """One row per published finding: published value, measured value, agreement, basis, why."""
    return pd.DataFrame([
        top_kernels(data), softmax_reliable(data), early_layers(data), due_vs_sdc(data),
        malfunction(data, "alexnet", "3.7% before → 0.383% after, at 0.29% run-time overhead", False),
        malfunction(data, "resnet", "4.2% before → 0.104% after; 93.38% of injected errors masked "
                    "at < 5.35% overhead", True),
    ])


def table2_frame(tables: list[OverheadTable]) -> pd.DataFrame:
    """Long format for export: the study's Table 2 and every modelled one, in milliseconds."""
    cols = ("unhardened", "plan", "full DMR", "full TMR")
    rows = [{"source": "AlexNet study (GTX 750 Ti, published)", "model": "AlexNet", "kernel": k, "invocations": v[0],
             "label": lab, "ms": v[1 + i]} for k, v in STUDY_TABLE2.items() for i, lab in enumerate(cols)]
    for t in tables:
        for lab in t.labels:
            rows += [{"source": f"modelled, {t.device}", "model": t.model, "kernel": k,
                      "invocations": t.invocations.get(k, 0), "label": lab, "ms": 1000 * t.seconds[lab][k]}
                     for k in t.kernels]
            rows.append({"source": f"modelled, {t.device}", "model": t.model, "kernel": "whole model",
                         "invocations": 1, "label": lab, "ms": 1000 * t.total[lab]})
    return pd.DataFrame(rows)
