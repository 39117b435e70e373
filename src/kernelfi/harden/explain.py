"""Why the planner chose what it chose: one verdict per candidate it weighed (issue 22).

Pure bookkeeping over ``kernelfi.harden.choice``: every candidate (unit × technique, or a clamp
of a layer output) gets its expected gain on its own (Malfunction and Light-Malfunction
removed, as shares of all injections, with a standard deviation), its cost, and a status:

``chosen``; ``dropped`` (chosen, then shed at the final check of the whole plan); ``covered``
(its launches are already protected by a chosen candidate: one technique per launch);
``no_gain`` (it removes nothing on its own: no stored Malfunction/Light-Malfunction in its
launches, a replay that fixed none of its rows, or a voter/checker that adds more risk than it
removes); ``no_further_gain`` (what it removes, the chosen clamps already remove);
``over_budget`` (it still removes something, but costs more than the budget left).
A candidate with the same launches as another that removes at least as much for no more cost
is also marked ``dominated_by`` that one (DMR usually dominates TMR: the same replicas' gain,
one replica fewer).

Standard deviation of a gain: for replicated launches, from each launch's smoothed rate
``r = (c + αR)/(n + α)`` taken as a Beta posterior, ``var(share) = pop² r(1 − r)/(n + α + 1)``,
summed over the unit's launches; for a clamp, the binomial spread of the fixed fraction f of the
N stored rows in its scope, ``gain·sqrt((1 − f)/(N·f))``. Populations are averaged as the gains
are.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from .choice import CATS, Candidate, RiskModel, State, cost, residual, with_candidate

STATUSES: tuple[str, ...] = ("chosen", "dropped", "covered", "no_gain", "no_further_gain", "over_budget")


@dataclass(frozen=True)
class Verdict:
    """One weighed candidate: its stand-alone gain and cost, and why it is (not) in the plan."""

    candidate: Candidate
    status: str
    reason: str
    malfunction_removed: float
    malfunction_sd: float
    light_removed: float
    cost_s: float
    dominated_by: str = ""

    def to_dict(self, t_base: float) -> dict[str, Any]:
        c = self.candidate
        d: dict[str, Any] = {
            "technique": c.technique, "target": "layer" if c.technique == "range" else "launch",
            "name": c.layer if c.technique == "range" else c.key, "layer": c.layer, "status": self.status,
            "reason": self.reason, "malfunction_removed": self.malfunction_removed,
            "malfunction_removed_sd": self.malfunction_sd, "light_removed": self.light_removed,
            "cost_s": self.cost_s, "overhead": self.cost_s / t_base if t_base > 0 else 0.0}
        if self.dominated_by:
            d["dominated_by"] = self.dominated_by
        return d


def label(c: Candidate) -> str:
    return f"{c.technique} of {c.layer if c.technique == 'range' else c.key}"


def _gain(models: list[RiskModel], st: State, c: Candidate) -> dict[str, float]:
    before, after = residual(models, st), residual(models, with_candidate(st, c))
    return {cat: before[cat] - after[cat] for cat in CATS}


def _sd(models: list[RiskModel], c: Candidate, gain: float) -> float:
    """Standard deviation of the Malfunction gain (module docstring)."""
    if not models:
        return 0.0
    if c.technique != "range":
        var = sum(sum(m.var.get("mal", {}).get(l, 0.0) for l in c.launches) for m in models)
        return math.sqrt(var) / len(models)
    rows = [r for m in models for r in m.rows.get("mal", [])]
    fixed = sum(1 for r in rows if c.key in r.fixed)
    if not rows or not fixed:
        return 0.0
    f = fixed / len(rows)
    return abs(gain) * math.sqrt((1.0 - f) / (len(rows) * f))


def _no_gain_reason(models: list[RiskModel], c: Candidate, gain: dict[str, float]) -> str:
    if c.technique == "range":
        rows = [r for m in models for cat in CATS for r in m.rows.get(cat, []) if c.key in r.fixed]
        return ("no stored SDC Malfunction/SDC Light-Malfunction injection carried a value beyond the layer's "
                "profiled range, or the replay with this clamp fixed none") if not rows else \
            "the replay fixed only rows whose removal is outweighed by the clamp's own risk"
    share = sum(m.share[cat].get(l, 0.0) for m in models for cat in CATS for l in c.launches)
    if share <= 0:
        return "its launches hold no expected SDC Malfunction or SDC Light-Malfunction"
    added = {"tmr": "voters", "dmr": "comparators", "abft": "checkers"}.get(c.technique, "added launches")
    return f"its {added} add more expected risk ({-gain['mal']:.2e} SDC Malfunction) than its launches hold"


def explain(cands: list[Candidate], models: list[RiskModel], chosen: list[Candidate], dropped: list[Candidate],
            budget_s: float, light_weight: float, penalty: dict[str, float] | None = None,
            overhead_note: str = "") -> list[Verdict]:
    """A verdict per candidate, in the order given (see the module docstring)."""
    pen = penalty or {}
    final = State()
    spent = 0.0
    for c in chosen:
        spent += cost(c, final, pen)
        final = with_candidate(final, c)
    left = budget_s - spent
    empty = State()
    alone = {id(c): (_gain(models, empty, c), cost(c, empty, pen)) for c in cands}
    chosen_ids, dropped_ids = {id(c) for c in chosen}, {id(c) for c in dropped}
    owner = {l: c for c in chosen if c.technique != "range" for l in c.launches}
    same_unit: dict[frozenset[str], list[Candidate]] = {}
    for c in cands:
        if c.technique != "range":
            same_unit.setdefault(frozenset(c.launches), []).append(c)
    out = []
    for c in cands:
        g, secs = alone[id(c)]
        value = g["mal"] + light_weight * g["light"]
        if id(c) in chosen_ids:
            status, why = "chosen", "in the plan"
        elif id(c) in dropped_ids:
            status, why = "dropped", f"chosen, then dropped at the final check of the whole plan{overhead_note}"
        elif c.technique != "range" and any(l in owner for l in c.launches):
            o = next(owner[l] for l in c.launches if l in owner)
            status, why = "covered", f"its launches are already protected by {label(o)}"
        elif value <= 1e-15:
            status, why = "no_gain", _no_gain_reason(models, c, g)
        else:
            m = _gain(models, final, c)
            need = cost(c, final, pen)
            if m["mal"] + light_weight * m["light"] <= 1e-15:
                status, why = "no_further_gain", (
                    "what it removes is already removed by the chosen clamps" if c.technique == "range" else
                    "with the chosen clamps in, what its launches still hold no longer outweighs its added launches' risk")
            else:
                status = "over_budget"
                why = (f"costs {1e6 * need:.1f} us, {1e6 * max(left, 0.0):.1f} us of the budget left "
                       f"({1e6 * budget_s:.1f} us)")
                if need <= left:   # only after the final check shed something: the plan is not refilled
                    why += "; the budget it fits was freed by the final check, after the choice"
                elif secs <= budget_s and chosen:
                    why += "; it fits the budget alone, which went to more gain per cost"
        dom = next((d for d in same_unit.get(frozenset(c.launches), []) if d is not c
                    and _dominates(alone[id(d)], (g, secs), light_weight)), None) if c.technique != "range" else None
        out.append(Verdict(c, status, why, g["mal"], _sd(models, c, g["mal"]), g["light"], secs,
                           label(dom) if dom is not None else ""))
    return out


def _dominates(a: tuple[dict[str, float], float], b: tuple[dict[str, float], float], light_weight: float) -> bool:
    """(gain, cost) ``a`` removes at least as much as ``b`` for no more cost, better in one."""
    va, vb = a[0]["mal"] + light_weight * a[0]["light"], b[0]["mal"] + light_weight * b[0]["light"]
    return va >= vb - 1e-15 and a[1] <= b[1] and (a[1] < b[1] or va > vb + 1e-15)


def summary(verdicts: list[Verdict]) -> dict[str, int]:
    """How many candidates ended in each status (statuses with none left out)."""
    counts = {s: 0 for s in STATUSES}
    for v in verdicts:
        counts[v.status] += 1
    return {s: n for s, n in counts.items() if n}
