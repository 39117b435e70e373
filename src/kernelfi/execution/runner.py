"""Batched execution of injections: many faulty lanes through one run of the suffix.

A batch holds faults of one layer or of a few consecutive ones; each struck layer runs on its own
(golden rows, one per distinct input, then the faulty lanes), then the lanes of every struck
layer walk on together. The run starts at the layer from the golden cache, applies each
fault inside its kernel (``faults.inject``), and after every layer retires the lanes whose
fate is known: Masked (the injected kernel's outputs equal golden), DUE (crash/hang), or
No-Malfunction SDC (every buffer the rest of the run reads equals golden again). Survivors are
classified at the output (docs/method.md §3).

The stages: ``struck`` (the struck layer as golden rows plus each fault's stores, for faults
with only pointwise launches after theirs), the whole-lane struck layer here (any fault), the
receptive-field cone after it (``cone``), whole tensors where the cone does not reach
(``compare`` judges them). Every stage records into one ``BatchState``, keyed by the fault's
index in the batch.
"""
from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass
from typing import Iterable, NamedTuple

import torch

from kernelfi.execution.compare import lane_runs, scan
from kernelfi.execution.cone import Cone, Diff, SparseLane
from kernelfi.execution.golden import Golden, added_launches, dense_matches_cache, lane_numel
from kernelfi.execution.lanes import (
    BatchState, FaultyLane, GoldenLane, GoldenRow, GoldenSource, Lane, LaneRun, golden_rows,
)
from kernelfi.execution.layout import Layout
from kernelfi.execution.starts import StruckStarts
from kernelfi.execution.struck import StruckLayer, pointwise_after
from kernelfi.execution.threads import engine_threads
from kernelfi.faults.inject import LaneEffect, make_override
from kernelfi.lowering import Memory, Program
from kernelfi.lowering.crop import crop_units
from kernelfi.types import Launch, Outcome, PlannedFault, Propagation, Result


#: Bytes the struck layer's whole lanes may hold at once (``Runner.whole_chunk``)
WHOLE_BUDGET = 1 << 30


@dataclass
class Executed:
    """One fault's outcome: the planned fault, its result, the tag it struck ("" where it struck
    nothing live) and the batch's seconds per fault."""

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


class Joining(NamedTuple):
    """Lanes that walk on from one layer position after their struck layer: through the cone,
    or on whole tensors (a difference in a buffer that is no feature map)."""

    cone: list[SparseLane]
    whole: list[SparseLane]


class Runner:
    """Holds everything shared by the batches of one campaign."""

    @engine_threads()
    def __init__(self, program: Program, golden: Golden, fast: bool = True, keep_outputs: bool = False,
                 cone: bool = True, checks: Checks | None = None) -> None:
        """``checks``: what another runner of the same program and golden run found on this
        machine (``checks()``; a campaign's workers take the driver's instead of 2-5 s each)."""
        self.program, self.golden, self.fast = program, golden, fast
        #: with keep_outputs, the final probabilities of each faulty lane of the last batch that
        #: reached the output, by injection id (tests check them against values worked out on paper)
        self.keep_outputs = keep_outputs
        self.last_outputs: dict[int, torch.Tensor] = {}
        self.trace = program.trace
        self.layout = layout = Layout(program.trace)
        #: the receptive-field cone after the struck layer (needs the fused units: fast only)
        self.cone = Cone(program, golden.buffers, layout.live, enabled=fast and cone,
                         verified=(checks.units, checks.cols) if checks else None)
        #: the struck layer as golden lanes plus each fault's stores (``struck``); with the cone
        self.sparse_struck = fast and cone
        #: lanes that run whole after the cone compare with the golden cache instead of carrying
        #: golden lanes, where every layer gives a golden row the cache's values in any batch
        self.cached_golden = fast and cone and (checks.cached_golden if checks else dense_matches_cache(
            program, golden, layout.live, layout.layer_span, layout.out_buf))
        #: the golden state each struck layer starts from (and the GEMM products it may use)
        self.starts = StruckStarts(program, golden, layout, fast, dict(checks.gemm_cache) if checks else None)
        self.struck = StruckLayer(program, layout, self.starts, self.cone, fast)
        self._whole_chunk: dict[int, int] = {}
        self._gemm_rank: dict[int, int] = {}  # launch -> GEMM launches of its layer before it
        self._lane_numel = lane_numel(program.trace)

    def checks(self) -> Checks:
        """The one-time checks' findings, for runners in other processes on this machine."""
        return Checks(frozenset(self.cone.units), frozenset(self.cone.cols), bool(self.cached_golden),
                      tuple(self.starts.gemm_cache.items()))

    def extended_checks(self, program: Program, golden: Golden) -> Checks | None:
        """This runner's findings carried over to ``program``, which adds launches in layers of
        their own to this runner's program and leaves its golden run as it was (``golden`` from
        ``extended_golden``): what a new runner would find, without the checks' 2-5 s. Its crop
        units are this program's (the cone verifies them in the same order, on the same golden
        buffers and weights, so with the same results), only the added layers are run against
        the cache, and the GEMM products keep their launches' names. None where the added
        launches change the crop units or share a layer with this program's launches."""
        added = added_launches(self.program, program)
        if added is None:
            return None
        base_layers = {l.layer for l in self.trace.launches}
        new_layers = {l.layer for l in added}
        if new_layers & base_layers or list(crop_units(program)) != list(crop_units(self.program)):
            return None
        cached = self.cached_golden
        if cached:
            layout = Layout(program.trace)
            cached = dense_matches_cache(program, golden, layout.live, layout.layer_span, layout.out_buf, new_layers)
        index = {l.name: l.index for l in program.trace.launches}
        gemm = tuple((index[self.trace.launches[g].name], shape) for g, shape in self.starts.gemm_cache.items())
        return Checks(frozenset(self.cone.units), frozenset(self.cone.cols), bool(cached), gemm)

    # ------------------------------------------------------------------ one batch
    @engine_threads()
    def run(self, batch: list[PlannedFault]) -> list[Executed]:
        """Run a batch of faults (of one layer or several): each layer's struck lanes, then one
        walk in which lanes struck in different layers join at their own position, so later
        cone steps and whole-tensor layers run once for all of them."""
        started = time.perf_counter()
        self.last_outputs = {}
        layout, trace = self.layout, self.trace
        state = BatchState(batch, self.golden.top1)
        by_layer: dict[int, list[int]] = {}
        for j, pf in enumerate(batch):
            by_layer.setdefault(trace.launches[pf.fault.site.launch].layer, []).append(j)
        joining: dict[int, Joining] = {}  # layer position -> the lanes that walk on from there
        whole: dict[int, list[int]] = {}  # layer -> its faults that run the struck layer on whole lanes
        for layer in sorted(by_layer, key=lambda index: layout.layer_pos[index]):
            pos = layout.layer_pos[layer]
            whole[layer] = by_layer[layer]
            if self.sparse_struck and pos + 1 < len(trace.layers):
                end = layout.layer_span[layer][1]
                refs = [j for j in by_layer[layer] if pointwise_after(trace, batch[j].fault.site.launch, end)]
                if refs:
                    state.propagation.update({j: [] for j in refs})
                    fallback: list[int] = []
                    joiner = joining.setdefault(pos + 1, Joining([], []))
                    for group in self._start_groups(batch, refs):
                        with torch.no_grad():
                            handed = self.struck.run(state, group, layer)
                        joiner.cone.extend(handed.cone)
                        joiner.whole.extend(handed.whole)
                        fallback.extend(handed.fallback)
                    whole[layer] = sorted(set(by_layer[layer]) - set(refs) | set(fallback))
        if joining:
            with torch.no_grad():
                self._walk(joining, state)
        for layer, refs in whole.items():
            step = self.whole_chunk(layer)
            for group in self._start_groups(batch, refs):
                for s in range(0, len(group), step):  # whole lanes of the struck layer, a bounded number at once
                    self._run_whole(state, group[s:s + step], layer)
        seconds = (time.perf_counter() - started) / max(1, len(batch))
        return [Executed(pf, state.results[j], state.effects[j].tag, seconds) for j, pf in enumerate(batch)]

    def _start_groups(self, batch: list[PlannedFault], refs: list[int]) -> list[list[int]]:
        """The faults ``refs`` of one struck layer, split where a GEMM lies between their launches.

        A struck layer runs all its lanes from the first struck launch. A lane struck after a
        GEMM that such a run recomputes with the explicit kernel (a fault at the GEMM or its
        im2col shares the batch) would read a product that rounds otherwise than the golden
        run's fused convolution (``fused_conv``), while alone it starts from the golden product:
        its row would depend on which faults share its batch. So the faults between two GEMMs
        of the layer (before the first, after the last) run together, each group from its own
        first launch."""
        groups: dict[int, list[int]] = {}
        for j in refs:
            groups.setdefault(self._gemms_before(batch[j].fault.site.launch), []).append(j)
        return [groups[k] for k in sorted(groups)]

    def _gemms_before(self, launch: int) -> int:
        """The GEMM launches of ``launch``'s layer before it."""
        n = self._gemm_rank.get(launch)
        if n is None:
            start = self.layout.layer_span[self.trace.launches[launch].layer][0]
            n = self._gemm_rank[launch] = sum(1 for l in self.trace.launches[start:launch] if l.kernel == "gemm")
        return n

    def whole_chunk(self, layer: int) -> int:
        """Faulty lanes the struck layer runs whole at once: what fits ``WHOLE_BUDGET`` bytes
        of the per-lane buffers its launches touch, the layer's im2col columns included (the
        unfused struck layer materialises them: up to 7 MiB per lane on ResNet-50)."""
        n = self._whole_chunk.get(layer)
        if n is None:
            first, end = self.layout.layer_span[layer]
            names = {b for launch in self.trace.launches[first:end] for b in (*launch.reads, *launch.writes)}
            per_lane = 4 * sum(self._lane_numel(b, layer) for b in names)
            n = self._whole_chunk[layer] = max(1, WHOLE_BUDGET // max(per_lane, 1))
        return n

    def _run_whole(self, state: BatchState, refs: list[int], layer: int) -> None:
        """The struck layer ``layer`` on whole faulty lanes for the faults ``refs``, beside
        their golden lanes (any fault, any kernel), and on from there."""
        layout, trace = self.layout, self.trace
        faults = [state.faults[j].fault for j in refs]
        inputs = sorted({fault.input_id for fault in faults})
        golden_row = {inp: row for row, inp in enumerate(inputs)}
        lane_input = inputs + [fault.input_id for fault in faults]
        # The layer's launches before the first struck one are golden: every lane starts from
        # the golden state at that launch (``StruckStarts``).
        first = min(fault.site.launch for fault in faults)
        start = self.starts.at(layer, first, inputs)
        expand = torch.tensor([golden_row[i] for i in lane_input], dtype=torch.long)
        mem = self.program.lane_memory({name: t.index_select(0, expand) for name, t in start.items()}, len(lane_input))
        lanes: list[Lane] = [GoldenLane(i) for i in inputs] + [FaultyLane(j) for j in refs]
        row_of = {j: len(inputs) + s for s, j in enumerate(refs)}  # a fault's row in ``mem``
        row_effects: dict[int, LaneEffect] = {}  # the injection override records by row
        by_launch: dict[int, list[int]] = {}
        for j, fault in zip(refs, faults):
            by_launch.setdefault(fault.site.launch, []).append(j)
        overrides = {}
        for k, members in by_launch.items():
            lane_faults = [(row_of[j], state.faults[j].fault, golden_row[state.input_of(j)]) for j in members]
            overrides[k] = make_override(trace.launches[k], lane_faults, row_effects, layout.memmap, layout.per_lane,
                                         layout.reach[k])
        # A fault is Masked when the outputs of the unit it struck equal golden: the kernel itself,
        # or for a hardened kernel (replicas + voter/checker) the whole protected unit, whose last
        # launch the hardening transform names in ``Launch.check_after``.
        check_at: dict[int, list[int]] = {}  # launch -> the rows judged after it
        for k, members in by_launch.items():
            check_at.setdefault(trace.launches[k].judged_at, []).extend(row_of[j] for j in members)
        differs: dict[int, bool] = {}  # row -> its unit's outputs differ from golden

        def after(launch: Launch, mem: Memory) -> None:
            for row in check_at.get(launch.index, ()):
                effect = row_effects[row]
                if effect.due:
                    differs[row] = True
                    continue
                names = set(launch.writes) | set(effect.touched)
                differs[row] = not self._lane_equal(mem, names, row, effect.golden_lane)

        state.propagation.update({j: [] for j in refs})
        with torch.no_grad():
            self.program.run(mem, first, layout.layer_span[layer][1], fast=self.fast, overrides=overrides,
                             after=after)
            state.effects.update({j: row_effects[row_of[j]] for j in refs})
            pos = layout.layer_pos[layer]
            lanes = self._retire(pos, mem, lanes, state, {j: differs.get(row_of[j], False) for j in refs})
            if lanes:
                self._suffix(mem, lanes, pos, state)

    def _lane_equal(self, mem: Memory, names: Iterable[str], row: int, golden_row: int) -> bool:
        for name in names:
            t = mem.get(name)
            if t is None or not self.layout.per_lane(name, t):
                continue
            if not torch.equal(t[row], t[golden_row]):
                return False
        return True

    def _retire(self, pos: int, mem: Memory, lanes: list[Lane], state: BatchState,
                differs: dict[int, bool] | None = None) -> list[Lane]:
        """After layer position ``pos``: record propagation, retire the lanes whose fate is known,
        drop golden lanes nobody needs and compact ``mem``; the lanes left ([] when no faulty
        lane is). ``differs`` (by fault) is given for the struck layer only (Masked is judged there)."""
        layout, trace = self.layout, self.trace
        golden_row = golden_rows(lanes)
        keep: list[int] = []
        spec = trace.layers[pos]
        out_name = layout.out_buf.get(spec.index)
        live_next = layout.live[pos + 1] if pos + 1 < len(trace.layers) else frozenset()
        running: list[tuple[int, int]] = []  # (row, fault) of the faulty lanes still running
        for row, lane in enumerate(lanes):
            if isinstance(lane, GoldenLane):
                keep.append(row)
                continue
            effect = state.effects[lane.fault]
            if effect.due:
                state.finish(lane.fault, Outcome.DUE, (effect.due,))
            elif differs is not None and not differs.get(lane.fault, False):
                state.finish(lane.fault, Outcome.MASKED)
            else:
                running.append((row, lane.fault))
        if running:
            # each lane's golden row: its golden lane in the batch, or the golden cache's row
            golden = [GoldenRow(GoldenSource.BATCH, golden_row[i]) if i in golden_row else GoldenRow(GoldenSource.CACHE, i)
                      for i in (state.input_of(j) for _, j in running)]
            runs = lane_runs([row for row, _ in running], golden)
            dirty = [False] * len(running)
            has_out = out_name is not None and out_name in mem
            if has_out:
                numel = mem[out_name][0].numel()
                found, dirty = self._scan(mem[out_name], out_name, runs, len(running), True)
                for (_, j), (corrupted, max_abs, max_rel) in zip(running, found):
                    state.propagation[j].append(Propagation(spec.index, corrupted, numel, max_abs, max_rel))
            if pos + 1 < len(trace.layers):
                if out_name not in live_next:
                    dirty = [False] * len(running)
                for name in list(live_next) + layout.lane_weights(mem):
                    t = mem.get(name)
                    if t is None or not layout.per_lane(name, t) or (has_out and name == out_name):
                        continue
                    clean = [i for i, d in enumerate(dirty) if not d]  # a lane dirty anywhere runs on
                    if not clean:
                        break
                    sub = lane_runs([running[i][0] for i in clean], [golden[i] for i in clean])
                    differ = self._scan(t, name, sub, len(clean), False)[1]
                    for i, d in zip(clean, differ):
                        dirty[i] = d
            else:
                dirty = [True] * len(running)
            for (row, j), d in zip(running, dirty):
                if d:
                    keep.append(row)
                else:
                    state.finish(j, Outcome.SDC_NO_MALFUNCTION, propagated=True)
            keep.sort()
        needed = {state.input_of(lane.fault) for lane in lanes
                  if isinstance(lane, FaultyLane) and lane.fault not in state.results}
        if not needed:
            return []
        keep = [row for row, lane in ((row, lanes[row]) for row in keep)
                if isinstance(lane, FaultyLane) or lane.input_id in needed]
        if len(keep) < len(lanes):
            mem.update(layout.take(mem, keep))
            lanes = [lanes[row] for row in keep]
        return lanes

    def _scan(self, t: torch.Tensor, name: str, runs: list[LaneRun], n: int, with_diff: bool
              ) -> tuple[list[Diff], list[bool]]:
        return scan(t, self.golden.buffers.get(name), runs, n, with_diff, functools.partial(self.cone.finite, name))

    def _suffix(self, mem: Memory, lanes: list[Lane], pos: int, state: BatchState) -> None:
        """The layers after the struck one: rebase the lanes onto the golden cache, walk the
        cone, run whole what the cone does not cover."""
        layout, trace = self.layout, self.trace
        if pos + 1 >= len(trace.layers):
            self._classify_survivors(mem, lanes, state)
            return
        golden_row = golden_rows(lanes)
        sparse: list[SparseLane] = []
        whole: list[SparseLane] = []
        own: list[int] = []  # rows of the lanes whose stores reached the weights
        for row, lane in enumerate(lanes):
            if isinstance(lane, GoldenLane):
                continue
            if state.effects[lane.fault].touched & layout.weight_names:
                own.append(row)
                continue
            inp = state.input_of(lane.fault)
            rebased = self.cone.rebase(mem, row, golden_row[inp], lane.fault, inp, layout.live[pos + 1])
            (whole if rebased.flat else sparse).append(rebased)
        if own:  # they run whole as they are, with their own weights, beside their golden lanes
            need = {state.input_of(lane.fault) for lane in (lanes[row] for row in own) if isinstance(lane, FaultyLane)}
            keep = [row for row, lane in enumerate(lanes)
                    if (isinstance(lane, GoldenLane) and lane.input_id in need) or row in own]
            self._dense({**mem, **layout.take(mem, keep)}, [lanes[row] for row in keep], pos + 1, state)
        self._walk({pos + 1: Joining(sparse, whole)}, state)

    def _walk(self, joining: dict[int, Joining], state: BatchState) -> None:
        """Rebased lanes, ``joining[p]`` from layer position p on: through the cone, then whole tensors."""
        layout = self.layout
        clean, dense = self.cone.walk({p: lanes.cone for p, lanes in joining.items() if lanes.cone},
                                      layout.layer_span, layout.out_buf, state.propagation)
        for p, lanes in joining.items():
            if lanes.whole:
                dense.setdefault(p, []).extend(lanes.whole)
        for lane in clean:
            state.finish(lane.fault, Outcome.SDC_NO_MALFUNCTION, propagated=True)
        if self.cached_golden:
            self._dense_merged(dense, state)
            return
        for p0 in sorted(dense):
            group = sorted(dense[p0], key=lambda lane: lane.input_id)  # lanes of one input side by side
            inputs = sorted({lane.input_id for lane in group})
            dmem = self.cone.dense_rows(layout.names_at(p0), group, inputs)
            dlanes: list[Lane] = [GoldenLane(i) for i in inputs] + [FaultyLane(lane.fault) for lane in group]
            if p0 < len(self.trace.layers):
                self._dense(dmem, dlanes, p0, state)
            else:
                self._classify_survivors(dmem, dlanes, state)

    def _dense_merged(self, dense: dict[int, list[SparseLane]], state: BatchState) -> None:
        """Whole tensors without golden lanes: the lanes that leave the cone at layer position
        p join those already running whole there, so every later layer runs once for all of
        them (a big layer's GEMM costs far less per lane in one call of many lanes; every layer
        gives a lane's row the same values in any batch, ``dense_matches_cache``)."""
        starts = sorted(dense)
        mem: Memory = {}
        lanes: list[Lane] = []
        for i, p0 in enumerate(starts):
            names = self.layout.names_at(p0)
            group = sorted(dense[p0], key=lambda lane: lane.input_id)  # lanes of one input side by side
            dmem = self.cone.dense_rows(names, group, [])
            if lanes:  # the lanes running whole so far, then these
                dmem = self.program.lane_memory({n: torch.cat([mem[n], dmem[n]]) for n in names if n in dmem},
                                                len(lanes) + len(group))
            mem, lanes = dmem, lanes + [FaultyLane(lane.fault) for lane in group]
            # to where the next group joins; the last group runs to the output and is classified
            lanes = self._dense(mem, lanes, p0, state, starts[i + 1] if i + 1 < len(starts) else None)

    def _dense(self, mem: Memory, lanes: list[Lane], p0: int, state: BatchState, stop: int | None = None) -> list[Lane]:
        """Whole tensors from layer position ``p0`` on, faulty lanes beside their golden lanes:
        to the output (survivors classified), or up to position ``stop`` (the lanes left)."""
        end = len(self.trace.layers) if stop is None else stop
        for p in range(p0, end):
            span = self.layout.layer_span.get(self.trace.layers[p].index)
            if span is not None:
                self.program.run(mem, span[0], span[1], fast=self.fast)
            lanes = self._retire(p, mem, lanes, state)
            if not lanes:
                return []
        if stop is None:
            self._classify_survivors(mem, lanes, state)
            return []
        return lanes

    def _classify_survivors(self, mem: Memory, lanes: list[Lane], state: BatchState) -> None:
        out = mem[self.trace.output]
        out = out.reshape(out.shape[0], -1)
        golden_row = golden_rows(lanes)
        for row, lane in enumerate(lanes):
            if not isinstance(lane, FaultyLane) or lane.fault in state.results:
                continue
            pf = state.faults[lane.fault]
            glane = golden_row.get(pf.fault.input_id)
            faulty = out[row]
            golden = out[glane] if glane is not None else self.golden.buffers[self.trace.output][pf.fault.input_id].reshape(-1)
            if self.keep_outputs:
                self.last_outputs[pf.id] = faulty.clone()
            flags: tuple[str, ...] = ()
            golden_top1 = int(golden.argmax())
            faulty_top1 = int(torch.nan_to_num(faulty, nan=-math.inf).argmax())
            if not bool(torch.isfinite(faulty).all()):
                outcome, flags = Outcome.SDC_MALFUNCTION, ("nonfinite",)
            elif torch.equal(faulty, golden):
                outcome = Outcome.SDC_NO_MALFUNCTION
            elif faulty_top1 != golden_top1:
                outcome = Outcome.SDC_MALFUNCTION
            else:
                outcome = Outcome.SDC_LIGHT_MALFUNCTION
            state.finish(lane.fault, outcome, flags, propagated=True, top1=(golden_top1, faulty_top1))

