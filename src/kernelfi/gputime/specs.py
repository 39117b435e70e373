"""GPU descriptions as data: ``kernelfi/assets/gpus.json`` read into :class:`GpuSpec`.

Every number in the file carries its public source; this module only reads and checks it, so
adding a GPU is a data change (an entry under ``gpus`` naming a compute capability that
``architectures`` describes). Throughputs are per SM and per clock, in thread-level results
(the CUDA C++ Programming Guide's unit: one warp instruction is 32 results).
"""
from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Mapping

from kernelfi._utils import KernelfiError

#: The SASSIFI groups every opcode falls back to (``kernelfi.types.GROUPS``).
_GROUP_KEYS = ("FP32", "LD", "GPR", "PR", "NODEST", "OTHERS")


@dataclass(frozen=True)
class GpuSpec:
    """One GPU: its chip-level numbers and its architecture's per-SM numbers."""

    key: str                              # the name users type (``gtx750ti``)
    name: str                             # product name
    compute_capability: str
    architecture: str
    sms: int
    clock_hz: float
    dram_bytes_per_s: float
    launch_s: float
    schedulers: int
    latency_cycles: int                   # dependent-issue latency of an ALU instruction
    max_blocks_per_sm: int
    max_warps_per_sm: int
    registers_per_sm: int
    register_unit: int                    # registers are allocated per warp in units of this
    shared_per_sm: int                    # bytes
    throughput: Mapping[str, int]         # class -> results per clock per SM
    opcode_class: Mapping[str, str]       # SASS opcode -> class
    group_class: Mapping[str, str]        # SASSIFI group -> class (opcodes not listed)
    note: str = ""
    sources: Mapping[str, str] = field(default_factory=dict)  # field -> the source of its number

    def instruction_class(self, opcode: str, group: str) -> str:
        """The throughput class an instruction issues in (by opcode, else by group)."""
        return self.opcode_class.get(opcode) or self.group_class[group]


def _value(entry: Any, where: str) -> float:
    if not isinstance(entry, Mapping) or "value" not in entry or not entry.get("source"):
        raise KernelfiError(f"gpus.json: {where} must be an object with a value and its source")
    v = float(entry["value"])
    if not v > 0:
        raise KernelfiError(f"gpus.json: {where} must be positive, got {entry['value']!r}")
    return v


def _parse(data: Mapping[str, Any]) -> dict[str, GpuSpec]:
    classes = {k: v for k, v in data["classes"].items() if k not in ("about", "groups")}
    opcode_class = {op: cls for cls, info in classes.items() for op in info["opcodes"]}
    group_class = dict(data["classes"]["groups"])
    if sorted(group_class) != sorted(_GROUP_KEYS) or not set(group_class.values()) <= set(classes):
        raise KernelfiError("gpus.json: classes.groups must map every SASSIFI group to a class")
    out: dict[str, GpuSpec] = {}
    for key, g in data["gpus"].items():
        cc = str(g["compute_capability"])
        arch = data["architectures"].get(cc)
        if arch is None:
            raise KernelfiError(f"gpus.json: GPU '{key}' names compute capability {cc}, which no architecture describes")
        thr = {cls: int(_value(arch["throughput"].get(cls), f"architectures.{cc}.throughput.{cls}")) for cls in classes}
        num = {f: _value(arch[f], f"architectures.{cc}.{f}") for f in (
            "schedulers", "latency_cycles", "max_blocks_per_sm", "max_warps_per_sm", "registers_per_sm",
            "register_unit", "shared_per_sm")}
        chip = {f: _value(g[f], f"gpus.{key}.{f}") for f in ("sms", "clock_hz", "dram_bytes_per_s", "launch_s")}
        src = {f: str(g[f]["source"]) for f in chip} | {f: str(arch[f]["source"]) for f in num}
        src |= {f"throughput.{c}": str(arch["throughput"][c]["source"]) for c in classes}
        out[key] = GpuSpec(
            key=key, name=str(g["name"]), compute_capability=cc, architecture=str(arch["name"]),
            sms=int(chip["sms"]), clock_hz=chip["clock_hz"], dram_bytes_per_s=chip["dram_bytes_per_s"],
            launch_s=chip["launch_s"], schedulers=int(num["schedulers"]), latency_cycles=int(num["latency_cycles"]),
            max_blocks_per_sm=int(num["max_blocks_per_sm"]), max_warps_per_sm=int(num["max_warps_per_sm"]),
            registers_per_sm=int(num["registers_per_sm"]), register_unit=int(num["register_unit"]),
            shared_per_sm=int(num["shared_per_sm"]), throughput=thr, opcode_class=opcode_class,
            group_class=group_class, note=str(g.get("note", "")), sources=src)
    return out


@functools.lru_cache(maxsize=1)
def _load() -> tuple[dict[str, GpuSpec], dict[str, str]]:
    text = resources.files("kernelfi").joinpath("assets", "gpus.json").read_text(encoding="utf-8")
    data = json.loads(text)
    return _parse(data), dict(data["sources"])


def gpus() -> dict[str, GpuSpec]:
    """Every GPU the package describes, by key, in file order."""
    return dict(_load()[0])


def sources() -> dict[str, str]:
    """The public sources the numbers cite, by tag (``PG``, ``GM107``, ...)."""
    return dict(_load()[1])


def get_gpu(name: str) -> GpuSpec:
    """The GPU called ``name`` (case-insensitive); one clear line naming the known ones otherwise."""
    known = _load()[0]
    spec = known.get(str(name).strip().lower())
    if spec is None:
        raise KernelfiError(f"unknown GPU '{name}' (known: {', '.join(known)})")
    return spec
