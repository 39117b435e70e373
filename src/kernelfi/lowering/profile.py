"""Instruction-profile tables of a trace (what ``kernelfi profile`` prints)."""
from __future__ import annotations

from typing import Any

from kernelfi.types import GROUPS, Trace


def profile_dict(trace: Trace) -> dict[str, Any]:
    """Per layer, per launch: instruction counts by group, thread count and share of the total.

    Layers that launch nothing (dropout) are listed with no kernels so Darknet's numbering
    stays visible.
    """
    total = sum(l.profile.total() for l in trace.launches) or 1
    layers = []
    for spec in trace.layers:
        kernels = []
        for launch in trace.layer_launches(spec.index):
            prof = launch.profile
            kernels.append({
                "name": launch.kernel,
                "launch": launch.name,
                "instructions": {g: int(prof.counts[g]) for g in GROUPS},
                "threads": int(prof.threads),
                "share": prof.total() / total,
            })
        layers.append({
            "index": spec.index,
            "type": spec.type,
            "name": spec.name,
            "output_shape": list(spec.out_shape),
            "kernels": kernels,
            "instructions": {g: sum(k["instructions"][g] for k in kernels) for g in GROUPS},
            "share": sum(k["share"] for k in kernels),
        })
    by_kernel: dict[str, dict[str, int]] = {}
    for launch in trace.launches:
        row = by_kernel.setdefault(launch.kernel, {g: 0 for g in GROUPS} | {"launches": 0})
        for g in GROUPS:
            row[g] += int(launch.profile.counts[g])
        row["launches"] += 1
    return {"model": trace.model, "input_shape": list(trace.input_shape), "total_instructions": total,
            "layers": layers, "kernels": by_kernel}


def profile_rows(trace: Trace) -> list[dict[str, Any]]:
    """Flat per-launch rows (table and CSV output)."""
    d = profile_dict(trace)
    rows = []
    for layer in d["layers"]:
        for k in layer["kernels"] or [{"name": "-", "launch": "-", "instructions": {g: 0 for g in GROUPS},
                                        "threads": 0, "share": 0.0}]:
            rows.append({"layer": layer["index"], "type": layer["type"], "kernel": k["name"],
                         "launch": k["launch"], **k["instructions"], "threads": k["threads"],
                         "share": k["share"]})
    return rows
