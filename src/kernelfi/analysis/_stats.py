"""Proportions and their 95% intervals, plain or weighted (the one estimator every table uses).

Estimator: the Hájek (ratio) estimator ``p = Σ w·y / Σ w`` with ``w`` the per-row sampling weight
(population share / sample share of the row's stratum). With equal weights it is ``count / n``.
Interval: Wilson and Clopper–Pearson from statsmodels, evaluated at Kish's effective sample size
``n_eff = (Σ w)² / Σ w²`` with ``n_eff·p`` successes. When the weights in the denominator are all
equal, ``n_eff = n`` and the exact integer counts are passed, so the intervals are statsmodels'
for those counts, bit for bit.
"""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from statsmodels.stats.proportion import proportion_confint

INTERVALS: tuple[tuple[str, str], ...] = (("wilson", "wilson"), ("cp", "beta"))


def alpha_of(confidence: float) -> float:
    """``1 − confidence``, rounded so that 0.95 gives statsmodels' default 0.05 exactly
    (``1.0 - 0.95`` is 0.05000000000000004, which moves the bounds in the last digit)."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    return round(1.0 - confidence, 12)


def proportion_columns(prefix: str, count: np.ndarray, n: np.ndarray, swy: np.ndarray,
                       sw: np.ndarray, sw2: np.ndarray, confidence: float) -> dict[str, np.ndarray]:
    """``prefix`` and its ``_wilson_low/_high`` and ``_cp_low/_high`` columns.

    ``count``/``n`` are raw counts (successes, rows in the denominator); ``swy``, ``sw``, ``sw2``
    the weighted sums Σw·y, Σw, Σw² over the same rows. Rows with ``n == 0`` give NaN.
    """
    count, n = np.asarray(count, float), np.asarray(n, float)
    swy, sw, sw2 = np.asarray(swy, float), np.asarray(sw, float), np.asarray(sw2, float)
    with np.errstate(invalid="ignore", divide="ignore"):
        uniform = np.isclose(sw2 * n, sw * sw, rtol=1e-12, atol=0.0)
        p = np.where(uniform, count / n, swy / sw)
        n_eff = np.where(uniform, n, sw * sw / sw2)
        k = np.where(uniform, count, p * n_eff)
    out: dict[str, np.ndarray] = {prefix: p}
    ok = n > 0
    alpha = alpha_of(confidence)
    for label, method in INTERVALS:
        low = np.full(p.shape, np.nan)
        high = np.full(p.shape, np.nan)
        if ok.any():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                lo, hi = proportion_confint(k[ok], n_eff[ok], alpha=alpha, method=method)
            low[ok], high[ok] = np.clip(lo, 0.0, 1.0), np.clip(hi, 0.0, 1.0)
        out[f"{prefix}_{label}_low"] = low
        out[f"{prefix}_{label}_high"] = high
    out[f"{prefix}_n_eff"] = n_eff
    return out


def weighted_sums(df: pd.DataFrame, keys: list[str], y: pd.Series) -> pd.DataFrame:
    """Per group of ``keys``: n, Σw, Σw², count (Σy), Σw·y for indicator ``y`` (aligned to df)."""
    w = df["weight"].astype(float)
    parts = pd.DataFrame({k: df[k] for k in keys})
    parts["n"] = 1
    parts["sw"] = w
    parts["sw2"] = w * w
    parts["count"] = y.astype(int)
    parts["swy"] = w * y.astype(float)
    return parts.groupby(keys, sort=True, dropna=False).sum().reset_index()
