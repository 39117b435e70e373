"""The struck layer without whole faulty lanes: golden lanes plus each fault's stores.

A fault strikes one launch of its layer. Before that launch every faulty lane is its input's
golden lane; the launch's replay (``faults.inject.fault_writes``) says exactly which elements
the struck thread(s) leave different. When the layer's remaining launches are pointwise (bias,
scale, normalize, activation: element i of the output depends only on element i of the
inputs), those differences stay where they landed, so lanes of one input whose struck elements
do not overlap can share one *composite* lane: the launches run once for the composite and
each element is read back for the lane that owns it. The layer's kernels then run on one
golden lane per input plus a composite or two, instead of on every faulty lane, and the
comparisons that judge Masked and No-Malfunction touch only the struck elements.

It yields what the whole-lane run yields, field for field (a test runs both): the Masked test
follows ``torch.equal`` (NaN unequal to NaN), the propagation diff and the return to golden
``cone.different`` (NaN equal to NaN), and a golden NaN in a compared row is honoured as the
whole-row comparisons would. Lanes whose stores reach the weights, or that go beyond what a
composite can attribute, are handed back to the whole-lane run.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import torch

from kernelfi.execution import native
from kernelfi.execution.cone import REL_FLOOR, Cone, SparseLane, diff_segments, different, has_nan
from kernelfi.execution.lanes import BatchState
from kernelfi.execution.layout import Layout
from kernelfi.execution.starts import StruckStarts
from kernelfi.faults.inject import LaneEffect, fault_writes
from kernelfi.kernels import get_kernel
from kernelfi.lowering import Memory, Program
from kernelfi.types import Launch, Outcome, Propagation, Trace

#: kernels whose output element i depends only on element i of their per-lane inputs
POINTWISE = frozenset({"add_bias", "scale_bias", "normalize", "activate_array"})

Write = tuple[str, int, "int | float"]
#: per buffer, (flat indices, values) where a lane differs from golden
Differences = dict[str, tuple[torch.Tensor, torch.Tensor]]


def pointwise_after(trace: Trace, k: int, end: int) -> bool:
    """True when launch ``k``'s faults can run sparse: the layer's launches after it are
    pointwise and the fault is judged at ``k`` itself (not at a hardened unit's checker)."""
    if trace.launches[k].judged_at != k:
        return False
    return all(trace.launches[i].kernel in POINTWISE for i in range(k + 1, end))


def composites(claims: list[tuple[int, frozenset[int]]]) -> list[list[int]]:
    """Group lanes (fault, flat indices they wrote) so no two in a group share an index."""
    groups: list[tuple[list[int], set[int]]] = []
    for fault, idx in claims:
        for faults, taken in groups:
            if taken.isdisjoint(idx):
                faults.append(fault)
                taken |= idx
                break
        else:
            groups.append(([fault], set(idx)))
    return [faults for faults, _ in groups]


@dataclass
class _Struck:
    """One launch's faulty lanes: the golden state after the launch and each lane's stores."""

    after: Memory = field(default_factory=dict)
    writes: dict[int, list[Write]] = field(default_factory=dict)


def _differs(writes: list[Write], after: Memory, g: int, names: set[str], nan_rows: dict) -> bool:
    """The whole-row ``torch.equal`` test of the struck kernel's outputs, from the stores alone
    (Python's float ``!=`` is torch.equal's: NaN unequal to itself, -0.0 equal to 0.0)."""
    for name in names:
        t = after.get(name)
        if t is None or not t.is_floating_point():
            continue
        if (name, g) not in nan_rows:
            nan_rows[name, g] = has_nan(t[g])
        if nan_rows[name, g]:
            return True  # torch.equal never holds for a row holding NaN
    for buf, i, v in writes:
        if after[buf][g].reshape(-1)[i].item() != v:
            return True
    return False


class StruckLanes(NamedTuple):
    """What the struck layer hands on: lanes for the cone, lanes that need whole tensors from
    the next layer on, and the faults to run as whole lanes instead (``Runner``)."""

    cone: list[SparseLane]
    whole: list[SparseLane]
    fallback: list[int]


class StruckLayer:
    """Runs the struck layer of a batch's pointwise-after faults (see the module docstring)."""

    def __init__(self, program: Program, layout: Layout, starts: StruckStarts, cone: Cone, fast: bool) -> None:
        self.program, self.layout, self.starts, self.cone, self.fast = program, layout, starts, cone, fast

    def run(self, state: BatchState, refs: list[int], layer: int) -> StruckLanes:
        """Run layer ``layer`` for the faults ``refs`` of ``state.faults`` (every one struck in
        it, ``pointwise_after`` its launch). Records Masked, DUE and No-Malfunction results and
        each fault's effect and propagation row in ``state``."""
        layout, faults = self.layout, state.faults
        trace = layout.trace
        pos = layout.layer_pos[layer]
        end = layout.layer_span[layer][1]
        first = min(faults[j].fault.site.launch for j in refs)
        inputs = sorted({faults[j].fault.input_id for j in refs})
        golden_row = {inp: row for row, inp in enumerate(inputs)}
        mem = self.program.lane_memory(self.starts.at(layer, first, inputs), len(inputs))
        by_launch: dict[int, list[int]] = {}
        for j in refs:
            by_launch.setdefault(faults[j].fault.site.launch, []).append(j)
        struck: dict[int, _Struck] = {}
        later = {k: {b for launch in trace.launches[k + 1:end] for b in (*launch.reads, *launch.writes)}
                 for k in by_launch}
        out_name = layout.out_buf.get(trace.layers[pos].index)
        needed = set(layout.live[pos + 1]) | ({out_name} if out_name else set())

        def override(k: int):
            def run(launch: Launch, m: Memory) -> None:
                before = {n: m[n] for n in set(launch.writes) | set(launch.reads) if n in m}
                get_kernel(launch.kernel).run(m, launch)
                record = struck[k] = _Struck()
                for j in by_launch[k]:
                    effect = state.effects[j] = LaneEffect(golden_lane=golden_row[faults[j].fault.input_id])
                    record.writes[j] = fault_writes(launch, m, before, effect.golden_lane, faults[j].fault, effect,
                                                   layout.memmap, layout.per_lane, layout.reach[k])
                # what the rest of the layer, the Masked test and the comparisons read: not the dead
                # buffers (the im2col workspace is up to 7 MiB per input on ResNet-50)
                keep = set(launch.writes) | later[k] | needed
                for j in by_launch[k]:
                    keep |= state.effects[j].touched | {b for b, _, _ in record.writes[j]}
                record.after = {n: t.clone() for n, t in m.items() if n in keep and layout.per_lane(n, t)}
            return run

        with torch.no_grad():
            self.program.run(mem, first, end, fast=self.fast, overrides={k: override(k) for k in by_launch})
        fallback: list[int] = []
        live_next = layout.live[pos + 1]
        spec = trace.layers[pos]
        names = [n for n in sorted(needed) if n in mem]
        golden_nan = torch.zeros(len(inputs), dtype=torch.bool)  # a golden NaN keeps a lane "dirty" (a != g)
        for n in live_next:
            if n in mem and mem[n].is_floating_point():
                rows = mem[n].reshape(len(inputs), -1)
                if rows.shape[1]:
                    golden_nan |= torch.isnan(rows.amax(dim=1))  # amax propagates NaN: one pass, no mask
        found: dict[int, Differences] = {}
        for k, launch_lanes in sorted(struck.items()):
            launch = trace.launches[k]
            claims: dict[int, list[tuple[int, frozenset[int]]]] = {}
            nan_rows: dict = {}
            for j in by_launch[k]:
                effect, writes = state.effects[j], launch_lanes.writes[j]
                if effect.due:
                    state.finish(j, Outcome.DUE, (effect.due,))
                elif any(b in layout.weight_names for b, _, _ in writes):
                    fallback.append(j)
                elif not _differs(writes, launch_lanes.after, effect.golden_lane, set(launch.writes) | effect.touched,
                                  nan_rows):
                    state.finish(j, Outcome.MASKED)
                else:
                    claims.setdefault(effect.golden_lane, []).append((j, frozenset(i for _, i, _ in writes)))
            comps = [(row, comp) for row, group in claims.items() for comp in composites(group)]
            if comps:
                got, lost = self._composites(launch_lanes, comps, k, end, mem, names)
                found.update(got)
                fallback.extend(lost)
        cone_lanes: list[SparseLane] = []
        dense_lanes: list[SparseLane] = []
        followed = sorted(found)
        diffs = [(0, 0.0, 0.0)] * len(followed)
        if out_name is not None and out_name in mem:
            numel = mem[out_name][0].numel()
            parts = [(s, found[j][out_name]) for s, j in enumerate(followed) if out_name in found[j]]
            if parts:
                gflat = mem[out_name].reshape(len(inputs), -1)
                faulty = torch.cat([v for _, (_, v) in parts])
                golden = torch.cat([gflat[golden_row[state.input_of(followed[s])]][i] for s, (i, _) in parts])
                segment = torch.cat([torch.full((i.numel(),), s, dtype=torch.long) for s, (i, _) in parts])
                diffs = diff_segments(faulty, golden, segment, len(followed))
            for j, (corrupted, max_abs, max_rel) in zip(followed, diffs):
                state.propagation[j].append(Propagation(spec.index, corrupted, numel, max_abs, max_rel))
        for j in followed:
            inp = state.input_of(j)
            live = {n: d for n, d in found[j].items() if n in live_next}
            if not live and not bool(golden_nan[golden_row[inp]]):
                state.finish(j, Outcome.SDC_NO_MALFUNCTION, propagated=True)
                continue
            lane = self.cone.lane(j, inp, live)
            (dense_lanes if lane.flat else cone_lanes).append(lane)
        return StruckLanes(cone_lanes, dense_lanes, fallback)

    def _composites(self, struck: _Struck, comps: list[tuple[int, list[int]]], k: int, end: int, gold: Memory,
                    names: list[str]) -> tuple[dict[int, Differences], list[int]]:
        """Run launches k+1..end-1 once for all composites, a composite being golden row ``g``
        carrying the stores of its lanes; per lane and buffer, the (flat indices, values) where
        the result differs from golden. A composite with a difference nobody owns (the launches
        were not pointwise after all) hands its lanes back."""
        rows = torch.tensor([g for g, _ in comps], dtype=torch.long)
        cmem = self.program.lane_memory({n: t.index_select(0, rows) for n, t in struck.after.items()}, len(comps))
        stores: list[dict[str, dict[int, int]]] = []  # per composite: buffer -> flat index -> lane
        for c, (_, comp) in enumerate(comps):
            own: dict[str, dict[int, int]] = {}
            for j in comp:
                for buf, i, v in struck.writes[j]:
                    cmem[buf][c].view(-1)[i] = v
                    own.setdefault(buf, {})[i] = j
            stores.append(own)
        with torch.no_grad():
            self.program.run(cmem, k + 1, end, fast=self.fast)
        got: dict[int, Differences] = {j: {} for _, comp in comps for j in comp}
        lost: set[int] = set()
        for n in names:
            f = cmem[n].reshape(len(comps), -1)
            owner = [_owners(own, f.shape[1], cmem) for own in stores]
            per = _owned_diffs(f, gold[n].reshape(gold[n].shape[0], -1), rows.tolist(), owner)
            if per is None:  # a golden NaN, no library, or a difference nobody owns: the whole comparison
                per = {}
                gv = gold[n].index_select(0, rows).reshape(len(comps), -1)
                cs, idx = different(f, gv).nonzero(as_tuple=True)
                for c, i in zip(cs.tolist(), idx.tolist()):
                    j = owner[c].get(i)
                    if j is None:
                        lost.add(c)
                    else:
                        per.setdefault((c, j), []).append(i)
            for (c, j), ii in per.items():
                t = torch.tensor(ii, dtype=torch.long)
                got[j][n] = (t, f[c][t].clone())
        back = [j for c in sorted(lost) for j in comps[c][1]]
        for j in back:
            got.pop(j, None)
        return got, back


def _owners(own: dict[str, dict[int, int]], numel: int, cmem: Memory) -> dict[int, int]:
    """Which lane of a composite owns element i of a buffer of ``numel`` elements per lane: the
    lane that stored at index i into a buffer of that size (the launches after the struck one
    are pointwise, so a store reaches element i of their outputs only). A store that went to a
    buffer of another size (the im2col workspace, a stray store into another layer's buffer)
    owns nothing here: its index is not an element of this buffer."""
    out: dict[int, int] = {}
    for buf, idx in own.items():
        if cmem[buf][0].numel() == numel:
            out.update(idx)
    return out


def _owned_diffs(f: torch.Tensor, gold: torch.Tensor, rows: list[int], owner: list[dict[int, int]]
                 ) -> dict[tuple[int, int], list[int]] | None:
    """Composite c's differing elements (row c of ``f`` against golden row ``rows[c]``), per
    (composite, owning lane), read at the owned indices alone, when one native pass counts no
    other difference in the row; None otherwise (the caller compares whole rows)."""
    counts = native.diff_rows(f, gold, REL_FLOOR, g_rows=rows)
    if counts is None or any(x is None for x in counts):
        return None
    per: dict[tuple[int, int], list[int]] = {}
    for c, own in enumerate(owner):
        k = counts[c][0]  # type: ignore[index]
        if not k:
            continue
        idx = torch.tensor(sorted(own), dtype=torch.long)
        hit = idx[f[c][idx] != gold[rows[c]][idx]].tolist()  # golden finite: != is "different"
        if len(hit) != k:
            return None
        for i in hit:
            per.setdefault((c, own[i]), []).append(i)
    return per
