"""Export a hardened model as plain PyTorch (docs/export.md).

>>> from kernelfi.harden.export import export_model, load_exported
>>> export_model("digits-alexnet", "plan.json", "out/")          # doctest: +SKIP
>>> net = load_exported("out/", variant="plan", device="cuda")     # doctest: +SKIP

``export_model`` writes generated source (``model.py``), a safetensors state dict, the plan and a
manifest mapping every plan entry to the PyTorch ops it protects; the directory runs with torch
and safetensors alone. ``runtime`` holds the techniques (TMR, DMR, ABFT, range clamps) that every
export carries a copy of; ``coverage`` injects bit flips through hooks and measures what each
technique catches; ``timing`` measures the exported variants against the original natively; ``spelling`` says how
model.py writes each module and call the lowering accepts.
"""
from __future__ import annotations

from .coverage import Coverage, FaultyOp, Flip, Injection, flip_bit, flip_in, measure_coverage
from .export import VARIANTS, Export, export_model, load_exported, read_manifest
from .mapping import Op, OpHardening, graph_ops, launch_op, map_plan
from .timing import LABELS, TITLES, NativeOverhead, model_inputs, native_overhead, original_module, time_exported

__all__ = ["LABELS", "TITLES", "Coverage", "Export", "FaultyOp", "Flip", "Injection", "NativeOverhead", "Op", "OpHardening",
           "VARIANTS", "export_model", "flip_bit", "flip_in", "graph_ops", "launch_op", "load_exported", "map_plan",
           "measure_coverage", "model_inputs", "native_overhead", "original_module", "read_manifest", "time_exported"]
