"""The closed loop of the published studies, end to end on the embedded digits AlexNet (``kernelfi demo``).

baseline RF/IOV/IOA campaigns -> hardening plan within a budget -> verification campaigns on
the hardened model -> measured overhead (unhardened, plan, full DMR, full TMR) -> HTML report.
Everything lands in one folder: the results database, the plan, the overhead table, the report.
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
from kernelfi.campaign.session import inputs_tensor, open_session, session_inputs
from kernelfi.harden import Plan, by_kernel, comparison_programs, time_programs
from kernelfi.report.build import build_report
from kernelfi.store import Store
from kernelfi.types import OUTCOME_LABELS, OUTCOMES

MODES = ("rf", "iov", "ioa")


@dataclass(frozen=True)
class DemoConfig:
    out: str = "kernelfi-demo"
    model: str = "digits-alexnet"
    n: int = 1000
    seed: int = 1
    budget: str = "5%"
    bit_model: str = "single"
    reps: int = 15


Log = Callable[[str], None]


def _campaigns(cfg: DemoConfig, db: Path, plan: Path | None, log: Log) -> dict[str, dict[str, int]]:
    counts = {}
    for mode in MODES:
        t0 = time.perf_counter()
        spec = ModelSpec(cfg.model, hardening=None if plan is None else str(plan))
        cid = run_campaign(CampaignConfig(spec, mode, cfg.bit_model, n=cfg.n, seed=cfg.seed), str(db))
        with Store(db, create=False) as s:
            counts[mode] = s.outcome_counts(cid)
        c = counts[mode]
        log(f"  {mode.upper():3s} {'hardened' if plan else 'baseline'}: "
            + ", ".join(f"{OUTCOME_LABELS[o]} {c.get(o, 0)}" for o in reversed(OUTCOMES))
            + f" of {cfg.n} ({time.perf_counter() - t0:.0f}s)")
    return counts


def overhead_table(cfg: DemoConfig, plan: Plan) -> dict[str, dict[str, float]]:
    """Median seconds per kernel type and for the whole model: unhardened, plan, full DMR/TMR."""
    session = open_session(ModelSpec(cfg.model))
    base = session.program
    x = inputs_tensor(session_inputs(session, None, 32))
    progs = comparison_programs(base, plan)
    # thread CPU time with one intra-op thread: steady on a shared machine (docs/hardening.md)
    timing = time_programs(progs, x, reps=cfg.reps, clock="cpu")
    table: dict[str, dict[str, float]] = {}
    for label, t in timing.items():
        table[label] = {"whole model": t.total, **by_kernel(progs[label].trace, t)}
    return table


def run_demo(cfg: DemoConfig, log: Log = print) -> Path:
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    db, plan_path = out / "results.db", out / "plan.json"
    t0 = time.perf_counter()
    log(f"[1/5] baseline campaigns on {cfg.model}: {cfg.n} {cfg.bit_model}-bit injections per mode -> {db}")
    before = _campaigns(cfg, db, None, log)
    log(f"[2/5] hardening plan within a {cfg.budget} overhead budget -> {plan_path}")
    with Store(db, create=False) as s:
        base_ids = [r.id for r in s.campaigns() if r.meta.hardening is None and r.meta.model == cfg.model]
    plan = plan_hardening(str(db), cfg.budget, outcome_table, campaign_ids=base_ids, log=lambda m: log("  " + m))
    plan.save(plan_path)
    for p in plan.protect:
        log(f"  protect {p.target} {p.name} with {p.technique}")
    log("[3/5] verification campaigns on the hardened model")
    after = _campaigns(cfg, db, plan_path, log)
    log("[4/5] overhead, measured side by side (medians)")
    table = overhead_table(cfg, plan)
    base_t = table["unhardened"]["whole model"]
    lines = [f"{'':14s}" + "".join(f"{k:>14s}" for k in table)]
    for kernel in table["unhardened"]:
        lines.append(f"{kernel:14s}" + "".join(f"{1000 * table[k].get(kernel, 0.0):12.3f}ms" for k in table))
    lines.append("overhead      " + "".join(f"{100 * (table[k]['whole model'] / base_t - 1):13.2f}%" for k in table))
    (out / "overhead.txt").write_text("\n".join(lines) + "\n")
    (out / "overhead.json").write_text(json.dumps(table, indent=1))
    for l in lines:
        log("  " + l)
    log("[5/5] report")
    index = build_report(db, out / "report")
    mal_b = sum(c.get("sdc_malfunction", 0) for c in before.values()) / (len(MODES) * cfg.n)
    mal_a = sum(c.get("sdc_malfunction", 0) for c in after.values()) / (len(MODES) * cfg.n)
    ovh = table["plan"]["whole model"] / base_t - 1
    log(f"{OUTCOME_LABELS['sdc_malfunction']} (mean over RF/IOV/IOA): {100 * mal_b:.2f}% -> {100 * mal_a:.2f}% "
        f"at {100 * ovh:.2f}% measured overhead (full DMR "
        f"{100 * (table['full DMR']['whole model'] / base_t - 1):.1f}%, full TMR "
        f"{100 * (table['full TMR']['whole model'] / base_t - 1):.1f}%)")
    log(f"done in {time.perf_counter() - t0:.0f}s; report: {index.resolve()}")
    return index
