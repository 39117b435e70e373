"""The shared vocabulary of kernelfi: frozen records passed between every level.

Nothing here imports torch: the store and the analysis layers use these records too.
Names follow SASSIFI/NVBitFI (instruction groups, modes, bit-flip models) and Darknet (layer
types, kernel names); see ``docs/method.md``.
"""
from __future__ import annotations

import enum
import functools
from dataclasses import dataclass, field
from typing import Any, Mapping

# --------------------------------------------------------------------------------------------
# Instruction groups (docs/method.md §1)
# --------------------------------------------------------------------------------------------
GROUPS: tuple[str, ...] = ("FP32", "LD", "GPR", "PR", "NODEST", "OTHERS")
#: SASSIFI's composite groups.
GPPR: tuple[str, ...] = ("FP32", "LD", "GPR", "PR", "OTHERS")  # all but NODEST
GP: tuple[str, ...] = ("FP32", "LD", "GPR", "OTHERS")  # all but NODEST and PR

#: The kernel vocabulary of docs/method.md §1 (Darknet's GPU path).
KERNEL_NAMES: tuple[str, ...] = (
    "fill", "im2col", "gemm", "add_bias", "normalize", "scale_bias", "activate_array",
    "forward_maxpool", "forward_avgpool", "copy", "shortcut", "softmax",
)

#: Darknet layer types that lowering produces.
LAYER_TYPES: tuple[str, ...] = (
    "convolutional", "connected", "maxpool", "avgpool", "shortcut", "route", "dropout", "softmax",
)


class Mode(str, enum.Enum):
    """SASSIFI injection modes (docs/method.md §2)."""

    RF = "rf"    # register file: random bit of a random register at a random instruction
    IOV = "iov"  # instruction output value
    IOA = "ioa"  # instruction output address (or destination register index)


class BitModel(str, enum.Enum):
    """SASSIFI bit-flip models; warp-wide variants are a flag on the fault, not separate models."""

    NONE = "none"      # no corruption: sanity runs must be 100% Masked
    SINGLE = "single"  # one bit
    DOUBLE = "double"  # two adjacent bits
    RANDOM = "random"  # a random 32-bit value
    ZERO = "zero"      # value becomes zero


class Outcome(str, enum.Enum):
    """Outcome categories (``docs/method.md``, "Outcomes"), in the published studies' terms."""

    MASKED = "masked"
    DUE = "due"
    SDC_NO_MALFUNCTION = "sdc_no_malfunction"
    SDC_LIGHT_MALFUNCTION = "sdc_light_malfunction"
    SDC_MALFUNCTION = "sdc_malfunction"

    @property
    def is_sdc(self) -> bool:
        return self.value.startswith("sdc_")


OUTCOMES: tuple[str, ...] = tuple(o.value for o in Outcome)
#: The one name of each outcome wherever a user reads it (CLI, report, docs); the values above
#: are the keys of JSON output and database columns.
OUTCOME_LABELS: dict[str, str] = {
    Outcome.MASKED.value: "Masked",
    Outcome.DUE.value: "DUE",
    Outcome.SDC_NO_MALFUNCTION.value: "SDC No-Malfunction",
    Outcome.SDC_LIGHT_MALFUNCTION.value: "SDC Light-Malfunction",
    Outcome.SDC_MALFUNCTION.value: "SDC Malfunction",
}


# --------------------------------------------------------------------------------------------
# Dynamic instruction profiles and per-thread templates (docs/method.md §1)
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class InstrSlot:
    """One static instruction (or a run of identical ones) in a thread's instruction stream.

    ``count`` is how many times one thread executes it (loop trips included). ``tag`` names
    what the instruction computes in terms the fault model understands, e.g. ``"ld:bias"``,
    ``"fadd:out"``, ``"ffma:acc"``, ``"st:out"``, ``"iadd:index"``; ``docs/kernels.md`` lists them.
    ``halves``: the slot computes 64-bit addresses, each execution as instructions that write
    the low 32 bits, then as many that write the high 32 bits (a fault in the second half of an
    execution's instructions strikes the high word, ``AddressHalf.HIGH``).
    """

    group: str
    opcode: str
    tag: str
    count: int = 1
    halves: bool = False


@dataclass(frozen=True)
class ThreadTemplate:
    """What every thread of a launch executes, and how many threads there are.

    The dynamic count of a group is ``threads * sum(slot.count for slots of that group)``.
    Kernels whose threads differ (edge tiles, ...) use the average thread and say so in the docs.
    """

    threads: int
    block: int
    slots: tuple[InstrSlot, ...]

    def per_thread(self, group: str) -> int:
        return sum(s.count for s in self.slots if s.group == group)

    def profile(self) -> "Profile":
        return Profile(
            counts={g: self.threads * self.per_thread(g) for g in GROUPS},
            threads=self.threads,
        )


@dataclass(frozen=True)
class Profile:
    """Thread-level dynamic instruction counts of one launch, by SASSIFI group."""

    counts: Mapping[str, int]
    threads: int

    def total(self, groups: tuple[str, ...] = GROUPS) -> int:
        return sum(int(self.counts.get(g, 0)) for g in groups)

    def __add__(self, other: "Profile") -> "Profile":
        return Profile(
            counts={g: int(self.counts.get(g, 0)) + int(other.counts.get(g, 0)) for g in GROUPS},
            threads=self.threads + other.threads,
        )


class RegisterRole(str, enum.Enum):
    """What a register holds, for RF mode (docs/method.md §2)."""

    DATA = "data"
    ACCUMULATOR = "accumulator"
    ADDRESS = "address"
    INDEX = "index"
    LOOP_COUNTER = "loop_counter"
    CONSTANT = "constant"
    PREDICATE = "predicate"


#: Register roles for RF mode (docs/method.md §2).
REGISTER_ROLES: tuple[str, ...] = tuple(r.value for r in RegisterRole)


class AddressHalf(enum.IntEnum):
    """Which 32-bit word of a 64-bit address a register (or an instruction) holds."""

    LOW = 0
    HIGH = 1


@dataclass(frozen=True)
class Register:
    """One per-thread register and what it holds over the thread's life.

    ``live`` is the interval, as fractions [start, end) of the thread's dynamic instruction
    stream, during which the value is still to be read; a flip outside it is masked (dead or
    about to be overwritten). ``tag`` ties the register to the instruction tags it feeds.
    ``half``: for an address register, which word of a 64-bit address it holds (a 32-bit
    address, a shared-memory offset, is ``LOW``); None for every other role.
    """

    name: str
    role: RegisterRole
    tag: str
    live: tuple[float, float] = (0.0, 1.0)
    half: AddressHalf | None = None

    def __post_init__(self) -> None:
        role = RegisterRole(self.role)
        object.__setattr__(self, "role", role)
        if role is RegisterRole.ADDRESS:
            object.__setattr__(self, "half", AddressHalf.LOW if self.half is None else AddressHalf(self.half))
        elif self.half is not None:
            raise ValueError(f"register {self.name}: only an address register holds a half of an address")


@dataclass(frozen=True)
class RegisterMap:
    """A kernel's per-thread register allocation (what ptxas reports) and the live roles."""

    allocated: int
    registers: tuple[Register, ...]


# --------------------------------------------------------------------------------------------
# Model IR: Darknet-style layers, buffers, launches, the trace
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LayerSpec:
    """One Darknet layer, whichever front end (cfg or torch.fx) produced it.

    ``inputs`` are indexes of earlier layers (``-1`` = the network input). ``params`` holds the
    cfg-level settings (filters, size, stride, pad, groups, batch_normalize, activation, ...).
    ``weights`` maps a role (``weights``, ``biases``, ``scales``, ``rolling_mean``,
    ``rolling_variance``) to the key of that tensor in the model's state dict.
    ``out_shape`` is per inference (C, H, W) or (F,).
    """

    index: int
    type: str
    name: str
    inputs: tuple[int, ...]
    out_shape: tuple[int, ...]
    params: Mapping[str, Any] = field(default_factory=dict)
    weights: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class BufferSpec:
    """A device buffer of one inference, in allocation order (the IOA memory map uses it).

    ``kind``: ``input``, ``weight`` (weights, biases, BN parameters), ``activation``,
    ``workspace`` (im2col columns) or ``index`` (maxpool argmax, int32).
    """

    name: str
    shape: tuple[int, ...]
    kind: str
    dtype: str = "float32"

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= int(d)
        return n


@dataclass(frozen=True)
class Launch:
    """One kernel launch of the inference.

    ``name`` is stable and dotted (``<layer name>.<kernel>[.<k>]``), never a positional
    counter, so results stay comparable when a model gains a layer elsewhere.
    ``check_after``: the launch after which a fault in this one is judged Masked or not, where
    that is not this launch itself: the last launch of the hardened unit it belongs to (the
    voter or checker whose outputs must equal golden, ``harden.transform``).
    """

    index: int
    layer: int
    layer_type: str
    name: str
    kernel: str
    reads: tuple[str, ...]
    writes: tuple[str, ...]
    params: Mapping[str, Any]
    template: ThreadTemplate
    check_after: int | None = None

    @property
    def profile(self) -> Profile:
        return self.template.profile()

    @property
    def judged_at(self) -> int:
        """The launch whose outputs decide whether a fault in this one was Masked."""
        return self.index if self.check_after is None else self.check_after


@dataclass(frozen=True)
class Trace:
    """A model lowered to the kernels a framework launches for one inference."""

    model: str
    input_shape: tuple[int, ...]
    layers: tuple[LayerSpec, ...]
    buffers: tuple[BufferSpec, ...]
    launches: tuple[Launch, ...]
    logits: str   # buffer holding the pre-softmax scores
    output: str   # buffer holding the final probabilities

    def buffer(self, name: str) -> BufferSpec:
        return self._buffers_by_name[name]

    @functools.cached_property
    def _buffers_by_name(self) -> dict[str, BufferSpec]:
        """Campaigns look buffers up per lane and layer: a dict, built on first use (kept out
        of the dataclass fields, so equality and hashing are unchanged)."""
        out: dict[str, BufferSpec] = {}
        for b in self.buffers:
            out.setdefault(b.name, b)
        return out

    def layer_launches(self, layer: int) -> tuple[Launch, ...]:
        return tuple(l for l in self.launches if l.layer == layer)


# --------------------------------------------------------------------------------------------
# Faults and results (docs/method.md §2-§3)
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Site:
    """Where a fault strikes: one dynamic instruction (IOV/IOA) or one register at one time (RF).

    ``slot`` indexes the launch's ``ThreadTemplate.slots``; ``iteration`` is which execution of
    that slot within the thread (0 .. slot.count-1). ``register`` indexes the kernel's
    ``RegisterMap.registers`` in RF mode (``-1`` otherwise; ``>= len(registers)`` means an
    allocated register that holds nothing live).
    """

    launch: int
    group: str
    thread: int
    slot: int
    iteration: int = 0
    register: int = -1


@dataclass(frozen=True)
class Fault:
    """A fully determined corruption: the site, the bit model and the drawn bits/value."""

    mode: str
    site: Site
    bit_model: str
    bits: tuple[int, ...] = ()
    value: int | None = None  # random-value model: the raw 32-bit pattern written
    warp: bool = False
    input_id: int = 0


@dataclass(frozen=True)
class PlannedFault:
    """One injection of a campaign: its id, its fault and its sampling weight (1.0 for uniform
    selection). The planner draws it; the execution engine runs it; the store keeps its row."""

    id: int
    fault: Fault
    weight: float


@dataclass(frozen=True)
class Propagation:
    """How far the corruption reached in one downstream layer's output."""

    layer: int
    corrupted: int      # elements differing from golden
    numel: int
    max_abs: float
    max_rel: float


@dataclass(frozen=True)
class Result:
    """The outcome of one injection, with what the store keeps about it."""

    outcome: str
    element: int = -1               # flat index of the first corrupted element (-1: none)
    original: float | None = None   # value before corruption (as float; raw bits in flags)
    corrupted: float | None = None
    flags: tuple[str, ...] = ()     # e.g. "nonfinite", "crash", "hang", "illegal_address"
    propagation: tuple[Propagation, ...] = ()
    golden_top1: int = -1
    faulty_top1: int = -1
