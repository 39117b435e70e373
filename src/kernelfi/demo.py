"""The closed loop of the published studies, end to end on the embedded digits AlexNet (``kernelfi demo``).

baseline RF/IOV/IOA campaigns -> hardening plan within a budget of modelled GPU time ->
verification campaigns on the hardened model -> the AlexNet study's Table 2 in modelled time
(unhardened, plan, full DMR, full TMR) beside the published one -> the plan exported as plain
PyTorch and timed natively on this machine (plan, full DMR, full TMR against the original) ->
HTML report. Everything lands in one folder: the results database, the plan, the overhead
tables, the export, the report.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from kernelfi.analysis import outcome_table
from kernelfi.campaign import CampaignConfig, ModelSpec, run_campaign
from kernelfi.campaign.harden_planner import plan_hardening
from kernelfi.campaign.session import open_session
from kernelfi.gputime import get_gpu
from kernelfi.harden import DEFAULT_COST, OverheadTable, Plan, modelled_overhead, parse_cost
from kernelfi.harden.export import NativeOverhead, export_model, model_inputs, time_exported
from kernelfi.report.build import ReportOptions, build_report
from kernelfi.report.hardening import masked_share
from kernelfi.report.studies import STUDY_OVERHEAD, STUDY_TABLE2
from kernelfi.store import Store
from kernelfi.types import OUTCOME_LABELS, OUTCOMES

MODES = ("rf", "iov", "ioa")
COLUMNS = ("unhardened", "plan", "full DMR", "full TMR")


@dataclass(frozen=True)
class DemoConfig:
    out: str = "kernelfi-demo"
    model: str = "digits-alexnet"
    n: int = 1000
    seed: int = 1
    budget: str = "5%"
    bit_model: str = "single"
    cost: str = DEFAULT_COST
    #: native timing of the export: interleaved repetitions and inputs per forward (docs/export.md §5)
    native_reps: int = 20
    native_lanes: int = 32


Log = Callable[[str], None]


@dataclass(frozen=True)
class Run:
    """One campaign's outcome counts and its population (fault sites of its mode)."""

    counts: dict[str, int]
    population: float


def _campaigns(cfg: DemoConfig, db: Path, plan: Path | None, log: Log) -> dict[str, Run]:
    runs = {}
    for mode in MODES:
        t0 = time.perf_counter()
        spec = ModelSpec(cfg.model, hardening=None if plan is None else str(plan))
        cid = run_campaign(CampaignConfig(spec, mode, cfg.bit_model, n=cfg.n, seed=cfg.seed), str(db))
        with Store(db, create=False) as s:
            runs[mode] = Run(s.outcome_counts(cid), float(s.campaign(cid).meta.extra.get("population", 0.0)))
        c = runs[mode].counts
        log(f"  {mode.upper():3s} {'hardened' if plan else 'baseline'}: "
            + ", ".join(f"{OUTCOME_LABELS[o]} {c.get(o, 0)}" for o in reversed(OUTCOMES))
            + f" of {cfg.n} ({time.perf_counter() - t0:.0f}s)")
    return runs


def table_lines(ours: OverheadTable) -> list[str]:
    """The modelled Table 2 beside the AlexNet study's published one, as text."""
    head = f"{'':16s}{'calls':>6s}" + "".join(f"{c:>13s}" for c in COLUMNS)
    lines = [f"modelled: {ours.model} on {ours.device} (ms)", head]
    for k in ours.kernels:
        lines.append(f"{k:16s}{ours.invocations.get(k, 0):6d}"
                     + "".join(f"{1000 * ours.seconds[c][k]:13.4f}" for c in COLUMNS))
    lines.append(f"{'whole model':16s}{1:6d}" + "".join(f"{1000 * ours.total[c]:13.4f}" for c in COLUMNS))
    lines.append(f"{'overhead':22s}{'':13s}" + "".join(f"{100 * ours.overhead(c):+12.2f}%" for c in COLUMNS[1:]))
    lines += ["the AlexNet study, Table 2 (its AlexNet on a GTX 750 Ti, ms, as published)", head]
    for k, v in STUDY_TABLE2.items():
        lines.append(f"{k:16s}{v[0]:6d}" + "".join(f"{x:13.4f}" for x in v[1:]))
    lines.append(f"{'overhead':22s}{'':13s}" + "".join(f"{100 * STUDY_OVERHEAD[c]:+12.2f}%" for c in COLUMNS[1:]))
    return lines


def run_demo(cfg: DemoConfig, log: Log = print) -> Path:
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    db, plan_path = out / "results.db", out / "plan.json"
    cost = parse_cost(cfg.cost)
    gpu = cost.gpu or get_gpu(DEFAULT_COST[4:])
    t0 = time.perf_counter()
    log(f"[1/6] baseline campaigns on {cfg.model}: {cfg.n} {cfg.bit_model}-bit injections per mode -> {db}")
    before = _campaigns(cfg, db, None, log)
    log(f"[2/6] hardening plan within a {cfg.budget} overhead budget ({cost.label}) -> {plan_path}")
    with Store(db, create=False) as s:
        base_ids = [r.id for r in s.campaigns() if r.meta.hardening is None and r.meta.model == cfg.model]
    plan = plan_hardening(str(db), cfg.budget, outcome_table, campaign_ids=base_ids, cost=cfg.cost,
                          log=lambda m: log("  " + m))
    plan.save(plan_path)
    for p in plan.protect:
        log(f"  protect {p.target} {p.name} with {p.technique}")
    counts = plan.extra.get("planner", {}).get("candidates", {})
    log(f"  weighed {sum(counts.values())} candidates: " + ", ".join(f"{n} {k.replace('_', ' ')}"
                                                                   for k, n in counts.items()))
    log("[3/6] verification campaigns on the hardened model")
    after = _campaigns(cfg, db, plan_path, log)
    log(f"[4/6] overhead, modelled on the {gpu.name} (the AlexNet study's Table 2)")
    table = modelled_overhead(open_session(ModelSpec(cfg.model)).program, Plan.load(plan_path), gpu)
    lines = table_lines(table)
    (out / "overhead.txt").write_text("\n".join(lines) + "\n")
    (out / "overhead.json").write_text(json.dumps(table.to_dict(), indent=1))
    for line in lines:
        log("  " + line)
    log(f"[5/6] the plan exported as plain PyTorch -> {out / 'export'}; native overhead on this machine "
        f"(CPU thread time, {cfg.native_lanes} inputs per forward, {cfg.native_reps} interleaved repetitions)")
    t5 = time.perf_counter()
    native = _native(cfg, plan_path, out / "export")
    (out / "native.json").write_text(json.dumps(native.to_dict(), indent=1))
    for line in native.lines():
        log("  " + line)
    log(f"  exported, checked against the original and timed in {time.perf_counter() - t5:.0f}s")
    log("[6/6] report")
    index = build_report(db, out / "report", ReportOptions(native=(native.to_dict(),)))
    log(summary(cfg, before, after, table, plan, native))
    log(f"done in {time.perf_counter() - t0:.0f}s; report: {index.resolve()}")
    return index


def _native(cfg: DemoConfig, plan: Path, where: Path) -> NativeOverhead:
    """Export the plan and time it natively (``time_exported``): the model's own data, one
    thread's CPU time, so that the other jobs of a shared machine weigh less on the figures."""
    x = model_inputs(cfg.model, cfg.native_lanes)
    export_model(cfg.model, plan, where, check_inputs=x[:16])
    return time_exported(where, x, reps=cfg.native_reps, clock="cpu")


def summary(cfg: DemoConfig, before: dict[str, Run], after: dict[str, Run], table: OverheadTable, plan: Plan,
            native: NativeOverhead | None = None) -> str:
    """The demo's last line: Malfunction before -> after, the errors the plan masks (the ResNet
    study's figure, docs/report.md), the modelled overheads and the export's native ones."""
    total = len(MODES) * cfg.n
    mal_b = sum(r.counts.get("sdc_malfunction", 0) for r in before.values())
    mal_a = sum(r.counts.get("sdc_malfunction", 0) for r in after.values())
    shares: dict[str, list[float]] = {"SDCs": [], "SDC Malfunctions": []}
    for mode in MODES:
        grow = after[mode].population / before[mode].population if before[mode].population else float("nan")
        for name, keep in (("SDCs", lambda k: k.startswith("sdc_")),
                           ("SDC Malfunctions", lambda k: k == "sdc_malfunction")):
            rates = [sum(v for k, v in r.counts.items() if keep(k)) / cfg.n for r in (before[mode], after[mode])]
            share = masked_share(rates[0], rates[1], grow)
            if share == share:   # NaN: no such error before, nothing to mask
                shares[name].append(share)
    masked = ", ".join(f"{name} {100 * sum(v) / len(v):.1f}%" for name, v in shares.items() if v)
    techniques = ", ".join(f"{p.technique} of {p.name}" for p in plan.protect) or "nothing"
    return (f"{OUTCOME_LABELS['sdc_malfunction']} (all modes): {mal_b} of {total} ({100 * mal_b / total:.2f}%) -> "
            f"{mal_a} of {total} "
            f"({100 * mal_a / total:.2f}%); masked by the plan per inference (mean over modes): {masked or '-'}; "
            f"plan ({techniques}) {100 * table.overhead('plan'):+.2f}% modelled time on {table.device}, "
            f"full DMR {100 * table.overhead('full DMR'):+.1f}%, full TMR {100 * table.overhead('full TMR'):+.1f}%"
            + ("" if native is None else
               f"; exported, natively on this {native.device.upper()} (medians): plan {100 * native.overhead('plan'):+.1f}%, "
               f"full DMR {100 * native.overhead('full-dmr'):+.1f}%, full TMR {100 * native.overhead('full-tmr'):+.1f}%"))
