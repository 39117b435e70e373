"""FIT estimate (docs/method.md §4): failures in time (per 10⁹ device-hours) caused by SDCs.

``FIT_SDC = raw FIT per bit × exposed bits × AVF_SDC``. The raw rate is a parameter because it
depends on the process node and altitude (IEC 61508 quotes 700–1200 FIT/Mbit); 1 Mbit is taken
as 10⁶ bits (pass ``bits_per_mbit=2**20`` for the binary reading, 4.9% lower per bit). The
formula is linear in AVF, so the AVF interval maps to a FIT interval exactly.
"""
from __future__ import annotations

from dataclasses import dataclass

#: IEC 61508's quoted range of raw soft-error rates, FIT per Mbit.
IEC_61508_FIT_PER_MBIT: tuple[float, float] = (700.0, 1200.0)
#: ISO 26262 ASIL-D random hardware failure target, FIT.
ASIL_D_BUDGET: float = 10.0


@dataclass(frozen=True)
class FitEstimate:
    """FIT_SDC with its interval and the verdict against ``budget``.

    ``verdict``: ``meets`` (whole interval ≤ budget), ``exceeds`` (whole interval > budget) or
    ``inconclusive`` (the interval straddles the budget: more injections needed).
    """

    fit: float
    low: float
    high: float
    avf: float
    exposed_bits: int
    raw_fit_per_bit: float
    budget: float
    verdict: str

    @property
    def within_budget(self) -> bool:
        return self.fit <= self.budget


def fit_estimate(avf_sdc: float | tuple[float, float, float], exposed_bits: int,
                 raw_fit_per_mbit: float = 1000.0, budget: float = ASIL_D_BUDGET,
                 bits_per_mbit: float = 1e6) -> FitEstimate:
    """FIT_SDC for an AVF (a number, or ``(estimate, low, high)`` to carry its interval)."""
    avf, low, high = (avf_sdc, avf_sdc, avf_sdc) if isinstance(avf_sdc, (int, float)) else avf_sdc
    # interval routines return e.g. a Wilson low of 2e-19 for a zero count: round-off, not data
    eps = 1e-12
    if avf - eps <= low <= avf + eps:
        low = min(low, avf)
    if avf - eps <= high <= avf + eps:
        high = max(high, avf)
    if not 0.0 <= low <= avf <= high <= 1.0:
        raise ValueError(f"AVF must satisfy 0 <= low <= estimate <= high <= 1, got {avf_sdc}")
    if exposed_bits < 0 or raw_fit_per_mbit < 0:
        raise ValueError("exposed_bits and raw_fit_per_mbit must be >= 0")
    per_bit = raw_fit_per_mbit / bits_per_mbit
    scale = per_bit * exposed_bits
    fit, f_low, f_high = avf * scale, low * scale, high * scale
    verdict = "meets" if f_high <= budget else "exceeds" if f_low > budget else "inconclusive"
    return FitEstimate(fit=fit, low=f_low, high=f_high, avf=float(avf), exposed_bits=int(exposed_bits),
                       raw_fit_per_bit=per_bit, budget=budget, verdict=verdict)
