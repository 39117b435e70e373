"""Vulnerability analysis of a results database: pandas DataFrames in, DataFrames out.

No torch (reports are built where no GPU stack is installed). Statistics as docs/method.md gives them: every
rate with Wilson and Clopper–Pearson intervals from statsmodels, stratified samples reweighted
to the uniform population (``_stats``), Leveugle's planner, FIT against a budget.
"""
from __future__ import annotations

from ._data import POPULATION_FIELDS, Pool, load, populations
from .accuracy import Accuracy, golden_accuracy
from .bits import bit_table, field_of
from .fit import ASIL_D_BUDGET, IEC_61508_FIT_PER_MBIT, FitEstimate, fit_estimate
from .outcomes import CATEGORIES, outcome_table, rate_table, vulnerability
from .planner import Verdict, margin_for, sample_size, verdict
from .propagation import masking_table, propagation_table
from .summary import campaign_summary, summarise

__all__ = [
    "Accuracy", "golden_accuracy", "ASIL_D_BUDGET", "CATEGORIES", "IEC_61508_FIT_PER_MBIT", "POPULATION_FIELDS", "FitEstimate",
    "Pool", "Verdict", "bit_table", "field_of", "fit_estimate", "load", "margin_for",
    "masking_table", "outcome_table", "populations", "propagation_table", "rate_table",
    "sample_size", "verdict", "vulnerability", "campaign_summary", "summarise",
]
