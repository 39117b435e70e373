"""The report's data: every population of the database and the analysis tables computed for it.

A *population* is a set of campaigns that may be pooled (``analysis.populations``: same model,
weights, inputs, hardening, mode, bit model, warp, scope). Every number in the report comes from
the analysis library called on one population; this module only gathers, labels and orders.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

import pandas as pd

from kernelfi.analysis import (
    bit_table, golden_accuracy, masking_table, populations, propagation_table, vulnerability,
)
from kernelfi._utils import KernelfiError
from kernelfi.store import CampaignMeta, Store

#: Table names, in the order the report shows them (also the CSV/Parquet file names).
PER_POPULATION: tuple[str, ...] = (
    "overall", "kernels", "layers", "propagation", "masking", "bits", "bit_fields",
)


@dataclass(frozen=True)
class Population:
    """One poolable group of campaigns, with a short key (``p1``) and a human label."""

    key: str
    label: str
    campaigns: tuple[int, ...]
    meta: CampaignMeta
    n: int

    @property
    def hardened(self) -> bool:
        return self.meta.hardening is not None

    @property
    def metric(self) -> str:
        """``AVF`` for RF (a register-file bit), ``PVF`` for IOV/IOA (an instruction's output)."""
        return "AVF" if self.meta.mode == "rf" else "PVF"


@dataclass
class PopulationTables:
    """The analysis tables of one population plus the display order of its kernels/layers."""

    population: Population
    tables: dict[str, pd.DataFrame]
    kernel_order: list[str]
    layer_labels: dict[int, str]  # layer index -> "0 convolutional"
    layer_names: dict[int, str]   # layer index -> model name ("features.0")
    launches: pd.DataFrame
    layer_sizes: dict[int, int] = field(default_factory=dict)  # layer index -> output elements


@dataclass
class ReportData:
    """Everything the figures and the HTML need, computed once."""

    db: str
    confidence: float
    campaigns: pd.DataFrame
    items: list[PopulationTables] = field(default_factory=list)
    #: injections the tool failed to run (``Store.tool_errors_frame``): in no table but their own
    tool_errors: pd.DataFrame = field(default_factory=pd.DataFrame)

    def by_key(self, key: str) -> PopulationTables:
        return next(i for i in self.items if i.population.key == key)


def label_of(meta: CampaignMeta) -> str:
    """``digits-alexnet RF single scope=all`` (+ ``warp``, ``hardened``)."""
    parts = [meta.model, meta.mode.upper(), meta.bit_model + ("/warp" if meta.warp else ""),
             f"scope={meta.scope}"]
    if meta.hardening is not None:
        parts.append("hardened")
    return " ".join(parts)


def list_populations(store: Store) -> list[Population]:
    """Non-empty populations, unhardened first, then model/mode; labels made unique."""
    frame = populations(store)
    found: list[tuple[CampaignMeta, tuple[int, ...], int]] = []
    for _, row in frame.iterrows():
        if int(row["n"]) == 0:
            continue
        ids = tuple(int(c) for c in row["campaigns"])
        found.append((store.campaign(ids[0]).meta, ids, int(row["n"])))
    mode_order = {"rf": 0, "ioa": 1, "iov": 2}
    found.sort(key=lambda t: (t[0].model, t[0].hardening is not None, t[0].scope,
                              mode_order.get(t[0].mode, 9), t[0].bit_model, t[0].warp, t[1]))
    out, seen = [], {}
    for i, (meta, ids, n) in enumerate(found, start=1):
        label = label_of(meta)
        seen[label] = seen.get(label, 0) + 1
        if seen[label] > 1:  # same label, other weights/inputs/derating: name the campaigns
            label += f" (campaigns {', '.join(map(str, ids))})"
        out.append(Population(f"p{i}", label, ids, meta, n))
    return out


def population_tables(store: Store, pop: Population, confidence: float) -> PopulationTables:
    """All analysis tables of one population (each a DataFrame from ``kernelfi.analysis``)."""
    ids = list(pop.campaigns)
    tables = {
        "overall": vulnerability(store, ids, None, confidence),
        "kernels": vulnerability(store, ids, "kernel", confidence),
        "layers": vulnerability(store, ids, "layer", confidence),
        "propagation": propagation_table(store, ids),
        "masking": masking_table(store, ids),
        "bits": bit_table(store, ids, "bit", confidence),
        "bit_fields": bit_table(store, ids, "field", confidence),
    }
    launches = store.launches_frame(ids[0])
    kernel_order = list(dict.fromkeys(launches.sort_values("launch")["kernel"]))
    layers = store.layers_frame(ids[0])
    labels = {int(r.layer): f"{int(r.layer)} {r.type}" for r in layers.itertuples()}
    names = {int(r.layer): str(r.name) for r in layers.itertuples()}
    sizes = {int(r.layer): int(r.numel) for r in layers.itertuples()}
    return PopulationTables(pop, tables, kernel_order, labels, names, launches, sizes)


def campaigns_table(store: Store) -> pd.DataFrame:
    """Campaign metadata as the report lists it (hardening plan as JSON text), with where the
    inputs came from (``data``) and the golden accuracy (``golden_accuracy``: text, and its
    ``golden_correct``/``golden_inputs`` counts; empty where the inputs carry no labels)."""
    frame = store.campaigns_frame()
    frame["hardening"] = frame["hardening"].map(
        lambda h: "" if h is None or (isinstance(h, float) and pd.isna(h))
        else h if isinstance(h, str) else json.dumps(h, sort_keys=True))
    data, text, correct, inputs = [], [], [], []
    for c in store.campaigns():
        extra = c.meta.extra
        data.append(str(dict(extra.get("files") or {}).get("data", {}).get("path") or extra.get("data")
                        or "the model's embedded data"))
        acc = golden_accuracy(store, c.id)
        text.append("no labels" if acc is None else acc.describe())
        correct.append(None if acc is None else acc.correct)
        inputs.append(None if acc is None else acc.inputs)
    if len(frame):
        frame["data"], frame["golden_accuracy"] = data, text
        frame["golden_correct"], frame["golden_inputs"] = correct, inputs
    return frame


def collect(store: Store, confidence: float = 0.95) -> ReportData:
    """Every population's tables (the slow part of a report: pure pandas over SQLite).

    Raises :class:`KernelfiError` when the database holds no injection at all.
    """
    pops = list_populations(store)
    errors = store.tool_errors_frame()
    if not pops:
        more = f" (the tool failed on {len(errors)} faults: kernelfi summary lists them)" if len(errors) else ""
        raise KernelfiError(f"{store.path}: no injections to report{more}")
    data = ReportData(str(store.path), confidence, campaigns_table(store), tool_errors=errors)
    for pop in pops:
        data.items.append(population_tables(store, pop, confidence))
    return data


def stacked(data: ReportData, name: str) -> pd.DataFrame:
    """One table of all populations (``population`` and ``label`` columns first) for export."""
    frames = []
    for item in data.items:
        df = item.tables[name]
        if df.empty:
            continue
        df = df.copy()
        df.insert(0, "label", item.population.label)
        df.insert(0, "population", item.population.key)
        frames.append(df)
    if not frames:
        return pd.DataFrame(columns=["population", "label"])
    return pd.concat(frames, ignore_index=True)
