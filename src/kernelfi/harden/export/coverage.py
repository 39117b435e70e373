"""Bit flips injected into an exported model through hooks, and what each technique makes of
them (docs/export.md §4).

``flip_bit`` flips one bit of one output element of one call of a module (a forward hook,
removed in ``finally``); ``flip_in`` hands a technique module a faulty op (one replica's output
flipped) or a flipped input (a clamp's). ``measure_coverage`` injects seeded single-bit flips where each
technique acts: into one replica of a TMR or DMR op, into the output of an ABFT-protected
product, into the value a range clamp receives. It does so with a pre-hook on the technique
module that hands it a faulty op (or input), so it reaches ops called from two places and
functional ops (residual adds) alike. It compares the technique's output with the fault-free one.
"""
from __future__ import annotations

import contextlib
import random
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch
from torch import Tensor, nn

#: Technique module class names in an exported model.py -> technique.
TECHNIQUE_CLASSES = {"TMR": "tmr", "DMR": "dmr", "ABFTConv2d": "abft", "ABFTLinear": "abft", "Clamp": "range"}


def flip_element(t: Tensor, index: int, bit: int) -> Tensor:
    """A copy of the float32 tensor ``t`` with bit ``bit`` of flat element ``index`` flipped."""
    if t.dtype != torch.float32:
        raise TypeError(f"flip_element: float32 tensors only, got {t.dtype}")
    out = t.detach().clone().contiguous()
    flat = out.view(torch.int32).view(-1)
    flat[index] ^= (1 << bit) if bit < 31 else -(1 << 31)
    return out


@contextlib.contextmanager
def flip_bit(module: nn.Module, index: int, bit: int, call: int = 0) -> Iterator[list[int]]:
    """Inside the context, call ``call`` (0-based, counted from entering) of ``module`` returns
    its output with one bit flipped; yields the call counter (one-element list)."""
    calls = [0]

    def hook(mod: nn.Module, args: Any, output: Tensor) -> Tensor | None:
        k = calls[0]
        calls[0] += 1
        return flip_element(output, index, bit) if k == call else None

    handle = module.register_forward_hook(hook)
    try:
        yield calls
    finally:
        handle.remove()


@dataclass(frozen=True)
class Flip:
    """One injected flip and its outcome. ``exact``: the technique's output equals the fault-free
    one bit for bit; ``error``: their largest difference (inf for NaN); ``detected``: DMR re-ran,
    ABFT flagged, or the clamp moved the value (False for TMR, which out-votes without
    detecting); ``in_bounds``: the output lies in the clamp's bounds (range only)."""

    technique: str
    op: str
    replica: int
    index: int
    bit: int
    injected: float
    detected: bool
    exact: bool
    error: float
    in_bounds: bool
    top1_kept: bool


@dataclass(frozen=True)
class Coverage:
    """The flips of one technique."""

    technique: str
    flips: tuple[Flip, ...]

    def share(self, what: str) -> float:
        """Share of flips with ``what`` true (``exact``, ``detected``, ``in_bounds``, ``top1_kept``)."""
        return sum(bool(getattr(f, what)) for f in self.flips) / max(len(self.flips), 1)

    def summary(self) -> dict[str, float]:
        return {"flips": len(self.flips), **{k: self.share(k) for k in ("exact", "detected", "in_bounds", "top1_kept")},
                "max_error": max((f.error for f in self.flips), default=0.0)}


class FaultyOp:
    """The op, with one bit flipped in the output of its ``replica``-th call; its attributes
    (an ABFT op's weight, stride, ...) are the op's."""

    def __init__(self, op: Callable[..., Tensor], replica: int, index: int, bit: int) -> None:
        self.op, self.replica, self.index, self.bit, self.calls = op, replica, index, bit, 0
        self.injected = 0.0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.op, name)

    def __call__(self, *args: Any, **kwargs: Any) -> Tensor:
        out = self.op(*args, **kwargs)
        k, self.calls = self.calls, self.calls + 1
        if k != self.replica:
            return out
        bad = flip_element(out, self.index, self.bit)
        self.injected = _diff(bad.view(-1)[self.index], out.reshape(-1)[self.index])
        return bad


@dataclass
class Injection:
    """What ``flip_in`` handed the technique module, one entry per call: a ``FaultyOp`` (TMR,
    DMR, ABFT) or the flipped tensor (a clamp); and the module's outputs."""

    handed: list[Any] = field(default_factory=list)
    outputs: list[Tensor] = field(default_factory=list)


@contextlib.contextmanager
def flip_in(technique: nn.Module, index: int, bit: int, replica: int = 0) -> Iterator[Injection]:
    """Inside the context, each call of ``technique`` (an exported model's TMR, DMR, ABFT or
    Clamp module, ``net.hardening.<call>``) is handed a fault: its op with bit ``bit`` of
    element ``index`` flipped in the output of the ``replica``-th run, or for a clamp that bit
    flipped in the value it receives. A pre-hook hands it, so functional ops (``torch.mul``,
    ``F.interpolate``) are reached as modules are. Yields the ``Injection``."""
    rec = Injection()
    clamp = TECHNIQUE_CLASSES.get(type(technique).__name__) == "range"

    def pre(mod: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        bad = flip_element(args[0], index, bit) if clamp else FaultyOp(args[0], replica, index, bit)
        rec.handed.append(bad)
        return (bad, *args[1:])

    def post(mod: nn.Module, args: Any, output: Tensor) -> None:
        rec.outputs.append(output.detach().clone())

    h1 = technique.register_forward_pre_hook(pre)
    h2 = technique.register_forward_hook(post)
    try:
        yield rec
    finally:
        h1.remove()
        h2.remove()


def _diff(a: Tensor, b: Tensor) -> float:
    d = (a.double() - b.double()).abs()
    return float(d.nan_to_num(float("inf")).max()) if d.numel() else 0.0


def _counter(m: nn.Module) -> int:
    return int(getattr(m, "reexecuted", 0)) + int(getattr(m, "corrected", 0)) + int(getattr(m, "recomputed", 0))


def techniques(net: nn.Module) -> dict[str, list[tuple[str, nn.Module]]]:
    """technique -> [(name, module)] of the technique modules in an exported model."""
    out: dict[str, list[tuple[str, nn.Module]]] = {}
    for name, m in net.named_modules():
        tech = TECHNIQUE_CLASSES.get(type(m).__name__)
        if tech:
            out.setdefault(tech, []).append((name, m))
    return out


def measure_coverage(net: nn.Module, x: Tensor, n: int = 200, seed: int = 0,
                     only: tuple[str, ...] | None = None) -> dict[str, Coverage]:
    """``n`` seeded single-bit flips per technique of an exported model, on the batch ``x``.

    Args:
        net: an exported variant (``load_exported``).
        x: the inputs of each run.
        n: flips per technique; seed: their seed (op, replica, element and bit uniform).
        only: restrict to these techniques.

    Returns:
        technique -> ``Coverage`` (its ``flips`` and ``summary()``).
    """
    mods = {t: ms for t, ms in techniques(net).items() if only is None or t in only}
    golden: dict[str, Tensor] = {}
    handles = [m.register_forward_hook(_capture(golden, name)) for ms in mods.values() for name, m in ms]
    try:
        with torch.no_grad():
            ref = net(x)
    finally:
        for h in handles:
            h.remove()
    top1 = ref.argmax(-1)
    rng = random.Random(seed)
    out: dict[str, Coverage] = {}
    for tech, ms in sorted(mods.items()):
        flips = []
        for _ in range(n):
            name, m = ms[rng.randrange(len(ms))]
            replica = rng.randrange({"tmr": 3, "dmr": 2}.get(tech, 1))
            index, bit = rng.randrange(golden[name].numel()), rng.randrange(32)
            flips.append(_one(net, x, tech, name, m, replica, index, bit, golden[name], top1))
        out[tech] = Coverage(tech, tuple(flips))
    return out


def _capture(store: dict[str, Tensor], name: str) -> Callable[..., None]:
    def hook(mod: nn.Module, args: Any, output: Tensor) -> None:
        store[name] = output.detach().clone()
    return hook


def _one(net: nn.Module, x: Tensor, tech: str, name: str, m: nn.Module, replica: int, index: int, bit: int,
         want: Tensor, top1: Tensor) -> Flip:
    before = _counter(m)
    with flip_in(m, index, bit, replica) as rec, torch.no_grad():
        final = net(x)
    got = rec.outputs[-1]
    exact = bool(torch.equal(got.view(torch.int32), want.view(torch.int32)))
    if tech == "range":
        lo, hi = m.lo, m.hi  # type: ignore[attr-defined]
        received = rec.handed[0]
        injected = _diff(received.view(-1)[index], want.reshape(-1)[index])
        detected = not torch.equal(got.view(torch.int32), received.view(torch.int32))
        in_bounds = bool(((got >= lo) & (got <= hi)).all())
    else:
        injected = rec.handed[0].injected if rec.handed else 0.0
        detected = _counter(m) > before
        in_bounds = True
    return Flip(tech, name, replica, index, bit, injected, detected, exact, _diff(got, want), in_bounds,
                bool(torch.equal(final.argmax(-1), top1)))
