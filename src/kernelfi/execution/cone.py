"""Faulty lanes as golden state plus corrupted patches, walked through the receptive-field cone.

Once the struck layer has run, a faulty lane's state is the golden run's state except in a few
windows. The unstruck values of a faulty run are the golden run's values (the GPU is
deterministic), so the lane is *rebased*: it keeps, per live buffer, only the window that holds
its differences from golden, with the golden cache's values around them. The layers after the
injection then compute only the window the corruption can reach (``lowering.crop``), batched over
the lanes of the batch, until the window covers too much of a feature map or a layer the cone
does not cover comes; from there the lane runs whole, beside a golden lane (``Runner``).

Rebasing happens with the cone on or off, so both give the same rows bit for bit (a test runs
both): the cone is a way to compute, never a change of model.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from kernelfi.execution import native
from kernelfi.lowering import Memory, Program
from kernelfi.lowering.crop import Box, CropUnit, area, crop_units, fit, gather, union, verify, verify_cols
from kernelfi.types import Propagation, Trace

#: A lane whose next window would cover more than this share of a feature map runs whole.
DENSE_SHARE = 0.5
#: The relative error of an element whose golden value is 0 is taken against this.
REL_FLOOR = 1e-30


@dataclass
class SparseLane:
    fault: int                     # index of its fault in the batch (``BatchState``'s key)
    input_id: int
    patches: dict[str, tuple[Box, torch.Tensor]] = field(default_factory=dict)
    #: differences in buffers that are no feature map, (flat indices, values): whole tensors only
    flat: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)


def different(a: torch.Tensor, g: torch.Tensor, finite: bool = False) -> torch.Tensor:
    """Elementwise a != g, with NaN equal to NaN (golden NaNs are rare: checked first, unless
    the caller knows ``g`` is ``finite``)."""
    ne = a != g
    if finite or not has_nan(g):
        return ne
    return ne & ~(torch.isnan(a) & torch.isnan(g))


def has_nan(t: torch.Tensor) -> bool:
    """Any NaN in ``t``: one read-only pass (``amax`` propagates NaN), no mask."""
    return t.numel() > 0 and t.is_floating_point() and bool(torch.isnan(t.amax()))


Diff = tuple[int, float, float]


def diff_rows(a: torch.Tensor, g: torch.Tensor, finite: bool = False) -> list[Diff]:
    """Per row of (rows, N) tensors: (elements differing, largest absolute error, largest
    relative error), NaN equal to NaN, a NaN error counting as infinite. ``g`` may be one row
    for all; ``finite``: the caller knows every element of ``g`` is finite.

    The errors are float32 arithmetic, ``|f - g|`` and ``|f - g| / max(|g|, 1e-30)`` rounded
    once each (an error too large for float32 is infinite): a largest error is the float32
    rounding of the exact one, and whole rows cost a few float32 passes (a corruption that has
    spread differs almost everywhere; gathering or widening to double cost ten times more)."""
    rows = a.shape[0]
    a, g = a.reshape(rows, -1), g.reshape(g.shape[0], -1)
    if a.dtype != torch.float32:
        n = (a != g).sum(dim=1).tolist()
        return [(k, float(k > 0), float(k > 0)) for k in n]
    got = native.diff_rows(a, g, REL_FLOOR)  # the same figures in one pass, where it is built
    if got is not None and all(x is not None for x in got):
        return got  # type: ignore[return-value]
    if finite and a.shape[1] < 2 ** 24:  # float32 sums of ones are exact below 2**24
        d = torch.sub(a, g, out=_scratch(0, a.shape)).abs_()
        top = d.amax(dim=1)  # NaN or inf when any element is
        if bool(torch.isfinite(top).all()):  # a, g and a - g finite: a != g exactly where d > 0
            counts = torch.sign(d, out=_scratch(1, a.shape)).sum(dim=1).tolist()
            top_abs = top.tolist()
            top_rel = d.div_(g.abs().clamp_min(REL_FLOOR)).amax(dim=1).tolist()
            return [(int(k), ma, mr) if k else (0, 0.0, 0.0) for k, ma, mr in zip(counts, top_abs, top_rel)]
    r, c = different(a, g, finite).nonzero(as_tuple=True)
    return diff_segments(a[r, c], g[r if g.shape[0] == rows else torch.zeros_like(r), c], r, rows)


_SCRATCH: dict[int, torch.Tensor] = {}
#: The largest scratch buffer kept between calls (float32 elements: 64 MiB)
SCRATCH_MAX = 1 << 24


def _scratch(slot: int, shape: torch.Size) -> torch.Tensor:
    """A reused float32 buffer of ``shape``: a fresh tensor of a few dozen MiB per layer and
    lane run costs more in page faults (the allocator hands big blocks back to the system)
    than the passes over it."""
    n = math.prod(shape)
    if n > SCRATCH_MAX:  # kept no longer than the call
        return torch.empty(shape, dtype=torch.float32)
    t = _SCRATCH.get(slot)
    if t is None or t.numel() < n:
        t = _SCRATCH[slot] = torch.empty(n, dtype=torch.float32)
    return t[:n].view(shape)


def diff_segments(f: torch.Tensor, g: torch.Tensor, seg: torch.Tensor, n: int) -> list[Diff]:
    """``diff_rows``' figures from the differing elements alone (the same float32 arithmetic):
    values ``f`` against golden ``g``, element k belonging to row ``seg[k]`` of ``n`` (rows of
    any length: the sparse struck layer's lanes hold a few elements each)."""
    counts = torch.bincount(seg, minlength=n).tolist()
    if not any(counts):
        return [(0, 0.0, 0.0)] * n
    f, g = f.float(), g.float()
    d = (f - g).abs()
    rel = d / g.abs().clamp_min(REL_FLOOR)
    out: list[list[float]] = []
    for v in (d, rel):
        bad = torch.zeros(n, dtype=torch.bool)
        bad[seg[torch.isnan(v)]] = True
        top = torch.zeros(n, dtype=v.dtype).scatter_reduce(0, seg, torch.nan_to_num(v, nan=0.0, posinf=math.inf), "amax")
        out.append([math.inf if b else float(t) for b, t in zip(bad.tolist(), top.tolist())])
    return [(k, ma, mr) if k else (0, 0.0, 0.0) for k, ma, mr in zip(counts, out[0], out[1])]


def bboxes(mask: torch.Tensor) -> list[Box | None]:
    """Per lane of an (L, C, H, W) mask, the smallest window holding every True (None: none)."""
    plane = mask.any(dim=1)
    out: list[Box | None] = []
    spans = []
    for hit in (plane.any(dim=2), plane.any(dim=1)):  # (L, H) rows and (L, W) columns hit
        n = hit.shape[1]
        h8 = hit.to(torch.uint8)
        first = h8.argmax(dim=1)
        last = n - 1 - h8.flip(1).argmax(dim=1)
        spans.append((hit.any(dim=1).tolist(), first.tolist(), last.tolist()))
    (any_r, r0, r1), (_, c0, c1) = spans
    for j, a in enumerate(any_r):
        out.append((r0[j], r1[j] + 1, c0[j], c1[j] + 1) if a else None)
    return out


#: A cone step's lanes share one call with one window size: a group's windows together cover
#: at most this much more than the lanes' own boxes.
FIT_SLACK = 1.25


def similar(step: list[tuple[SparseLane, Box]], lone_doubles: bool = False) -> list[list[tuple[SparseLane, Box]]]:
    """The lanes of a step in groups of like-sized boxes (largest first; a box joins the open
    group while the group's common window wastes at most ``FIT_SLACK``). ``lone_doubles``: a
    call of one lane costs as much as one of two (``kernels.lane_conv2d`` convolves a lone lane
    twice), so lone lanes pair up wherever their common window is no bigger than their two
    boxes together."""
    groups: list[list[tuple[SparseLane, Box]]] = []
    h = w = own = 0
    for item in sorted(step, key=lambda it: (-area(it[1]), it[1])):
        b = item[1]
        nh, nw = max(h, b[1] - b[0]), max(w, b[3] - b[2])
        if groups and nh * nw * (len(groups[-1]) + 1) <= FIT_SLACK * (own + area(b)):
            groups[-1].append(item)
            h, w, own = nh, nw, own + area(b)
        else:
            groups.append([item])
            h, w, own = b[1] - b[0], b[3] - b[2], area(b)
    if not lone_doubles:
        return groups
    out: list[list[tuple[SparseLane, Box]]] = []
    single: list[tuple[SparseLane, Box]] | None = None
    for g in groups:
        if len(g) > 1:
            out.append(g)
            continue
        if single is None:
            single = g[0]
            continue
        (a, b) = single[1], g[0][1]
        fit_area = max(a[1] - a[0], b[1] - b[0]) * max(a[3] - a[2], b[3] - b[2])
        if fit_area <= area(a) + area(b):
            out.append([single, g[0]])
            single = None
        else:
            out.append([single])
            single = g[0]
    if single is not None:
        out.append([single])
    return out


class Cone:
    """Per campaign: the verified crop units and the golden planes they read."""

    def __init__(self, program: Program, golden_buffers: dict[str, torch.Tensor], live: list[frozenset[str]],
                 enabled: bool = True, verified: tuple[frozenset[int], frozenset[int]] | None = None) -> None:
        """``verified``: the (units, column units) another process verified on this machine with
        the same golden run (``Runner.checks``), instead of verifying again."""
        self.program, self.gold, self.live = program, golden_buffers, live
        self.trace: Trace = program.trace
        self.units: dict[int, CropUnit] = {}
        #: units whose lanes' windows run side by side in one GEMM (``CropUnit.columns``, verified)
        self.cols: set[int] = set()
        #: windows computed and whole feature maps they stood for (what the cone saved)
        self.stats = {"windows": 0, "window_elems": 0, "map_elems": 0, "column_steps": 0}
        self._planes: dict[tuple[str, int], torch.Tensor | None] = {}
        self._finite: dict[tuple[str, int], bool] = {}
        if enabled and verified is not None:
            self.units = {k: cu for k, cu in crop_units(program).items() if k in verified[0]}
            self.cols = set(verified[1]) & set(self.units)
        elif enabled:
            gen = torch.Generator().manual_seed(0)
            n = next(iter(golden_buffers.values())).shape[0]
            rows = [0, n - 1, 0]  # three lanes: not the batch size of the golden run
            mem: Memory = dict(program.weights)
            with torch.no_grad():
                self.units = {k: cu for k, cu in crop_units(program).items() if verify(cu, mem, golden_buffers, rows, gen)}
                self.cols = {k for k, cu in self.units.items() if verify_cols(cu, mem, golden_buffers, rows, gen)}

    def plane(self, name: str, inp: int) -> torch.Tensor | None:
        """Golden buffer ``name`` of input ``inp`` as a (C, H, W) view (None: no feature map)."""
        key = (name, inp)
        if key not in self._planes:
            shape = tuple(self.trace.buffer(name).shape)
            ok = len(shape) == 3 and name in self.gold
            self._planes[key] = self.gold[name][inp].view(shape) if ok else None
        return self._planes[key]

    def finite(self, name: str, inp: int) -> bool:
        """Whether golden plane ``name`` of input ``inp`` holds only finite values (cached: a
        window of it then needs no NaN handling)."""
        key = (name, inp)
        ok = self._finite.get(key)
        if ok is None:
            t = self.gold[name][inp]
            # two read-only passes, no mask: amax/amin propagate NaN and reach +-inf
            ok = self._finite[key] = t.numel() == 0 or bool(torch.isfinite(torch.stack([t.amax(), t.amin()])).all())
        return ok

    def rebase(self, mem: Memory, row: int, golden_row: int, fault: int, input_id: int, names) -> SparseLane:
        """Fault ``fault``'s lane at row ``row`` of ``mem`` as its differences from the golden lane
        at row ``golden_row``, in buffers ``names``."""
        diffs: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for name in names:
            t = mem.get(name)
            if t is None:
                continue
            f, g = t[row].reshape(-1), t[golden_row].reshape(-1)
            if torch.equal(f, g):
                continue
            idx = torch.nonzero(different(f, g)).flatten()
            if idx.numel():
                diffs[name] = (idx, f[idx].clone())
        return self.lane(fault, input_id, diffs)

    def lane(self, fault: int, inp: int, diffs: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> SparseLane:
        """A faulty lane from its differences to golden, (flat indices, values) per live buffer:
        patches laid over the golden cache's feature maps, or, when a buffer that differs is no
        feature map, the flat differences (the lane then runs whole from the next layer)."""
        lane = SparseLane(fault, inp)
        planes = {n: self.plane(n, inp) for n in diffs}
        if any(p is None for p in planes.values()):
            lane.flat = dict(diffs)
            return lane
        for n, (idx, vals) in diffs.items():
            plane = planes[n]
            assert plane is not None
            _, h, w = plane.shape
            ys, xs = (idx // w) % h, idx % w
            y0, y1, x0, x1 = int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1
            patch = plane[:, y0:y1, x0:x1].clone()
            patch[idx // (h * w), ys - y0, xs - x0] = vals
            if not torch.equal(patch, plane[:, y0:y1, x0:x1]):
                lane.patches[n] = ((y0, y1, x0, x1), patch)
        return lane

    def dense_rows(self, names, lanes: list[SparseLane], inputs: list[int]) -> Memory:
        """Whole tensors for a batch: golden lanes for ``inputs``, then the sparse lanes."""
        rows: Memory = {}
        idx = torch.tensor(inputs + [ln.input_id for ln in lanes], dtype=torch.long)
        for name in names:
            if name not in self.gold:
                continue
            t = self.gold[name].index_select(0, idx)
            for j, ln in enumerate(lanes):
                patch = ln.patches.get(name)
                if patch is not None:
                    (y0, y1, x0, x1), vals = patch
                    t[len(inputs) + j].view(tuple(self.trace.buffer(name).shape))[:, y0:y1, x0:x1] = vals
                flat = ln.flat.get(name)
                if flat is not None:
                    t[len(inputs) + j].view(-1)[flat[0]] = flat[1]
            rows[name] = t
        return self.program.lane_memory(rows, len(idx))

    def walk(self, lanes: dict[int, list[SparseLane]], layer_span: dict[int, tuple[int, int]],
             out_buf: dict[int, str], propagation: dict[int, list[Propagation]]
             ) -> tuple[list[SparseLane], dict[int, list[SparseLane]]]:
        """Run the lanes, ``lanes[p]`` from layer position p on, while they fit the cone: lanes
        struck in different layers join at their own position and share the later steps.

        Returns the lanes that came back to golden (No-Malfunction) and, per layer position,
        the lanes that must run whole from there on."""
        layers = self.trace.layers
        clean: list[SparseLane] = []
        dense: dict[int, list[SparseLane]] = {}
        active: list[SparseLane] = []
        last = max(lanes, default=-1)
        for pos in range(min(lanes, default=len(layers)), len(layers)):
            active.extend(lanes.get(pos, ()))
            if not active:
                if pos >= last:
                    break
                continue
            spec = layers[pos]
            live_next = self.live[pos + 1] if pos + 1 < len(layers) else frozenset()
            unit = self.units.get(spec.index)
            has_launches = spec.index in layer_span
            step: list[tuple[SparseLane, Box]] = []
            quiet: list[SparseLane] = []
            for lane in active:
                if not has_launches:
                    quiet.append(lane)
                    continue
                if unit is None or pos + 1 == len(layers):
                    dense.setdefault(pos, []).append(lane)
                    continue
                box = None
                for n in unit.inputs:
                    if n in lane.patches:
                        box = union(box, unit.out_box(lane.patches[n][0]))
                if box is None:
                    quiet.append(lane)
                elif area(box) > DENSE_SHARE * unit.out_chw[1] * unit.out_chw[2]:
                    dense.setdefault(pos, []).append(lane)
                else:
                    step.append((lane, box))
            if step and unit is not None and spec.index in self.cols:
                if not self._step_cols(unit, step, out_buf.get(spec.index), propagation):
                    dense.setdefault(pos, []).extend(lane for lane, _ in step)
                    step = []
            elif step and unit is not None:
                ran = []
                doubles = unit.kind == "conv" and unit.win_y is not None and unit.win_y.size > 1  # lane_conv2d
                for group in similar(step, doubles):  # windows of one call share a size: lanes of like boxes
                    if self._step(unit, group, out_buf.get(spec.index), propagation):
                        ran.extend(group)
                    else:
                        dense.setdefault(pos, []).extend(lane for lane, _ in group)
                step = ran
            out_name = out_buf.get(spec.index)
            if out_name is not None and unit is not None:
                numel = unit.out_chw[0] * unit.out_chw[1] * unit.out_chw[2]
                for lane in quiet:
                    propagation[lane.fault].append(Propagation(spec.index, 0, numel, 0.0, 0.0))
            active = []
            for lane in quiet + [lane for lane, _ in step]:
                lane.patches = {k: v for k, v in lane.patches.items() if k in live_next}
                (active if lane.patches else clean).append(lane)
        if active:  # only for a trace whose last layers launch nothing
            dense.setdefault(len(layers), []).extend(active)
        return clean, dense

    def _step(self, cu: CropUnit, step: list[tuple[SparseLane, Box]], out_name: str | None,
              props: dict[int, list[Propagation]]) -> bool:
        """Compute the windows of one unit for its lanes, in one call."""
        h = max(b[1] - b[0] for _, b in step)
        w = max(b[3] - b[2] for _, b in step)
        boxes = [fit(b, h, w, cu.out_chw[1:]) for _, b in step]
        crops = []
        for n in cu.inputs:
            planes = [self.plane(n, ln.input_id) for ln, _ in step]
            if any(p is None for p in planes):
                return False
            region = [cu.in_box(box) for box in boxes]
            ry, rx = region[0][1] - region[0][0], region[0][3] - region[0][2]
            batch = planes[0].new_empty((len(step), cu.in_chw[0], ry, rx))  # type: ignore[union-attr]
            patches = [ln.patches.get(n) for ln, _ in step]
            if not native.gather(planes, [(r[0], r[2]) for r in region], cu.pad_value, patches, batch):  # type: ignore[arg-type]
                for j, plane in enumerate(planes):
                    gather(plane, region[j], cu.pad_value, patches[j], out=batch[j])  # type: ignore[arg-type]
            crops.append(batch)
        with torch.no_grad():
            out = cu.run(self.program.weights, crops)
        if out is None:
            return False
        gplanes = [self.plane(cu.output, ln.input_id) for ln, _ in step]
        finite = all(self.finite(cu.output, ln.input_id) for ln, _ in step)
        # figures and tight boxes in one pass against the golden planes, where it is built
        both = native.diff_boxes(out, gplanes, [(b[0], b[2]) for b in boxes], REL_FLOOR) if finite else None  # type: ignore[arg-type]
        if both is not None:
            found, tight = [d for d, _ in both], [b for _, b in both]
        else:
            golden = torch.stack([plane[:, y0:y1, x0:x1] for plane, (y0, y1, x0, x1) in zip(gplanes, boxes)])  # type: ignore[index]
            tight = bboxes(different(out, golden, finite))
            found = diff_rows(out.reshape(len(step), -1), golden.reshape(len(step), -1), finite) if out_name else []
        self._record(cu, step, boxes, list(out), found if out_name is not None else None, tight, props)
        return True

    def _record(self, cu: CropUnit, step: list[tuple[SparseLane, Box]], boxes: list[Box], wins: list[torch.Tensor],
                found: list[tuple[int, float, float]] | None, tight: list[Box | None],
                props: dict[int, list[Propagation]]) -> None:
        """Each lane's propagation row (``found``: None for a layer without one) and its new
        patch: the tight box of its window ``wins[j]`` (of ``boxes[j]``), a view (patches are
        read-only; the gathers read them with their strides, so no copy is made)."""
        numel = math.prod(cu.out_chw)
        self.stats["windows"] += len(step)
        self.stats["window_elems"] += sum(w.numel() for w in wins)
        self.stats["map_elems"] += numel * len(step)
        if found is not None:
            layer = int(cu.unit.launches[0].layer)
            for (ln, _), (corrupted, max_abs, max_rel) in zip(step, found):
                props[ln.fault].append(Propagation(layer, corrupted, numel, max_abs, max_rel))
        for (ln, _), box, win, t in zip(step, boxes, wins, tight):
            if t is None:
                ln.patches.pop(cu.output, None)
                continue
            ty0, ty1, tx0, tx1 = t
            ln.patches[cu.output] = ((box[0] + ty0, box[0] + ty1, box[2] + tx0, box[2] + tx1),
                                     win[:, ty0:ty1, tx0:tx1])

    def _step_cols(self, cu: CropUnit, step: list[tuple[SparseLane, Box]], out_name: str | None,
                   props: dict[int, list[Propagation]]) -> bool:
        """``_step`` for a ``columns`` unit: every lane's own window, side by side as the columns
        of one GEMM (no common window size, so no lanes split into calls and no padding)."""
        name = cu.inputs[0]
        planes = [self.plane(name, ln.input_id) for ln, _ in step]
        gplanes = [self.plane(cu.output, ln.input_id) for ln, _ in step]
        if any(p is None for p in planes) or any(p is None for p in gplanes):
            return False
        boxes = [b for _, b in step]
        offsets, p = [], 0
        for b in boxes:
            offsets.append(p)
            p += area(b)
        x = planes[0].new_empty((cu.in_chw[0], p))  # type: ignore[union-attr]
        patches = [ln.patches.get(name) for ln, _ in step]
        if not native.gather_cols(planes, boxes, offsets, patches, x):  # type: ignore[arg-type]
            for b, o, plane, patch in zip(boxes, offsets, planes, patches):
                x[:, o:o + area(b)] = gather(plane, b, 0.0, patch).reshape(cu.in_chw[0], -1)  # type: ignore[arg-type]
        with torch.no_grad():
            y = cu.run_cols(self.program.weights, x)
        if y is None:
            return False
        m = cu.out_chw[0]
        self.stats["column_steps"] += 1
        finite = all(self.finite(cu.output, ln.input_id) for ln, _ in step)
        both = native.diff_boxes_cols(y, gplanes, boxes, offsets, REL_FLOOR) if finite else None  # type: ignore[arg-type]
        wins = [y[:, o:o + area(b)].view(m, b[1] - b[0], b[3] - b[2]) for b, o in zip(boxes, offsets)]
        if both is None:
            both = []
            for win, plane, (y0, y1, x0, x1) in zip(wins, gplanes, boxes):
                golden = plane[:, y0:y1, x0:x1].unsqueeze(0)  # type: ignore[index]
                a = win.unsqueeze(0)
                both.append((diff_rows(a.reshape(1, -1), golden.reshape(1, -1), finite)[0] if out_name else (0, 0.0, 0.0),
                             bboxes(different(a, golden, finite))[0]))
        self._record(cu, step, boxes, wins, [d for d, _ in both] if out_name is not None else None,
                     [t for _, t in both], props)
        return True
