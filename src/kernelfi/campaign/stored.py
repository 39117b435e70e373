"""A stored campaign made runnable again: its config rebuilt from the database (replay, harden).

Everything comes from the campaign's metadata — the model spec, the files it read
(``kernelfi.files``: absolute paths and digests), the input preparation and the inputs a rule
kept, the hardening plan itself — so a later command gives the same model and inputs from any
working directory, and a file moved or changed since gets one line naming it.

Databases written before files were recorded hold paths as typed (relative to a directory not
recorded) and no preparation: such a path is looked for in the current directory, then beside
the database (``RecordedFile.legacy``); image folders were then stretched to the model's size,
which is what such a campaign is rebuilt with.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Mapping


from kernelfi._utils import KernelfiError
from kernelfi.campaign.campaign import to_records
from kernelfi.campaign.isolate import run_batch
from kernelfi.campaign.prepared import CampaignConfig, Prepared, prepare
from kernelfi.campaign.session import InputSelection, ModelSpec
from kernelfi.data import PrepOptions
from kernelfi.files import RecordedFile
from kernelfi.store import CampaignMeta, CampaignRow, InjectionRecord, Store, ToolErrorRecord

__all__ = ["stored_config", "prepare_stored", "replay"]

_DATA_WORDS = (None, "digits", "random")


def _path(files: Mapping[str, RecordedFile], role: str, value: str | None, bases: list[Path]) -> str | None:
    """Where the campaign's ``role`` file is now: the recorded one, checked, else (an older
    database) ``value`` looked for as ``RecordedFile.legacy`` does."""
    if role in files:
        return str(files[role].locate())
    if value is None:
        return None
    return RecordedFile.legacy(value, role, bases).path


def stored_config(meta: CampaignMeta, db: str | Path) -> CampaignConfig:
    """The config that prepares campaign ``meta``'s model and inputs again (hardening from the
    stored plan, not from its file)."""
    extra: dict[str, Any] = dict(meta.extra)
    files = {role: RecordedFile.from_dict(d, role) for role, d in dict(extra.get("files") or {}).items()}
    bases = [Path(db).expanduser().resolve().parent]
    spec = ModelSpec(**{**extra.get("model_spec", {"model": meta.model}), "hardening": None})
    model = spec.model
    if "model source" in files:  # a model file, or a user-registered builder's: here, and unchanged
        files["model source"].locate()
    if model.lower().endswith(".cfg"):
        model = _path(files, "cfg", model, bases) or model
    weights = spec.weights if spec.weights in (None, "random", "embedded") else _path(files, "weights", spec.weights, bases)
    data = extra.get("data")
    if data not in _DATA_WORDS:
        data = _path(files, "data", data, bases)
    legacy = "prep" not in extra
    prep = PrepOptions(fit="stretch") if legacy and data not in _DATA_WORDS and Path(data).is_dir() \
        else PrepOptions.from_dict(extra.get("prep"))
    chosen = extra.get("chosen")
    return CampaignConfig(
        model=dataclasses.replace(spec, model=model, weights=weights), mode=meta.mode, bit_model=meta.bit_model,
        n=meta.n_planned, seed=meta.seed, warp=meta.warp, data=data, inputs=extra.get("inputs"), scope=meta.scope,
        selection=meta.selection, fast=bool(extra.get("fast", True)), cone=bool(extra.get("cone", True)),
        prep=prep, select_inputs=str(extra.get("select_inputs", "all")),
        chosen=None if chosen is None else InputSelection.from_dict(chosen), plan=meta.hardening)


def prepare_stored(row: CampaignRow, db: str | Path, **changes: Any) -> Prepared:
    """``prepare`` the stored campaign ``row`` (``changes``: config fields to override), checked
    against what it recorded: the same weights and, where it recorded its preparation, the
    same inputs."""
    meta = row.meta
    prep = prepare(dataclasses.replace(stored_config(meta, db), **changes))
    if prep.session.weights_hash != meta.weights_hash:
        raise KernelfiError(f"{db}: campaign {row.id} used weights {meta.weights_hash[:12]}, "
                            f"the model now has {prep.session.weights_hash[:12]}")
    if "prep" in meta.extra and prep.input_source != meta.input_source:
        raise KernelfiError(f"{db}: campaign {row.id}'s inputs are not what they were (then: {meta.input_source}; "
                            f"now: {prep.input_source})")
    return prep


def replay(db: str, injection: int, campaign: int | None = None
           ) -> tuple[InjectionRecord | ToolErrorRecord, InjectionRecord | ToolErrorRecord]:
    """Re-execute one stored injection; returns (stored, replayed). Either is a
    ``ToolErrorRecord`` where the tool failed on the fault (when it was stored, or now). The
    database is opened read-only and checked first (``Store.verify``)."""
    with Store(db, create=False, readonly=True) as store:
        store.verify()
        rows = store.campaigns()
        if not rows:
            raise KernelfiError(f"{db}: no campaigns")
        if campaign is None:
            if len(rows) > 1:
                raise KernelfiError(f"{db}: {len(rows)} campaigns; pick one with --campaign (ids: {', '.join(str(r.id) for r in rows)})")
            crow = rows[0]
        else:
            crow = store.campaign(campaign)
        errors = {e.id: e for e in store.tool_errors(crow.id)}
        stored: InjectionRecord | ToolErrorRecord = errors[injection] if injection in errors else \
            store.injection(crow.id, injection)
    prep = prepare_stored(crow, db)
    again = run_batch(prep.runner, [prep.planner.draw(injection)])
    rec = to_records(prep, again, f"kernelfi replay --db {db} --campaign {crow.id}")[0]
    if isinstance(rec, InjectionRecord) and isinstance(stored, InjectionRecord):
        rec = dataclasses.replace(rec, seconds=stored.seconds)
    return stored, rec
