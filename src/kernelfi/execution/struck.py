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
from typing import TYPE_CHECKING

import torch

from kernelfi.execution import native
from kernelfi.execution.cone import REL_FLOOR, SparseLane, diff_segments, different, has_nan
from kernelfi.faults.inject import LaneEffect, fault_writes
from kernelfi.kernels import get_kernel
from kernelfi.lowering import Memory
from kernelfi.types import Launch, Outcome, Propagation, Trace

if TYPE_CHECKING:  # pragma: no cover
    from kernelfi.execution.runner import Runner, _Batch

#: kernels whose output element i depends only on element i of their per-lane inputs
POINTWISE = frozenset({"add_bias", "scale_bias", "normalize", "activate_array"})

Write = tuple[str, int, "int | float"]


def pointwise_after(trace: Trace, k: int, end: int) -> bool:
    """True when launch ``k``'s faults can run sparse: the layer's launches after it are
    pointwise and the fault is judged at ``k`` itself (not at a hardened unit's checker)."""
    if int(trace.launches[k].params.get("check_after", k)) != k:
        return False
    return all(trace.launches[i].kernel in POINTWISE for i in range(k + 1, end))


def composites(claims: list[tuple[int, frozenset[int]]]) -> list[list[int]]:
    """Group lanes (ref, flat indices they wrote) so no two in a group share an index."""
    groups: list[tuple[list[int], set[int]]] = []
    for ref, idx in claims:
        for refs, taken in groups:
            if taken.isdisjoint(idx):
                refs.append(ref)
                taken |= idx
                break
        else:
            groups.append(([ref], set(idx)))
    return [refs for refs, _ in groups]


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


def run_sparse(runner: "Runner", ctx: "_Batch", refs: list[int], pos: int, layer: int
               ) -> tuple[list[SparseLane], list[SparseLane], list[int]]:
    """Run the struck layer for the faults ``refs`` of ``ctx.batch``.

    Records Masked, DUE and No-Malfunction results in ``ctx``; returns (lanes for the cone,
    lanes that need whole tensors from the next layer on, refs to run as whole lanes)."""
    trace, batch = runner.trace, ctx.batch
    span0, end = runner.layer_span[layer]
    first = min(batch[j].fault.site.launch for j in refs)
    inputs = sorted({batch[j].fault.input_id for j in refs})
    gl = {inp: i for i, inp in enumerate(inputs)}
    mem = runner.program.lane_memory(runner._golden_at(pos, span0, first, inputs), len(inputs))
    by_launch: dict[int, list[int]] = {}
    for j in refs:
        by_launch.setdefault(batch[j].fault.site.launch, []).append(j)
    struck: dict[int, _Struck] = {}
    later = {k: {b for l in trace.launches[k + 1:end] for b in (*l.reads, *l.writes)} for k in by_launch}
    out_name = runner.out_buf.get(trace.layers[pos].index)
    needed = set(runner.live[pos + 1]) | ({out_name} if out_name else set())

    def override(k: int):
        def run(l: Launch, m: Memory) -> None:
            before = {n: m[n] for n in set(l.writes) | set(l.reads) if n in m}
            get_kernel(l.kernel).run(m, l)
            st = struck[k] = _Struck()
            for j in by_launch[k]:
                eff = ctx.effects[j] = LaneEffect(golden_lane=gl[batch[j].fault.input_id])
                st.writes[j] = fault_writes(l, m, before, eff.golden_lane, batch[j].fault, eff, runner.memmap,
                                            runner._per_lane)
            # what the rest of the layer, the Masked test and the comparisons read: not the dead
            # buffers (the im2col workspace is up to 7 MiB per input on ResNet-50)
            keep = set(l.writes) | later[k] | needed
            for j in by_launch[k]:
                keep |= ctx.effects[j].touched | {b for b, _, _ in st.writes[j]}
            st.after = {n: t.clone() for n, t in m.items() if n in keep and runner._per_lane(n, t)}
        return run

    with torch.no_grad():
        runner.program.run(mem, first, end, fast=runner.fast, overrides={k: override(k) for k in by_launch})
    fallback: list[int] = []
    live_next = runner.live[pos + 1]
    spec = trace.layers[pos]
    names = [n for n in sorted(needed) if n in mem]
    gnan = torch.zeros(len(inputs), dtype=torch.bool)  # a golden NaN keeps a lane "dirty" (a != g)
    for n in live_next:
        if n in mem and mem[n].is_floating_point():
            rows = mem[n].reshape(len(inputs), -1)
            if rows.shape[1]:
                gnan |= torch.isnan(rows.amax(dim=1))  # amax propagates NaN: one pass, no mask
    found: dict[int, dict[str, tuple[torch.Tensor, torch.Tensor]]] = {}
    for k, st in sorted(struck.items()):
        launch = trace.launches[k]
        claims: dict[int, list[tuple[int, frozenset[int]]]] = {}
        nan_rows: dict = {}
        for j in by_launch[k]:
            eff, w = ctx.effects[j], st.writes[j]
            if eff.due:
                ctx.done[j] = runner._result(Outcome.DUE, eff, batch[j], (eff.due,))
            elif any(b in runner.weight_names for b, _, _ in w):
                fallback.append(j)
            elif not _differs(w, st.after, eff.golden_lane, set(launch.writes) | eff.touched, nan_rows):
                ctx.done[j] = runner._result(Outcome.MASKED, eff, batch[j], ())
            else:
                claims.setdefault(eff.golden_lane, []).append((j, frozenset(i for _, i, _ in w)))
        comps = [(g, comp) for g, group in claims.items() for comp in composites(group)]
        if comps:
            got, lost = _run_composites(runner, st, comps, k, end, mem, names)
            found.update(got)
            fallback.extend(lost)
    cone_lanes: list[SparseLane] = []
    dense_lanes: list[SparseLane] = []
    refs_out = sorted(found)
    diffs = [(0, 0.0, 0.0)] * len(refs_out)
    if out_name is not None and out_name in mem:
        numel = mem[out_name][0].numel()
        parts = [(s, found[j][out_name]) for s, j in enumerate(refs_out) if out_name in found[j]]
        if parts:
            gflat = mem[out_name].reshape(len(inputs), -1)
            f = torch.cat([v for _, (_, v) in parts])
            g = torch.cat([gflat[gl[batch[refs_out[s]].fault.input_id]][i] for s, (i, _) in parts])
            seg = torch.cat([torch.full((i.numel(),), s, dtype=torch.long) for s, (i, _) in parts])
            diffs = diff_segments(f, g, seg, len(refs_out))
        for j, (n, ma, mr) in zip(refs_out, diffs):
            ctx.props[j].append(Propagation(spec.index, n, numel, ma, mr))
    for j in refs_out:
        inp = batch[j].fault.input_id
        live = {n: d for n, d in found[j].items() if n in live_next}
        if not live and not bool(gnan[gl[inp]]):
            ctx.done[j] = runner._result(Outcome.SDC_NO_MALFUNCTION, ctx.effects[j], batch[j], (), ctx.props[j])
            continue
        lane = runner.cone.lane(j, inp, live)
        (dense_lanes if lane.flat else cone_lanes).append(lane)
    return cone_lanes, dense_lanes, fallback


def _run_composites(runner: "Runner", st: _Struck, comps: list[tuple[int, list[int]]], k: int, end: int,
                    gold: Memory, names: list[str]
                    ) -> tuple[dict[int, dict[str, tuple[torch.Tensor, torch.Tensor]]], list[int]]:
    """Run launches k+1..end-1 once for all composites, a composite being golden lane ``g``
    carrying the stores of its lanes; per lane and buffer, the (flat indices, values) where
    the result differs from golden. A composite with a difference nobody owns (the launches
    were not pointwise after all) hands its lanes back."""
    rows = torch.tensor([g for g, _ in comps], dtype=torch.long)
    cmem = runner.program.lane_memory({n: t.index_select(0, rows) for n, t in st.after.items()}, len(comps))
    stores: list[dict[str, dict[int, int]]] = []  # per composite: buffer -> flat index -> lane
    for c, (_, comp) in enumerate(comps):
        own: dict[str, dict[int, int]] = {}
        for j in comp:
            for buf, i, v in st.writes[j]:
                cmem[buf][c].view(-1)[i] = v
                own.setdefault(buf, {})[i] = j
        stores.append(own)
    with torch.no_grad():
        runner.program.run(cmem, k + 1, end, fast=runner.fast)
    got: dict[int, dict[str, tuple[torch.Tensor, torch.Tensor]]] = {j: {} for _, comp in comps for j in comp}
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
