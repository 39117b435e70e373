"""The hardening plan: what to protect and how, as JSON (docs/hardening.md).

A plan is data, not code, because the store records it with every campaign run on the hardened
model (``CampaignMeta.hardening``): two campaigns are comparable only if their plans are equal.
``Plan.from_dict`` validates, so a hand-written plan fails with a message naming the entry.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from kernelfi._utils import KernelfiError

VERSION = 1
TECHNIQUES: tuple[str, ...] = ("tmr", "dmr", "abft", "range")
#: Techniques that re-execute launches (a launch belongs to at most one such unit).
REPLICATION: tuple[str, ...] = ("tmr", "dmr", "abft")
TARGETS: tuple[str, ...] = ("launch", "kernel", "layer")


@dataclass(frozen=True)
class Protection:
    """One ``protect`` entry: launches selected by ``target``/``name`` and the technique.

    ``bounds`` (range restriction only) maps an activation buffer to its profiled [lo, hi];
    ``extra`` keeps any other keys (the planner's estimates) through a round trip.
    """

    target: str
    name: str
    technique: str
    bounds: Mapping[str, tuple[float, float]] | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.target not in TARGETS:
            raise KernelfiError(f"hardening plan: target '{self.target}' is not one of {', '.join(TARGETS)}")
        if self.technique not in TECHNIQUES:
            raise KernelfiError(f"hardening plan: technique '{self.technique}' is not one of {', '.join(TECHNIQUES)}")
        if self.bounds is not None:
            clean: dict[str, tuple[float, float]] = {}
            for buf, pair in self.bounds.items():
                try:
                    lo, hi = (float(v) for v in pair)
                except (TypeError, ValueError):
                    raise KernelfiError(f"hardening plan: bounds of '{buf}' must be [lo, hi], got {pair!r}") from None
                if math.isnan(lo) or math.isnan(hi) or lo > hi:
                    raise KernelfiError(f"hardening plan: bounds of '{buf}' must satisfy lo <= hi, got [{lo}, {hi}]")
                clean[str(buf)] = (lo, hi)
            object.__setattr__(self, "bounds", clean)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"target": self.target, "name": self.name, "technique": self.technique}
        if self.bounds is not None:
            d["bounds"] = {k: [lo, hi] for k, (lo, hi) in sorted(self.bounds.items())}
        d.update({k: v for k, v in self.extra.items() if k not in d})
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Protection":
        if not isinstance(d, Mapping):
            raise KernelfiError(f"hardening plan: a protect entry must be an object, got {d!r}")
        missing = [k for k in ("target", "name", "technique") if k not in d]
        if missing:
            raise KernelfiError(f"hardening plan: protect entry {dict(d)!r} lacks {', '.join(missing)}")
        extra = {k: v for k, v in d.items() if k not in ("target", "name", "technique", "bounds")}
        return cls(str(d["target"]), str(d["name"]), str(d["technique"]), d.get("bounds"), extra)


@dataclass(frozen=True)
class Plan:
    """A hardening plan (``docs/hardening.md`` §2)."""

    model: str
    protect: tuple[Protection, ...]
    expected: Mapping[str, Any] = field(default_factory=dict)
    budget: float | None = None
    source_campaigns: tuple[int, ...] = ()
    version: int = VERSION
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"version": self.version, "model": self.model,
                             "protect": [p.to_dict() for p in self.protect], "expected": dict(self.expected),
                             "budget": self.budget, "source_campaigns": list(self.source_campaigns)}
        d.update({k: v for k, v in self.extra.items() if k not in d})
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Plan":
        if not isinstance(d, Mapping) or "protect" not in d:
            raise KernelfiError("not a kernelfi hardening plan (no 'protect' list)")
        version = int(d.get("version", VERSION))
        if version != VERSION:
            raise KernelfiError(f"hardening plan version {version} is not supported (this kernelfi reads {VERSION})")
        if not isinstance(d["protect"], list):
            raise KernelfiError("hardening plan: 'protect' must be a list")
        budget = d.get("budget")
        known = ("version", "model", "protect", "expected", "budget", "source_campaigns")
        return cls(model=str(d.get("model", "")), protect=tuple(Protection.from_dict(p) for p in d["protect"]),
                   expected=dict(d.get("expected") or {}), budget=None if budget is None else float(budget),
                   source_campaigns=tuple(int(c) for c in d.get("source_campaigns") or ()), version=version,
                   extra={k: v for k, v in d.items() if k not in known})

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    @classmethod
    def from_json(cls, text: str) -> "Plan":
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as err:
            raise KernelfiError(f"not a JSON hardening plan: {err}") from None

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json() + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "Plan":
        p = Path(path)
        try:
            return cls.from_json(p.read_text())
        except FileNotFoundError:
            raise KernelfiError(f"{p}: no such hardening plan") from None
        except KernelfiError as err:
            raise KernelfiError(f"{p}: {err}") from None


def as_plan(plan: Plan | Mapping[str, Any]) -> Plan:
    return plan if isinstance(plan, Plan) else Plan.from_dict(plan)


def full_plan(model: str, kernels: tuple[str, ...] | list[str], technique: str) -> Plan:
    """Protect every launch of the given kernel types with one technique (full DMR/TMR)."""
    return Plan(model, tuple(Protection("kernel", k, technique) for k in kernels))


def parse_budget(text: str | float) -> float:
    """``"5%"`` -> 0.05, ``"0.05"`` -> 0.05 (a share of the unhardened run time)."""
    s = str(text).strip()
    try:
        v = float(s[:-1]) / 100.0 if s.endswith("%") else float(s)
    except ValueError:
        raise KernelfiError(f"--budget: '{text}' is not a percentage like 5% or a share like 0.05") from None
    if not 0.0 <= v <= 10.0:
        raise KernelfiError(f"--budget: {text} is outside 0%..1000%")
    return v
