"""``apply_plan``: an unhardened Program -> the hardened Program (docs/hardening.md §1).

The input is never mutated: a new Trace (new launches, buffers appended after the originals so
the unhardened part of the IOA memory map keeps its addresses) over the same weights.

Every launch a technique adds or owns carries, in its params:
``hardening`` (tmr/dmr/abft/range), ``role`` (original, copy, replica, vote, compare, vectors,
checksum, check, correct, clamp), ``protects`` (the unit's primary launch, or the clamped
buffer) and ``origin`` (the kernel type its run time is charged to in overhead tables); and
its ``Launch.check_after`` field names the launch whose outputs decide whether a fault in it
was Masked (the runner compares the unit's final outputs with golden there). Launches that run only on a mismatch
(DMR's re-execution, ABFT's correction) also carry ``conditional: True`` and a zero-thread
template: they execute in the simulation but count no golden instructions, so no fault is
injected into them and fault-free timing skips them.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping

from kernelfi._utils import KernelfiError
from kernelfi.kernels import get_kernel, square_im2col
from kernelfi.lowering import Program
from kernelfi.types import BufferSpec, LayerSpec, Launch, ThreadTemplate, Trace

from .plan import Plan, as_plan, full_plan
from .units import RangeSite, Unit, range_sites, units

#: Params the transform adds (stripped when a launch's own params are reused elsewhere).
OWN_KEYS: tuple[str, ...] = ("hardening", "role", "protects", "origin", "conditional")


@dataclass
class _Emit:
    """A launch before it has its index."""

    base: Launch
    name: str
    kernel: str
    reads: tuple[str, ...]
    writes: tuple[str, ...]
    params: dict[str, Any]
    template: ThreadTemplate
    group: int = -1          # unit id; -1: an unprotected launch
    final: bool = False      # the launch whose outputs decide Masked for the group
    own_check: bool = False  # checked at itself (a voter that is not the unit's last)


@dataclass
class _Builder:
    trace: Trace
    out: list[_Emit] = field(default_factory=list)
    buffers: list[BufferSpec] = field(default_factory=list)
    specs: dict[str, BufferSpec] = field(default_factory=dict)
    range_layers: list[tuple[int, LayerSpec]] = field(default_factory=list)  # (after layer, new layer)

    def __post_init__(self) -> None:
        self.specs = {b.name: b for b in self.trace.buffers}

    # ------------------------------------------------------------------ helpers
    def spec(self, name: str) -> BufferSpec:
        try:
            return self.specs[name]
        except KeyError:
            raise KernelfiError(f"{self.trace.model}: buffer '{name}' is not in the trace") from None

    def new_buffer(self, name: str, shape: tuple[int, ...], kind: str, dtype: str = "float32") -> str:
        if name in self.specs:
            raise KernelfiError(f"{self.trace.model}: hardening buffer '{name}' already exists")
        b = BufferSpec(name, tuple(int(d) for d in shape), kind, dtype)
        self.specs[name] = b
        self.buffers.append(b)
        return name

    def replica_buffer(self, name: str, suffix: str) -> str:
        """``<name>.<suffix>``, shared by every unit replicating ``name`` (each fully rewrites it)."""
        if f"{name}.{suffix}" in self.specs:
            return f"{name}.{suffix}"
        s = self.spec(name)
        kind = s.kind if s.kind in ("activation", "index", "workspace") else "activation"
        return self.new_buffer(f"{name}.{suffix}", s.shape, kind, s.dtype)

    def emit(self, base: Launch, name: str, kernel: str, reads: tuple[str, ...], writes: tuple[str, ...],
             params: Mapping[str, Any], tags: Mapping[str, Any], group: int, template: ThreadTemplate | None = None,
             conditional: bool = False, final: bool = False, own_check: bool = False) -> None:
        p = {k: v for k, v in params.items() if k not in OWN_KEYS}
        p.update(tags)
        tpl = template if template is not None else get_kernel(kernel).template(p)
        if conditional:
            p["conditional"] = True
            tpl = ThreadTemplate(threads=0, block=tpl.block, slots=tpl.slots)
        self.out.append(_Emit(base, name, kernel, reads, writes, p, tpl, group, final, own_check))

    def keep(self, launch: Launch) -> None:
        self.out.append(_Emit(launch, launch.name, launch.kernel, launch.reads, launch.writes, dict(launch.params),
                              launch.template))

    # ------------------------------------------------------------------ techniques
    def replicate(self, unit: Unit, group: int) -> None:
        """TMR (three runs, bitwise vote) or DMR (two runs, compare, re-execution on mismatch)."""
        ls = [self.trace.launches[i] for i in unit.launches]
        prim = ls[-1]
        tmr = unit.technique == "tmr"
        sfx = "tmr" if tmr else "dmr"
        outs = list(dict.fromkeys(w for l in ls for w in l.writes if w != "workspace"))
        if not outs:
            raise KernelfiError(f"{self.trace.model}: launch {prim.name} writes nothing to protect")
        primary = prim.writes[0] if prim.writes[0] in outs else outs[-1]
        read_first = [o for o in outs if any(o in l.reads for l in ls)]  # in place: replicas start from a copy
        rep = {r: {o: self.replica_buffer(o, f"{sfx}{r}") for o in outs} for r in (1, 2)}
        tags = {"hardening": unit.technique, "protects": prim.name}
        for r in (1, 2):
            for j, o in enumerate(read_first):
                n = self.spec(o).numel
                self.emit(prim, f"{prim.name}.{sfx}{r}.copy" + (str(j) if len(read_first) > 1 else ""), "copy", (o,),
                          (rep[r][o],), {"n": n, "out_offset": 0}, {**tags, "role": "copy", "origin": prim.kernel},
                          group, conditional=not tmr and r == 2)
        for l in ls:
            self.emit(l, l.name, l.kernel, l.reads, l.writes, l.params,
                      {**tags, "role": "original", "origin": l.kernel}, group, template=l.template)
        for r in (1, 2):
            for l in ls:
                m = rep[r]
                self.emit(l, f"{l.name}.{sfx}{r}", l.kernel, tuple(m.get(x, x) for x in l.reads),
                          tuple(m.get(x, x) for x in l.writes), l.params,
                          {**tags, "role": "replica", "origin": l.kernel}, group, template=l.template,
                          conditional=not tmr and r == 2)
        kernel, role = ("tmr_vote", "vote") if tmr else ("dmr_compare", "compare")
        order = [o for o in outs if o != primary] + [primary]
        for o in order:
            off, n = self._written_range(ls, o)
            name = f"{prim.name}.{role}" + ("" if o == primary else "." + o.rsplit(".", 1)[-1])
            self.emit(prim, name, kernel, (o, rep[1][o], rep[2][o]), (o,),
                      {"n": n, "offset": off, "dtype": self.spec(o).dtype}, {**tags, "role": role, "origin": prim.kernel},
                      group, final=o == primary, own_check=o != primary)

    def _written_range(self, ls: list[Launch], buf: str) -> tuple[int, int]:
        """(offset, count) of the elements of ``buf`` the unit writes: the voter's range."""
        numel = self.spec(buf).numel
        lo, hi = numel, 0
        for l in ls:
            if buf not in l.writes:
                continue
            p = l.params
            if l.kernel == "copy":
                a, b = int(p.get("out_offset", 0)), int(p.get("out_offset", 0)) + int(p["n"])
            elif l.kernel == "fill":
                a, b = 0, int(p["n"])
            elif l.kernel == "gemm":
                a = int(p.get("c_offset", 0))
                b = a + int(p["M"]) * int(p["N"])
            else:
                a, b = 0, numel
            lo, hi = min(lo, a), max(hi, min(b, numel))
        return lo, max(hi - lo, 0)

    def abft(self, unit: Unit, group: int) -> None:
        """Huang & Abraham checksums around one gemm (with its im2col, read virtually)."""
        ls = [self.trace.launches[i] for i in unit.launches]
        g = ls[-1]
        im = ls[0] if len(ls) == 2 else None
        p = g.params
        m, n, k = int(p["M"]), int(p["N"]), int(p["K"])
        c = g.writes[0]
        self._require_zero_c(g)
        gp: dict[str, Any] = {key: p[key] for key in ("M", "N", "K", "trans_a", "trans_b", "a_offset", "b_offset",
                                                      "c_offset") if key in p}
        if im is not None:
            if not square_im2col(im.params):
                raise KernelfiError(f"{g.name}: ABFT of a non-square convolution is not supported "
                                    "(its virtual im2col reads square windows)")
            gp["im2col"] = {key: v for key, v in im.params.items() if key not in OWN_KEYS}
            gp["b_offset"] = 0
        a, b = g.reads[0], (im.reads[0] if im is not None else g.reads[1])
        vec = self.new_buffer(f"{g.name}.abft_vec", (4 * k,), "workspace")
        sums = self.new_buffer(f"{g.name}.abft_sums", (2 * (m + n),), "workspace")
        flags = self.new_buffer(f"{g.name}.abft_flags", (m + n,), "workspace", "int32")
        tags = {"hardening": "abft", "protects": g.name, "origin": "gemm"}
        self.emit(g, f"{g.name}.abft_vectors", "abft_vectors", (a, b), (vec,), gp, {**tags, "role": "vectors"}, group)
        self.emit(g, f"{g.name}.abft_checksum", "abft_checksum", (a, b, vec), (sums,), gp,
                  {**tags, "role": "checksum"}, group)
        for l in ls:
            self.emit(l, l.name, l.kernel, l.reads, l.writes, l.params,
                      {**tags, "role": "original", "origin": l.kernel}, group, template=l.template)
        self.emit(g, f"{g.name}.abft_check", "abft_check", (c, sums), (flags,), gp, {**tags, "role": "check"}, group)
        self.emit(g, f"{g.name}.abft_correct", "abft_correct", (a, b, c, flags), (c,), gp,
                  {**tags, "role": "correct"}, group, conditional=True, final=True)

    def _require_zero_c(self, g: Launch) -> None:
        """ABFT's checksums assume C starts at zero: a zero fill of C earlier in the layer."""
        need = int(g.params.get("c_offset", 0)) + int(g.params["M"]) * int(g.params["N"])
        for l in self.trace.launches[:g.index]:
            if (l.layer == g.layer and l.kernel == "fill" and l.writes[:1] == g.writes[:1]
                    and float(l.params.get("value", 0.0)) == 0.0 and int(l.params["n"]) >= need):
                return
        raise KernelfiError(f"abft: {g.name} does not accumulate onto a zero-filled C (no zero fill of "
                            f"'{g.writes[0]}' in its layer)")

    def clamp(self, site: RangeSite) -> None:
        """Ranger's restriction as a layer of its own right after the protected one (type
        ``range``, named ``<layer>.range``): the protected layer keeps the engine's fused fast
        path, and campaigns see the clamp as the next layer's first work."""
        layer = next(s for s in self.trace.layers if s.index == site.layer)
        index = max(s.index for s in self.trace.layers) + 1 + len(self.range_layers)
        spec = LayerSpec(index, "range", f"{layer.name}.range", (layer.index,), layer.out_shape,
                         {"lo": site.lo, "hi": site.hi, "buffer": site.buffer})
        self.range_layers.append((layer.index, spec))
        last = self.trace.launches[site.after]
        base = dataclasses.replace(last, layer=index, layer_type="range")
        self.emit(base, f"{spec.name}.range_clamp", "range_clamp", (site.buffer,), (site.buffer,),
                  {"n": self.spec(site.buffer).numel, "lo": site.lo, "hi": site.hi},
                  {"hardening": "range", "role": "clamp", "protects": site.buffer, "origin": last.kernel}, -1,
                  own_check=True)

    # ------------------------------------------------------------------ result
    def trace_out(self) -> Trace:
        final: dict[int, int] = {}
        for i, e in enumerate(self.out):
            if e.group >= 0 and e.final:
                final[e.group] = i
        launches = []
        for i, e in enumerate(self.out):
            check_after = i if e.own_check else final[e.group] if e.group >= 0 else None
            launches.append(Launch(index=i, layer=e.base.layer, layer_type=e.base.layer_type, name=e.name,
                                   kernel=e.kernel, reads=e.reads, writes=e.writes, params=dict(e.params),
                                   template=e.template, check_after=check_after))
        names = [l.name for l in launches]
        if len(set(names)) != len(names):
            dup = sorted({n for n in names if names.count(n) > 1})
            raise KernelfiError(f"{self.trace.model}: hardened launch names collide: {', '.join(dup)}")
        layers: list[LayerSpec] = []
        for spec in self.trace.layers:
            layers.append(spec)
            layers.extend(new for after, new in self.range_layers if after == spec.index)
        return dataclasses.replace(self.trace, layers=tuple(layers), launches=tuple(launches),
                                   buffers=self.trace.buffers + tuple(self.buffers))


def harden_trace(trace: Trace, plan: Plan | Mapping[str, Any]) -> Trace:
    """The hardened trace of ``plan`` (see the module docstring)."""
    plan = as_plan(plan)
    if plan.model and plan.model != trace.model:
        raise KernelfiError(f"hardening plan is for model '{plan.model}', not '{trace.model}'")
    if any(l.params.get("hardening") for l in trace.launches):
        raise KernelfiError(f"{trace.model}: the trace is already hardened")
    us = units(trace, plan)
    sites = {s.after: s for s in range_sites(trace, plan)}
    first = {u.launches[0]: (g, u) for g, u in enumerate(us)}
    inside = {i for u in us for i in u.launches}
    b = _Builder(trace)
    for launch in trace.launches:
        i = launch.index
        if i in first:
            g, u = first[i]
            (b.abft if u.technique == "abft" else b.replicate)(u, g)
            for j in u.launches:
                if j in sites:
                    b.clamp(sites[j])
            continue
        if i in inside:
            continue
        b.keep(launch)
        if i in sites:
            b.clamp(sites[i])
    return b.trace_out()


def apply_plan(program: Program, plan: Plan | Mapping[str, Any]) -> Program:
    """The hardened program: same weights, hardened trace; ``program`` is left untouched."""
    return Program(harden_trace(program.trace, plan), program.weights)


def comparison_programs(base: Program, plan: Plan | Mapping[str, Any] | None = None) -> dict[str, Program]:
    """The AlexNet study's Table 2 columns: unhardened, the plan (when given), full DMR and full TMR."""
    kernels = sorted({l.kernel for l in base.trace.launches})
    progs: dict[str, Program] = {"unhardened": base}
    if plan is not None:
        progs["plan"] = apply_plan(base, plan)
    progs["full DMR"] = apply_plan(base, full_plan(base.trace.model, kernels, "dmr"))
    progs["full TMR"] = apply_plan(base, full_plan(base.trace.model, kernels, "tmr"))
    return progs
