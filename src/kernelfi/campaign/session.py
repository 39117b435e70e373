"""Everything a campaign needs before its first injection: program, inputs, golden run.

Shared by ``campaign``, ``replay``, the hardening planner and the overhead benchmark, so that
the same options always build the same executable model and prepare the same inputs.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from kernelfi._utils import KernelfiError, sha256_file
from kernelfi.execution import engine_threads, golden_chunk
from kernelfi.data import InputSet, PrepOptions, load_inputs
from kernelfi.files import RecordedFile
from kernelfi.lowering import Program, lower
from kernelfi.models import LoadedModel, ModelInfo, ensure_registered, load_model, registration
from kernelfi.models.user import is_model_file, parse_model_file

#: ``weights=`` values that are not paths (``kernelfi.models.registry``)
_WEIGHT_WORDS = ("random", "embedded")


@dataclass(frozen=True)
class ModelSpec:
    """How to build the model: the CLI options (or the ``kernelfi.Model`` arguments) that define it.

    ``model``: a registered name, a Darknet ``.cfg`` path or a model file ``PATH.py:FACTORY``
    (``kernelfi.models.user``). ``input_shape``: a model file's (C, H, W) where its factory does
    not say. ``source_sha256``: the model file's content, and ``registered`` a user-registered
    builder's file and registration (``kernelfi.models.registration``), both filled by
    ``resolved``, so that a worker or a later command rebuilds the same model or refuses to.
    """

    model: str
    weights: str | None = None
    num_classes: int | None = None
    seed_weights: int = 0
    hardening: str | None = None  # path of a hardening plan (JSON)
    input_shape: tuple[int, ...] | None = None
    source_sha256: str | None = None
    registered: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.input_shape is not None:  # a stored spec holds a JSON list
            object.__setattr__(self, "input_shape", tuple(int(d) for d in self.input_shape))

    def resolved(self) -> "ModelSpec":
        """The spec as a campaign records it: a model file's path absolute with its content
        digest, a user-registered model's registration (its builder's file); registering it
        first in a process that does not know it yet (``ensure_registered``)."""
        ensure_registered(self.model, self.registered)
        if is_model_file(self.model):
            path, factory = parse_model_file(self.model)
            return dataclasses.replace(self, model=f"{path}:{factory}", source_sha256=self.source_sha256 or sha256_file(path))
        return dataclasses.replace(self, registered=self.registered or registration(self.model))

    def files(self) -> dict[str, RecordedFile]:
        """The files this spec reads (a ``.cfg`` model, a model's Python source, weights, a plan),
        recorded now: absolute path and sha256 (``kernelfi.files``)."""
        out = {}
        if self.model.lower().endswith(".cfg") and Path(self.model).is_file():
            out["cfg"] = RecordedFile.of(self.model, "cfg")
        if is_model_file(self.model):
            out["model source"] = RecordedFile.of(parse_model_file(self.model)[0], "model source", self.source_sha256)
        elif self.registered:
            out["model source"] = RecordedFile.of(self.registered["source"], "model source",
                                                  self.registered.get("sha256"))
        if self.weights is not None and self.weights not in _WEIGHT_WORDS and Path(self.weights).exists():
            out["weights"] = RecordedFile.of(self.weights, "weights")
        if self.hardening is not None and Path(self.hardening).is_file():
            out["plan"] = RecordedFile.of(self.hardening, "plan")
        return out

    def absolute(self) -> "ModelSpec":
        """The same spec with its paths absolute (a model name stays as it is: a cfg path is also
        the model's name in the results)."""
        return dataclasses.replace(
            self, weights=_absolute(self.weights) if self.weights not in _WEIGHT_WORDS else self.weights,
            hardening=_absolute(self.hardening))


def _absolute(path: str | None) -> str | None:
    return None if path is None else str(Path(path).expanduser().resolve())


@dataclass
class Session:
    spec: ModelSpec
    loaded: LoadedModel
    program: Program
    plan: dict[str, Any] | None

    @property
    def weights_hash(self) -> str:
        return self.loaded.weights_hash

    @property
    def notes(self) -> tuple[str, ...]:
        """One line for each default that changes what is measured (random weights)."""
        if self.loaded.weights_source.startswith("random"):
            return (f"weights: {self.loaded.weights_source}: {self.loaded.info.name} runs with seeded random "
                    "weights, not trained ones (give --weights to measure a trained model)",)
        return ()


def open_session(spec: ModelSpec, plan: Mapping[str, Any] | None = None) -> Session:
    """Build the model of ``spec``; ``plan``: a hardening plan as stored with a campaign, used
    instead of reading ``spec.hardening`` again (replay needs no plan file)."""
    spec = spec.resolved()
    loaded = load_model(spec.model, weights=spec.weights, num_classes=spec.num_classes, seed=spec.seed_weights,
                        input_shape=spec.input_shape, source_sha256=spec.source_sha256)
    program = lower(loaded.module, loaded.info.input_shape, loaded.info.name)
    stored = None
    if plan is not None or spec.hardening is not None:
        from kernelfi.harden import Plan, apply_plan  # level 2; imported lazily to keep start-up light
        parsed = Plan.from_dict(dict(plan)) if plan is not None else Plan.load(spec.hardening)  # type: ignore[arg-type]
        program = apply_plan(program, parsed)
        # what the store records with the campaign: the plan without the planner's explanation
        # of the candidates it left out (bulky, and no part of what the hardened model is)
        stored = {k: v for k, v in parsed.to_dict().items() if k != "explain"}
    return Session(spec, loaded, program, stored)


def check_data(info: ModelInfo, data: str | None) -> None:
    """``data`` may be left out only for a model with embedded data: random inputs change what a
    campaign measures, so they are never chosen silently (``--data random`` names them)."""
    if data is None and info.default_data is None:
        raise KernelfiError(f"--data is required for {info.name}, which has no embedded data: give an image "
                            "folder (ImageFolder layout), an .npz archive, or --data random for seeded "
                            "uniform inputs")


def session_inputs(session: Session, data: str | None, limit: int | None, options: PrepOptions | None = None,
                   positions: Sequence[int] | None = None) -> InputSet:
    """The inputs ``data`` names for the session's model (``None``: the model's embedded data,
    which it must have: ``check_data``)."""
    info = session.loaded.info
    check_data(info, data)
    return load_inputs(data, info, limit, options, positions)


def inputs_tensor(inputs: InputSet) -> torch.Tensor:
    return inputs.x.to(torch.float32).contiguous()


@engine_threads()
def predict(program: Program, x: torch.Tensor, fast: bool = True) -> torch.Tensor:
    """Top-1 class of each input in the fault-free run, computed as the golden run computes it
    (same chunks, one engine thread), keeping only the output."""
    out = []
    step = golden_chunk(program.trace, 64)
    with torch.no_grad():
        for s in range(0, x.shape[0], step):
            mem = program.run(program.memory(x[s:s + step]), fast=fast)
            out.append(mem[program.trace.output].reshape(min(step, x.shape[0] - s), -1).argmax(dim=1))
            del mem
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)


@dataclass(frozen=True)
class InputSelection:
    """Which inputs of the data a campaign kept, when it kept only some by a rule.

    ``rule`` "correct": the first inputs (in data order) the model classifies correctly, as
    fault-injection studies choose them, so that a Malfunction means a correct answer turned
    wrong. ``positions``: their places in the data set (workers and replay load exactly these,
    without classifying again); ``read``: how many inputs from the start of the data that took
    (every correct one among them is kept, so ``len(positions) / read`` is the golden accuracy
    over them).
    """

    rule: str
    positions: tuple[int, ...]
    read: int

    def describe(self) -> str:
        return f"the {len(self.positions)} classified correctly among the first {self.read}"

    def to_dict(self) -> dict[str, Any]:
        return {"rule": self.rule, "positions": list(self.positions), "read": self.read}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "InputSelection":
        return cls(str(d["rule"]), tuple(int(p) for p in d["positions"]), int(d["read"]))


SELECT_RULES: tuple[str, ...] = ("all", "correct")


def correct_inputs(session: Session, data: str | None, limit: int | None, options: PrepOptions | None = None,
                   fast: bool = True) -> tuple[InputSet, InputSelection]:
    """The first ``limit`` inputs of ``data`` (all, without a limit) that the model classifies
    correctly, read and classified a chunk at a time (an image folder is not read further than
    needed); the data must be labelled."""
    if limit is not None and int(limit) < 1:
        raise KernelfiError(f"--inputs must be at least 1, got {limit}")
    kept: list[int] = []
    read = 0
    want = None if limit is None else int(limit)
    chunk = 64
    while want is None or len(kept) < want:
        need = chunk if want is None else max(want - len(kept), 4)
        part = session_inputs(session, data, None, options, positions=range(read, read + need))
        if part.y is None:
            raise KernelfiError(f"--select-inputs correct needs labelled data; {part.source.split(' (')[0]} "
                                "has no labels (ImageFolder class folders, an .npz with y, or digits)")
        if len(part) == 0:
            break
        hits = (predict(session.program, inputs_tensor(part), fast) == part.y).tolist()
        for pos, hit in zip(part.positions, hits):
            if want is not None and len(kept) == want:
                break
            read = pos + 1
            if hit:
                kept.append(pos)
        if len(part) < need:
            break
    if not kept:
        raise KernelfiError(f"--select-inputs correct: the model classifies none of the {read} inputs read correctly")
    selection = InputSelection("correct", tuple(kept), read)
    return session_inputs(session, data, None, options, positions=kept), selection
