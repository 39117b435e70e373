"""The fault-free run of every campaign input, cached at layer boundaries.

A faulty run starts at the injected layer from these tensors instead of re-running the
prefix. Faulty lanes are compared with golden lanes that run beside them along the same code
path (so batching and kernel order never create a false SDC), or, where a per-campaign check
shows that every layer gives the cache's values in any batch (``dense_matches_cache``), with
the cache itself.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch

from kernelfi._utils import KernelfiError
from kernelfi.execution.threads import engine_threads
from kernelfi.lowering import Program
from kernelfi.lowering.groups import plan_groups
from kernelfi.types import Launch, Trace


def live_at_launch(trace: Trace) -> list[frozenset[str]]:
    """For each launch index i, the non-weight buffers that launches i.. read before writing."""
    weights = {b.name for b in trace.buffers if b.kind == "weight"}
    live: set[str] = set()
    out: list[frozenset[str]] = [frozenset()] * (len(trace.launches) + 1)
    out[len(trace.launches)] = frozenset()
    for l in reversed(trace.launches):
        live -= set(l.writes)
        live |= {r for r in l.reads if r not in weights}
        out[l.index] = frozenset(live)
    return out


def lane_numel(trace: Trace) -> Callable[[str, int], int]:
    """``numel(buffer, layer)``: the per-lane element count of a non-weight buffer as that layer
    holds it (0 for weights): the shared im2col ``workspace`` is sized for the largest layer,
    but a layer's im2col writes only its own K x N columns."""
    base = {b.name: math.prod(b.shape) for b in trace.buffers if b.kind != "weight"}
    ws: dict[int, int] = {}
    for l in trace.launches:
        if l.kernel == "gemm" and "workspace" in l.reads:
            ws[l.layer] = max(ws.get(l.layer, 0), int(l.params["K"]) * int(l.params["N"]))

    def numel(name: str, layer: int) -> int:
        return ws.get(layer, 0) if name == "workspace" else base.get(name, 0)
    return numel


def live_in(trace: Trace) -> list[frozenset[str]]:
    """For each layer position p (index into trace.layers), the non-weight buffers that
    launches from p on read before writing them: what a run starting at p needs.

    That is the live set at the layer's first launch (for a layer that launches nothing,
    dropout, at the next launch)."""
    at = live_at_launch(trace)
    pos = {spec.index: p for p, spec in enumerate(trace.layers)}
    out: list[frozenset[str]] = []
    i = 0
    for p in range(len(trace.layers)):
        while i < len(trace.launches) and pos[trace.launches[i].layer] < p:
            i += 1
        out.append(at[i])
    return out


#: Bytes of GEMM products the golden run keeps (``Golden.pre``), all inputs together.
PRE_BUDGET = 512 << 20


def pre_items(trace: Trace) -> dict[int, tuple[int, int]]:
    """What the golden run can keep after a GEMM, by launch: ``(K, floats per input)``.

    A GEMM of a fused conv/connected unit: its M×N product. A grouped convolution, which the
    fast path runs as one call (``lowering.groups``): one item at its last GEMM, the C the
    call leaves (every group's block), from which a struck layer restarts after any of its G
    GEMMs (``StruckStarts``); its per-group GEMMs are no items of their own (the golden run
    never sees their products apart). K is a group's (the work per element)."""
    runs = plan_groups(trace)
    inside = {j for r in runs.values() for j in range(r.start, r.end)}
    out: dict[int, tuple[int, int]] = {}
    for l in trace.launches:
        if l.kernel == "gemm" and l.index not in inside:
            out[l.index] = (int(l.params["K"]), int(l.params["M"]) * int(l.params["N"]))
    for r in runs.values():
        last = trace.launches[r.end - 1]
        out[last.index] = (int(last.params["K"]), math.prod(trace.buffer(last.writes[0]).shape))
    return dict(sorted(out.items()))


def pre_choice(trace: Trace, n_inputs: int, budget: int = PRE_BUDGET) -> set[int]:
    """The items of ``pre_items`` the golden run keeps: the costliest per element (largest K)
    first, while ``budget`` bytes hold them for every input."""
    out: set[int] = set()
    used = 0
    items = sorted(pre_items(trace).items(), key=lambda item: -item[1][0])
    for index, (_, numel) in items:
        size = 4 * numel * n_inputs
        if used + size <= budget:
            out.add(index)
            used += size
    return out


#: Bytes of buffers one chunk of the golden run may hold (the run keeps every buffer it writes)
GOLDEN_CHUNK_BUDGET = 256 << 20


def golden_chunk(trace: Trace, batch: int, budget: int | None = None) -> int:
    """Inputs per chunk of the golden run: ``batch``, fewer where one input's buffers (all of
    them: a run frees none) would pass ``budget`` bytes. ResNet-152 holds 359 MiB per input,
    so it runs one input at a time (peak RSS 2.00 -> 1.62 GiB with 4 inputs); the bits do not
    depend on the chunk (``dense_matches_cache`` checks that, ``Runner`` the GEMM products)."""
    per_input = 4 * sum(math.prod(b.shape) for b in trace.buffers if b.kind != "weight")
    return max(1, min(batch, (budget or GOLDEN_CHUNK_BUDGET) // max(per_input, 1)))


def golden_keeps(trace: Trace, n: int, fast: bool, pre_budget: int = PRE_BUDGET) -> tuple[set[str], set[int]]:
    """What the golden run of ``n`` inputs keeps: the buffers any later start reads, the output,
    logits and input; with ``fast``, the GEMM products ``pre_choice`` picks."""
    keep = set().union(*live_in(trace)) | {trace.output, trace.logits, "input"}
    return keep, (pre_choice(trace, n, pre_budget) if fast else set())


def golden_numel(trace: Trace, n: int, fast: bool, pre_budget: int = PRE_BUDGET) -> int:
    """Floats the golden run of ``n`` inputs keeps (``golden_keeps``)."""
    return _kept_numel(trace, n, *golden_keeps(trace, n, fast, pre_budget))


def _kept_numel(trace: Trace, n: int, keep: set[str], pre: set[int]) -> int:
    size = {b.name: math.prod(b.shape) for b in trace.buffers}
    items = pre_items(trace)
    return n * (sum(size.get(k, 0) for k in keep) + sum(items[g][1] for g in pre))


@dataclass
class Golden:
    """Per input: every layer-boundary buffer, logits, probabilities and top-1."""

    buffers: dict[str, torch.Tensor]  # name -> (n_inputs, *shape)
    probs: torch.Tensor               # (n_inputs, classes)
    top1: torch.Tensor                # (n_inputs,)
    #: GEMM launch index -> its product (n_inputs, M*N) in the golden run, before the layer's
    #: batch-norm and bias: a struck layer's golden state after its GEMM, which the run computed
    #: anyway (``StruckStarts`` checks each against the kernels before it uses it); at a grouped
    #: convolution's last GEMM, the C of its one grouped call (``pre_items``)
    pre: dict[int, torch.Tensor] = field(default_factory=dict)
    #: the one shared-memory block every tensor above is a view of (``compute(share=True)``)
    block: torch.Tensor | None = None

    @classmethod
    @engine_threads()
    def compute(cls, program: Program, x: torch.Tensor, fast: bool = True, batch: int = 64,
                pre_budget: int = PRE_BUDGET, share: bool = False) -> "Golden":
        """Run the inputs in chunks of ``batch``; each chunk's buffers are copied into tensors
        allocated for all inputs, so the run never holds a chunk list and its concatenation at
        once (ResNet-152, 4 inputs: 0.9 GiB less at the peak). With ``share``, those tensors
        are views of one block of shared memory (``SharedGolden``), sized from the trace."""
        trace = program.trace
        n = x.shape[0]
        keep, want = golden_keeps(trace, n, fast, pre_budget)
        bufs: dict[str, torch.Tensor] = {}
        pre: dict[int, torch.Tensor] = {}
        block = torch.empty(_kept_numel(trace, n, keep, want)).share_memory_() if share else None
        used = 0
        s = 0

        def into(out: dict, key: object, y: torch.Tensor) -> None:
            nonlocal used
            if key not in out:
                shape = (n, *y.shape[1:])
                size = math.prod(shape)
                if block is not None and y.dtype == block.dtype and used + size <= block.numel():
                    out[key] = block[used:used + size].view(shape)
                    used += size
                else:  # not planned for: a private tensor (SharedGolden.of copies the run then)
                    out[key] = torch.empty(shape, dtype=y.dtype, device=y.device)
            out[key][s:s + y.shape[0]].copy_(y)

        def tap(gemm: Launch, y: torch.Tensor) -> None:  # a unit's product or a grouped call's C
            if gemm.index in want:  # copied now: the epilogue may work in place
                into(pre, gemm.index, y.reshape(y.shape[0], -1))

        step = golden_chunk(trace, batch)
        with torch.no_grad():
            for s in range(0, n, step):
                mem = program.run(program.memory(x[s:s + step]), fast=fast, tap=tap)
                for k in keep:
                    into(bufs, k, mem[k])
                del mem
        probs = bufs[trace.output].reshape(n, -1)
        return cls(bufs, probs, probs.argmax(dim=1), {k: v for k, v in pre.items() if k in want}, block)

@dataclass(frozen=True)
class SharedGolden:
    """A golden run in one block of shared memory, for worker processes. Pickled into a spawned
    worker it passes one file descriptor (a tensor each would pass hundreds), and every worker
    maps the same pages instead of computing and holding its own run (ResNet-152, 4 inputs:
    0.88 GiB a worker). Nothing writes a golden tensor: the runner copies what it changes."""

    flat: torch.Tensor
    layout: tuple[tuple[str | int, int, tuple[int, ...]], ...]  # (buffer name | GEMM launch, offset, shape)
    output: str

    @classmethod
    def of(cls, golden: Golden, output: str) -> "SharedGolden":
        """The run's own block where it was computed into one (``compute(share=True)``), else a
        copy into a new one."""
        parts = [*golden.buffers.items(), *golden.pre.items()]
        block = golden.block
        if block is not None and all(t.untyped_storage().data_ptr() == block.untyped_storage().data_ptr()
                                     and t.is_contiguous() for _, t in parts):
            return cls(block, tuple((key, t.storage_offset(), tuple(t.shape)) for key, t in parts), output)
        flat = torch.empty(sum(t.numel() for _, t in parts), dtype=torch.float32)
        layout, at = [], 0
        for key, t in parts:
            if t.dtype != torch.float32:
                raise KernelfiError(f"golden buffer {key} is {t.dtype}; only float32 runs are shared")
            flat[at:at + t.numel()].copy_(t.reshape(-1))
            layout.append((key, at, tuple(t.shape)))
            at += t.numel()
        return cls(flat.share_memory_(), tuple(layout), output)

    def golden(self) -> Golden:
        view = {key: self.flat[at:at + math.prod(shape)].view(shape) for key, at, shape in self.layout}
        bufs = {k: v for k, v in view.items() if isinstance(k, str)}
        probs = bufs[self.output].reshape(bufs[self.output].shape[0], -1)
        return Golden(bufs, probs, probs.argmax(dim=1), {k: v for k, v in view.items() if isinstance(k, int)},
                      self.flat)


def added_launches(base: Program, program: Program) -> list[Launch] | None:
    """The launches ``program`` adds to ``base``, where it runs every launch of ``base``
    unchanged (same name, kernel, buffers and parameters, in the same order) and only adds
    others; None where it changes or drops one."""
    names = {l.name for l in base.trace.launches}
    kept = [l for l in program.trace.launches if l.name in names]
    same = len(kept) == len(base.trace.launches) and all(
        (a.name, a.kernel, a.reads, a.writes, a.params) == (b.name, b.kernel, b.reads, b.writes, b.params)
        for a, b in zip(kept, base.trace.launches))
    return [l for l in program.trace.launches if l.name not in names] if same else None


def bits(t: torch.Tensor) -> torch.Tensor:
    """``t``'s float32 values as their int32 bit patterns, so ``torch.equal`` compares bits
    (-0.0 unequal to 0.0, a NaN equal to the same NaN); other dtypes as they are."""
    t = t.contiguous()
    return t.view(torch.int32) if t.dtype == torch.float32 else t


def extended_golden(base: Program, golden: Golden, program: Program, fast: bool = True,
                    pre_budget: int = PRE_BUDGET) -> Golden | None:
    """The golden run of ``program`` taken from ``golden`` (``base``'s) without running the model
    again, where that is exact: ``program`` runs ``base``'s launches unchanged (``added_launches``)
    and every launch it adds rewrites buffers the golden run holds with their own golden values,
    bit for bit, on every input (a range clamp whose bounds hold on the campaign inputs). Every
    buffer, product and probability of ``program``'s golden run is then ``base``'s; the keep rules
    (``golden_keeps``) are ``program``'s. None where that does not hold (call ``Golden.compute``).

    The harden planner verifies each candidate clamp on a model with that clamp alone: this
    saves one golden run of the whole model per clamp (ResNet-50: 60 of them)."""
    added = added_launches(base, program)
    if added is None or golden.block is not None:
        return None
    n = int(golden.top1.shape[0])
    weights = {b.name for b in program.trace.buffers if b.kind == "weight"}
    for l in added:
        reads = [r for r in l.reads if r not in weights]
        if not l.writes or any(name not in golden.buffers for name in [*reads, *l.writes]):
            return None
        mem = program.lane_memory({r: golden.buffers[r].clone() for r in reads}, n)
        with torch.no_grad():
            program.run(mem, l.index, l.index + 1, fast=fast)
        for w in l.writes:
            got, want = mem.get(w), golden.buffers[w]
            if got is None or got.numel() != want.numel() or got.dtype != want.dtype or \
                    not torch.equal(bits(got.reshape(n, -1)), bits(want.reshape(n, -1))):
                return None
    keep, want_pre = golden_keeps(program.trace, n, fast, pre_budget)
    if not keep <= set(golden.buffers):
        return None
    base_index = {l.name: l.index for l in base.trace.launches}
    pre: dict[int, torch.Tensor] = {}
    for g in want_pre:
        b = base_index.get(program.trace.launches[g].name)
        if b is None or b not in golden.pre:
            return None
        pre[g] = golden.pre[b]
    return Golden({k: golden.buffers[k] for k in keep}, golden.probs, golden.top1, pre)


def dense_matches_cache(program: Program, golden: Golden, live: list[frozenset[str]],
                        layer_span: dict[int, tuple[int, int]], out_buf: dict[int, str],
                        layers: set[int] | None = None) -> bool:
    """Does every layer, run from the golden cache in batches of other sizes (one lane, three
    lanes; the cache ran in batches of up to 64), give the cache's values bit for bit?

    Then a faulty lane that runs whole tensors can be compared with the cache instead of with a
    golden lane computed beside it, which for a few faults per batch is a large share of the
    work. Checked once per campaign; where it fails, golden lanes run in every batch. ``layers``:
    check only these layer indices (the others known to pass: ``Runner.extended_checks``)."""
    trace = program.trace
    n = int(golden.top1.shape[0])
    for rows in ([n - 1], [0, n - 1, 0]):
        idx = torch.tensor(rows, dtype=torch.long)
        for p, spec in enumerate(trace.layers):
            span = layer_span.get(spec.index)
            if span is None or (layers is not None and spec.index not in layers):
                continue
            after = live[p + 1] if p + 1 < len(trace.layers) else frozenset({trace.output})
            check = set(after) | ({out_buf[spec.index]} if spec.index in out_buf else set())
            if any(name not in golden.buffers for name in check | set(live[p])):
                return False
            mem = program.lane_memory({name: golden.buffers[name].index_select(0, idx) for name in live[p]}, len(rows))
            with torch.no_grad():
                program.run(mem, span[0], span[1], fast=True)
            for name in check:
                if name not in mem:
                    return False
                got = mem[name].reshape(len(rows), -1)
                want = golden.buffers[name].index_select(0, idx).reshape(len(rows), -1)
                if not torch.equal(torch.nan_to_num(got), torch.nan_to_num(want)):
                    return False
    return True
