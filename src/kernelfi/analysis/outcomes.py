"""Outcome rates per model, kernel (CKV), layer (CLV) or launch, and the PVF/AVF built on them.

Two readings of every count, as docs/method.md §4 asks: ``share_of_all`` (count in the group / all
injections of the population: the AlexNet study's Fig. 4–6, summing to 100% over kernels) and ``rate``
(count in the group / injections in the group: how vulnerable the kernel is when hit).
"""
from __future__ import annotations

from typing import Iterable, Literal

import numpy as np
import pandas as pd

from kernelfi.store import Store
from kernelfi.types import OUTCOMES

from ._data import Pool, load
from ._stats import proportion_columns, weighted_sums

#: Outcome categories reported, the five of docs/method.md §3 plus their SDC total.
CATEGORIES: tuple[str, ...] = (*OUTCOMES, "sdc")
By = Literal["kernel", "layer", "launch"] | None

_KEYS: dict[str | None, list[str]] = {
    None: [],
    "kernel": ["kernel"],
    "layer": ["layer", "layer_type"],
    "launch": ["launch", "launch_name", "kernel", "layer"],
}


def indicator(df: pd.DataFrame, category: str) -> pd.Series:
    """Whether each row's outcome falls in ``category`` (``sdc``: any of the three SDCs)."""
    if category == "sdc":
        return df["outcome"].str.startswith("sdc_")
    return df["outcome"] == category


def rate_table(df: pd.DataFrame, keys: list[str], confidence: float,
               share_of_all: bool = True) -> pd.DataFrame:
    """The long table (group × category) for rows ``df``; shared by outcome and bit tables."""
    df = df.assign(_all=0)
    gkeys = keys or ["_all"]
    w = df["weight"].astype(float)
    n_all, sw_all, sw2_all = len(df), float(w.sum()), float((w * w).sum())
    pieces = []
    for cat in CATEGORIES:
        s = weighted_sums(df, gkeys, indicator(df, cat))
        cols: dict[str, object] = {k: s[k] for k in keys}
        cols["outcome"] = cat
        cols["n"] = s["n"]
        cols["count"] = s["count"]
        if share_of_all:
            share = proportion_columns("share_of_all", s["count"], np.full(len(s), n_all),
                                       s["swy"], np.full(len(s), sw_all),
                                       np.full(len(s), sw2_all), confidence)
            share.pop("share_of_all_n_eff")
            cols.update(share)
        rate = proportion_columns("rate", s["count"], s["n"], s["swy"], s["sw"], s["sw2"],
                                  confidence)
        cols["n_eff"] = rate.pop("rate_n_eff")
        cols.update(rate)
        pieces.append(pd.DataFrame(cols))
    out = pd.concat(pieces, ignore_index=True)
    order = {c: i for i, c in enumerate(CATEGORIES)}
    out["_o"] = out["outcome"].map(order)
    out = out.sort_values([*keys, "_o"], kind="stable").drop(columns="_o")
    return out.reset_index(drop=True)


def _with_layer_names(table: pd.DataFrame, pool: Pool) -> pd.DataFrame:
    if "layer" not in table.columns or pool.layers.empty:
        return table
    names = pool.layers[["layer", "name"]].rename(columns={"name": "layer_name"})
    out = table.merge(names, on="layer", how="left")
    cols = list(table.columns)
    cols.insert(cols.index("layer") + 1, "layer_name")
    return out[cols]


def outcome_table(store: Store, campaign_ids: int | Iterable[int] | None, by: By = None,
                  confidence: float = 0.95) -> pd.DataFrame:
    """Counts, ``share_of_all`` and ``rate`` per group and outcome category, with intervals.

    One row per (group, category) for groups that received injections. Columns: the group
    keys (``kernel``; ``layer, layer_name, layer_type``; or ``launch, launch_name, kernel,
    layer, layer_name``), ``outcome`` (``CATEGORIES``), ``n`` (injections in the group),
    ``count``, ``share_of_all`` and ``rate`` each with ``_wilson_low/_high`` and
    ``_cp_low/_high``, and ``n_eff`` (Kish; = n for unweighted rows). Stratified campaigns are
    reweighted to the uniform population by the stored weights (see ``_stats``).
    """
    if by not in _KEYS:
        raise ValueError(f"by must be one of {list(_KEYS)}, got {by!r}")
    pool = load(store, campaign_ids)
    return _with_layer_names(rate_table(pool.injections, _KEYS[by], confidence), pool)


def vulnerability(store: Store, campaign_ids: int | Iterable[int] | None, by: By = None,
                  confidence: float = 0.95) -> pd.DataFrame:
    """``outcome_table`` plus the metric name and, for RF, the derated AVF.

    ``metric`` is ``PVF`` (IOV, IOA: program vulnerability, architecture-independent) or
    ``AVF`` (RF). For RF, ``derating`` is the campaign's allocated register share and every
    ``share_of_all*``/``rate*`` column gets a ``*_derated`` twin = raw × derating (the factor is
    a known constant, so the interval scales with it). PVF rows have NaN there.
    """
    pool = load(store, campaign_ids)
    table = outcome_table(store, pool.campaigns, by, confidence)
    rf = pool.meta.mode == "rf"
    derating = float(pool.meta.derating) if rf and pool.meta.derating is not None else np.nan
    table.insert(0, "metric", "AVF" if rf else "PVF")
    table["derating"] = derating
    for base in ("share_of_all", "rate"):
        for suffix in ("", "_wilson_low", "_wilson_high", "_cp_low", "_cp_high"):
            table[f"{base}_derated{suffix}"] = table[f"{base}{suffix}"] * derating
    return table
