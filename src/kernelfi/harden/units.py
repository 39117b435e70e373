"""Which launches a plan protects, grouped into *units* (docs/hardening.md §1).

A unit is what one technique replicates or checks as a whole. It is one launch, except that an
``im2col`` and the ``gemm`` reading its workspace are one unit: the engine may run the pair as
one fused convolution, and replicating the pair (not the gemm alone) keeps every replica on the
same arithmetic path, so the voted output stays bit-identical to the unhardened model's.
"""
from __future__ import annotations

from dataclasses import dataclass

from kernelfi._utils import KernelfiError
from kernelfi.kernels import square_im2col
from kernelfi.types import Launch, Trace

from .plan import REPLICATION, Plan, Protection


@dataclass(frozen=True)
class Unit:
    technique: str
    launches: tuple[int, ...]   # indexes into the unhardened trace, consecutive

    @property
    def last(self) -> int:
        return self.launches[-1]


@dataclass(frozen=True)
class RangeSite:
    """A range restriction: clamp ``buffer`` after launch ``after`` (the layer's last)."""

    after: int
    layer: int
    buffer: str
    lo: float
    hi: float


def select(trace: Trace, prot: Protection) -> list[int]:
    """Launch indexes a protect entry names (a KernelfiError when it names none)."""
    if prot.target == "launch":
        ids = [l.index for l in trace.launches if l.name == prot.name]
    elif prot.target == "kernel":
        ids = [l.index for l in trace.launches if l.kernel == prot.name]
    else:
        layers = {s.index for s in trace.layers if s.name == prot.name or str(s.index) == prot.name}
        ids = [l.index for l in trace.launches if l.layer in layers]
    if not ids:
        raise KernelfiError(f"hardening plan: {prot.target} '{prot.name}' matches no launch of {trace.model}")
    return ids


def conv_pairs(trace: Trace) -> dict[int, int]:
    """im2col index -> index of the gemm that reads its workspace right after it."""
    pairs: dict[int, int] = {}
    ls = trace.launches
    for i in range(len(ls) - 1):
        a, b = ls[i], ls[i + 1]
        if (a.kernel == "im2col" and b.kernel == "gemm" and a.layer == b.layer and a.writes[:1] == ("workspace",)
                and len(b.reads) > 1 and b.reads[1] == "workspace"):
            pairs[i] = i + 1
    return pairs


def deconv_chains(trace: Trace) -> list[tuple[int, int, int]]:
    """(fill, gemm, col2im) of each transposed convolution: the columns' zero fill, the gemm
    that writes them and the col2im that scatters them onto the layer output. The workspace is
    scratch no replica owns, so TMR/DMR replicate the three as one unit (as an im2col and its
    gemm); ABFT checks the gemm alone."""
    ls = trace.launches
    return [(i, i + 1, i + 2) for i in range(len(ls) - 2)
            if (ls[i].kernel, ls[i + 1].kernel, ls[i + 2].kernel) == ("fill", "gemm", "col2im")
            and len({ls[i].layer, ls[i + 1].layer, ls[i + 2].layer}) == 1
            and ls[i].writes[:1] == ls[i + 1].writes[:1] == ls[i + 2].reads[:1] == ("workspace",)]


def abft_checkable(trace: Trace, gemm: int) -> bool:
    """Whether ABFT is offered for this gemm launch: its virtual im2col reads square windows
    padded alike on both sides, so a gemm fed by a non-square or asymmetrically padded im2col
    (a (1, 3) kernel, ``padding='same'`` of a 2x2 one) cannot be checked; nor is a transposed
    convolution's gemm offered (``_unchecked_gemms``)."""
    return gemm not in _unchecked_gemms(trace)


def _unchecked_gemms(trace: Trace) -> set[int]:
    """The gemm launches ABFT is not offered for: those fed by an im2col that is not square
    (its checksums cannot check them), and a transposed convolution's (the trace can check it,
    but the export's ABFT wrappers rebuild a Conv2d or a Linear, not a ConvTranspose2d, so a plan
    holding one could not be exported; TMR and DMR protect it)."""
    fed = {g for i, g in conv_pairs(trace).items() if not square_im2col(trace.launches[i].params)}
    return fed | {gemm for _, gemm, _ in deconv_chains(trace)} | _mode_padded_gemms(trace)


def _mode_padded_gemms(trace: Trace) -> set[int]:
    """The gemms of a ``Conv2d(padding_mode='reflect'|'replicate')``: the lowering pads first (a
    ``<conv>.pad`` layer), but the export's ABFT wrapper checks the Conv2d module against its
    unpadded input with zero padding, so a plan holding one could not be exported."""
    padded = {l.name.rsplit(".", 2)[0] for l in trace.launches
              if l.kernel in ("reflection_pad2d", "replication_pad2d") and l.name.rsplit(".", 2)[1:2] == ["pad"]}
    # a gemm's launch is "<layer>.gemm", a grouped conv's "<layer>.gemm.g<k>"
    return {l.index for l in trace.launches if l.kernel == "gemm" and l.name.rsplit(".gemm", 1)[0] in padded}


def abft_plan(trace: Trace) -> Plan:
    """Full ABFT: every gemm it can check — by kernel type where that is all of them, else launch
    by launch (the planner never offers ABFT where it cannot check, so harden does not fail on a
    model with non-square convolutions)."""
    gemms = [l.index for l in trace.launches if l.kernel == "gemm"]
    unchecked = _unchecked_gemms(trace)
    ok = [i for i in gemms if i not in unchecked]
    if ok == gemms:
        return Plan(trace.model, (Protection("kernel", "gemm", "abft"),))
    return Plan(trace.model, tuple(Protection("launch", trace.launches[i].name, "abft") for i in ok))


def units(trace: Trace, plan: Plan) -> list[Unit]:
    """The replication units of a plan, in trace order; the first entry naming a launch wins."""
    assign: dict[int, tuple[int, str]] = {}
    pairs = conv_pairs(trace)
    for rank, prot in enumerate(plan.protect):
        if prot.technique not in REPLICATION:
            continue
        ids = select(trace, prot)
        if prot.technique == "abft":
            ids = [i for i in ids if trace.launches[i].kernel == "gemm" or i in pairs]
            if not ids:
                raise KernelfiError(f"hardening plan: abft protects gemm launches; {prot.target} '{prot.name}' has none")
        for i in ids:
            assign.setdefault(i, (rank, prot.technique))
    for i, g in pairs.items():  # a conv pair takes the first-listed technique of either member
        got = [assign[x] for x in (i, g) if x in assign]
        if got:
            assign[i] = assign[g] = min(got)
    joined: dict[int, tuple[int, ...]] = {i: (i, g) for i, g in pairs.items()}
    for chain in deconv_chains(trace):
        got = [assign[x] for x in chain if x in assign]
        if not got:
            continue
        first = min(got)
        if first[1] == "abft":  # the gemm's checksums; the fill alone protects nothing
            assign.pop(chain[0], None)
            continue
        for x in chain:
            assign[x] = first
        joined[chain[0]] = chain
    out: list[Unit] = []
    done: set[int] = set()
    for i in sorted(assign):
        if i in done:
            continue
        members = joined.get(i, (i,))
        done.update(members)
        out.append(Unit(assign[i][1], members))
    return out


def range_sites(trace: Trace, plan: Plan) -> list[RangeSite]:
    """Where range restriction clamps: after the last launch of each protected layer, on the
    buffer that launch writes (the layer output). Softmax outputs are never clamped."""
    sites: dict[int, RangeSite] = {}
    for prot in plan.protect:
        if prot.technique != "range":
            continue
        layers = sorted({trace.launches[i].layer for i in select(trace, prot)})
        for layer in layers:
            ls = trace.layer_launches(layer)
            last: Launch = ls[-1]
            if last.kernel == "softmax" or not last.writes:
                if prot.target != "kernel":
                    raise KernelfiError(f"hardening plan: range restriction of layer {layer} ({last.name}): "
                                        "a softmax output is not restricted")
                continue
            buf = last.writes[0]
            if prot.bounds is None or buf not in prot.bounds:
                raise KernelfiError(f"hardening plan: range entry '{prot.name}' has no bounds for '{buf}' "
                                    "(kernelfi.harden.profile_bounds computes them)")
            lo, hi = prot.bounds[buf]
            sites.setdefault(last.index, RangeSite(last.index, layer, buf, lo, hi))
    return [sites[k] for k in sorted(sites)]
