"""A campaign's configuration and everything it needs before its first batch (``prepare``).

``Prepared`` holds the session (model, lowered program, hardening plan), the inputs and the
planner; the golden run and the runner are built on first use. Who computes the golden run is
explicit: a process computes its own, or a pool's driver puts it in shared memory for its
workers (``share_golden``) and each worker maps it and takes the driver's one-time checks
(``use_shared``), before its runner is built.
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

import torch

from kernelfi.version import __version__
from kernelfi._utils import KernelfiError, check_fits
from kernelfi.campaign.planner import Planner
from kernelfi.campaign.session import (
    SELECT_RULES, InputSelection, ModelSpec, Session, check_data, correct_inputs, inputs_tensor, open_session,
    session_inputs,
)
from kernelfi.data import InputSet, PrepOptions
from kernelfi.execution import ENGINE_THREADS, Checks, Golden, Runner, SharedGolden, golden_numel
from kernelfi.faults.registers import derating, rf_registers
from kernelfi.files import RecordedFile
from kernelfi.models import get_model_info
from kernelfi.models.user import is_model_file
from kernelfi.store import CampaignMeta, LaunchRow, LayerRow
from kernelfi.types import BitModel, Mode


@dataclass(frozen=True)
class CampaignConfig:
    model: ModelSpec
    mode: str
    bit_model: str
    n: int
    seed: int
    warp: bool = False
    data: str | None = None
    inputs: int | None = None  # keep the first N inputs of the data set (of those the rule keeps)
    scope: str = "all"
    selection: str = "uniform"
    #: faults per batched run; 0: as many as ``auto_batch`` fits in memory
    batch: int = 0
    #: worker processes (0: one per CPU, ``pool.auto_workers``); rows do not
    #: depend on it (``kernelfi.execution.threads``)
    workers: int = 1
    fast: bool = True
    #: compute only the receptive-field cone after the struck layer (same rows as without)
    cone: bool = True
    #: how images become inputs (``kernelfi.data.prep``; ``None`` fields: the model's defaults)
    prep: PrepOptions = field(default_factory=PrepOptions)
    #: which inputs of the data to keep: "all", or "correct" (those the model classifies correctly)
    select_inputs: str = "all"
    #: the inputs a rule kept, filled by ``prepare`` (workers and replay load exactly these)
    chosen: InputSelection | None = None
    #: a hardening plan as stored with a campaign, used instead of reading ``model.hardening``
    plan: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        try:
            Mode(self.mode)
        except ValueError:
            raise KernelfiError(f"unknown mode '{self.mode}' (known: rf, iov, ioa)") from None
        try:
            BitModel(self.bit_model)
        except ValueError:
            raise KernelfiError(f"unknown bit model '{self.bit_model}' (known: {', '.join(b.value for b in BitModel)})") from None
        if self.n < 1:
            raise KernelfiError(f"-n must be at least 1, got {self.n}")
        if self.n >= 2**63:
            raise KernelfiError(f"-n {self.n} does not fit the results database (at most 2**63 - 1 injections)")
        if not -(2**63) <= self.seed < 2**63:
            raise KernelfiError(f"--seed {self.seed} does not fit in a signed 64-bit integer "
                                "(-9223372036854775808 .. 9223372036854775807)")
        if self.batch < 0 or self.workers < 0:
            raise KernelfiError("--batch and --workers must be 0 (auto) or more")
        if self.inputs is not None and self.inputs < 1:
            raise KernelfiError(f"--inputs must be at least 1, got {self.inputs}")
        if self.select_inputs not in SELECT_RULES:
            raise KernelfiError(f"--select-inputs: unknown rule '{self.select_inputs}' (known: {', '.join(SELECT_RULES)})")


@dataclass
class Prepared:
    """A campaign ready to run: session, inputs, planner; the golden run and the runner on
    first use (see the module docstring for who computes the golden run). ``config`` is the
    campaign's config with the inputs a rule chose filled in (``CampaignConfig.chosen``): what
    workers prepare again."""

    config: CampaignConfig
    session: Session
    input_source: str
    n_inputs: int
    x: torch.Tensor
    planner: Planner
    #: seconds ``prepare`` took (model, lowering, inputs): what each worker process pays again
    setup_s: float = 0.0
    #: the inputs as loaded (labels, data-set positions, file and digest)
    inputs: InputSet | None = None
    #: one line for each default or conversion that changes what is measured
    notes: tuple[str, ...] = ()
    _golden: Golden | None = field(default=None, init=False, repr=False)
    _runner: Runner | None = field(default=None, init=False, repr=False)
    _checks: Checks | None = field(default=None, init=False, repr=False)
    _launch_rows: list[LaunchRow] | None = field(default=None, init=False, repr=False)

    @property
    def golden(self) -> Golden:
        """The golden run: this process's own, computed on first use, or the shared one."""
        if self._golden is None:
            self._golden = Golden.compute(self.session.program, self.x, fast=self.config.fast)
        return self._golden

    @property
    def runner(self) -> Runner:
        """The runner over ``golden``, built on first use (on the driver's checks in a worker)."""
        if self._runner is None:
            c = self.config
            self._runner = Runner(self.session.program, self.golden, fast=c.fast, cone=c.cone, checks=self._checks)
        return self._runner

    def share_golden(self) -> SharedGolden:
        """The golden run in one block of shared memory, for a pool's workers (``use_shared``),
        computed straight into it where it is not computed yet; this process keeps the shared
        copy only. Before the runner is built (it keeps the run it was built on)."""
        if self._runner is not None:
            raise RuntimeError("share_golden: the runner is built on a private golden run already")
        if self._golden is None:
            self._golden = Golden.compute(self.session.program, self.x, fast=self.config.fast, share=True)
        shared = SharedGolden.of(self._golden, self.session.program.trace.output)
        self._golden = shared.golden()
        return shared

    def use_shared(self, shared: SharedGolden | None, checks: Checks) -> None:
        """In a pool's worker: map the driver's golden run (None: there was no room to share it,
        this process computes its own) and build the runner on the driver's one-time checks
        (same machine, same golden bits) instead of checking again."""
        if self._golden is not None or self._runner is not None:
            raise RuntimeError("use_shared: this process has its own golden run or runner already")
        if shared is not None:
            self._golden = shared.golden()
        self._checks = checks

    def files(self) -> dict[str, RecordedFile]:
        """Every file the campaign read (``kernelfi.files``): cfg, weights, plan, data."""
        out = self.session.spec.files()
        loaded = self.session.loaded
        if "weights" in out:  # the registry hashed it already
            out["weights"] = dataclasses.replace(out["weights"], sha256=loaded.weights_hash)
        if self.inputs is not None and self.inputs.path is not None:
            out["data"] = RecordedFile(self.inputs.path, self.inputs.digest, "data")
        return out

    def meta(self) -> CampaignMeta:
        c = self.config
        info = self.session.loaded.info
        files = self.files()
        labels = None if self.inputs is None or self.inputs.y is None else [int(v) for v in self.inputs.y.tolist()]
        data = files["data"].path if "data" in files else c.data
        return CampaignMeta(
            model=info.name, mode=c.mode, bit_model=c.bit_model, seed=c.seed, n_planned=c.n,
            weights_hash=self.session.weights_hash, weights_source=_source(self.session.loaded.weights_source, files),
            input_source=self.input_source, n_inputs=self.n_inputs, warp=c.warp, scope=c.scope,
            selection=c.selection, hardening=self.session.plan,
            derating=derating(self.session.program.trace) if c.mode == Mode.RF.value else None,
            tool_version=__version__,
            extra={"model_spec": asdict(c.model.absolute()), "population": self.planner.population, "fast": c.fast,
                   "cone": c.cone, "data": data, "inputs": c.inputs, "engine_threads": ENGINE_THREADS,
                   "prep": c.prep.to_dict(), "select_inputs": c.select_inputs,
                   "chosen": None if c.chosen is None else c.chosen.to_dict(), "labels": labels,
                   "files": {role: f.to_dict() for role, f in files.items()},
                   "input_shape": list(info.input_shape), "num_classes": info.num_classes},
        )

    def launch_rows(self) -> list[LaunchRow]:
        """The store's row of every launch, by launch index (computed once)."""
        if self._launch_rows is None:
            self._launch_rows = [LaunchRow.from_launch(l, rf_registers(l).allocated)
                                 for l in self.session.program.trace.launches]
        return self._launch_rows

    def layer_rows(self) -> list[LayerRow]:
        return [LayerRow.from_spec(s) for s in self.session.program.trace.layers]


def _source(weights_source: str, files: Mapping[str, RecordedFile]) -> str:
    """The weights' source as the campaign records it: the absolute path of a weights file."""
    return files["weights"].path if "weights" in files else str(weights_source)


def prepare(config: CampaignConfig) -> Prepared:
    """Build the model, load and prepare the inputs (keeping those ``select_inputs`` asks for),
    and plan the faults; no golden run yet."""
    t0 = time.perf_counter()
    config = dataclasses.replace(config, model=config.model.resolved())  # what workers and the store get
    if not is_model_file(config.model.model):  # before the model is built: a quick error
        check_data(get_model_info(config.model.model), config.data)
    session = open_session(config.model, config.plan)
    check_data(session.loaded.info, config.data)
    notes = list(session.notes)
    chosen = config.chosen
    if chosen is not None:
        inputs = session_inputs(session, config.data, None, config.prep, positions=chosen.positions)
    elif config.select_inputs == "correct":
        inputs, chosen = correct_inputs(session, config.data, config.inputs, config.prep, config.fast)
        config = dataclasses.replace(config, chosen=chosen)
        short = config.inputs is not None and len(chosen.positions) < config.inputs
        notes.append(f"inputs: {chosen.describe()} kept (--select-inputs correct)"
                     + (f"; fewer than the {config.inputs} asked for: the data hold no more" if short else ""))
    else:
        if config.inputs is not None and (config.data or session.loaded.info.default_data) == "random":
            check_golden(session, config.inputs, config.fast)  # before the inputs are drawn
        inputs = session_inputs(session, config.data, config.inputs, config.prep)
    source = inputs.source + ("" if chosen is None else f"; {chosen.describe()}")
    x = inputs_tensor(inputs)
    check_golden(session, int(x.shape[0]), config.fast)
    planner = Planner(session.program.trace, config.mode, config.bit_model, config.warp, config.seed,
                      x.shape[0], config.scope, config.selection)
    return Prepared(config, session, source, int(x.shape[0]), x, planner, setup_s=time.perf_counter() - t0,
                    inputs=inputs, notes=(*notes, *inputs.notes))


def check_golden(session: Session, n: int, fast: bool) -> None:
    """Refuse inputs whose golden run (and the inputs themselves, twice while they are
    normalised) could never fit this machine's memory, before computing any of it."""
    per_input = 4 * math.prod(session.loaded.info.input_shape)
    check_fits(4 * golden_numel(session.program.trace, n, fast) + 2 * n * per_input,
               f"the golden run of {n:,} inputs through {session.loaded.info.name}")
