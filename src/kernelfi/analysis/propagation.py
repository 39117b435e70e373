"""How corruption spreads through the layers after the injected one, and where it dies out.

Only injections whose corruption left the kernel (the SDC outcomes, by default) have anything to
propagate. A layer with no propagation row for such an injection counts as 0 corrupted elements
and 0 error: the campaign stops recording a lane once its state equals golden again (early
stop), so a missing row means "clean". NaN errors (non-finite outputs) count as +inf: the error
is unbounded, and it must not vanish from a mean.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from kernelfi.store import Store

from ._data import Pool, load

SDC_OUTCOMES: tuple[str, ...] = ("sdc_no_malfunction", "sdc_light_malfunction", "sdc_malfunction")


def _rows(store: Store, pool: Pool, outcomes: Sequence[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    inj = pool.injections
    inj = inj.loc[inj["outcome"].isin(outcomes), ["campaign", "id", "layer", "weight"]]
    inj = inj.rename(columns={"id": "injection", "layer": "injected_layer"})
    prop = store.propagation_frame(pool.campaigns)
    for c in ("max_abs", "max_rel"):
        prop[c] = prop[c].fillna(np.inf)
    return inj, prop


def _name(pool: Pool, table: pd.DataFrame, col: str) -> pd.DataFrame:
    names = pool.layers[["layer", "name"]].rename(columns={"layer": col, "name": f"{col}_name"})
    return table.merge(names, on=col, how="left")


def propagation_table(store: Store, campaign_ids: int | Iterable[int] | None,
                      outcomes: Sequence[str] = SDC_OUTCOMES) -> pd.DataFrame:
    """Per injected layer × downstream layer (index ≥ injected, recorded anywhere in the pool).

    Columns: ``injected_layer``, ``layer``, their ``*_name``, ``n`` (injections from the
    injected layer with an outcome in ``outcomes``), ``reached`` (weighted share of them with
    corrupted elements in ``layer``), ``share_corrupted_mean`` (weighted mean of
    corrupted / numel), ``max_abs_mean``, ``max_abs_max``, ``max_rel_mean``, ``max_rel_max``.
    """
    pool = load(store, campaign_ids)
    inj, prop = _rows(store, pool, outcomes)
    cols = ["injected_layer", "layer", "n", "reached", "share_corrupted_mean", "max_abs_mean",
            "max_abs_max", "max_rel_mean", "max_rel_max"]
    recorded = np.sort(prop["layer"].unique())
    if inj.empty or recorded.size == 0:
        return pd.DataFrame(columns=cols[:2] + ["injected_layer_name", "layer_name"] + cols[2:])
    grid = inj.merge(pd.DataFrame({"layer": recorded}), how="cross")
    grid = grid[grid["layer"] >= grid["injected_layer"]]
    grid = grid.merge(prop, on=["campaign", "injection", "layer"], how="left")
    numel = pool.layers.set_index("layer")["numel"]
    grid["numel"] = grid["numel"].fillna(grid["layer"].map(numel))
    grid[["corrupted", "max_abs", "max_rel"]] = grid[["corrupted", "max_abs", "max_rel"]].fillna(0.0)
    w = grid["weight"].astype(float)
    grid["_w"] = w
    grid["_reached"] = w * (grid["corrupted"] > 0)
    grid["_share"] = w * grid["corrupted"] / grid["numel"]
    with np.errstate(invalid="ignore"):
        grid["_abs"] = w * grid["max_abs"]
        grid["_rel"] = w * grid["max_rel"]
    g = grid.groupby(["injected_layer", "layer"], sort=True)
    out = pd.DataFrame({
        "n": g.size(),
        "reached": g["_reached"].sum() / g["_w"].sum(),
        "share_corrupted_mean": g["_share"].sum() / g["_w"].sum(),
        "max_abs_mean": g["_abs"].sum() / g["_w"].sum(),
        "max_abs_max": g["max_abs"].max(),
        "max_rel_mean": g["_rel"].sum() / g["_w"].sum(),
        "max_rel_max": g["max_rel"].max(),
    }).reset_index()
    out = _name(pool, _name(pool, out, "injected_layer"), "layer")
    return out[cols[:2] + ["injected_layer_name", "layer_name"] + cols[2:]]


def masking_table(store: Store, campaign_ids: int | Iterable[int] | None) -> pd.DataFrame:
    """Where No-Malfunction SDCs end up masked: per injected layer, the first recorded layer
    (index ≥ injected) whose corrupted count is 0.

    Columns: ``injected_layer``, ``masked_at`` (-1: no clean layer recorded), their names,
    ``count`` and ``share`` (weighted, of the injected layer's No-Malfunction SDCs).
    """
    pool = load(store, campaign_ids)
    inj, prop = _rows(store, pool, ("sdc_no_malfunction",))
    m = inj.merge(prop, on=["campaign", "injection"], how="left")
    clean = m[(m["corrupted"] == 0) & (m["layer"] >= m["injected_layer"])]
    first = clean.groupby(["campaign", "injection"])["layer"].min().rename("masked_at")
    inj = inj.merge(first.reset_index(), on=["campaign", "injection"], how="left")
    inj["masked_at"] = inj["masked_at"].fillna(-1).astype(int)
    g = inj.groupby(["injected_layer", "masked_at"], sort=True)
    out = pd.DataFrame({"count": g.size(), "_w": g["weight"].sum()}).reset_index()
    out["share"] = out["_w"] / out.groupby("injected_layer")["_w"].transform("sum")
    out = _name(pool, out.drop(columns="_w"), "injected_layer")
    out = _name(pool, out.rename(columns={"masked_at": "layer"}), "layer")
    out = out.rename(columns={"layer": "masked_at", "layer_name": "masked_at_name"})
    return out[["injected_layer", "masked_at", "injected_layer_name", "masked_at_name",
                "count", "share"]]
