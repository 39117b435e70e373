"""The hardening planner: campaign results + a cost (modelled GPU time) -> a plan under a budget.

``kernelfi harden`` (docs/hardening.md §3-4). Per launch of the unhardened model, the risk is
the share of *all* injections that end as Malfunction (then Light-Malfunction) in it: with
uniform site selection, a launch's share is its population share (exact, from the instruction
profile) times its outcome rate, estimated from its own injections shrunk toward its kernel
type's rate (few injections land in a small launch). Populations (mode, bit model, scope...)
are weighted equally, whatever their injection counts. The cost of protecting a unit with a
technique is the time of what the technique adds (replicas, copies, voters, checkers, clamps;
not conditional re-executions): by default its *modelled* time on a GPU (``--cost gpu:NAME``,
``kernelfi.gputime``: a pure function of the trace, so a plan is a pure function of the
campaigns, the budget and the GPU), or, with ``--cost measured``, this machine's time of the
simulator, timed in one interleaved loop, plus the layer's loss of the engine's fused fast path
the first time a layer gets replicas or checkers. What a clamp fixes is measured by replaying
the stored injections it might bound on the model with that clamp. The greedy choice
(``kernelfi.harden.choice``) by benefit/cost (benefit = Malfunction removed + ``light_weight`` ×
Light-Malfunction removed, net of the risk the added voters/checkers bring) fills the budget;
the whole hardened model is then priced the same way, and the worst buy dropped while its
overhead exceeds the budget. Every candidate weighed gets a verdict (``kernelfi.harden.explain``),
stored in the plan under ``explain``.

Layering: results come through ``kernelfi.store``; the per-launch outcome table is passed in
by the caller (``kernelfi.analysis.outcome_table``; campaign and analysis are independent
layers).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import numpy as np
import pandas as pd
import torch

from kernelfi._utils import KernelfiError
from kernelfi.campaign.planner import PlannedFault, Planner
from kernelfi.campaign.stored import prepare_stored
from kernelfi.execution import Golden, Runner, extended_golden
from kernelfi.harden import (
    Plan, Protection, abft_plan, apply_plan, full_plan, layer_outputs, parse_budget, profile_bounds, units,
)
from kernelfi.harden.choice import Candidate, RiskModel, Row, State, choose, residual
from kernelfi.harden.explain import explain, summary
from kernelfi.harden.pricing import DEFAULT_COST, Pricer, parse_cost
from kernelfi.lowering import Program
from kernelfi.store import CampaignMeta, Store
from kernelfi.types import Trace

OutcomeTable = Callable[..., pd.DataFrame]
MAL, LIGHT = "sdc_malfunction", "sdc_light_malfunction"
#: Kernels whose per-injection rates stand in for the voters/checkers a plan adds (they load a
#: few values, compute one and store it, like these).
PROXY_KERNELS = ("fill", "copy", "add_bias", "scale_bias", "normalize", "activate_array", "shortcut")
POP_KEYS = ("model", "weights_hash", "input_source", "mode", "bit_model", "warp", "scope")


@dataclass
class Group:
    """One population of unhardened campaigns (pooled), with its per-launch risk."""

    meta: CampaignMeta
    ids: list[int]
    pop: dict[str, float]            # launch name -> population share
    total_pop: int
    mal: dict[str, float]            # launch name -> share of all injections (smoothed)
    light: dict[str, float]
    var: dict[str, dict[str, float]]  # "mal"/"light" -> launch name -> variance of its share
    proxy: tuple[float, float]       # (mal, light) rate per injection of an added checker
    observed: tuple[float, float]    # raw (mal, light) rates of the population
    rows: pd.DataFrame = field(default_factory=pd.DataFrame)  # its mal/light rows; ``fixed``: clamps that fix one
    w_total: float = 1.0             # summed weights of all its injections


# --------------------------------------------------------------------------------------------
def select_campaigns(store: Store, ids: Iterable[int] | None) -> list[list[int]]:
    """Unhardened campaigns grouped by population; all of one model (a KernelfiError otherwise)."""
    rows = store.campaigns()
    want = set(ids) if ids else None
    chosen = [r for r in rows if (want is None or r.id in want)]
    if want is not None and len(chosen) != len(want):
        raise KernelfiError(f"{store.path}: no campaign {sorted(want - {r.id for r in chosen})}")
    hardened = [r.id for r in chosen if r.meta.hardening is not None]
    if want is not None and hardened:
        raise KernelfiError(f"campaigns {hardened} ran on a hardened model; plan from unhardened ones")
    chosen = [r for r in chosen if r.meta.hardening is None and r.n_done > 0]
    if not chosen:
        raise KernelfiError(f"{store.path}: no finished unhardened campaign to plan from")
    models = sorted({r.meta.model for r in chosen})
    if len(models) > 1:
        raise KernelfiError(f"{store.path}: campaigns of several models ({', '.join(models)}); pick with --campaign")
    groups: dict[tuple, list[int]] = {}
    for r in chosen:
        groups.setdefault(tuple(getattr(r.meta, k) for k in POP_KEYS), []).append(r.id)
    return list(groups.values())


def smoothed(counts: pd.Series, ns: pd.Series, kernels: pd.Series, alpha: float) -> pd.Series:
    """Per launch rate (c + α R_kernel) / (n + α), R_kernel = (C_k + α R_all) / (N_k + α)."""
    total_n = float(ns.sum())
    r_all = float(counts.sum()) / total_n if total_n else 0.0
    ck, nk = counts.groupby(kernels).sum(), ns.groupby(kernels).sum()
    r_k = (ck + alpha * r_all) / (nk + alpha)
    return (counts + alpha * kernels.map(r_k).fillna(r_all)) / (ns + alpha)


def group_risk(store: Store, ids: list[int], trace: Trace, table: pd.DataFrame, alpha: float) -> Group:
    meta = store.campaign(ids[0]).meta
    planner = Planner(trace, meta.mode, meta.bit_model, meta.warp, 0, 1, meta.scope)
    total = int(planner.population)
    pop = {l.name: float(planner.launch_pop[l.index]) / total for l in trace.launches}
    base = pd.DataFrame({"launch_name": [l.name for l in trace.launches],
                         "kernel": [l.kernel for l in trace.launches]})
    out: dict[str, dict[str, float]] = {}
    var: dict[str, dict[str, float]] = {}
    for cat, short in ((MAL, "mal"), (LIGHT, "light")):
        t = table[table["outcome"] == cat][["launch_name", "n", "count"]]
        d = base.merge(t, on="launch_name", how="left").fillna({"n": 0, "count": 0})
        rate = smoothed(d["count"].astype(float), d["n"].astype(float), d["kernel"], alpha)
        out[cat] = {name: pop[name] * float(r) for name, r in zip(d["launch_name"], rate)}
        # the smoothed rate as a Beta posterior of n + alpha observations (harden.explain)
        var[short] = {name: pop[name] ** 2 * float(r) * (1.0 - float(r)) / (float(n) + alpha + 1.0)
                      for name, r, n in zip(d["launch_name"], rate, d["n"])}
    n_all = float(table[table["outcome"] == MAL]["n"].sum()) or 1.0
    obs = tuple(float(table[table["outcome"] == c]["count"].sum()) / n_all for c in (MAL, LIGHT))
    proxy = []
    for cat in (MAL, LIGHT):
        t = table[(table["outcome"] == cat) & table["kernel"].isin(PROXY_KERNELS)]
        proxy.append(float(t["count"].sum()) / float(t["n"].sum()) if float(t["n"].sum()) else obs[len(proxy)])
    return Group(meta, ids, pop, total, out[MAL], out[LIGHT], var, (proxy[0], proxy[1]), obs)  # type: ignore[arg-type]


def bounded_rows(store: Store, ids: list[int], bounds: dict[str, tuple[float, float]],
                 layer_buf: dict[int, str]) -> pd.DataFrame:
    """Malfunction/Light rows with the set of clamped buffers that would bound them: the
    corruption a layer's output carries exceeds the layer's whole profiled range (or is not
    finite), which only out-of-range values can do."""
    inj = store.injections_frame(ids)
    inj = inj[inj["outcome"].isin([MAL, LIGHT])][["campaign", "id", "launch_name", "outcome", "weight"]]
    prop = store.propagation_frame(ids)
    hits: dict[tuple[int, int], set[str]] = {}
    for r in prop.itertuples(index=False):
        buf = layer_buf.get(int(r.layer))
        if buf is None or buf not in bounds:
            continue
        lo, hi = bounds[buf]
        if not math.isfinite(r.max_abs) or r.max_abs > hi - lo:
            hits.setdefault((int(r.campaign), int(r.injection)), set()).add(buf)
    inj = inj.assign(fixed=[hits.get((int(c), int(i)), set()) for c, i in zip(inj["campaign"], inj["id"])])
    return inj.reset_index(drop=True)


def verify_clamps(store: Store, base: Program, groups: list[Group], bounds: dict[str, tuple[float, float]],
                  x: torch.Tensor, fast: bool, say: Callable[[str], None]) -> None:
    """Replay each row a clamp might bound on the model with that clamp alone, and keep in
    ``fixed`` only the clamps that really move it out of its category (Malfunction -> anything
    else; Light -> neither Light nor Malfunction): bounding a value does not always restore the
    top-1, least of all near the output."""
    todo: dict[str, list[tuple[int, int]]] = {}
    for gi, g in enumerate(groups):
        for ri, bufs in enumerate(g.rows["fixed"]):
            for buf in bufs:
                todo.setdefault(buf, []).append((gi, ri))
    verified: dict[tuple[int, int], set[str]] = {}
    layer_of = {buf: layer for layer, buf in layer_outputs(base.trace).items()}
    # The clamps' bounds come from these inputs, so a clamp leaves the golden run as it was: one
    # golden run and one runner's checks of the unhardened model serve every clamp
    # (extended_golden and Runner.extended_checks say where that is exact; elsewhere they are
    # computed for the clamped model, as before).
    shared: tuple[Golden, Runner] | None = None
    for buf, items in sorted(todo.items()):
        say(f"replaying {len(items)} stored injections with a clamp on {buf} ...")
        hard = apply_plan(base, Plan(base.trace.model, (Protection("layer", layer_of[buf], "range",
                                                                   bounds={buf: bounds[buf]}),)))
        if shared is None:
            golden0 = Golden.compute(base, x, fast=fast)
            shared = golden0, Runner(base, golden0, fast=fast)
        golden = extended_golden(base, shared[0], hard, fast=fast)
        checks = None if golden is None else shared[1].extended_checks(hard, golden)
        if golden is None:
            golden = Golden.compute(hard, x, fast=fast)
        runner = Runner(hard, golden, fast=fast, checks=checks)
        index = {l.name: l.index for l in hard.trace.launches}
        batches: dict[int, list[tuple[tuple[int, int], PlannedFault]]] = {}
        for gi, ri in items:
            row = groups[gi].rows.iloc[ri]
            rec = store.injection(int(row["campaign"]), int(row["id"]))
            f = rec.fault()
            fault = dataclasses.replace(f, site=dataclasses.replace(f.site, launch=index[rec.launch_name]))
            layer = hard.trace.launches[fault.site.launch].layer
            batches.setdefault(layer, []).append(((gi, ri), PlannedFault(len(batches.get(layer, [])), fault, 1.0)))
        with torch.no_grad():
            for batch in batches.values():
                for (key, _), ex in zip(batch, runner.run([pf for _, pf in batch])):
                    was = groups[key[0]].rows.iloc[key[1]]["outcome"]
                    now = ex.result.outcome
                    if (was == MAL and now != MAL) or (was == LIGHT and now not in (MAL, LIGHT)):
                        verified.setdefault(key, set()).add(buf)
    for gi, g in enumerate(groups):
        g.rows["fixed"] = [verified.get((gi, ri), set()) for ri in range(len(g.rows))]


# --------------------------------------------------------------------------------------------
def candidates(base: Program, progs: dict[str, Program], timing: dict[str, Any],
               bounds: dict[str, tuple[float, float]]) -> list[Candidate]:
    """(unit, technique) pairs with the time (modelled or measured) of what each adds."""
    out: list[Candidate] = []
    layer_names = {s.index: s.name for s in base.trace.layers}
    for tech, prog in progs.items():
        added: dict[str, dict[str, float]] = {}
        for l, t in zip(prog.trace.launches, timing[tech].per_launch):
            if l.params.get("role", "original") != "original" and not l.params.get("conditional"):
                added.setdefault(str(l.params["protects"]), {})[l.name] = t
        if tech == "range":
            for layer, buf in layer_outputs(base.trace).items():
                if buf in bounds:
                    a = added.get(buf, {})
                    out.append(Candidate("range", buf, (), sum(a.values()), tuple(a), layer, bounds[buf]))
            continue
        for u in units(base.trace, _full(base.trace, tech)):
            names = tuple(base.trace.launches[i].name for i in u.launches)
            a = added.get(names[-1], {})
            out.append(Candidate(tech, names[-1], names, sum(a.values()), tuple(a),
                                 layer_names[base.trace.launches[u.last].layer]))
    return out


def _full(trace: Trace, tech: str) -> Plan:
    """The whole model under one technique: the candidates' source and their pricing."""
    return abft_plan(trace) if tech == "abft" else full_plan(trace.model, sorted({l.kernel for l in trace.launches}), tech)


def added_pop(prog: Program, group: Group) -> dict[str, float]:
    """Population (as a share of the unhardened one) of each added injectable launch."""
    m = group.meta
    pl = Planner(prog.trace, m.mode, m.bit_model, m.warp, 0, 1, m.scope)
    out: dict[str, float] = {}
    for l in prog.trace.launches:
        if l.params.get("role", "original") not in ("original", "replica", "copy"):
            out[l.name] = float(pl.launch_pop[l.index]) / group.total_pop
    return out


def risk_model(g: Group, trace: Trace, extra_pop: dict[str, dict[str, float]]) -> RiskModel:
    """The population's risk in ``harden.choice`` terms."""
    rows: dict[str, list[Row]] = {"mal": [], "light": []}
    if len(g.rows):
        for r in g.rows.itertuples(index=False):
            rows["mal" if r.outcome == MAL else "light"].append(Row(r.launch_name, float(r.weight) / g.w_total,
                                                                   frozenset(r.fixed)))
    return RiskModel({"mal": g.mal, "light": g.light}, {l.name: l.kernel for l in trace.launches}, rows,
                     {"mal": g.proxy[0], "light": g.proxy[1]}, extra_pop, g.var)


# --------------------------------------------------------------------------------------------
def plan_hardening(db: str, budget: str | float, outcome_table: OutcomeTable, techniques: Iterable[str] = (
        "tmr", "dmr", "abft", "range"), campaign_ids: Iterable[int] | None = None, reps: int = 10, lanes: int = 32,
        light_weight: float = 0.01, alpha: float = 2.0, device: str = "cpu", clock: str = "cpu",
        log: Callable[[str], None] | None = None, cost: str = DEFAULT_COST) -> Plan:
    """The plan for the DB's unhardened campaigns of one model (see the module docstring).
    ``reps``, ``lanes``, ``device`` and ``clock`` matter only with ``cost="measured"``."""
    say = log or (lambda s: None)
    techs = [t.strip() for t in techniques if t.strip()]
    bad = [t for t in techs if t not in ("tmr", "dmr", "abft", "range")]
    if bad or not techs:
        raise KernelfiError(f"--techniques: unknown {', '.join(bad) or '(none)'} (known: tmr, dmr, abft, range)")
    share = parse_budget(budget)
    pricing = parse_cost(cost)
    with Store(db, create=False) as store:
        id_groups = select_campaigns(store, list(campaign_ids) if campaign_ids else None)
        meta = store.campaign(id_groups[0][0]).meta
        extra = dict(meta.extra)
        inputs = {(store.campaign(ids[0]).meta.input_source, store.campaign(ids[0]).meta.n_inputs) for ids in id_groups}
        if len(inputs) > 1:
            raise KernelfiError(f"{db}: the campaigns ran on different inputs; plan from one input set (--campaign)")
        stored = prepare_stored(store.campaign(id_groups[0][0]), db)  # same model, weights and inputs, checked
        base = stored.session.program
        x_all = stored.x
        fast = bool(extra.get("fast", True))
        groups = [group_risk(store, ids, base.trace, outcome_table(store, ids, by="launch"), alpha)
                  for ids in id_groups]
        bounds = profile_bounds(base, x_all, fast=fast) if "range" in techs else {}
        layer_buf = {s.index: buf for s in base.trace.layers
                     for name, buf in layer_outputs(base.trace).items() if name == s.name}
        for g in groups:
            g.rows = bounded_rows(store, g.ids, bounds, layer_buf) if bounds else pd.DataFrame()
            g.w_total = float(store.injections_frame(g.ids)["weight"].sum()) or 1.0
        if bounds:
            verify_clamps(store, base, groups, bounds, x_all, fast, say)
    progs: dict[str, Program] = {}
    for t in techs:
        if t == "range":
            progs[t] = apply_plan(base, Plan(base.trace.model, tuple(
                Protection("layer", layer, "range", bounds={buf: bounds[buf]})
                for layer, buf in layer_outputs(base.trace).items() if buf in bounds)))
        else:
            progs[t] = apply_plan(base, _full(base.trace, t))
    x = x_all[:lanes]
    price = Pricer(pricing, x, reps, fast, device, clock)
    say(f"modelling the unhardened model and full {', '.join(techs)} on the {pricing.gpu.name} ..."
        if pricing.gpu is not None else
        f"timing the unhardened model and full {', '.join(techs)} on {x.shape[0]} inputs, {reps} repetitions ...")
    timing = price({"base": base, "unfused": base, **progs}, unfused=("unfused",))
    t_base = timing["base"].total
    cands = candidates(base, progs, timing, bounds)
    models = [risk_model(g, base.trace, {t: added_pop(p, g) for t, p in progs.items()}) for g in groups]
    penalty = defusion_penalty(base, timing) if "unfused" in timing else {}
    chosen, _ = choose(cands, models, share * t_base, light_weight, penalty)
    dropped: list[Candidate] = []
    sources = tuple(i for ids in id_groups for i in ids)
    word = "modelled" if pricing.gpu is not None else "measured"
    while True:  # the components' sum is an estimate: price the plan, shed the worst buy while over
        plan = _plan(base, chosen, share, sources, t_base)
        m = price({"base": base, "plan": apply_plan(base, plan)})
        whole = m["plan"].total / m["base"].total - 1.0
        whole_min = m["plan"].total_min / m["base"].total_min - 1.0
        if whole <= share + 1e-9 or not chosen:   # (rounding: GPU-priced components add up exactly)
            break
        worst = min(chosen, key=lambda t: (t[1] + light_weight * t[2]) / max(t[3], 1e-9))
        say(f"{word} overhead {100 * whole:.2f}% > {100 * share:.2f}%: dropping {worst[0].technique} "
            f"{worst[0].key}")
        dropped.append(worst[0])
        chosen = [t for t in chosen if t is not worst]
    expected = expectation(base, plan, groups, models, chosen, t_base, whole)
    if pricing.gpu is not None:
        expected["overhead_modelled"] = expected.pop("overhead_measured")
    else:
        expected["overhead_measured_fastest"] = whole_min
    verdicts = explain(cands, models, [c for c, *_ in chosen], dropped, share * t_base, light_weight, penalty,
                       f" (the whole plan at {100 * whole:.2f}% {word})" if dropped else "")
    planner: dict[str, Any] = {"techniques": techs, "cost": pricing.label, "fast": fast, "light_weight": light_weight,
                               "alpha": alpha, "unhardened_s": t_base, "candidates": summary(verdicts),
                               "populations": [{"mode": g.meta.mode, "bit_model": g.meta.bit_model,
                                                "scope": g.meta.scope, "campaigns": g.ids} for g in groups]}
    if pricing.gpu is not None:
        planner["gpu"] = pricing.gpu.name
    else:
        planner.update(reps=reps, lanes=int(x.shape[0]), device=device, clock=clock)
    ranked = sorted(verdicts, key=lambda v: -(v.malfunction_removed + light_weight * v.light_removed))
    return Plan(plan.model, plan.protect, expected, share, sources, extra={
        "planner": planner, "explain": [v.to_dict(t_base) for v in ranked]})


def defusion_penalty(base: Program, timing: dict[str, Any]) -> dict[str, float]:
    """Per layer: its kernel-by-kernel time minus its fused time (what a layer loses when a
    replica or checker stops the engine from fusing it)."""
    names = {s.index: s.name for s in base.trace.layers}
    out: dict[str, float] = {}
    for l, fused, plain in zip(base.trace.launches, timing["base"].per_launch, timing["unfused"].per_launch):
        out[names[l.layer]] = out.get(names[l.layer], 0.0) + plain - fused
    return out


def _plan(base: Program, chosen: list[tuple[Candidate, float, float, float]], share: float,
          sources: tuple[int, ...], t_base: float) -> Plan:
    protect = []
    for c, m, li, secs in chosen:
        est = {"malfunction_removed": m, "light_removed": li, "cost_s": secs, "overhead": secs / t_base}
        if c.technique == "range":
            protect.append(Protection("layer", c.layer, "range", bounds={c.key: c.bounds}, extra={"estimate": est}))
        else:
            protect.append(Protection("launch", c.key, c.technique, extra={"estimate": est}))
    return Plan(base.trace.model, tuple(protect), budget=share, source_campaigns=sources)


def expectation(base: Program, plan: Plan, groups: list[Group], models: list[RiskModel],
                chosen: list[tuple[Candidate, float, float, float]], t_base: float, measured: float) -> dict[str, Any]:
    """Residual rates in the hardened model's population (its added launches dilute the rates
    per injection: ``population_growth``) and the overhead (sum of the components' costs, and
    the whole hardened model priced against the original: ``overhead_measured``, which the
    caller renames ``overhead_modelled`` under GPU pricing)."""
    hard = apply_plan(base, plan)
    st = State()
    for c, _, _, _ in chosen:
        st.replicated.update(c.launches) if c.technique != "range" else st.clamped.add(c.key)
        st.added.extend((c.technique, n) for n in c.added)
    before, after = residual(models, State()), residual(models, st)
    growth = []
    for g in groups:
        m = g.meta
        pl = Planner(hard.trace, m.mode, m.bit_model, m.warp, 0, 1, m.scope)
        growth.append(float(pl.population) / g.total_pop)
    grow = float(np.mean(growth))
    return {
        "malfunction_before": before["mal"], "malfunction_after": after["mal"] / grow,
        "light_before": before["light"], "light_after": after["light"] / grow,
        "observed_malfunction": float(np.mean([g.observed[0] for g in groups])),
        "observed_light": float(np.mean([g.observed[1] for g in groups])),
        "overhead": sum(secs for _, _, _, secs in chosen) / t_base,
        "overhead_measured": measured,
        "population_growth": grow - 1.0,
    }
