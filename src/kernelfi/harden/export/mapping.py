"""A plan's launches -> the PyTorch ops of the model that contain them (docs/export.md §3).

The plan names launches of the kernel trace (docs/hardening.md §2); the export protects whole
PyTorch ops. Each launch belongs to one lowering layer, and each layer to the fx nodes the
lowering fused into it (``kernelfi.lowering.lower_fx``): a convolutional layer is its
``Conv2d`` (+ ``BatchNorm2d``) (+ activation), a residual layer its add (+ activation). A launch
maps to the smallest of those ops that computes it: ``fill``/``im2col``/``gemm`` to the
``Conv2d`` or ``Linear``, ``normalize``/``scale_bias`` to the BatchNorm, ``add_bias`` to the
BatchNorm when there is one (its shift) and else to the conv/linear (its bias),
``activate_array`` to the activation, a pool or a softmax to that module, a residual
``copy``/``shortcut`` to the add, a route's ``copy`` to the ``torch.cat``. The layers with one
op (a standalone activation or BatchNorm, an upsample, a squeeze-and-excitation multiply, a
broadcasting ``a - b``/``a * b``, a local or adaptive average pool, a spatial mean) map every
launch to that op.

Replication (tmr, dmr, abft) is per op, the first plan entry that reaches an op wins (as the
trace transform lets the first entry win per launch); range restriction clamps the layer's
output, i.e. after the layer's last op.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch.fx as fx
from torch import nn

from kernelfi._utils import KernelfiError
from kernelfi.lowering import FxLowered
from kernelfi.types import Launch, Trace

from ..plan import REPLICATION, Plan
from ..units import conv_pairs, range_sites, select

#: Kernels that are the layer's first op whatever the layer: its conv or linear, pool, add, cat,
#: the function or module of a layer that has one op (an upsample, a squeeze-and-excitation
#: multiply, a broadcasting ``a - b``, a spatial mean, both passes of a GroupNorm), the activation of a standalone activation
#: layer (its ``copy``), the BatchNorm of a standalone batchnorm layer (its ``copy``).
_FIRST_OP = ("fill", "im2col", "gemm", "copy", "shortcut", "forward_maxpool", "forward_avgpool", "softmax",
             "forward_local_avgpool", "adaptive_avgpool", "adaptive_maxpool", "max_pool_nchw", "upsample", "upsample_bilinear", "scale_channels",
             "binary_op", "prelu", "scalar_op", "clamp", "constant_pad", "col2im",
             "group_norm_moments", "group_norm_apply", "channel_shuffle", "pixel_shuffle", "reflection_pad2d",
             "replication_pad2d")


@dataclass(frozen=True)
class Op:
    """One call of a PyTorch op in the exported forward: an fx node of the traced model."""

    node: str     # the fx node name: the call site (a module called twice has two)
    module: str   # the module path (call_module), else the lowering layer's name (+ the function)
    kind: str     # Conv2d, BatchNorm2d, ReLU, ..., or add, cat, relu, softmax for functions
    layer: str    # the lowering layer (the launch-name prefix)

    def describe(self) -> dict[str, str]:
        return {"call": self.node, "module": self.module, "op": self.kind, "layer": self.layer}


@dataclass
class OpHardening:
    """What one variant protects, per fx node, and how it came from the plan (the manifest)."""

    replicate: dict[str, str] = field(default_factory=dict)                # node -> tmr | dmr | abft
    clamps: dict[str, tuple[float, float]] = field(default_factory=dict)   # node -> [lo, hi] after it
    entries: list[dict[str, Any]] = field(default_factory=list)
    not_exported: list[dict[str, str]] = field(default_factory=list)


def graph_ops(lowered: FxLowered) -> dict[str, Op]:
    """Every fx node that belongs to a layer, as an ``Op``."""
    nodes = {n.name: n for n in lowered.graph_module.graph.nodes}
    modules = dict(lowered.graph_module.named_modules())
    out: dict[str, Op] = {}
    for index, members in lowered.members.items():
        layer = lowered.layers[index].name
        for name in members:
            node = nodes[name]
            if node.op == "call_module":
                out[name] = Op(name, str(node.target), type(modules[str(node.target)]).__name__, layer)
            else:
                kind = _function_kind(node)
                out[name] = Op(name, layer if name == members[0] else f"{layer}.{kind}", kind, layer)
    return out


def _function_kind(node: fx.Node) -> str:
    target = node.target
    name = target if isinstance(target, str) else getattr(target, "__name__", str(target))
    return {"iadd": "add", "add_": "add", "relu_": "relu"}.get(name, name)


def launch_op(lowered: FxLowered, ops: dict[str, Op], launch: Launch) -> Op | None:
    """The op that computes ``launch``; None for a layer with no PyTorch op (the softmax the
    lowering appends to a model that returns logits)."""
    members = lowered.members.get(launch.layer)
    if not members:
        return None
    first, rest = members[0], members[1:]
    bn = next((m for m in members if ops[m].kind.startswith("BatchNorm")), None)  # first: a standalone one
    act = next((m for m in rest if m != bn), None)
    k = launch.kernel
    if k in ("normalize", "scale_bias"):
        pick = bn
    elif k == "add_bias":
        pick = bn or first
    elif k == "activate_array":
        pick = act or members[-1]  # a linear activation: nothing to compute, the layer's output op
    elif k in _FIRST_OP:
        pick = first
    else:
        raise KernelfiError(f"export: kernel '{k}' of {launch.name} has no PyTorch op mapping")
    if pick is None:
        raise KernelfiError(f"export: {launch.name} has no {k} op in layer {ops[first].layer}")
    return ops[pick]


def map_plan(trace: Trace, lowered: FxLowered, plan: Plan) -> OpHardening:
    """The per-op protections of ``plan`` and the manifest of how each entry maps."""
    ops = graph_ops(lowered)
    modules = dict(lowered.graph_module.named_modules())
    nodes = {n.name: n for n in lowered.graph_module.graph.nodes}
    pairs = conv_pairs(trace)
    partner = {**pairs, **{g: i for i, g in pairs.items()}}
    out = OpHardening()
    owner: dict[str, int] = {}
    clamp_layers = {s.layer: s for s in range_sites(trace, plan)}
    for rank, prot in enumerate(plan.protect):
        ids = select(trace, prot)
        if prot.technique == "abft":
            ids = [i for i in ids if trace.launches[i].kernel == "gemm" or i in pairs]
        if prot.technique in REPLICATION:  # an im2col and its gemm are one unit: both are protected
            ids = sorted(set(ids) | {partner[i] for i in ids if i in partner})
        entry: dict[str, Any] = {"entry": rank, **{k: v for k, v in prot.to_dict().items() if k != "estimate"},
                                 "launches": [trace.launches[i].name for i in ids], "ops": []}
        per_op: dict[str, dict[str, Any]] = {}
        for i in ids:
            launch = trace.launches[i]
            op = launch_op(lowered, ops, launch)
            if op is None:
                out.not_exported.append({"launch": launch.name, "entry": str(rank),
                                         "reason": "the softmax kernelfi appends to a model that returns logits "
                                                   "is not part of the PyTorch model"})
                continue
            if prot.technique == "range":
                if launch.layer not in clamp_layers:
                    continue  # a softmax output (a kernel-wide entry): never clamped, as in the trace
                op = ops[lowered.members[launch.layer][-1]]  # the clamp follows the layer's output op
            if op.node in per_op:
                per_op[op.node]["kernels"].append(launch.kernel)
                continue
            desc: dict[str, Any] = {**op.describe(), "kernels": [launch.kernel]}
            per_op[op.node] = desc
            if prot.technique in REPLICATION:
                if prot.technique == "abft" and not isinstance(modules.get(str(nodes[op.node].target)),
                                                               (nn.Conv2d, nn.Linear)):
                    raise KernelfiError(f"export: abft of {launch.name} maps to {op.kind} {op.module}, "
                                        "not a Conv2d or Linear")
                if op.node in owner:
                    desc["applied"] = f"{out.replicate[op.node]} (entry {owner[op.node]} reached this op first)"
                else:
                    owner[op.node] = rank
                    out.replicate[op.node] = prot.technique
                    desc["applied"] = prot.technique
            else:
                site = clamp_layers[launch.layer]
                out.clamps.setdefault(op.node, (site.lo, site.hi))
                desc["applied"] = "range"
                desc["bounds"] = list(out.clamps[op.node])
        for desc in per_op.values():
            desc["kernels"] = sorted(set(desc["kernels"]))
        entry["ops"] = list(per_op.values())
        out.entries.append(entry)
    return out
