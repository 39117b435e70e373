"""The fault-free run of every campaign input, cached at layer boundaries.

A faulty run starts at the injected layer from these tensors instead of re-running the
prefix; the in-batch golden lanes recompute only from that layer on, along the same code path
as the faulty lanes (so batching and kernel order never create a false SDC).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from kernelfi.lowering import Program
from kernelfi.types import Trace


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


@dataclass
class Golden:
    """Per input: every layer-boundary buffer, logits, probabilities and top-1."""

    buffers: dict[str, torch.Tensor]  # name -> (n_inputs, *shape)
    probs: torch.Tensor               # (n_inputs, classes)
    top1: torch.Tensor                # (n_inputs,)

    @classmethod
    def compute(cls, program: Program, x: torch.Tensor, fast: bool = True, batch: int = 64) -> "Golden":
        trace = program.trace
        keep = set().union(*live_in(trace)) | {trace.output, trace.logits, "input"}
        chunks: dict[str, list[torch.Tensor]] = {k: [] for k in keep}
        with torch.no_grad():
            for s in range(0, x.shape[0], batch):
                mem = program.run(program.memory(x[s:s + batch]), fast=fast)
                for k in keep:
                    chunks[k].append(mem[k])
        bufs = {k: torch.cat(v) for k, v in chunks.items()}
        probs = bufs[trace.output].reshape(x.shape[0], -1)
        return cls(bufs, probs, probs.argmax(dim=1))
