"""A neuron fault in kernelfi (IOV on the layer's add_bias ``fadd:out``) has the same
output-level outcome as the same bit flip applied to the torch module's output in plain PyTorch.

This is the pairing ``bench/throughput.py`` relies on to compare kernelfi with PyTorchFI and
MRFI; here the reference is a forward hook written from scratch, so no peer is needed.

The flipped bits are 13-27 and 31. Outside that range the two implementations can disagree for
reasons that are not the pairing: a flip of a low mantissa bit changes the value by a few ulps,
the same order as the last-bit differences between Darknet's kernels (im2col+SGEMM, op-by-op
softmax) and PyTorch's oneDNN, so "probabilities bit-identical" can fall either way (measured:
12% of bit-0 flips, still ~0.3% at bits 10-11 on small values); flips of bits 28-30 make inf/NaN
or |x| > 2**31, where kernelfi applies Darknet's semantics (softmax takes the max as ``(int)x``,
maxpool never selects NaN). From bit 13 a flip moves the value by at least 2**-10 of itself.
The bench runs every bit and reports the disagreements by cause (bench/README.md).
"""
from __future__ import annotations

import math
import struct
from collections import Counter

import numpy as np
import torch

from kernelfi.campaign.batches import batches
from kernelfi.execution.golden import Golden
from kernelfi.campaign.planner import PlannedFault
from kernelfi.execution.runner import Runner
from kernelfi.data import load_inputs
from kernelfi.lowering import lower
from kernelfi.models import load_model
from kernelfi.types import Fault, Site

BITS = tuple(range(13, 28)) + (31,)
N_FAULTS = 40
CATEGORY = {"masked": "none", "sdc_no_malfunction": "none", "sdc_light_malfunction": "light",
            "sdc_malfunction": "malfunction", "due": "due"}


def flip(v: float, bit: int) -> float:
    u = struct.unpack("<I", struct.pack("<f", v))[0] ^ (1 << bit)
    return struct.unpack("<f", struct.pack("<I", u))[0]


def category(f: torch.Tensor, g: torch.Tensor) -> str:
    if not bool(torch.isfinite(f).all()):
        return "malfunction"
    if torch.equal(f, g):
        return "none"
    return "malfunction" if int(f.argmax()) != int(g.argmax()) else "light"


def test_neuron_faults_match_plain_torch() -> None:
    lm = load_model("digits-alexnet")
    module = lm.module
    program = lower(module, lm.info.input_shape, "digits-alexnet")
    trace = program.trace
    x = load_inputs("digits", lm.info, 16).x.to(torch.float32).contiguous()
    modules = dict(module.named_modules())

    # every conv/linear layer: its add_bias launch and the 'fadd:out' slot; the module of the same name
    sites = []
    for spec in trace.layers:
        if spec.type in ("convolutional", "connected"):
            assert not spec.params.get("batch_normalize"), "digits-alexnet has no batch norm"
            launch = next(l for l in trace.layer_launches(spec.index) if l.kernel == "add_bias")
            slot = next(i for i, s in enumerate(launch.template.slots) if s.tag == "fadd:out")
            assert isinstance(modules[spec.name], (torch.nn.Conv2d, torch.nn.Linear))
            assert launch.template.threads == math.prod(spec.out_shape)
            sites.append((spec, launch, slot))
    assert len(sites) == 8  # 5 conv + 3 linear

    rng = np.random.default_rng(0)
    faults = []  # (site index, flat element, bit, input): every layer gets N_FAULTS/8 faults
    for i in range(N_FAULTS):
        s = i % len(sites)
        faults.append((s, int(rng.integers(0, math.prod(sites[s][0].out_shape))),
                       int(rng.choice(BITS)), int(rng.integers(0, x.shape[0]))))

    # kernelfi: IOV single-bit faults through the campaign runner, batched per layer
    planned = [PlannedFault(i, Fault("iov", Site(sites[s][1].index, "FP32", flat, sites[s][2], 0), "single",
                                     (bit,), None, False, inp), 1.0)
               for i, (s, flat, bit, inp) in enumerate(faults)]
    runner = Runner(program, Golden.compute(program, x))
    layer_of = {l.index: l.layer for l in trace.launches}
    results = {}
    with torch.no_grad():
        for b in batches(planned, layer_of, 64):
            results.update({e.planned.id: e.result for e in runner.run(b)})

    # plain torch: one batch, row i = input of fault i; a forward hook flips row i's element
    rows = x[torch.tensor([inp for *_, inp in faults])]
    by_module: dict[str, list[tuple[int, int, int]]] = {}
    for i, (s, flat, bit, _) in enumerate(faults):
        by_module.setdefault(sites[s][0].name, []).append((i, flat, bit))
    seen: dict[int, tuple[float, float]] = {}

    def hook(name: str):
        def fn(_m, _inp, out: torch.Tensor) -> None:
            flat_out = out.view(out.shape[0], -1)
            raw = flat_out.view(torch.int32)
            for row, flat, bit in by_module[name]:
                before = float(flat_out[row, flat])
                raw[row, flat] ^= torch.tensor(1 << bit if bit < 31 else -(1 << 31), dtype=torch.int32)
                seen[row] = (before, float(flat_out[row, flat]))
        return fn

    with torch.no_grad():
        golden = torch.softmax(module(rows), dim=1)  # same batch composition: same kernels
        handles = [modules[name].register_forward_hook(hook(name)) for name in by_module]
        try:
            faulty = torch.softmax(module(rows), dim=1)
        finally:
            for h in handles:
                h.remove()

    mismatches = []
    for i, (s, flat, bit, inp) in enumerate(faults):
        r = results[i]
        # the pairing at value level: kernelfi struck the element torch's module produced ...
        before, after = seen[i]
        assert r.original is not None and math.isclose(r.original, before, rel_tol=1e-5, abs_tol=1e-6), \
            (sites[s][0].name, flat, r.original, before)
        # ... and both wrote exactly that value with the bit flipped
        assert struct.pack("<f", r.corrupted) == struct.pack("<f", flip(r.original, bit))
        assert struct.pack("<f", after) == struct.pack("<f", flip(before, bit))
        kf, ref = CATEGORY[r.outcome], category(faulty[i], golden[i])
        if kf != ref:
            mismatches.append(f"fault {i}: {sites[s][0].name} element {flat} bit {bit} input {inp}: "
                              f"kernelfi {r.outcome}, torch {ref}")
    assert not mismatches, "\n".join(mismatches)
    mix = Counter(CATEGORY[r.outcome] for r in results.values())
    assert set(mix) == {"none", "light", "malfunction"}, mix  # a real mix, not a constant
