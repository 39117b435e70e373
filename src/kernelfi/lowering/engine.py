"""Runs a kernel trace on a batch of lanes: the golden execution and the base of every campaign.

A ``Program`` is a trace plus its weight tensors. Execution is a loop over launches calling the
catalogue's batched kernels on a ``Memory`` (dict buffer name -> tensor, activations with a
leading lane dimension). Campaigns start mid-trace from cached golden state, so ``run`` takes
a launch range and an optional per-launch override (how faults enter a kernel).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Collection

import torch

from kernelfi._utils import KernelfiError
from kernelfi.kernels import fused_conv, get_kernel
from kernelfi.lowering.fastpath import Tap, Unit, plan_units, run_unit
from kernelfi.lowering.groups import GroupRun, accumulate, plan_groups, run_group, tails
from kernelfi.types import Launch, Trace

Memory = dict[str, torch.Tensor]
#: Called instead of the kernel for one launch: ``override(launch, mem)`` must write its outputs.
Override = Callable[[Launch, Memory], None]


@dataclass
class Program:
    """An executable lowered model."""

    trace: Trace
    weights: dict[str, torch.Tensor]
    _units: dict[int, Unit] | None = None
    _groups: dict[int, GroupRun] | None = None
    _group_tails: dict[int, GroupRun] | None = None
    _last_use: dict[int, tuple[str, ...]] | None = None

    @property
    def units(self) -> dict[int, Unit]:
        if self._units is None:
            self._units = plan_units(self.trace)
        return self._units

    @property
    def groups(self) -> dict[int, GroupRun]:
        """Grouped convolutions the fast path may run as one call (``lowering.groups``)."""
        if self._groups is None:
            self._groups = plan_groups(self.trace)
        return self._groups

    @property
    def group_tails(self) -> dict[int, GroupRun]:
        """The groups g.. of each grouped convolution, keyed by group g's im2col
        (``groups.tails``): the rest of a struck grouped layer in one call."""
        if self._group_tails is None:
            self._group_tails = tails(self.groups)
        return self._group_tails

    @property
    def last_use(self) -> dict[int, tuple[str, ...]]:
        """Launch index -> the activation buffers no later launch reads or writes (weights and
        the input excluded): what a run that keeps only its outputs may free after that launch."""
        if self._last_use is None:
            last: dict[str, int] = {}
            for launch in self.trace.launches:
                for name in (*launch.reads, *launch.writes):
                    if name not in self.weights and name != "input":  # kernels take the lane count from it
                        last[name] = launch.index
            by_launch: dict[int, list[str]] = {}
            for name, index in last.items():
                by_launch.setdefault(index, []).append(name)
            self._last_use = {k: tuple(v) for k, v in by_launch.items()}
        return self._last_use

    def memory(self, x: torch.Tensor) -> Memory:
        """Fresh memory for a batch of inputs (lanes = batch)."""
        shape = tuple(self.trace.input_shape)
        if x.dim() != len(shape) + 1 or tuple(x.shape[1:]) != shape:
            raise KernelfiError(
                f"{self.trace.model}: input of shape {tuple(x.shape[1:])} does not match the model's {shape}")
        mem: Memory = dict(self.weights)
        mem["input"] = x.to(torch.float32)
        return mem

    def lane_memory(self, buffers: Memory, lanes: int) -> Memory:
        """Memory for a run that starts mid-trace on ``lanes`` lanes: the weights, the per-lane
        ``buffers``, and where the input is not among them an empty ``(lanes, 0)`` input, from
        which kernels take the lane count of the buffers they create."""
        mem: Memory = dict(self.weights)
        mem.update(buffers)
        if "input" not in buffers:
            mem["input"] = torch.empty((lanes, 0), dtype=torch.float32)
        return mem

    def run(self, mem: Memory, start: int = 0, stop: int | None = None, fast: bool = True,
            overrides: dict[int, Override] | None = None,
            after: Callable[[Launch, Memory], None] | None = None, tap: Tap | None = None,
            keep: Collection[str] | None = None) -> Memory:
        """Execute launches ``start .. stop-1`` in place on ``mem``.

        ``fast`` lets an im2col+gemm pair whose workspace nobody else reads run as one
        convolution (same values up to float rounding); the pair runs explicitly when either
        launch has an override, so faults always see the kernels' real data flow; a grouped
        convolution's pairs run as one grouped call where ``lowering.groups`` found that bitwise
        equal to the per-group calls, and so do the pairs after a struck one (a tail). Golden and
        faulty lanes compared with each other must run with the same ``fast`` setting.
        ``tap`` sees the GEMM product of each fused conv/connected unit and the C of each
        grouped call (``fastpath.Tap``).
        With ``keep``, every other activation buffer leaves ``mem`` after its last use, as a
        framework frees dead intermediates: a whole forward pass then holds a few layers'
        buffers instead of all of them, and reuses their memory instead of faulting in fresh
        pages every pass (ResNet-50: 5,700-11,000 page faults per forward without it once
        another model had been loaded in the process).
        """
        launches = self.trace.launches
        stop = len(launches) if stop is None else stop
        overrides = overrides or {}
        units = self.units if fast else {}
        groups = self.groups if fast else {}
        group_tails = self.group_tails if fast else {}
        dead = self.last_use if keep is not None else {}
        kept = frozenset(keep or ())
        done = start  # launches before ``done`` have freed their dead buffers

        def free(upto: int) -> None:
            nonlocal done
            for j in range(done, upto):
                for name in dead.get(j, ()):
                    if name not in kept:
                        mem.pop(name, None)
            done = upto

        i = start
        while i < stop:
            if dead:
                free(i)
            launch = launches[i]
            unit = units.get(i)
            if (unit is not None and unit.end <= stop and not any(j in overrides for j in range(unit.start, unit.end))
                    and run_unit(unit, mem, tap)):
                if after is not None:
                    for j in range(unit.start, unit.end):
                        after(launches[j], mem)
                i = unit.end
                continue
            grp = groups.get(i) or group_tails.get(i)
            if (grp is not None and grp.end <= stop and not any(j in overrides for j in range(grp.start, grp.end))
                    and run_group(grp, launches, mem, tap)):
                if after is not None:
                    for j in range(grp.start, grp.end):
                        after(launches[j], mem)
                i = grp.end
                continue
            if (fast and launch.kernel == "im2col" and i + 1 < stop and i not in overrides
                    and i + 1 not in overrides and launches[i + 1].kernel == "gemm"
                    and launches[i + 1].reads[1] == "workspace"):
                gemm = launches[i + 1]
                out = gemm.writes[0]
                conv = fused_conv(mem[launch.reads[0]], mem[gemm.reads[0]], launch.params, gemm.params)
                mem[out] = accumulate(mem[out], conv, gemm.params)
                if after is not None:
                    after(launch, mem)
                    after(gemm, mem)
                i += 2
                continue
            fn = overrides.get(i)
            if fn is not None:
                fn(launch, mem)
            else:
                get_kernel(launch.kernel).run(mem, launch)
            if after is not None:
                after(launch, mem)
            i += 1
        if dead:
            free(stop)
        return mem

    def forward(self, x: torch.Tensor, fast: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, probabilities) of a batch, computed by the kernels."""
        mem = self.run(self.memory(x), fast=fast, keep=(self.trace.logits, self.trace.output))
        b = x.shape[0]
        return mem[self.trace.logits].reshape(b, -1), mem[self.trace.output].reshape(b, -1)

