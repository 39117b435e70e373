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

from kernelfi.campaign.threads import engine_threads
from kernelfi.lowering import Program
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


def pre_choice(trace: Trace, n_inputs: int, budget: int = PRE_BUDGET) -> set[int]:
    """The GEMM launches whose products the golden run keeps: the costliest per element (largest
    K) first, while ``budget`` bytes hold them for every input."""
    out: set[int] = set()
    used = 0
    gemms = sorted((l for l in trace.launches if l.kernel == "gemm"), key=lambda l: -int(l.params["K"]))
    for l in gemms:
        size = 4 * int(l.params["M"]) * int(l.params["N"]) * n_inputs
        if used + size <= budget:
            out.add(l.index)
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


@dataclass
class Golden:
    """Per input: every layer-boundary buffer, logits, probabilities and top-1."""

    buffers: dict[str, torch.Tensor]  # name -> (n_inputs, *shape)
    probs: torch.Tensor               # (n_inputs, classes)
    top1: torch.Tensor                # (n_inputs,)
    #: GEMM launch index -> its product (n_inputs, M*N) in the golden run, before the layer's
    #: batch-norm and bias: a struck layer's golden state after its GEMM, which the run computed
    #: anyway (``Runner`` checks each against the kernels before it uses it)
    pre: dict[int, torch.Tensor] = field(default_factory=dict)

    @classmethod
    @engine_threads()
    def compute(cls, program: Program, x: torch.Tensor, fast: bool = True, batch: int = 64,
                pre_budget: int = PRE_BUDGET) -> "Golden":
        """Run the inputs in chunks of ``batch``; each chunk's buffers are copied into tensors
        allocated for all inputs, so the run never holds a chunk list and its concatenation at
        once (ResNet-152, 4 inputs: 0.9 GiB less at the peak)."""
        trace = program.trace
        n = x.shape[0]
        keep = set().union(*live_in(trace)) | {trace.output, trace.logits, "input"}
        want = pre_choice(trace, n, pre_budget) if fast else set()
        bufs: dict[str, torch.Tensor] = {}
        pre: dict[int, torch.Tensor] = {}
        s = 0

        def into(out: dict, key: object, y: torch.Tensor) -> None:
            if key not in out:
                out[key] = torch.empty((n, *y.shape[1:]), dtype=y.dtype, device=y.device)
            out[key][s:s + y.shape[0]].copy_(y)

        def tap(gemm: Launch, y: torch.Tensor) -> None:
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
        return cls(bufs, probs, probs.argmax(dim=1), {k: v for k, v in pre.items() if k in want})

def dense_matches_cache(program: Program, golden: Golden, live: list[frozenset[str]],
                        layer_span: dict[int, tuple[int, int]], out_buf: dict[int, str]) -> bool:
    """Does every layer, run from the golden cache in batches of other sizes (one lane, three
    lanes; the cache ran in batches of up to 64), give the cache's values bit for bit?

    Then a faulty lane that runs whole tensors can be compared with the cache instead of with a
    golden lane computed beside it, which for a few faults per batch is a large share of the
    work. Checked once per campaign; where it fails, golden lanes run in every batch."""
    trace = program.trace
    n = int(golden.top1.shape[0])
    for rows in ([n - 1], [0, n - 1, 0]):
        idx = torch.tensor(rows, dtype=torch.long)
        for p, spec in enumerate(trace.layers):
            span = layer_span.get(spec.index)
            if span is None:
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
