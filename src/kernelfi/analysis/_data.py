"""Loading one *population* of injections: the campaigns whose rows may be pooled.

Why a check: pooling an RF campaign with an IOV one, or a hardened model with the plain one,
gives a number that estimates nothing. Campaigns may be pooled when they sample the same
fault population (``POPULATION_FIELDS``); seeds, sizes and selection (uniform or stratified,
reconciled by the per-row weights) may differ.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Iterable

import pandas as pd

from kernelfi._utils import KernelfiError
from kernelfi.store import CampaignMeta, Store

POPULATION_FIELDS: tuple[str, ...] = (
    "model", "weights_hash", "input_source", "hardening", "mode", "bit_model", "warp", "scope",
    "derating",
)


def population_of(meta: CampaignMeta) -> tuple[object, ...]:
    """The fields that must agree for two campaigns to be pooled (hardening as canonical JSON)."""
    return tuple(json.dumps(getattr(meta, f), sort_keys=True) if f == "hardening"
                 else getattr(meta, f) for f in POPULATION_FIELDS)


@dataclass(frozen=True)
class Pool:
    """Injections of poolable campaigns, with the first campaign's metadata and layer names."""

    campaigns: tuple[int, ...]
    meta: CampaignMeta
    injections: pd.DataFrame
    layers: pd.DataFrame  # layer, type, name, numel (of the first campaign; same model)


def campaign_list(store: Store, campaign_ids: int | Iterable[int] | None) -> list[int]:
    if campaign_ids is None:
        return [c.id for c in store.campaigns()]
    return [int(campaign_ids)] if isinstance(campaign_ids, int) else [int(c) for c in campaign_ids]


def load(store: Store, campaign_ids: int | Iterable[int] | None) -> Pool:
    """The pooled injections of ``campaign_ids`` (``None``: all, if they form one population).

    Raises :class:`KernelfiError` naming the first field that differs; ``populations()`` lists
    which campaigns can go together.
    """
    ids = campaign_list(store, campaign_ids)
    if not ids:
        raise KernelfiError(f"{store.path}: no campaigns to analyse")
    metas = {cid: store.campaign(cid).meta for cid in ids}
    first = metas[ids[0]]
    for cid in ids[1:]:
        for field, a, b in zip(POPULATION_FIELDS, population_of(first), population_of(metas[cid])):
            if a != b:
                raise KernelfiError(
                    f"{store.path}: campaigns {ids[0]} and {cid} sample different populations "
                    f"({field}: {a!r} vs {b!r}); analyse them separately")
    inj = store.injections_frame(ids)
    layers = store.layers_frame(ids[0]).drop(columns="campaign")
    return Pool(tuple(ids), first, inj, layers)


def populations(store: Store) -> pd.DataFrame:
    """One row per poolable group of campaigns: the population fields, ids and injections."""
    groups: dict[tuple[object, ...], list[int]] = {}
    done: dict[int, int] = {}
    metas: dict[tuple[object, ...], CampaignMeta] = {}
    for c in store.campaigns():
        key = population_of(c.meta)
        groups.setdefault(key, []).append(c.id)
        metas.setdefault(key, c.meta)
        done[c.id] = c.n_done
    rows = []
    for key, ids in groups.items():
        row: dict[str, object] = dict(zip(POPULATION_FIELDS, key))
        row["hardening"] = metas[key].hardening
        row["campaigns"] = tuple(ids)
        row["n"] = sum(done[i] for i in ids)
        rows.append(row)
    return pd.DataFrame(rows, columns=[*POPULATION_FIELDS, "campaigns", "n"])
