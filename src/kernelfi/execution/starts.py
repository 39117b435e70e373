"""The golden state a struck layer's lanes start from, per input and launch.

A fault strikes one launch of its layer; every lane of the layer starts from the golden state at
the batch's first struck launch. The layer's launches before it (fill, im2col, gemm... for a
fault in add_bias) are the costly part of a layer: they run once per input and start, and their
result is kept while batches of that start follow (the campaign sorts batches by layer). Where
the golden run kept a GEMM's product (``Golden.pre``) and that product equals, bit for bit, what
the layer's own launches leave (checked once, on one input), the run starts after the GEMM.
A grouped convolution's G GEMMs share one kept C, the grouped call's (``golden.pre_items``):
the state after group g's GEMM is the C the layer's launches before the groups leave, with
the blocks of groups 0..g from it, each checked bit for bit against the per-group launches,
so a struck depthwise layer runs at most one group's pair before its struck launch instead of
up to G of them. A row never depends on which inputs share the run that computes it.
"""
from __future__ import annotations

import torch

from kernelfi.execution.golden import Golden, bits
from kernelfi.execution.layout import Layout
from kernelfi.lowering import Memory, Program
from kernelfi.lowering.groups import GroupRun


class StruckStarts:
    """Golden states at struck launches, kept for the latest (layer start, launch)."""

    def __init__(self, program: Program, golden: Golden, layout: Layout, fast: bool,
                 gemm_cache: dict[int, tuple[int, ...]] | None = None) -> None:
        """``gemm_cache``: the GEMM products another runner found usable on this machine
        (``Checks.gemm_cache``), instead of checking them again."""
        self.program, self.golden, self.layout, self.fast = program, golden, layout, fast
        self._key: tuple[int, int] | None = None
        self._rows: dict[int, Memory] = {}  # input -> its golden state at ``_key``
        #: a grouped convolution's GEMM launch but its last -> the run (its C kept at the last)
        self._group_of: dict[int, GroupRun] = {
            j: run for run in program.groups.values() for j in range(run.start + 1, run.end - 1, 2)}
        #: GEMM launch -> the per-lane shape of its output buffer, for the golden products
        #: that equal what the kernels leave there
        self.gemm_cache: dict[int, tuple[int, ...]] = (
            (gemm_cache if gemm_cache is not None else self._check_products()) if fast else {})

    def clear(self) -> None:
        """Forget the kept states (the next call recomputes them)."""
        self._key, self._rows = None, {}

    def at(self, layer: int, first: int, inputs: list[int]) -> Memory:
        """The per-lane golden buffers live at launch ``first`` of layer ``layer``, one row per
        input of ``inputs`` in that order."""
        start = self.layout.layer_span[layer][0]
        key = (start, first)
        if self._key != key:
            self._key, self._rows = key, {}
        missing = [i for i in inputs if i not in self._rows]
        if missing:
            self._compute(layer, start, first, missing)
        return {n: torch.cat([self._rows[i][n] for i in inputs]) for n in self._rows[inputs[0]]}

    def _compute(self, layer: int, start: int, first: int, inputs: list[int]) -> None:
        """One run for ``inputs`` from the layer's start (or from a kept GEMM product) to ``first``."""
        layout, trace = self.layout, self.layout.trace
        idx = torch.tensor(inputs, dtype=torch.long)
        gemm = max((g for g in self.gemm_cache if start <= g < first), default=None)
        if gemm is None:
            begin, mem = start, self._golden_rows(layout.live[layout.layer_pos[layer]], idx)
        else:  # from the golden run's GEMM product (what the launches before would leave)
            begin, mem = gemm + 1, self._restored(gemm, idx)
        with torch.no_grad():
            self.program.run(mem, begin, first, fast=self.fast)
        need = layout.live_launch[first]
        for row, inp in enumerate(inputs):
            self._rows[inp] = {n: mem[n][row:row + 1] for n in need if n in mem and layout.per_lane(n, mem[n])}

    def _golden_rows(self, names: frozenset[str], idx: torch.Tensor, skip: str | None = None) -> Memory:
        """The weights and rows ``idx`` of golden buffers ``names`` (and the input: kernels size
        new buffers by its lanes), but ``skip``."""
        mem: Memory = dict(self.program.weights)
        for name in names | {"input"}:
            if name != skip:
                mem[name] = self.golden.buffers[name].index_select(0, idx)
        return mem

    def _restored(self, gemm: int, idx: torch.Tensor) -> Memory:
        """The golden state of rows ``idx`` after GEMM launch ``gemm``, from the golden run's
        product: the product itself, or for a grouped convolution's GEMM of group g the C the
        layer's launches before its groups leave, blocks 0..g from the grouped call's C."""
        layout, trace = self.layout, self.layout.trace
        c = trace.launches[gemm].writes[0]
        run = self._group_of.get(gemm)
        if run is None:
            mem = self._golden_rows(layout.live_launch[gemm + 1], idx, skip=c)
            mem[c] = (self.golden.pre[gemm].index_select(0, idx) + 0.0).view(len(idx), *self.gemm_cache[gemm])
            return mem
        mem = self._before_groups(run, idx)
        mem[c] = self._group_blocks(mem[c], gemm, run, idx)
        return mem

    def _before_groups(self, run: GroupRun, idx: torch.Tensor) -> Memory:
        """Rows ``idx``'s golden state at the first launch of grouped convolution ``run``: its
        layer's launches before the groups (the fill) run here from the layer's start."""
        layout, trace = self.layout, self.layout.trace
        layer = trace.launches[run.start].layer
        mem = self._golden_rows(layout.live[layout.layer_pos[layer]], idx)
        with torch.no_grad():
            self.program.run(mem, layout.layer_span[layer][0], run.start, fast=True)
        return mem

    def _group_blocks(self, before: torch.Tensor, gemm: int, run: GroupRun, idx: torch.Tensor) -> torch.Tensor:
        """C after GEMM ``gemm`` of ``run`` (group g) for rows ``idx``: ``before`` (C at the
        groups' first launch) with the blocks of groups 0..g from the grouped call's kept C."""
        p = self.layout.trace.launches[gemm].params
        upto = int(p.get("c_offset", 0)) + int(p["M"]) * int(p["N"])  # the end of group g's block
        flat = before.reshape(len(idx), -1).clone()
        flat[:, :upto] = self.golden.pre[run.end - 1][:, :upto].index_select(0, idx)  # only the blocks it takes
        return flat.view(before.shape)

    def _check_products(self) -> dict[int, tuple[int, ...]]:
        """The golden GEMM products a struck layer may start from: those equal, bit for bit, to
        the C buffer the layer's own launches up to the GEMM leave (run here for one input); for
        a grouped convolution's kept C, each of its GEMMs (``_check_groups``)."""
        layout, trace = self.layout, self.layout.trace
        out: dict[int, tuple[int, ...]] = {}
        idx = torch.tensor([0], dtype=torch.long)
        ends = {run.end - 1: run for run in self.program.groups.values()}
        for gemm, product in self.golden.pre.items():
            layer = trace.launches[gemm].layer
            c = trace.launches[gemm].writes[0]
            mem = self._golden_rows(layout.live[layout.layer_pos[layer]], idx)
            with torch.no_grad():
                self.program.run(mem, layout.layer_span[layer][0], gemm + 1, fast=True)
            if torch.equal(mem[c].reshape(-1), product[0] + 0.0) and self._restorable(gemm):
                out[gemm] = tuple(mem[c].shape[1:])
            if gemm in ends:  # each group's start on its own: group g reads blocks 0..g only
                out.update(self._check_groups(ends[gemm], tuple(mem[c].shape[1:])))
        return out

    def _check_groups(self, run: GroupRun, shape: tuple[int, ...]) -> dict[int, tuple[int, ...]]:
        """The GEMMs of grouped convolution ``run`` but its last whose restored state
        (``_group_blocks``) equals, bit for bit, the C the layer's launches leave after them: the
        launches before the groups, then the pairs one by one, as a run that stops inside the
        groups takes them (the fast path's per-group calls), for one input."""
        c = self.layout.trace.launches[run.start + 1].writes[0]
        idx = torch.tensor([0], dtype=torch.long)
        out: dict[int, tuple[int, ...]] = {}
        mem = self._before_groups(run, idx)
        before = mem[c].clone()
        with torch.no_grad():
            for pair in range(run.start, run.end - 2, 2):
                self.program.run(mem, pair, pair + 2, fast=True)
                gemm = pair + 1
                if self._restorable(gemm) and torch.equal(bits(mem[c]), bits(self._group_blocks(before, gemm, run, idx))):
                    out[gemm] = shape
        return out

    def _restorable(self, gemm: int) -> bool:
        """Every buffer live after GEMM launch ``gemm`` but its output is in the golden cache."""
        c = self.layout.trace.launches[gemm].writes[0]
        return all(n in self.golden.buffers for n in self.layout.live_launch[gemm + 1] if n != c)
