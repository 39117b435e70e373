"""Sample-size verdicts and the FIT estimate, from a population's tables.

FIT needs the number of *exposed bits* (docs/method.md §4: FIT_SDC = raw FIT/bit × exposed bits × AVF_SDC).
For an RF campaign the raw AVF is conditioned on a flip in an *allocated* register (the injector
picks a live register of a running thread), so the exposed bits are the allocated register-file
bits, averaged over the inference:

    exposed = Σ_launch instr_l · min(RF_BITS, registers_l × 32 × resident_l) / Σ_launch instr_l

with ``resident_l = min(threads_l, SMS × MAX_THREADS_PER_SM)`` and the weights the launches'
dynamic instruction counts (time proxies). ``exposed / RF_BITS`` is then exactly the campaign's
stored derating, so ``raw × exposed = derated AVF × RF_BITS`` — the report shows both as a check.
The GPU constants are the AlexNet study's GTX 750 Ti, the same as ``kernelfi.faults.registers`` uses
(repeated here because the report layer may not import the fault layer).
IOV/IOA campaigns measure a PVF (per corrupted instruction): turning it into FIT needs a raw
error rate per executed instruction, which nobody publishes, so the report gives the PVF only.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from kernelfi.analysis import fit_estimate, verdict
from kernelfi.types import GROUPS

from .tables import PopulationTables

SMS = 5
REGS_PER_SM = 65536
MAX_THREADS_PER_SM = 2048
#: Physical register-file bits of the whole GPU (5 SMs × 64 Ki 32-bit registers ≈ 10.5 Mbit).
RF_BITS = SMS * REGS_PER_SM * 32
FIT_CATEGORIES: tuple[str, ...] = ("sdc", "sdc_malfunction")


def exposed_bits(launches: pd.DataFrame) -> tuple[float, bool]:
    """Instruction-weighted allocated register-file bits of an inference, and whether every
    launch declared its register allocation (``registers == 0`` means unknown)."""
    instr = launches[list(GROUPS)].sum(axis=1).astype(float)
    resident = launches["threads"].clip(upper=SMS * MAX_THREADS_PER_SM).astype(float)
    bits = np.minimum(float(RF_BITS), launches["registers"].astype(float) * 32.0 * resident)
    total = float(instr.sum())
    known = bool((launches["registers"] > 0).all())
    return (float((bits * instr).sum()) / total if total > 0 else 0.0), known


def verdict_table(item: PopulationTables, margin: float, confidence: float) -> pd.DataFrame:
    """Per rate (overall and per kernel): reached ±``margin``? and how many more injections.

    Weighted (stratified) rates are judged at Kish's effective size, as the tables' intervals are.
    """
    rows = []
    for scope, name, key in (("overall", "overall", None), ("kernel", "kernels", "kernel")):
        for r in item.tables[name].itertuples():
            if r.n == 0:
                continue
            v = verdict(float(r.rate) * float(r.n_eff), float(r.n_eff), margin, confidence)
            rows.append({"population": item.population.key, "label": item.population.label,
                         "scope": scope, "group": "all" if key is None else getattr(r, key),
                         "outcome": r.outcome, "n": int(r.n), "n_eff": float(r.n_eff),
                         "rate": v.rate, "margin": v.margin, "target": margin,
                         "reached": v.reached, "needed": v.needed, "more": v.more})
    return pd.DataFrame(rows)


def fit_table(item: PopulationTables, raw_fit_per_mbit: float, budget: float,
              override_bits: float | None = None) -> pd.DataFrame:
    """FIT rows for an RF population; PVF rows (no FIT) for IOV/IOA. Wilson interval carried."""
    pop = item.population
    overall = item.tables["overall"].set_index("outcome")
    bits, known = exposed_bits(item.launches)
    stored = pop.meta.derating
    if override_bits is not None:
        bits, source = float(override_bits), "--exposed-bits"
    elif known:
        source = "allocated registers × 32 × resident threads (instruction-weighted)"
    elif stored is not None:
        bits, source = float(stored) * RF_BITS, "stored derating × physical RF bits"
    else:
        bits, source = math.nan, "unknown"
    rows = []
    for cat in FIT_CATEGORIES:
        r = overall.loc[cat]
        row = {"population": pop.key, "label": pop.label, "mode": pop.meta.mode,
               "metric": pop.metric, "outcome": cat, "n": int(r["n"]), "rate": r["rate"],
               "rate_wilson_low": r["rate_wilson_low"], "rate_wilson_high": r["rate_wilson_high"]}
        if pop.meta.mode == "rf" and not math.isnan(bits):
            est = fit_estimate((float(r["rate"]), float(r["rate_wilson_low"]),
                                float(r["rate_wilson_high"])), int(round(bits)),
                               raw_fit_per_mbit, budget)
            row.update(exposed_bits=est.exposed_bits, exposed_source=source,
                       derating_recomputed=bits / RF_BITS,
                       derating_stored=math.nan if stored is None else float(stored),
                       raw_fit_per_mbit=raw_fit_per_mbit, fit=est.fit, fit_low=est.low,
                       fit_high=est.high, budget=budget, verdict=est.verdict)
        else:
            row.update(exposed_bits=math.nan, exposed_source="", derating_recomputed=math.nan,
                       derating_stored=math.nan, raw_fit_per_mbit=raw_fit_per_mbit,
                       fit=math.nan, fit_low=math.nan, fit_high=math.nan, budget=budget,
                       verdict="exposed bits unknown: pass --exposed-bits"
                       if pop.meta.mode == "rf" else "PVF only (per corrupted instruction; no FIT)")
        rows.append(row)
    return pd.DataFrame(rows)
