"""What ``kernelfi summary`` (and ``kernelfi.summary``) says of every campaign of a results
database: model, weights, data, golden accuracy, outcome counts, tool errors, as plain dicts
(the JSON keys ``docs/store.md`` lists)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from kernelfi.analysis.accuracy import Accuracy, golden_accuracy
from kernelfi.store import CampaignRow, Store, ToolErrorRecord
from kernelfi.types import OUTCOMES

__all__ = ["campaign_summary", "summarise"]


def campaign_summary(store: Store, row: CampaignRow, acc: Accuracy | None) -> dict[str, Any]:
    """The summary of one campaign (``acc``: its golden accuracy, ``golden_accuracy``)."""
    m = row.meta
    files = dict(m.extra.get("files") or {})
    data = files.get("data", {}).get("path") or m.extra.get("data") or "the model's embedded data"
    counts = store.outcome_counts(row.id)
    return {"id": row.id, "model": m.model, "mode": m.mode, "bit_model": m.bit_model, "warp": m.warp,
            "scope": m.scope, "selection": m.selection, "seed": m.seed, "n": row.n_done,
            "n_planned": m.n_planned, "hardened": m.hardening is not None,
            "weights": {"source": m.weights_source, "sha256": m.weights_hash},
            "data": {"source": str(data), "inputs": m.input_source, "n_inputs": m.n_inputs},
            "golden_accuracy": None if acc is None else acc.to_dict(),
            "outcomes": {o: counts.get(o, 0) for o in OUTCOMES},
            "tool_errors": row.n_tool_errors}


def summarise(db: str | Path) -> tuple[list[tuple[dict[str, Any], Accuracy | None]], dict[int, list[ToolErrorRecord]]]:
    """Every campaign's summary with its golden accuracy, and the tool errors of those that have
    some (by campaign id); the database is opened read-only and checked first."""
    errors: dict[int, list[ToolErrorRecord]] = {}
    out = []
    with Store(str(db), create=False, readonly=True) as store:
        store.verify()
        for row in store.campaigns():
            if row.n_tool_errors:
                errors[row.id] = store.tool_errors(row.id)
            acc = golden_accuracy(store, row.id)
            out.append((campaign_summary(store, row, acc), acc))
    return out, errors
