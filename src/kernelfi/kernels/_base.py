"""The kernel base class, the registry and the memory helpers every kernel shares.

A kernel here is one Darknet GPU kernel (docs/method.md §1) seen three ways: ``run`` computes what it
writes (batched over lanes, Darknet's exact arithmetic), ``template`` says what each CUDA thread
executes (the dynamic instruction profile SASSIFI would count), and ``registers`` says what the
thread keeps in registers and when (RF mode). The fault engine maps ``(kernel, tag)`` to a
concrete corruption through :class:`TagInfo`, so tags are declared, never free text.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Mapping, TypeVar

import torch

from kernelfi._utils import KernelfiError
from kernelfi.types import KERNEL_NAMES, Launch, RegisterMap, ThreadTemplate

#: Darknet's thread-block size (``#define BLOCK 512`` in Darknet's cuda.h).
BLOCK = 512

#: What corrupting an instruction's output means (the ``effect`` of a :class:`TagInfo`).
EFFECTS: tuple[str, ...] = (
    "value",         # a data value (loaded, computed, selected or moved): IOV changes it
    "index",         # an integer index/coordinate/offset: the thread then touches other elements
    "address",       # one half of a 64-bit address: that access goes elsewhere (maybe a crash)
    "predicate",     # a predicate (compare): IOV flips the condition
    "loop_counter",  # a loop induction variable: loop ends early (partial result) or too late
    "store",         # a store (NODEST): no value to corrupt; IOA moves where it lands
    "control",       # a branch, exit or barrier (NODEST): no destination
)

#: Roles of the weight buffers (docs/ir.md): operands that may come without a lane dimension.
WEIGHT_ROLES: tuple[str, ...] = ("weights", "biases", "scales", "rolling_mean", "rolling_variance")


#: ``ptxas -v`` for sm_50 on kernelfi's CUDA C renderings (``kernels/cuda/*.cu``), written by
#: ``scripts/ptxas_registers.py`` (docs/kernels.md §4).
REGISTERS_FILE: Path = Path(__file__).resolve().parent.parent / "assets" / "registers_sm50.json"
_PTXAS: dict[str, int] | None = None


def ptxas_registers(kernel: str) -> int:
    """Registers per thread ptxas allocates on sm_50 for ``kernel``'s CUDA C rendering."""
    global _PTXAS
    if _PTXAS is None:
        try:
            _PTXAS = {str(k): int(v) for k, v in json.loads(REGISTERS_FILE.read_text())["registers"].items()}
        except (OSError, ValueError, KeyError) as e:
            raise KernelfiError(f"{REGISTERS_FILE}: cannot read the ptxas register counts ({e})") from None
    try:
        return _PTXAS[kernel]
    except KeyError:
        raise KernelfiError(f"{REGISTERS_FILE}: no register count for kernel '{kernel}' "
                            "(run scripts/ptxas_registers.py)") from None


@dataclass(frozen=True)
class TagInfo:
    """What an instruction tag of a kernel stands for.

    ``group`` is the SASSIFI group of every slot with this tag, ``effect`` one of
    :data:`EFFECTS`, ``meaning`` what the instruction computes and what a corruption reaches.
    """

    group: str
    effect: str
    meaning: str


class KernelImpl:
    """One Darknet GPU kernel: batched execution, per-thread template, register map.

    Subclasses set ``name`` and implement the four methods; ``vocabulary`` lists every tag the
    kernel's templates may use (over all parameter values), for the fault engine and the docs.
    """

    name: ClassVar[str] = ""
    #: Registers per thread on sm_50: ``ptxas_registers(name)``, docs/kernels.md §4.
    regs_allocated: ClassVar[int] = 0

    def run(self, mem: dict[str, torch.Tensor], launch: Launch) -> None:
        """Compute the launch's outputs from ``mem`` and store them as new tensors in ``mem``."""
        raise NotImplementedError

    def template(self, params: Mapping[str, Any]) -> ThreadTemplate:
        """What one thread executes, how many threads do work and Darknet's block size."""
        raise NotImplementedError

    def registers(self, params: Mapping[str, Any]) -> RegisterMap:
        """Per-thread register allocation and the live roles of the registers."""
        raise NotImplementedError

    def vocabulary(self) -> Mapping[str, TagInfo]:
        """Every tag this kernel's templates can contain, with its meaning."""
        raise NotImplementedError

    def grid(self, params: Mapping[str, Any]) -> tuple[int, int, int]:
        """Darknet's launch grid (blocks in x, y, z); threads beyond the work exit at once."""
        return cuda_gridsize(self.template(params).threads)


_REGISTRY: dict[str, KernelImpl] = {}
K = TypeVar("K", bound=type)


def register_kernel(cls: K) -> K:
    """Class decorator: instantiate and register a kernel under ``cls.name``.

    Refuses an empty or already registered name, so two modules can never silently replace
    each other's kernel.
    """
    name = getattr(cls, "name", "")
    if not name:
        raise KernelfiError(f"kernel class {cls.__name__} has no name")
    if name in _REGISTRY:
        raise KernelfiError(f"kernel '{name}' is already registered ({type(_REGISTRY[name]).__name__})")
    _REGISTRY[name] = cls()
    return cls


def _ordered() -> list[str]:
    """Registered names in the order of docs/method.md §1 (``KERNEL_NAMES``), any others after them by name."""
    rank = {n: i for i, n in enumerate(KERNEL_NAMES)}
    return sorted(_REGISTRY, key=lambda n: (rank.get(n, len(rank)), n))


def get_kernel(name: str) -> KernelImpl:
    """The registered kernel called ``name``; a KernelfiError naming the known ones otherwise."""
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(_ordered())
        raise KernelfiError(f"unknown kernel '{name}' (known: {known})") from None


def all_kernels() -> dict[str, KernelImpl]:
    """Name -> kernel, in the order of docs/method.md §1 (``kernelfi.types.KERNEL_NAMES``)."""
    return {n: _REGISTRY[n] for n in _ordered()}


def unregister_kernel(name: str) -> None:
    """Remove a kernel (tests use it to clean up after registering throwaway kernels)."""
    _REGISTRY.pop(name, None)


# --------------------------------------------------------------------------------------------
# Launch geometry
# --------------------------------------------------------------------------------------------
def cuda_gridsize(n: int) -> tuple[int, int, int]:
    """Darknet's ``cuda_gridsize``: enough 512-thread blocks for n, folded into y past 65535."""
    k = (max(int(n), 1) - 1) // BLOCK + 1
    x, y = k, 1
    if x > 65535:
        x = math.ceil(math.sqrt(k))
        y = (max(int(n), 1) - 1) // (x * BLOCK) + 1
    return (x, y, 1)


# --------------------------------------------------------------------------------------------
# Memory helpers (docs/ir.md "Memory and lanes")
# --------------------------------------------------------------------------------------------
def p_int(params: Mapping[str, Any], key: str, kernel: str) -> int:
    """An integer launch parameter, with an error that names the kernel when it is missing."""
    try:
        return int(params[key])
    except KeyError:
        raise KernelfiError(f"kernel '{kernel}': launch parameter '{key}' is missing") from None


def is_weight_name(name: str) -> bool:
    """Whether a buffer name is a weight role of docs/ir.md (``L.weights``, ``L.biases``...)."""
    return name.rsplit(".", 1)[-1] in WEIGHT_ROLES


def get_buf(mem: Mapping[str, torch.Tensor], name: str, kernel: str) -> torch.Tensor:
    try:
        return mem[name]
    except KeyError:
        raise KernelfiError(f"kernel '{kernel}': buffer '{name}' is not in memory") from None


def lane_flat(mem: Mapping[str, torch.Tensor], name: str, need: int, kernel: str) -> torch.Tensor:
    """A lane buffer as (B, per-lane elements), checked to hold at least ``need`` elements."""
    t = get_buf(mem, name, kernel)
    if t.dim() < 1:
        raise KernelfiError(f"kernel '{kernel}': buffer '{name}' has no lane dimension")
    flat = t.reshape(t.shape[0], -1)
    if flat.shape[1] < need:
        raise KernelfiError(
            f"kernel '{kernel}': buffer '{name}' holds {flat.shape[1]} elements per lane, needs {need}")
    return flat


def weight_flat(mem: Mapping[str, torch.Tensor], name: str, rank: int, lanes: int, need: int,
                kernel: str) -> torch.Tensor:
    """A weight operand as (1, n) when shared or (B, n) when a faulty lane owns a copy.

    docs/ir.md's rule: a tensor with one more dimension than its BufferSpec (whose rank the
    kernel knows from its parameters) is per-lane.
    """
    t = get_buf(mem, name, kernel)
    if t.dim() == rank + 1:
        if t.shape[0] != lanes:
            raise KernelfiError(
                f"kernel '{kernel}': per-lane weight '{name}' has {t.shape[0]} lanes, memory has {lanes}")
        flat = t.reshape(lanes, -1)
    elif t.dim() == rank:
        flat = t.reshape(1, -1)
    else:
        raise KernelfiError(
            f"kernel '{kernel}': weight '{name}' has shape {tuple(t.shape)}, expected rank {rank} "
            f"(shared) or {rank + 1} (per lane)")
    if flat.shape[1] < need:
        raise KernelfiError(f"kernel '{kernel}': weight '{name}' holds {flat.shape[1]} elements, needs {need}")
    return flat


def operand_flat(mem: Mapping[str, torch.Tensor], name: str, rank: int, lanes: int, need: int,
                 kernel: str) -> torch.Tensor:
    """Either kind of operand: weights by the ir.md name rule, everything else as a lane buffer."""
    if is_weight_name(name):
        return weight_flat(mem, name, rank, lanes, need, kernel)
    flat = lane_flat(mem, name, need, kernel)
    if flat.shape[0] != lanes:
        raise KernelfiError(f"kernel '{kernel}': buffer '{name}' has {flat.shape[0]} lanes, expected {lanes}")
    return flat


def put(mem: dict[str, torch.Tensor], name: str, flat: torch.Tensor,
        natural: tuple[int, ...] | None = None) -> None:
    """Store a (B, per-lane) result as a new tensor under ``name``.

    Keeps the shape the buffer already has when the element count matches (so a buffer keeps
    one shape over a run); otherwise uses ``natural`` (per lane) or stays flat. The stored
    tensor never aliases another buffer of ``mem``: the caller caches golden tensors and may
    corrupt outputs in place afterwards.
    """
    lanes = flat.shape[0]
    old = mem.get(name)
    if old is not None and old.dim() >= 1 and old.shape[0] == lanes and old.numel() == flat.numel():
        shape: tuple[int, ...] = tuple(old.shape)
    elif natural is not None and math.prod(natural) == flat.shape[1]:
        shape = (lanes, *natural)
    else:
        shape = tuple(flat.shape)
    out = flat.reshape(shape)
    if _shared_storage(mem, out, flat):
        ptr = _storage(out)
        if ptr is not None and any(_storage(t) == ptr for t in mem.values()):
            out = out.clone()
    mem[name] = out.contiguous()


def _shared_storage(mem: dict[str, torch.Tensor], out: torch.Tensor, flat: torch.Tensor) -> bool:
    """Whether a tensor other than ``out``, ``flat`` and the temporaries they are views of
    may share their storage. A kernel's result is nearly always fresh, and scanning every
    buffer and weight of the memory for an alias took 90k storage lookups per ResNet-50 bench
    pass: the storage's reference count (one per tensor on it, one for the storage object
    asked) settles it first. A view's base counts as known unless it is in ``mem`` itself.
    True (scan) when the count is unavailable."""
    count = getattr(torch._C, "_storage_Use_Count", None)
    if count is None or out.device.type == "meta":
        return True
    bases = {id(b): b for b in (out._base, flat._base) if b is not None}
    if bases and any(id(v) in bases for v in mem.values()):
        return True
    known = {id(out), id(flat), *bases}
    try:
        return count(out.untyped_storage()._cdata) > len(known) + 1
    except (AttributeError, RuntimeError):
        return True


def _storage(t: torch.Tensor) -> int | None:
    try:
        return t.untyped_storage().data_ptr()
    except RuntimeError:  # tensors without storage (meta): nothing to alias
        return None


def f32(value: float, like: torch.Tensor) -> torch.Tensor:
    """A float constant as a 0-d tensor of ``like``'s dtype/device: CUDA's ``.1f`` is float32."""
    return torch.tensor(value, dtype=like.dtype, device=like.device)


def fma_f32(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """``a*b + c`` rounded once to float32, as the GPU's FFMA computes it (nvcc contracts
    ``x + k*y`` into one FFMA; torch has no fused multiply-add on the CPU that rounds once).

    The float64 product of two float32 is exact; the float64 sum rounds, and rounding that
    again to float32 is wrong only where the sum lands exactly on a float32 tie the exact
    value is not on: the sum's error (Knuth's TwoSum, exact) then says which neighbour the
    single rounding picks. Infinities and NaN follow IEEE fma (their TwoSum error is NaN, never
    on a tie)."""
    a64, b64, c64 = a.double(), b.double(), c.double()
    p = a64 * b64
    s = p + c64
    bb = s - p
    err = (p - (s - bb)) + (c64 - bb)
    r = s.float()
    r64 = r.double()
    other = torch.nextafter(r, torch.where(r64 < s, torch.full_like(r, math.inf), torch.full_like(r, -math.inf)))
    tie = (r64 != s) & ((r64 + other.double()) * 0.5 == s) & (err != 0)
    if not bool(tie.any()):
        return r
    up = torch.maximum(r, other)
    down = torch.minimum(r, other)
    return torch.where(tie, torch.where(err > 0, up, down), r)


def seq_sum(x: torch.Tensor) -> torch.Tensor:
    """Left-to-right sum over the last dimension, rounding after every add like a CUDA loop.

    ``torch.sum`` adds pairwise/vectorised and rounds differently; Darknet's avgpool and
    softmax accumulate one element at a time, so the golden values must too.
    """
    if x.shape[-1] == 0:
        return torch.zeros(x.shape[:-1], dtype=x.dtype, device=x.device)
    if x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64):
        import numpy as np  # numpy's accumulate is a sequential loop in the array's dtype

        with np.errstate(over="ignore", invalid="ignore"):  # a faulty lane may overflow to inf, as float32 on the GPU does
            running = np.add.accumulate(x.detach().contiguous().numpy(), axis=-1)[..., -1]
        return torch.from_numpy(np.ascontiguousarray(running)).reshape(x.shape[:-1])
    acc = torch.zeros(x.shape[:-1], dtype=x.dtype, device=x.device)
    for i in range(x.shape[-1]):
        acc = acc + x[..., i]
    return acc

