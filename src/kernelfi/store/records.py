"""The rows the results store reads and writes, as frozen dataclasses.

They sit between the campaign runner (which builds them from ``types.Fault``/``types.Result``)
and SQLite (one table per record type, see ``docs/store.md``). Everything here is plain data:
no torch, no database handle, so replay and the analysis layer can use them too.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any, Mapping

from kernelfi.version import __version__
from kernelfi.types import (
    GROUPS, OUTCOMES, BitModel, Fault, Launch, LayerSpec, Mode, Propagation, Result, Site,
)

#: Fields of :class:`CampaignMeta` that define *what* a campaign measures. Two commands with the
#: same values mean the same campaign (so a re-run resumes it); paths, the tool version and
#: ``extra`` are bookkeeping and deliberately left out (a moved weights file with the same hash
#: is the same experiment).
KEY_FIELDS: tuple[str, ...] = (
    "model", "weights_hash", "input_source", "n_inputs", "seed", "mode", "bit_model", "warp",
    "scope", "selection", "n_planned", "hardening",
)


def _mode(value: Any) -> str:
    try:
        return Mode(value).value
    except ValueError:
        raise ValueError(f"unknown mode {value!r} (expected one of {[m.value for m in Mode]})") from None


def _bit_model(value: Any) -> str:
    try:
        return BitModel(value).value
    except ValueError:
        raise ValueError(
            f"unknown bit model {value!r} (expected one of {[b.value for b in BitModel]})"
        ) from None


def _canon_json(value: Any) -> str:
    """Canonical JSON (sorted keys, no spaces) so equal settings hash and compare equal."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


@dataclass(frozen=True)
class CampaignMeta:
    """Everything that describes a campaign; ``key`` hashes the defining part (``KEY_FIELDS``).

    ``derating`` is the RF allocated-register share (allocated registers / physical register
    file) that turns a raw RF rate into an AVF; ``None`` for IOV/IOA, whose rates are PVFs.
    ``hardening`` is the hardening plan the model was built with (``None``: unhardened).
    """

    model: str
    mode: str
    bit_model: str
    seed: int
    n_planned: int
    weights_hash: str = ""
    weights_source: str = ""
    input_source: str = ""
    n_inputs: int = 0
    warp: bool = False
    scope: str = "all"
    selection: str = "uniform"
    hardening: Mapping[str, Any] | None = None
    derating: float | None = None
    tool_version: str = __version__
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "mode", _mode(self.mode))
        object.__setattr__(self, "bit_model", _bit_model(self.bit_model))
        object.__setattr__(self, "warp", bool(self.warp))
        if not -(2**63) <= int(self.seed) < 2**63:
            raise ValueError(f"seed {self.seed} does not fit in a signed 64-bit integer")
        if int(self.n_planned) < 0:
            raise ValueError(f"n_planned must be >= 0, got {self.n_planned}")
        if self.derating is not None and not 0.0 <= float(self.derating) <= 1.0:
            raise ValueError(f"derating is a share of the register file, got {self.derating}")

    @property
    def key(self) -> str:
        """Hex SHA-256 of the defining fields; the store's unique handle for resume."""
        payload = {name: getattr(self, name) for name in KEY_FIELDS}
        return hashlib.sha256(_canon_json(payload).encode()).hexdigest()


@dataclass(frozen=True)
class CampaignRow:
    """A stored campaign: its id, key, creation time (UTC ISO-8601), metadata and progress."""

    id: int
    key: str
    created: str
    meta: CampaignMeta
    n_done: int
    #: injections the tool failed to run (``ToolErrorRecord``): not among the ``n_done`` results
    n_tool_errors: int = 0


@dataclass(frozen=True)
class LaunchRow:
    """One kernel launch of the campaign's trace with its dynamic instruction profile.

    The profile is what uniform site selection draws from, so analysis needs it to reweight
    stratified samples and to state the population an AVF/PVF refers to.
    ``registers`` is the per-thread register allocation (0: unknown).
    """

    index: int
    name: str
    kernel: str
    layer: int
    layer_type: str
    counts: Mapping[str, int]
    threads: int
    registers: int = 0

    def __post_init__(self) -> None:
        unknown = set(self.counts) - set(GROUPS)
        if unknown:
            raise ValueError(f"launch {self.name}: unknown instruction groups {sorted(unknown)}")
        object.__setattr__(self, "counts", {g: int(self.counts.get(g, 0)) for g in GROUPS})

    @classmethod
    def from_launch(cls, launch: Launch, registers: int = 0) -> "LaunchRow":
        """The row for a lowered launch, its profile taken from the thread template."""
        profile = launch.profile
        return cls(launch.index, launch.name, launch.kernel, launch.layer, launch.layer_type,
                   dict(profile.counts), profile.threads, registers)


@dataclass(frozen=True)
class LayerRow:
    """One Darknet layer: index, type, name and output size (propagation's denominator)."""

    index: int
    type: str
    name: str
    numel: int

    @classmethod
    def from_spec(cls, spec: LayerSpec) -> "LayerRow":
        return cls(spec.index, spec.type, spec.name, math.prod(int(d) for d in spec.out_shape))


def _canon(value: Any) -> Any:
    """A comparable form where NaN equals NaN (a flipped exponent often yields NaN)."""
    if isinstance(value, float) and math.isnan(value):
        return ("<nan>",)
    if isinstance(value, tuple):
        return tuple(_canon(v) for v in value)
    if isinstance(value, Propagation):
        return _canon(dataclasses.astuple(value))
    return value


@dataclass(frozen=True, kw_only=True, eq=False)
class InjectionRecord:
    """One injection, flat: site, fault, outcome, and the per-layer propagation.

    Equality treats NaN as equal to NaN, so a replayed injection compares equal to its stored
    row. ``weight`` is the sampling weight (population share / sample share of the row's
    stratum; 1 for uniform selection). ``value`` is the raw 32-bit pattern of the random-value
    model. ``bits`` are the flipped bit positions (empty for random/zero/none models).
    """

    id: int
    input_id: int
    launch: int
    launch_name: str
    kernel: str
    layer: int
    layer_type: str
    mode: str
    grp: str
    bit_model: str
    warp: bool = False
    thread: int = 0
    slot: int = 0
    iteration: int = 0
    register: int = -1
    tag: str = ""
    element: int = -1
    bits: tuple[int, ...] = ()
    value: int | None = None
    original: float | None = None
    corrupted: float | None = None
    outcome: str
    flags: tuple[str, ...] = ()
    golden_top1: int = -1
    faulty_top1: int = -1
    weight: float = 1.0
    seconds: float = 0.0
    propagation: tuple[Propagation, ...] = ()

    def __post_init__(self) -> None:
        outcome = getattr(self.outcome, "value", self.outcome)  # accept types.Outcome too
        if outcome not in OUTCOMES:
            raise ValueError(f"injection {self.id}: unknown outcome {self.outcome!r}")
        object.__setattr__(self, "outcome", str(outcome))
        object.__setattr__(self, "mode", _mode(self.mode))
        object.__setattr__(self, "bit_model", _bit_model(self.bit_model))
        object.__setattr__(self, "warp", bool(self.warp))
        object.__setattr__(self, "bits", tuple(int(b) for b in self.bits))
        object.__setattr__(self, "flags", tuple(str(f) for f in self.flags))
        object.__setattr__(self, "propagation", tuple(self.propagation))
        if any("," in f for f in self.flags):
            raise ValueError(f"injection {self.id}: flags may not contain ',' ({self.flags})")
        if not (self.weight > 0 and math.isfinite(self.weight)):
            raise ValueError(f"injection {self.id}: weight must be finite and > 0, got {self.weight}")

    def _key(self) -> tuple[Any, ...]:
        key: tuple[Any, ...] = _canon(tuple(getattr(self, f.name) for f in dataclasses.fields(self)))
        return key

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, InjectionRecord):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    @classmethod
    def build(cls, id: int, fault: Fault, result: Result, launch: LaunchRow, *, tag: str = "",
              weight: float = 1.0, seconds: float = 0.0) -> "InjectionRecord":
        """The record of injection ``id``: the fault and result flattened, launch names filled in."""
        if fault.site.launch != launch.index:
            raise ValueError(f"injection {id}: fault is in launch {fault.site.launch}, not {launch.index}")
        s = fault.site
        return cls(
            id=id, input_id=fault.input_id, launch=launch.index, launch_name=launch.name,
            kernel=launch.kernel, layer=launch.layer, layer_type=launch.layer_type,
            mode=fault.mode, grp=s.group, bit_model=fault.bit_model, warp=fault.warp,
            thread=s.thread, slot=s.slot, iteration=s.iteration, register=s.register, tag=tag,
            element=result.element, bits=fault.bits, value=fault.value, original=result.original,
            corrupted=result.corrupted, outcome=result.outcome, flags=result.flags,
            golden_top1=result.golden_top1, faulty_top1=result.faulty_top1, weight=weight,
            seconds=seconds, propagation=result.propagation,
        )

    def fault(self) -> Fault:
        """The ``types.Fault`` this row records (what replay re-executes)."""
        return _fault(self)

    def result(self) -> Result:
        """The ``types.Result`` this row records (what replay compares against)."""
        return Result(self.outcome, self.element, self.original, self.corrupted, self.flags,
                      self.propagation, self.golden_top1, self.faulty_top1)


@dataclass(frozen=True, kw_only=True)
class ToolErrorRecord:
    """An injection kernelfi failed to run: an exception inside the tool, not an outcome of the
    fault (a crash of the *simulated* kernel is DUE; this is a crash of the simulator). Stored
    apart from the injections, so no rate or interval counts it; a resumed campaign runs it
    again, and a later version that runs it cleanly replaces it with its injection row.

    The site fields are the planned fault's; ``error`` is the exception in one line,
    ``traceback`` the whole of it, ``replay`` the command that re-runs this one injection.
    """

    id: int
    input_id: int
    launch: int
    mode: str
    grp: str
    bit_model: str
    warp: bool = False
    thread: int = 0
    slot: int = 0
    iteration: int = 0
    register: int = -1
    bits: tuple[int, ...] = ()
    value: int | None = None
    weight: float = 1.0
    error: str
    traceback: str = ""
    replay: str = ""
    tool_version: str = __version__

    def __post_init__(self) -> None:
        object.__setattr__(self, "mode", _mode(self.mode))
        object.__setattr__(self, "bit_model", _bit_model(self.bit_model))
        object.__setattr__(self, "warp", bool(self.warp))
        object.__setattr__(self, "bits", tuple(int(b) for b in self.bits))

    @classmethod
    def build(cls, id: int, fault: Fault, error: str, traceback: str = "", *, replay: str = "",
              weight: float = 1.0) -> "ToolErrorRecord":
        s = fault.site
        return cls(id=id, input_id=fault.input_id, launch=s.launch, mode=fault.mode, grp=s.group,
                   bit_model=fault.bit_model, warp=fault.warp, thread=s.thread, slot=s.slot,
                   iteration=s.iteration, register=s.register, bits=fault.bits, value=fault.value,
                   weight=weight, error=error, traceback=traceback, replay=replay)

    def fault(self) -> Fault:
        """The ``types.Fault`` the tool failed on (what replay re-executes)."""
        return _fault(self)


def _fault(r: InjectionRecord | ToolErrorRecord) -> Fault:
    site = Site(r.launch, r.grp, r.thread, r.slot, r.iteration, r.register)
    return Fault(r.mode, site, r.bit_model, r.bits, r.value, r.warp, r.input_id)
