"""Outcome rates per flipped bit position and per IEEE-754 float32 field.

A two-adjacent-bit flip counts for each of its bits (and once per field it touches), so each
row answers "of the injections that flipped this bit, how many ended in this category".
Random-value and zero-value injections flip no named bit and are left out. The field names are
those of float32 values (IOV data, RF data registers); for an address flip they only label the
position.
"""
from __future__ import annotations

from typing import Iterable, Literal

import pandas as pd

from kernelfi.store import Store

from ._data import load
from .outcomes import rate_table


def field_of(bit: int) -> str:
    """``sign`` (31), ``exponent`` (23–30), ``mantissa`` (0–22); ``other`` beyond 32 bits."""
    if bit == 31:
        return "sign"
    if 23 <= bit <= 30:
        return "exponent"
    if 0 <= bit <= 22:
        return "mantissa"
    return "other"


def bit_table(store: Store, campaign_ids: int | Iterable[int] | None,
              per: Literal["bit", "field"] = "bit", confidence: float = 0.95) -> pd.DataFrame:
    """Per bit (or field) × outcome category: ``n``, ``count``, ``rate`` with Wilson and
    Clopper–Pearson intervals and ``n_eff`` (weighted like ``outcome_table``)."""
    if per not in ("bit", "field"):
        raise ValueError(f"per must be 'bit' or 'field', got {per!r}")
    inj = load(store, campaign_ids).injections
    inj = inj.loc[inj["bits"] != "", ["campaign", "id", "outcome", "weight", "bits"]]
    rows = inj.assign(bit=inj["bits"].str.split(",")).explode("bit")
    rows["bit"] = rows["bit"].astype(int)
    if per == "field":
        rows["field"] = rows["bit"].map(field_of)
        rows = rows.drop_duplicates(["campaign", "id", "field"])
    if rows.empty:
        return pd.DataFrame(columns=[per, "outcome", "n", "count", "n_eff", "rate",
                                     "rate_wilson_low", "rate_wilson_high", "rate_cp_low",
                                     "rate_cp_high"])
    return rate_table(rows.reset_index(drop=True), [per], confidence, share_of_all=False)
