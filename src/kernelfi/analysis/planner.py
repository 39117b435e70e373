"""How many injections a campaign needs (Leveugle et al., DATE 2009) and whether it got them.

``sample_size``/``margin_for`` are Leveugle's formula, used before a campaign with a guessed
``p`` (0.5: the worst case). ``verdict`` judges a finished rate by the Wilson interval the
tables report (not the normal approximation, which collapses to ±0 at a rate of 0) and asks how
many injections that interval needs to shrink to the target at the observed rate.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from scipy.stats import norm
from statsmodels.stats.proportion import proportion_confint

from ._stats import alpha_of


def _t(confidence: float) -> float:
    """The two-sided normal quantile (1.959964 at 95%), as statsmodels computes it."""
    return float(norm.isf(alpha_of(confidence) / 2.0))


def sample_size(margin: float, confidence: float = 0.95, p: float = 0.5,
                population: int | None = None) -> int:
    """Injections for ±``margin`` at ``confidence``: ``n = N / (1 + e²(N−1) / (t²·p(1−p)))``.

    ``population=None`` is the infinite-population limit ``t²·p(1−p) / e²`` (fault populations
    are ~10¹⁰ sites, so this is the usual case). Rounded up: ±1% → 9604, ±5% → 385 at 95%.
    """
    if not 0.0 < margin < 1.0:
        raise ValueError(f"margin must be in (0, 1), got {margin}")
    t2pq = _t(confidence) ** 2 * p * (1.0 - p)
    n = t2pq / margin**2 if population is None else \
        population / (1.0 + margin**2 * (population - 1) / t2pq)
    return max(1, math.ceil(n - 1e-9))  # the tolerance keeps 9604.000000001 at 9604


def margin_for(n: int | float, confidence: float = 0.95, p: float = 0.5,
               population: int | None = None) -> float:
    """The margin ``n`` injections give (Leveugle's formula solved for e): 1000 → ±3.1%."""
    if n <= 0:
        raise ValueError(f"n must be > 0, got {n}")
    e = _t(confidence) * math.sqrt(p * (1.0 - p) / n)
    if population is not None:
        e *= math.sqrt(max(population - n, 0) / (population - 1)) if population > 1 else 0.0
    return e


def _wilson_margin(rate: float, n: float, confidence: float) -> float:
    low, high = proportion_confint(rate * n, n, alpha=alpha_of(confidence), method="wilson")
    return float(max(rate - low, high - rate))


@dataclass(frozen=True)
class Verdict:
    """Whether a rate's Wilson interval is within ±``target``; ``more`` injections would make it."""

    rate: float
    n: float
    margin: float
    target: float
    confidence: float
    reached: bool
    needed: int
    more: int


def verdict(count: float, n: float, target_margin: float, confidence: float = 0.95) -> Verdict:
    """Judge ``count`` out of ``n`` against ±``target_margin`` (pass ``n_eff``·rate and
    ``n_eff`` for a weighted rate). ``needed`` is the smallest n whose Wilson half-width at the
    observed rate (0.5 when ``n == 0``) is within the target; ``more = max(0, needed − n)``."""
    if not 0.0 < target_margin < 1.0:
        raise ValueError(f"target_margin must be in (0, 1), got {target_margin}")
    rate = count / n if n > 0 else 0.5
    margin = _wilson_margin(rate, n, confidence) if n > 0 else 0.5
    hi = 1
    while _wilson_margin(rate, hi, confidence) > target_margin:
        hi *= 2
    lo = hi // 2  # margin(lo) > target (or lo == 0); margin(hi) <= target
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if _wilson_margin(rate, mid, confidence) > target_margin:
            lo = mid
        else:
            hi = mid
    reached = n > 0 and margin <= target_margin
    return Verdict(rate=rate if n > 0 else math.nan, n=n, margin=margin, target=target_margin,
                   confidence=confidence, reached=reached, needed=hi,
                   more=0 if reached else max(0, math.ceil(hi - n)))
