"""Everything a campaign needs before its first injection: program, inputs, golden run.

Shared by ``campaign``, ``replay``, the hardening planner and the overhead benchmark, so that
the same options always build the same executable model.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from kernelfi.data import InputSet, load_inputs
from kernelfi.lowering import Program, lower
from kernelfi.models import LoadedModel, load_model


@dataclass(frozen=True)
class ModelSpec:
    """How to build the model: the CLI options that define it."""

    model: str
    weights: str | None = None
    num_classes: int | None = None
    seed_weights: int = 0
    hardening: str | None = None  # path of a hardening plan (JSON)


@dataclass
class Session:
    spec: ModelSpec
    loaded: LoadedModel
    program: Program
    plan: dict[str, Any] | None

    @property
    def weights_hash(self) -> str:
        return self.loaded.weights_hash


def open_session(spec: ModelSpec) -> Session:
    loaded = load_model(spec.model, weights=spec.weights, num_classes=spec.num_classes, seed=spec.seed_weights)
    program = lower(loaded.module, loaded.info.input_shape, loaded.info.name)
    plan = None
    if spec.hardening is not None:
        from kernelfi.harden import Plan, apply_plan  # level 2; imported lazily to keep start-up light
        parsed = Plan.load(spec.hardening)  # one-line errors naming the file
        program = apply_plan(program, parsed)
        # what the store records with the campaign: the plan without the planner's explanation
        # of the candidates it left out (bulky, and no part of what the hardened model is)
        plan = {k: v for k, v in parsed.to_dict().items() if k != "explain"}
    return Session(spec, loaded, program, plan)


def session_inputs(session: Session, data: str | None, limit: int | None) -> InputSet:
    info = session.loaded.info
    source = data if data is not None else (info.default_data or "random")
    return load_inputs(source, info, limit)


def inputs_tensor(inputs: InputSet) -> torch.Tensor:
    return inputs.x.to(torch.float32).contiguous()
