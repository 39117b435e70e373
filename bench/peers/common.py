"""What the three injectors share: the neuron sites, the fault list, the outcome categories.

A *neuron site* is one conv/connected layer of kernelfi's trace together with the torch module
whose output holds the same values:

* a layer without batch norm: the ``nn.Conv2d``/``nn.Linear`` output (pre-activation), which
  kernelfi's trace writes in that layer's ``add_bias`` launch (instruction tag ``fadd:out``,
  thread = flat element index ``c*H*W + h*W + w`` or ``f``);
* a conv followed by ``nn.BatchNorm2d`` (ResNet): kernelfi lowers the pair to ONE Darknet layer
  (gemm, normalize, scale_bias, add_bias) whose ``add_bias`` output is the *post-BN* value, so
  the peers inject at the ``nn.BatchNorm2d`` output. Same value, same consumer (ReLU or the
  residual add), so the same fault on both sides.

A fault is (site, element, bit 0-31 of the float32, input index), drawn with a seeded numpy RNG.
Outcomes are compared at output level on the softmax probabilities (what kernelfi classifies):
``none`` (probabilities bit-identical to golden), ``light`` (top-1 same, probabilities differ),
``malfunction`` (top-1 changed or a non-finite probability).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from kernelfi.lowering import Program

CATEGORIES = ("none", "light", "malfunction")

#: kernelfi's docs/method.md §3 outcomes -> output-level category (DUE cannot happen for these faults)
KERNELFI_CATEGORY = {
    "masked": "none",
    "sdc_no_malfunction": "none",
    "sdc_light_malfunction": "light",
    "sdc_malfunction": "malfunction",
    "due": "due",
}


@dataclass(frozen=True)
class NeuronSite:
    index: int                 # position in the site list
    layer: int                 # kernelfi layer index (LayerSpec.index)
    name: str                  # kernelfi layer name (= conv/linear module path)
    module: str                # module the peers inject at (the BN module for conv+BN)
    shape: tuple[int, ...]     # per-inference output shape: (C, H, W) or (F,)
    launch: int                # index of the layer's add_bias launch
    slot: int                  # index of the 'fadd:out' slot in that launch's template
    batch_norm: bool

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class NeuronFault:
    id: int
    site: int                  # NeuronSite.index
    element: tuple[int, ...]   # (c, h, w) or (f,)
    flat: int                  # flat element index within one inference's output
    bit: int                   # 0 = LSB of the mantissa, 31 = sign
    input: int                 # input index


def _bn_module(spec) -> str:
    """The BatchNorm module of a conv+BN layer, from the state-dict key of its scales."""
    key = spec.weights["scales"]
    return key.rsplit(".", 1)[0]


def neuron_sites(program: Program, module: nn.Module) -> list[NeuronSite]:
    """Every conv/connected layer that has an add_bias launch, paired with its peer module."""
    trace = program.trace
    modules = dict(module.named_modules())
    sites: list[NeuronSite] = []
    for spec in trace.layers:
        if spec.type not in ("convolutional", "connected"):
            continue
        adds = [l for l in trace.layer_launches(spec.index) if l.kernel == "add_bias"]
        if not adds:
            continue
        launch = adds[-1]
        slot = next(i for i, s in enumerate(launch.template.slots) if s.tag == "fadd:out")
        bn = bool(spec.params.get("batch_normalize", False))
        peer = _bn_module(spec) if bn else spec.name
        if peer not in modules:
            raise KeyError(f"{spec.name}: no module '{peer}' in the torch model")
        expect = nn.BatchNorm2d if bn else (nn.Conv2d if spec.type == "convolutional" else nn.Linear)
        if not isinstance(modules[peer], expect):
            raise TypeError(f"{spec.name}: module '{peer}' is {type(modules[peer]).__name__}, expected {expect.__name__}")
        if launch.template.threads != math.prod(spec.out_shape):
            raise ValueError(f"{spec.name}: add_bias has {launch.template.threads} threads for "
                             f"{math.prod(spec.out_shape)} elements")
        sites.append(NeuronSite(len(sites), spec.index, spec.name, peer, tuple(spec.out_shape),
                                launch.index, slot, bn))
    return sites


def draw_faults(sites: list[NeuronSite], n: int, n_inputs: int, seed: int,
                weighting: str = "layer") -> list[NeuronFault]:
    """N seeded faults. ``layer``: a uniform layer, then a uniform element (PyTorchFI's
    ``random_neuron_location``); ``element``: uniform over all neurons of the network."""
    rng = np.random.default_rng(seed)
    sizes = np.array([s.numel for s in sites], dtype=np.float64)
    p = None if weighting == "layer" else sizes / sizes.sum()
    out = []
    for i in range(n):
        s = sites[int(rng.choice(len(sites), p=p))]
        flat = int(rng.integers(0, s.numel))
        element = tuple(int(v) for v in np.unravel_index(flat, s.shape))
        bit = int(rng.integers(0, 32))
        inp = int(rng.integers(0, n_inputs))
        out.append(NeuronFault(i, s.index, element, flat, bit, inp))
    return out


def flip_bits_(t: torch.Tensor, flat_index: torch.Tensor, bits: torch.Tensor) -> None:
    """In place: flip bit ``bits[k]`` of float32 element ``flat_index[k]`` of ``t`` (raw IEEE-754)."""
    view = t.view(-1).view(torch.int32)
    masks = torch.bitwise_left_shift(torch.ones_like(bits, dtype=torch.int32), bits.to(torch.int32))
    view[flat_index] = torch.bitwise_xor(view[flat_index], masks)


def categorize(golden: torch.Tensor, probs: torch.Tensor) -> list[str]:
    """Per row: the output-level category of ``probs`` against ``golden`` (both (n, classes))."""
    out = []
    for f, g in zip(probs, golden):
        if not bool(torch.isfinite(f).all()):
            out.append("malfunction")
        elif torch.equal(f, g):
            out.append("none")
        elif int(torch.nan_to_num(f, nan=-math.inf).argmax()) != int(g.argmax()):
            out.append("malfunction")
        else:
            out.append("light")
    return out


def chunks(items: list, size: int) -> list[list]:
    return [items[s:s + size] for s in range(0, len(items), size)]


def padded_batch(x: torch.Tensor, inputs: list[int], batch: int) -> torch.Tensor:
    """Rows ``x[inputs]``, padded to ``batch`` rows with input 0.

    CPU conv/GEMM kernels pick their blocking by batch size, so a row's float32 result can
    differ in the last bits between batch 1 and batch 64 (measured: it does). The peers' golden
    and faulty forwards therefore always run at the same batch size.
    """
    idx = list(inputs) + [0] * (batch - len(inputs))
    return x[torch.tensor(idx, dtype=torch.long)]


def peer_golden(module: nn.Module, x: torch.Tensor, batch: int) -> torch.Tensor:
    """Golden probabilities of every input, computed at the peers' batch size."""
    rows = []
    with torch.no_grad():
        for part in chunks(list(range(x.shape[0])), batch):
            rows.append(torch.softmax(module(padded_batch(x, part, batch)), dim=1)[:len(part)])
    return torch.cat(rows)


def execution_order(module: nn.Module, x1: torch.Tensor, types: tuple[type, ...]) -> list[str]:
    """Names of the leaf modules of ``types`` in the order their forward hooks fire: the layer
    numbering PyTorchFI uses (it counts hook calls)."""
    order: list[str] = []
    handles = []
    for name, m in module.named_modules():
        if isinstance(m, types) and not list(m.children()):
            handles.append(m.register_forward_hook(lambda _m, _i, _o, name=name: order.append(name)))
    try:
        with torch.no_grad():
            module(x1)
    finally:
        for h in handles:
            h.remove()
    return order


def reference_run(module: nn.Module, x: torch.Tensor, sites: list[NeuronSite], faults: list[NeuronFault],
                  batch: int) -> tuple[torch.Tensor, list[float], list[float]]:
    """Plain torch, up to ``batch`` faults in one forward (row j = fault j's input): forward hooks
    on the site modules flip the bits. Returns the faulty probabilities (one row per fault) and
    each fault's golden and corrupted site value as PyTorch computed them."""
    assert len(faults) <= batch
    modules = dict(module.named_modules())
    by_module: dict[str, list[tuple[int, NeuronFault]]] = {}
    for j, f in enumerate(faults):
        by_module.setdefault(sites[f.site].module, []).append((j, f))
    original = [math.nan] * len(faults)
    corrupted = [math.nan] * len(faults)

    def hook(name: str):
        def fn(_m, _i, out: torch.Tensor) -> None:
            rows = by_module[name]
            flat = out.reshape(out.shape[0], -1)
            for j, f in rows:
                original[j] = float(flat[j, f.flat])
            per = flat.shape[1]
            flip_bits_(out, torch.tensor([j * per + f.flat for j, f in rows]), torch.tensor([f.bit for _, f in rows]))
            for j, f in rows:
                corrupted[j] = float(flat[j, f.flat])
        return fn

    handles = [modules[name].register_forward_hook(hook(name)) for name in by_module]
    try:
        with torch.no_grad():
            probs = torch.softmax(module(padded_batch(x, [f.input for f in faults], batch)), dim=1)[:len(faults)]
    finally:
        for h in handles:
            h.remove()
    return probs, original, corrupted


def bit_class(bit: int) -> str:
    """Where two float32 implementations can legitimately disagree (measured: bench/README.md)."""
    if bit <= 10:
        return "bits 0-10"       # change of a few ulps: same order as the implementations' rounding
    if 28 <= bit <= 30:
        return "bits 28-30"      # inf/NaN or |x| > 2**31: Darknet's non-finite semantics apply
    return "bits 11-27,31"


def disagreement_cause(native_original: float, kernelfi_original: float | None, native_corrupted: float,
                       kernelfi_corrupted: float | None, native_probs: torch.Tensor,
                       kernelfi_flags: tuple[str, ...] = ()) -> str:
    """Why kernelfi (Darknet's kernels) and PyTorch classify one fault differently."""
    def bits(v: float | None) -> int | None:
        return None if v is None else int(torch.tensor([v], dtype=torch.float32).view(torch.int32))

    kc = native_corrupted if kernelfi_corrupted is None else kernelfi_corrupted
    huge = max(abs(native_corrupted), abs(kc)) >= 2.0 ** 31  # NaN compares False: caught below
    if (huge or not math.isfinite(native_corrupted) or not math.isfinite(kc) or "nonfinite" in kernelfi_flags
            or not bool(torch.isfinite(native_probs).all())):
        return ("non-finite or huge value: Darknet semantics (softmax max taken as (int)x, maxpool "
                "'val > max' never picks NaN, ReLU x*(x>0)) vs PyTorch's")
    if bits(native_original) != bits(kernelfi_original):
        return "last-bit numerics: the golden site value differs by ulps (Darknet im2col+SGEMM/op-by-op BN vs oneDNN)"
    return "last-bit numerics downstream: same corrupted value, different float32 kernels (gemm/softmax rounding)"
