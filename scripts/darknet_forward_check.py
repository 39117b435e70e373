"""Forward equality of Darknet's stock ResNet/ResNeXt cfgs: kernel engine against the reference.

For each cfg: seeded random weights (``random_state``, each residual branch's last batch-norm
scale multiplied by ``--branch-scale``: He-normal weights double the activations' variance at
every projection-free block, and ResNet-152's logits would reach 1e9, where Darknet's softmax,
whose running max is an int, saturates and both sides give NaN) written as a Darknet ``.weights`` file,
loaded back through ``kernelfi.models.load_model`` (the ``--weights`` route), lowered to the
kernel trace, and run on seeded random inputs by the kernel-by-kernel engine (``fast=False``)
and the fused fast path; both are compared with ``DarknetNet``, the reference forward built
from the same cfg. Prints, per cfg and path, the largest logit difference relative to the
largest logit, the largest probability difference and whether the top-1 classes agree.

    python scripts/darknet_forward_check.py                      # resnet50/101/152.cfg
    python scripts/darknet_forward_check.py resnext50.cfg --inputs 2 --seed 1
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

from kernelfi.lowering import lower
from kernelfi.models import load_model
from kernelfi.models.darknet import asset_path, build_layers, parse_cfg, random_state, write_weights


def check(cfg: Path, inputs: int, seed: int, plain: bool, branch_scale: float) -> list[str]:
    layers, shape = build_layers(parse_cfg(cfg))
    state = random_state(layers, seed)
    for spec in layers:
        prev = layers[spec.index - 1] if spec.index else None
        if spec.type == "shortcut" and prev is not None and "scales" in prev.weights:
            state[prev.weights["scales"]] = state[prev.weights["scales"]] * branch_scale
    with tempfile.TemporaryDirectory() as tmp:
        wpath = Path(tmp) / (cfg.stem + ".weights")
        write_weights(wpath, layers, state)
        lm = load_model(str(cfg), weights=str(wpath))
    prog = lower(lm.module, lm.info.input_shape, cfg.name)
    x = torch.rand(inputs, *shape, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        ref_logits = lm.module.logits(x).reshape(inputs, -1)
        ref_probs = lm.module(x).reshape(inputs, -1)
        lines = []
        for fast in ((True, False) if plain else (True,)):
            t0 = time.perf_counter()
            logits, probs = prog.forward(x, fast=fast)
            secs = time.perf_counter() - t0
            scale = ref_logits.abs().max().item()
            rel = (logits - ref_logits).abs().max().item() / max(scale, 1e-30)
            dp = (probs - ref_probs).abs().max().item()
            top1 = bool((probs.argmax(1) == ref_probs.argmax(1)).all())
            path = "fused" if fast else "kernel-by-kernel"
            lines.append(f"{cfg.name:22s} {len(layers):4d} layers  {path:16s} max|logit| {scale:9.3g}  "
                         f"max|dlogit|/max|logit| {rel:.2e}  max|dprob| {dp:.2e}  top-1 equal: {top1}  "
                         f"({secs:.1f} s)")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("cfgs", nargs="*", default=["resnet50.cfg", "resnet101.cfg", "resnet152.cfg"],
                    help="shipped cfg names (kernelfi/assets) or cfg paths")
    ap.add_argument("--inputs", type=int, default=1, help="random inputs per cfg")
    ap.add_argument("--seed", type=int, default=0, help="seed of the weights and inputs")
    ap.add_argument("--fused-only", action="store_true", help="skip the kernel-by-kernel path")
    ap.add_argument("--branch-scale", type=float, default=0.2,
                    help="factor on the last batch-norm scale of each residual branch (1: plain random_state)")
    args = ap.parse_args(argv)
    for name in args.cfgs:
        cfg = Path(name) if Path(name).is_file() else asset_path(name)
        for line in check(cfg, args.inputs, args.seed, not args.fused_only, args.branch_scale):
            print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
