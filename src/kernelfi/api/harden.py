"""``harden_plan`` (the plan ``kernelfi harden`` writes) and ``export`` (``kernelfi export``) for
the API, through the same library functions as the commands."""
from __future__ import annotations

import os
from typing import Any, Callable, Iterable, Mapping

import torch

from kernelfi.analysis import outcome_table
from kernelfi.api.model import Model
from kernelfi.campaign.harden_planner import plan_hardening
from kernelfi.harden import DEFAULT_COST, Plan
from kernelfi.harden.export import Export, export_model
from kernelfi.models import is_model_file

__all__ = ["harden_plan", "export"]


def harden_plan(db: str | os.PathLike[str], *, budget: str | float = "5%",
                techniques: Iterable[str] = ("tmr", "dmr", "abft", "range"), campaigns: Iterable[int] | None = None,
                cost: str = DEFAULT_COST, light_weight: float = 0.01, out: str | os.PathLike[str] | None = None,
                log: Callable[[str], None] | None = None) -> Plan:
    """What to protect within an overhead ``budget``, from the campaigns of ``db`` (default every
    unhardened campaign of its model); written to ``out`` where given (the plan JSON
    ``Campaign(hardening=...)`` and ``export`` take)."""
    plan = plan_hardening(os.fspath(db), budget, outcome_table, list(techniques), campaigns, light_weight=light_weight,
                          cost=cost, log=log)
    if out is not None:
        plan.save(os.fspath(out))
    return plan


def export(model: Model, plan: Plan | Mapping[str, Any] | str | os.PathLike[str], out: str | os.PathLike[str], *,
           check_inputs: torch.Tensor | None = None) -> Export:
    """``model`` hardened by ``plan`` as plain PyTorch in the directory ``out`` (docs/export.md):
    every variant is checked against the model on ``check_inputs`` before anything is written."""
    spec = None if model.from_instance else model.spec()
    if spec is not None and not is_model_file(spec.model):  # a registered model: the manifest names it
        return export_model(spec.model, plan, out, weights=spec.weights, num_classes=spec.num_classes,
                            seed=spec.seed_weights, check_inputs=check_inputs)
    loaded = model.loaded
    return export_model(loaded.module, plan, out, input_shape=loaded.info.input_shape, name=loaded.info.name,
                        check_inputs=check_inputs)
