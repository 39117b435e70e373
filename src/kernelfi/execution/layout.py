"""What every stage of the engine looks up about one trace: layers, liveness, lanes.

Where each layer's launches lie, which buffers a run from a layer on (or from a launch on)
reads, which buffer holds a layer's output, which buffers are weights and whether a tensor in
a batch's memory is per lane (a weight is shared by all lanes until a stray store gives a lane
its own copy). Computed once per runner; nothing here changes after.
"""
from __future__ import annotations

import torch

from kernelfi.execution.golden import live_at_launch, live_in
from kernelfi.faults.inject import Reach
from kernelfi.faults.memmap import MemoryMap
from kernelfi.lowering import Memory
from kernelfi.types import BufferSpec, Trace


class Layout:
    """One trace's facts for the engine (see the module docstring)."""

    def __init__(self, trace: Trace) -> None:
        self.trace = trace
        #: per layer position: the non-weight buffers a run from that layer on reads
        self.live: list[frozenset[str]] = live_in(trace)
        #: per launch index: the non-weight buffers launches from there on read
        self.live_launch: list[frozenset[str]] = live_at_launch(trace)
        #: layer index -> its position in ``trace.layers``
        self.layer_pos: dict[int, int] = {spec.index: p for p, spec in enumerate(trace.layers)}
        #: layer index -> (its first launch, one past its last)
        self.layer_span: dict[int, tuple[int, int]] = {}
        for launch in trace.launches:
            start, end = self.layer_span.get(launch.layer, (launch.index, launch.index + 1))
            self.layer_span[launch.layer] = (min(start, launch.index), max(end, launch.index + 1))
        #: layer index -> the activation buffer holding its output (where propagation is measured)
        self.out_buf: dict[int, str] = {
            launch.layer: launch.writes[0] for launch in trace.launches
            if launch.writes and launch.writes[0] != "workspace" and trace.buffer(launch.writes[0]).kind == "activation"}
        self.spec: dict[str, BufferSpec] = {b.name: b for b in trace.buffers}
        self.weight_names = frozenset(b.name for b in trace.buffers if b.kind == "weight")
        self.memmap = MemoryMap.from_trace(trace)
        #: per launch index: the buffers a faulty thread's loads and stores reach (``inject.Reach``):
        #: what is live at the launch or after it, its own outputs, the weights, whatever the batch holds
        at = self.live_launch
        self.reach: list[Reach] = [Reach(at[l.index] | set(l.writes) | self.weight_names,
                                         at[l.index] | at[l.index + 1] | set(l.writes) | self.weight_names)
                                   for l in trace.launches]

    def per_lane(self, name: str, t: torch.Tensor) -> bool:
        """Whether ``t`` (buffer ``name`` in a batch's memory) has a lane dimension: every
        non-weight buffer, and a weight some lane holds its own copy of."""
        spec = self.spec.get(name)
        if spec is None or spec.kind != "weight":
            return True
        return t.dim() == len(spec.shape) + 1

    def take(self, mem: Memory, rows: list[int]) -> Memory:
        """Rows ``rows`` of every per-lane tensor of ``mem`` (weights shared by all stay out)."""
        idx = torch.tensor(rows, dtype=torch.long)
        return {n: t.index_select(0, idx) for n, t in mem.items() if self.per_lane(n, t)}

    def lane_weights(self, mem: Memory) -> list[str]:
        """The weights some lane of ``mem`` holds its own copy of (an IOA store landed there)."""
        return [n for n in self.weight_names if n in mem and self.per_lane(n, mem[n])]

    def names_at(self, pos: int) -> frozenset[str]:
        """What a run from layer position ``pos`` reads; past the last layer, the output."""
        return self.live[pos] if pos < len(self.trace.layers) else frozenset({self.trace.output})
