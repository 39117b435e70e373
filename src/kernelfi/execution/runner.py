"""Batched execution of injections: many faulty lanes through one run of the suffix.

A batch holds faults of one layer or of a few consecutive ones; each struck layer runs on its own
(lanes 0..g-1 golden, one per distinct input, the rest faulty), then the lanes of every struck
layer walk on together. The run starts at the layer from the golden cache, applies each
fault inside its kernel (``faults.inject``), and after every layer retires the lanes whose
fate is known: Masked (the injected kernel's outputs equal golden), DUE (crash/hang), or
No-Malfunction SDC (every buffer the rest of the run reads equals golden again). Survivors are
classified at the output (SPEC §3).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from kernelfi.execution import native
from kernelfi.execution.cone import REL_FLOOR, Cone, Diff, SparseLane, diff_rows
from kernelfi.execution.golden import Golden, dense_matches_cache, lane_numel, live_at_launch, live_in
from kernelfi.execution.struck import pointwise_after, run_sparse
from kernelfi.execution.threads import engine_threads
from kernelfi.faults.inject import LaneEffect, MemoryMap, make_override
from kernelfi.lowering import Memory, Program
from kernelfi.types import Launch, Outcome, PlannedFault, Propagation, Result


#: Bytes the struck layer's whole lanes may hold at once (``Runner.whole_chunk``)
WHOLE_BUDGET = 1 << 30


@dataclass
class _Batch:
    """What every stage of one batch records into."""

    batch: list[PlannedFault]
    effects: dict[int, LaneEffect]
    n_inputs: int                  # golden lanes of the struck layer (effects are keyed after them)
    done: dict[int, Result]
    props: dict[int, list[Propagation]]
    lane_weights: tuple[str, ...] = ()  # weights some lane holds its own copy of (an IOA store landed there)


@dataclass
class Executed:
    planned: PlannedFault
    result: Result
    tag: str
    seconds: float


@dataclass(frozen=True)
class Checks:
    """A runner's one-time findings about this machine's kernels on one program and golden run:
    the crop units and column units that reproduce the golden run, whether whole layers do in
    any batch, and the GEMM products a struck layer may start from."""

    units: frozenset[int]
    cols: frozenset[int]
    cached_golden: bool
    gemm_cache: tuple[tuple[int, tuple[int, ...]], ...]


class Runner:
    """Holds everything shared by the batches of one campaign."""

    @engine_threads()
    def __init__(self, program: Program, golden: Golden, fast: bool = True, keep_outputs: bool = False,
                 cone: bool = True, checks: Checks | None = None) -> None:
        """``checks``: what another runner of the same program and golden run found on this
        machine (``checks()``; a campaign's workers take the driver's instead of 2-5 s each)."""
        self.program, self.golden, self.fast = program, golden, fast
        #: with keep_outputs, the final probabilities of each faulty lane of the last batch that
        #: reached the output (tests check them against values worked out on paper)
        self.keep_outputs = keep_outputs
        self.last_outputs: dict[int, torch.Tensor] = {}
        trace = program.trace
        self.trace = trace
        self.live = live_in(trace)
        self.live_launch = live_at_launch(trace)
        self.layer_pos = {spec.index: p for p, spec in enumerate(trace.layers)}
        self.layer_span: dict[int, tuple[int, int]] = {}
        for l in trace.launches:
            s, e = self.layer_span.get(l.layer, (l.index, l.index + 1))
            self.layer_span[l.layer] = (min(s, l.index), max(e, l.index + 1))
        self.out_buf = {l.layer: l.writes[0] for l in trace.launches if l.writes and l.writes[0] != "workspace"
                        and trace.buffer(l.writes[0]).kind == "activation"}
        self.spec = {b.name: b for b in trace.buffers}
        self.weight_names = frozenset(b.name for b in trace.buffers if b.kind == "weight")
        self.memmap = MemoryMap.from_trace(trace)
        #: the receptive-field cone after the struck layer (needs the fused units: fast only)
        self.cone = Cone(program, golden.buffers, self.live, enabled=fast and cone,
                         verified=(checks.units, checks.cols) if checks else None)
        #: the struck layer as golden lanes plus each fault's stores (``struck``); with the cone
        self.sparse_struck = fast and cone
        #: lanes that run whole after the cone compare with the golden cache instead of carrying
        #: golden lanes, where every layer gives a golden row the cache's values in any batch
        self.cached_golden = fast and cone and (checks.cached_golden if checks else dense_matches_cache(
            program, golden, self.live, self.layer_span, self.out_buf))
        self._pre_key: tuple[int, int] | None = None
        self._pre: dict[int, Memory] = {}
        #: GEMM launch -> the per-lane shape of its output buffer, for the golden products
        #: (``Golden.pre``) that equal what the kernels leave there (checked on one input)
        self.gemm_cache = (dict(checks.gemm_cache) if checks else self._check_pre()) if fast else {}
        self._whole_chunk: dict[int, int] = {}
        self._lane_numel = lane_numel(trace)

    def checks(self) -> Checks:
        """The one-time checks' findings, for runners in other processes on this machine."""
        return Checks(frozenset(self.cone.units), frozenset(self.cone.cols), bool(self.cached_golden),
                      tuple(self.gemm_cache.items()))

    # ------------------------------------------------------------------ helpers
    def _per_lane(self, name: str, t: torch.Tensor) -> bool:
        spec = self.spec.get(name)
        if spec is None or spec.kind != "weight":
            return True
        return t.dim() == len(spec.shape) + 1

    def _take(self, mem: Memory, lanes: list[int]) -> Memory:
        """Lanes ``lanes`` of every per-lane tensor of ``mem`` (weights shared by all stay out)."""
        idx = torch.tensor(lanes, dtype=torch.long)
        return {n: t.index_select(0, idx) for n, t in mem.items() if self._per_lane(n, t)}

    def _lane_equal(self, mem: Memory, names, lane: int, glane: int) -> bool:
        for name in names:
            t = mem.get(name)
            if t is None or not self._per_lane(name, t):
                continue
            if not torch.equal(t[lane], t[glane]):
                return False
        return True

    def _check_pre(self) -> dict[int, tuple[int, ...]]:
        """The golden GEMM products a struck layer may start from: those equal, bit for bit, to
        the C buffer the layer's own launches up to the GEMM leave (run here for one input)."""
        out: dict[int, tuple[int, ...]] = {}
        idx = torch.tensor([0], dtype=torch.long)
        for g, prod in self.golden.pre.items():
            layer = self.trace.launches[g].layer
            span0 = self.layer_span[layer][0]
            c = self.trace.launches[g].writes[0]
            mem = self._golden_rows(self.live[self.layer_pos[layer]], idx)
            with torch.no_grad():
                self.program.run(mem, span0, g + 1, fast=True)
            if torch.equal(mem[c].reshape(-1), prod[0] + 0.0) and self._restorable(g):
                out[g] = tuple(mem[c].shape[1:])
        return out

    def _golden_rows(self, names, idx: torch.Tensor, skip: str | None = None) -> Memory:
        """The weights and rows ``idx`` of golden buffers ``names`` (and the input: kernels size
        new buffers by its lanes), but ``skip``."""
        mem: Memory = dict(self.program.weights)
        for name in names | {"input"}:
            if name != skip:
                mem[name] = self.golden.buffers[name].index_select(0, idx)
        return mem

    def _restorable(self, g: int) -> bool:
        """Every buffer live after GEMM launch ``g`` but its output is in the golden cache."""
        c = self.trace.launches[g].writes[0]
        return all(n in self.golden.buffers for n in self.live_launch[g + 1] if n != c)

    def _golden_at(self, pos: int, span0: int, first: int, inputs: list[int]) -> Memory:
        """Golden buffers live at launch ``first`` (inside layer ``pos``), one row per input.

        The layer's launches before the first struck one (fill, im2col, gemm... for a fault in
        add_bias) are the costly part of a layer; they run once per input and layer position
        and are kept while batches of that position follow (the campaign sorts batches by layer).
        A row never depends on which inputs share the run that computes it."""
        key = (span0, first)
        if self._pre_key != key:
            self._pre_key, self._pre = key, {}
        need = self.live_launch[first]
        missing = [i for i in inputs if i not in self._pre]
        if missing:
            # one run for the missing inputs (a row does not depend on the rows beside it)
            idx = torch.tensor(missing, dtype=torch.long)
            g = max((g for g in self.gemm_cache if span0 <= g < first), default=None)
            if g is None:
                start, mem = span0, self._golden_rows(self.live[pos], idx)
            else:  # from the golden run's GEMM product (what the launches before would leave)
                start, c = g + 1, self.trace.launches[g].writes[0]
                mem = self._golden_rows(self.live_launch[start], idx, skip=c)
                mem[c] = (self.golden.pre[g].index_select(0, idx) + 0.0).view(len(missing), *self.gemm_cache[g])
            with torch.no_grad():
                self.program.run(mem, start, first, fast=self.fast)
            for j, inp in enumerate(missing):
                self._pre[inp] = {n: mem[n][j:j + 1] for n in need if n in mem and self._per_lane(n, mem[n])}
        return {n: torch.cat([self._pre[i][n] for i in inputs]) for n in self._pre[inputs[0]]}

    # ------------------------------------------------------------------ one batch
    @engine_threads()
    def run(self, batch: list[PlannedFault]) -> list[Executed]:
        """Run a batch of faults (of one layer or several): each layer's struck lanes, then one
        walk in which lanes struck in different layers join at their own position, so later
        cone steps and whole-tensor layers run once for all of them."""
        t0 = time.perf_counter()
        self.last_outputs = {}
        trace = self.trace
        by_layer: dict[int, list[int]] = {}
        for j, pf in enumerate(batch):
            by_layer.setdefault(trace.launches[pf.fault.site.launch].layer, []).append(j)
        done: dict[int, Result] = {}
        tags: dict[int, str] = {}
        ctx = _Batch(batch, {}, 0, done, {})
        joiners: dict[int, tuple[list[SparseLane], list[SparseLane]]] = {}  # position p -> lanes from p on
        whole: dict[int, list[int]] = {}
        for layer in sorted(by_layer, key=lambda l: self.layer_pos[l]):
            pos = self.layer_pos[layer]
            whole[layer] = by_layer[layer]
            if self.sparse_struck and pos + 1 < len(trace.layers):
                end = self.layer_span[layer][1]
                refs = [j for j in by_layer[layer] if pointwise_after(trace, batch[j].fault.site.launch, end)]
                if refs:
                    ctx.props.update({j: [] for j in refs})
                    with torch.no_grad():
                        cone_lanes, dense_lanes, fallback = run_sparse(self, ctx, refs, pos, layer)
                    sparse, dense = joiners.setdefault(pos + 1, ([], []))
                    sparse.extend(cone_lanes)
                    dense.extend(dense_lanes)
                    tags.update({j: ctx.effects[j].tag for j in refs})
                    whole[layer] = sorted(set(by_layer[layer]) - set(refs) | set(fallback))
        if joiners:
            with torch.no_grad():
                self._walk(joiners, ctx)
        for layer, idx in whole.items():
            pos, step = self.layer_pos[layer], self.whole_chunk(layer)
            for s in range(0, len(idx), step):  # whole lanes of the struck layer, a bounded number at once
                part = idx[s:s + step]
                for j, (res, tag) in zip(part, self._run_whole([batch[j] for j in part], pos, layer)):
                    done[j], tags[j] = res, tag
        secs = (time.perf_counter() - t0) / max(1, len(batch))
        return [Executed(pf, done[j], tags[j], secs) for j, pf in enumerate(batch)]

    def whole_chunk(self, layer: int) -> int:
        """Faulty lanes the struck layer runs whole at once: what fits ``WHOLE_BUDGET`` bytes
        of the per-lane buffers its launches touch, the layer's im2col columns included (the
        unfused struck layer materialises them: up to 7 MiB per lane on ResNet-50)."""
        n = self._whole_chunk.get(layer)
        if n is None:
            first, end = self.layer_span[layer]
            names = {b for l in self.trace.launches[first:end] for b in (*l.reads, *l.writes)}
            per_lane = 4 * sum(self._lane_numel(b, layer) for b in names)
            n = self._whole_chunk[layer] = max(1, WHOLE_BUDGET // max(per_lane, 1))
        return n

    def _run_whole(self, batch: list[PlannedFault], pos: int, layer: int) -> list[tuple[Result, str]]:
        """The struck layer on whole faulty lanes beside their golden lanes (any fault, any kernel)."""
        trace = self.trace
        inputs = sorted({pf.fault.input_id for pf in batch})
        gl = {inp: i for i, inp in enumerate(inputs)}
        lane_input = inputs + [pf.fault.input_id for pf in batch]
        # The layer's launches before the first struck one are golden: every lane starts from
        # the golden state at that launch (cached per input, ``_golden_at``).
        span0, _ = self.layer_span[layer]
        first = min(pf.fault.site.launch for pf in batch)
        gmem = self._golden_at(pos, span0, first, inputs)
        expand = torch.tensor([gl[i] for i in lane_input], dtype=torch.long)
        mem = self.program.lane_memory({name: t.index_select(0, expand) for name, t in gmem.items()}, len(lane_input))
        # lanes: position in the current tensors -> ("g", input) or ("f", batch index)
        lanes: list[tuple[str, int]] = [("g", i) for i in inputs] + [("f", j) for j in range(len(batch))]
        effects: dict[int, LaneEffect] = {}
        overrides = {}
        by_launch: dict[int, list[tuple[int, int]]] = {}
        for j, pf in enumerate(batch):
            by_launch.setdefault(pf.fault.site.launch, []).append((j, len(inputs) + j))
        for k, members in by_launch.items():
            lane_faults = [(lane, batch[j].fault, gl[batch[j].fault.input_id]) for j, lane in members]
            overrides[k] = make_override(trace.launches[k], lane_faults, effects, self.memmap, self._per_lane)
        # A fault is Masked when the outputs of the unit it struck equal golden: the kernel itself,
        # or for a hardened kernel (replicas + voter/checker) the whole protected unit, whose last
        # launch the hardening transform names in ``check_after``.
        check_at: dict[int, list[int]] = {}
        for k, m in by_launch.items():
            end = int(trace.launches[k].params.get("check_after", k))
            check_at.setdefault(end, []).extend(lane for _, lane in m)
        differs: dict[int, bool] = {}

        def after(launch: Launch, mem: Memory) -> None:
            for lane in check_at.get(launch.index, ()):
                eff = effects[lane]
                if eff.due:
                    differs[lane] = True
                    continue
                names = set(launch.writes) | set(eff.touched)
                differs[lane] = not self._lane_equal(mem, names, lane, eff.golden_lane)

        done: dict[int, Result] = {}
        props: dict[int, list[Propagation]] = {j: [] for j in range(len(batch))}
        ctx = _Batch(batch, effects, len(inputs), done, props)
        with torch.no_grad():
            self.program.run(mem, first, self.layer_span[layer][1], fast=self.fast, overrides=overrides, after=after)
            ctx.lane_weights = tuple(n for n in self.weight_names if n in mem and self._per_lane(n, mem[n]))
            lanes = self._retire(pos, mem, lanes, ctx, differs)
            if lanes:
                self._suffix(mem, lanes, pos, ctx)
        return [(done[j], effects[len(inputs) + j].tag) for j in range(len(batch))]

    def _retire(self, p: int, mem: Memory, lanes: list[tuple[str, int]], ctx: "_Batch",
                differs: dict[int, bool] | None = None) -> list[tuple[str, int]]:
        """After layer position ``p``: record propagation, retire the lanes whose fate is known,
        drop golden lanes nobody needs and compact ``mem``; the lanes left ([] when no faulty
        lane is). ``differs`` is given for the struck layer only (Masked is judged there)."""
        trace, batch = self.trace, ctx.batch
        gpos = {r: c for c, (k2, r) in enumerate(lanes) if k2 == "g"}  # input -> golden lane
        keep: list[int] = []
        spec = trace.layers[p]
        out_name = self.out_buf.get(spec.index)
        live_next = self.live[p + 1] if p + 1 < len(trace.layers) else frozenset()
        live: list[tuple[int, int]] = []  # (current lane, batch index) of the faulty lanes still running
        for cur, (kind, ref) in enumerate(lanes):
            if kind == "g":
                keep.append(cur)
                continue
            pf = batch[ref]
            eff = ctx.effects[ctx.n_inputs + ref]
            if eff.due:
                ctx.done[ref] = self._result(Outcome.DUE, eff, pf, (eff.due,))
            elif differs is not None and not differs.get(ctx.n_inputs + ref, False):
                ctx.done[ref] = self._result(Outcome.MASKED, eff, pf, ())
            else:
                live.append((cur, ref))
        if live:
            # each lane's golden row: its golden lane in the batch, or the golden cache's row
            refs = [(0, gpos[i]) if i in gpos else (1, i) for i in (batch[r].fault.input_id for _, r in live)]
            runs = self._runs([c for c, _ in live], refs)
            dirty = [False] * len(live)
            has_out = out_name is not None and out_name in mem
            if has_out:
                numel = mem[out_name][0].numel()
                found, dirty = self._scan(mem[out_name], out_name, runs, len(live), True)
                for (_, ref), (n, ma, mr) in zip(live, found):
                    ctx.props[ref].append(Propagation(spec.index, n, numel, ma, mr))
            if p + 1 < len(trace.layers):
                if out_name not in live_next:
                    dirty = [False] * len(live)
                weights = [n for n in ctx.lane_weights if n in mem and self._per_lane(n, mem[n])]
                for name in list(live_next) + weights:
                    t = mem.get(name)
                    if t is None or not self._per_lane(name, t) or (has_out and name == out_name):
                        continue
                    clean = [i for i, d in enumerate(dirty) if not d]  # a lane dirty anywhere runs on
                    if not clean:
                        break
                    sub = self._runs([live[i][0] for i in clean], [refs[i] for i in clean])
                    ne = self._scan(t, name, sub, len(clean), False)[1]
                    for i, x in zip(clean, ne):
                        dirty[i] = x
            else:
                dirty = [True] * len(live)
            for (cur, ref), d in zip(live, dirty):
                if d:
                    keep.append(cur)
                else:
                    ctx.done[ref] = self._result(Outcome.SDC_NO_MALFUNCTION, ctx.effects[ctx.n_inputs + ref],
                                                 batch[ref], (), ctx.props[ref])
            keep.sort()
        needed = {batch[r].fault.input_id for k2, r in lanes if k2 == "f" and r not in ctx.done}
        if not needed:
            return []
        keep = [c for c in keep if lanes[c][0] == "f" or lanes[c][1] in needed]
        if len(keep) < len(lanes):
            mem.update(self._take(mem, keep))
            lanes = [lanes[c] for c in keep]
        return lanes

    def _suffix(self, mem: Memory, lanes: list[tuple[str, int]], pos: int, ctx: "_Batch") -> None:
        """The layers after the struck one: rebase the lanes onto the golden cache, walk the
        cone, run whole what the cone does not cover."""
        trace = self.trace
        if pos + 1 >= len(trace.layers):
            self._classify_survivors(mem, lanes, ctx)
            return
        gpos = {r: c for c, (k2, r) in enumerate(lanes) if k2 == "g"}
        sparse: list[SparseLane] = []
        whole: list[SparseLane] = []
        own: list[int] = []  # lanes whose stores reached the weights
        for cur, (kind, ref) in enumerate(lanes):
            if kind == "g":
                continue
            if ctx.effects[ctx.n_inputs + ref].touched & self.weight_names:
                own.append(cur)
                continue
            inp = ctx.batch[ref].fault.input_id
            ln = self.cone.rebase(mem, cur, gpos[inp], ref, inp, self.live[pos + 1])
            (whole if ln.flat else sparse).append(ln)
        if own:  # they run whole as they are, with their own weights, beside their golden lanes
            need = {ctx.batch[lanes[c][1]].fault.input_id for c in own}
            keep = [c for c, (k2, r) in enumerate(lanes) if (k2 == "g" and r in need) or c in own]
            self._dense({**mem, **self._take(mem, keep)}, [lanes[c] for c in keep], pos + 1, ctx)
        self._walk({pos + 1: (sparse, whole)}, ctx)

    def _walk(self, lanes: dict[int, tuple[list[SparseLane], list[SparseLane]]], ctx: "_Batch") -> None:
        """Rebased lanes, ``lanes[p]`` = (cone lanes, lanes needing whole tensors) from layer
        position p on: through the cone, then whole tensors."""
        trace = self.trace
        clean, dense = self.cone.walk({p: sparse for p, (sparse, _) in lanes.items() if sparse}, self.layer_span,
                                      self.out_buf, ctx.props)
        for p, (_, whole) in lanes.items():
            if whole:
                dense.setdefault(p, []).extend(whole)
        for ln in clean:
            pf = ctx.batch[ln.ref]
            ctx.done[ln.ref] = self._result(Outcome.SDC_NO_MALFUNCTION, ctx.effects[ctx.n_inputs + ln.ref], pf, (),
                                            ctx.props[ln.ref])
        if self.cached_golden:
            self._dense_merged(dense, ctx)
            return
        for p0 in sorted(dense):
            group = sorted(dense[p0], key=lambda ln: ln.input_id)  # lanes of one input side by side
            inputs = sorted({ln.input_id for ln in group})
            dmem = self.cone.dense_rows(self._names_at(p0), group, inputs)
            dlanes = [("g", i) for i in inputs] + [("f", ln.ref) for ln in group]
            if p0 < len(trace.layers):
                self._dense(dmem, dlanes, p0, ctx)
            else:
                self._classify_survivors(dmem, dlanes, ctx)

    def _names_at(self, p: int) -> frozenset[str]:
        return self.live[p] if p < len(self.trace.layers) else frozenset({self.trace.output})

    def _dense_merged(self, dense: dict[int, list[SparseLane]], ctx: "_Batch") -> None:
        """Whole tensors without golden lanes: the lanes that leave the cone at layer position
        p join those already running whole there, so every later layer runs once for all of
        them (a big layer's GEMM costs far less per lane in one call of many lanes; every layer
        gives a lane's row the same values in any batch, ``dense_matches_cache``)."""
        starts = sorted(dense)
        mem: Memory = {}
        lanes: list[tuple[str, int]] = []
        for i, p0 in enumerate(starts):
            names = self._names_at(p0)
            group = sorted(dense[p0], key=lambda ln: ln.input_id)  # lanes of one input side by side
            dmem = self.cone.dense_rows(names, group, [])
            if lanes:  # the lanes running whole so far, then these
                dmem = self.program.lane_memory({n: torch.cat([mem[n], dmem[n]]) for n in names if n in dmem},
                                                len(lanes) + len(group))
            mem, lanes = dmem, lanes + [("f", ln.ref) for ln in group]
            # to where the next group joins; the last group runs to the output and is classified
            lanes = self._dense(mem, lanes, p0, ctx, starts[i + 1] if i + 1 < len(starts) else None)

    def _dense(self, mem: Memory, lanes: list[tuple[str, int]], p0: int, ctx: "_Batch",
               stop: int | None = None) -> list[tuple[str, int]]:
        """Whole tensors from layer position ``p0`` on, faulty lanes beside their golden lanes:
        to the output (survivors classified), or up to position ``stop`` (the lanes left)."""
        end = len(self.trace.layers) if stop is None else stop
        for p in range(p0, end):
            span = self.layer_span.get(self.trace.layers[p].index)
            if span is not None:
                self.program.run(mem, span[0], span[1], fast=self.fast)
            lanes = self._retire(p, mem, lanes, ctx)
            if not lanes:
                return []
        if stop is None:
            self._classify_survivors(mem, lanes, ctx)
            return []
        return lanes

    @staticmethod
    def _runs(ci: list[int], refs: list[tuple[int, int]], chunk: int = 8) -> list[tuple[int, int, int, tuple[int, int]]]:
        """(position in ``ci``, first lane, end lane, golden row): the faulty lanes ``ci`` as runs
        of consecutive lanes that share a golden row ((0, lane) of the batch or (1, input) of
        the golden cache), a few lanes each, so comparisons read row views against one golden
        row instead of copying rows."""
        out: list[tuple[int, int, int, tuple[int, int]]] = []
        s = 0
        while s < len(ci):
            e = s + 1
            while e < len(ci) and e - s < chunk and ci[e] == ci[e - 1] + 1 and refs[e] == refs[s]:
                e += 1
            out.append((s, ci[s], ci[s] + e - s, refs[s]))
            s = e
        return out

    def _finite(self, name: str, row: int) -> bool:
        """Whether the golden cache's row ``row`` of ``name`` holds only finite values
        (comparisons with it may then skip every NaN and inf case): the cone's cache of it."""
        return self.cone.finite(name, row)

    def _scan(self, t: torch.Tensor, name: str, runs: list[tuple[int, int, int, tuple[int, int]]], n: int,
              with_diff: bool) -> tuple[list[Diff], list[bool]]:
        """Per faulty lane: its ``diff_rows`` against its golden row (``with_diff``) and whether
        any element differs with NaN unequal to NaN (a golden NaN keeps a lane running)."""
        diffs: list[Diff] = [(0, 0.0, 0.0)] * n
        dirty = [False] * n
        cached = self.golden.buffers.get(name)
        if with_diff and t.dtype == torch.float32:
            runs = self._scan_native(t, cached, runs, diffs, dirty)
        for s, c0, c1, (src, g) in runs:
            gsrc = t if src == 0 else cached
            assert gsrc is not None, "a lane without its golden lane compares with the golden cache"
            f, gr = t[c0:c1].reshape(c1 - c0, -1), gsrc[g].reshape(1, -1)
            fin = src == 1 and t.dtype == torch.float32 and self._finite(name, g)
            if with_diff:
                diffs[s:s + c1 - c0] = found = diff_rows(f, gr, finite=fin)
                if fin:  # no golden NaN: differing elements are exactly the unequal ones
                    dirty[s:s + c1 - c0] = [k > 0 for k, _, _ in found]
                    continue
            dirty[s:s + c1 - c0] = [not torch.equal(f[i], gr[0]) for i in range(c1 - c0)]
        return diffs, dirty

    @staticmethod
    def _scan_native(t: torch.Tensor, cached: torch.Tensor | None, runs: list[tuple[int, int, int, tuple[int, int]]],
                     diffs: list[Diff], dirty: list[bool]) -> list[tuple[int, int, int, tuple[int, int]]]:
        """``_scan``'s figures in one native pass per golden source (the batch's golden lanes,
        the golden cache), filled into ``diffs`` and ``dirty``; the runs it could not do (no
        native library, a NaN or inf in the golden row) are returned."""
        rest = []
        for src, gsrc in ((0, t), (1, cached)):
            mine = [r for r in runs if r[3][0] == src]
            if not mine:
                continue
            found = None if gsrc is None else native.diff_rows(
                t.reshape(t.shape[0], -1), gsrc.reshape(gsrc.shape[0], -1), REL_FLOOR,
                [c for _, c0, c1, _ in mine for c in range(c0, c1)],
                [g for _, c0, c1, (_, g) in mine for _ in range(c0, c1)])
            if found is None:
                rest.extend(mine)
                continue
            k = 0
            for r in mine:
                s, c0, c1, _ = r
                part = found[k:k + c1 - c0]
                k += c1 - c0
                if any(d is None for d in part):
                    rest.append(r)
                    continue
                diffs[s:s + c1 - c0] = part  # type: ignore[assignment]
                # golden rows finite: a lane differs exactly where an element is unequal (NaN too)
                dirty[s:s + c1 - c0] = [d[0] > 0 for d in part]  # type: ignore[index]
        return sorted(rest)

    def _classify_survivors(self, mem: Memory, lanes: list[tuple[str, int]], ctx: "_Batch") -> None:
        batch, effects, n_inputs, done, props = ctx.batch, ctx.effects, ctx.n_inputs, ctx.done, ctx.props
        out = mem[self.trace.output]
        out = out.reshape(out.shape[0], -1)
        gpos = {r: c for c, (k2, r) in enumerate(lanes) if k2 == "g"}
        for cur, (kind, ref) in enumerate(lanes):
            if kind != "f" or ref in done:
                continue
            pf = batch[ref]
            eff = effects[n_inputs + ref]
            glane = gpos.get(pf.fault.input_id)
            f = out[cur]
            g = out[glane] if glane is not None else self.golden.buffers[self.trace.output][pf.fault.input_id].reshape(-1)
            if self.keep_outputs:
                self.last_outputs[pf.id] = f.clone()
            flags: tuple[str, ...] = ()
            g1, f1 = int(g.argmax()), int(torch.nan_to_num(f, nan=-math.inf).argmax())
            if not bool(torch.isfinite(f).all()):
                outcome, flags = Outcome.SDC_MALFUNCTION, ("nonfinite",)
            elif torch.equal(f, g):
                outcome = Outcome.SDC_NO_MALFUNCTION
            elif f1 != g1:
                outcome = Outcome.SDC_MALFUNCTION
            else:
                outcome = Outcome.SDC_LIGHT_MALFUNCTION
            done[ref] = self._result(outcome, eff, pf, flags, props[ref], g1, f1)

    def _result(self, outcome: Outcome, eff: LaneEffect, pf: PlannedFault, flags: tuple[str, ...],
                props: list[Propagation] | None = None, g1: int | None = None, f1: int | None = None) -> Result:
        golden_top1 = int(self.golden.top1[pf.fault.input_id]) if g1 is None else g1
        return Result(outcome=outcome.value, element=eff.element, original=eff.original, corrupted=eff.corrupted,
                      flags=tuple(eff.flags) + tuple(f for f in flags if f not in eff.flags),
                      propagation=tuple(props or ()), golden_top1=golden_top1,
                      faulty_top1=golden_top1 if f1 is None else f1)
