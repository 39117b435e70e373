#!/usr/bin/env python
"""Train the two embedded digits models and write them to ``src/kernelfi/assets/``.

Why this exists: kernelfi ships trained weights (nothing is downloaded at run time), and
whoever wants to check or regenerate them must get the same models from the same data.
Everything is seeded and the split is the one ``kernelfi.data`` serves as ``digits``, so the
reported test accuracy is measured on exactly the images campaigns use. CPU only, about 2 minutes on 2 cores.

Writes ``digits-alexnet.safetensors``, ``digits-resnet.safetensors`` and ``digits.json``
(normalisation mean/std of the training split, test accuracy of each model).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import Tensor, nn

from kernelfi.data import load_inputs
from kernelfi.data.digits import SPLIT_DESCRIPTION, digits_split, upsample
from kernelfi.models.digits import DIGITS_INPUT_SHAPE, DigitsAlexNet, DigitsResNet

ASSETS = Path(__file__).resolve().parent.parent / "src" / "kernelfi" / "assets"
SEED = 0
EPOCHS = 25
BATCH = 64
LR = 2e-3
SHIFT = 2  # random translation (pixels at 32x32) for augmentation


def augment(x: Tensor, g: torch.Generator) -> Tensor:
    """Random shifts of up to SHIFT pixels (zero-padded): digits are not always centred."""
    n, _, h, w = x.shape
    padded = F.pad(x, (SHIFT, SHIFT, SHIFT, SHIFT))
    dy = torch.randint(0, 2 * SHIFT + 1, (n,), generator=g)
    dx = torch.randint(0, 2 * SHIFT + 1, (n,), generator=g)
    rows = (dy[:, None] + torch.arange(h)[None, :])  # (n, h)
    cols = (dx[:, None] + torch.arange(w)[None, :])  # (n, w)
    idx_n = torch.arange(n)[:, None, None]
    return padded[idx_n, 0, rows[:, :, None], cols[:, None, :]].unsqueeze(1)


def train(model: nn.Module, x: Tensor, y: Tensor, seed: int) -> None:
    """Adam with a cosine schedule; fixed seed for init, shuffling and augmentation."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=1e-4)
    steps = EPOCHS * ((len(x) + BATCH - 1) // BATCH)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=LR, total_steps=steps)
    model.train()
    for _ in range(EPOCHS):
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), BATCH):
            b = perm[i:i + BATCH]
            loss = F.cross_entropy(model(augment(x[b], g)), y[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    model.eval()


@torch.no_grad()
def accuracy(model: nn.Module, info: SimpleNamespace) -> float:
    """Top-1 on the test split, loaded exactly as campaigns load it."""
    data = load_inputs("digits", info)
    assert data.y is not None
    return float((model(data.x).argmax(1) == data.y).float().mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=ASSETS, help="output folder (default: assets)")
    args = ap.parse_args()
    torch.manual_seed(SEED)
    torch.use_deterministic_algorithms(True)

    split = digits_split()
    x = upsample(split.x_train, DIGITS_INPUT_SHAPE[1:])
    mean, std = float(x.mean()), float(x.std())
    x = (x - mean) / std
    y = torch.from_numpy(split.y_train.copy())
    info = SimpleNamespace(input_shape=DIGITS_INPUT_SHAPE, mean=(mean,), std=(std,),
                           default_data="digits")

    meta: dict = {"mean": [mean], "std": [std], "input_shape": list(DIGITS_INPUT_SHAPE),
                  "split": SPLIT_DESCRIPTION, "train_size": len(y),
                  "test_size": len(split.y_test), "seed": SEED, "epochs": EPOCHS,
                  "torch": torch.__version__, "test_accuracy": {}}
    args.out.mkdir(parents=True, exist_ok=True)
    for k, (name, cls) in enumerate((("digits-alexnet", DigitsAlexNet),
                                     ("digits-resnet", DigitsResNet))):
        t0 = time.time()
        torch.manual_seed(SEED + k)
        model = cls()
        train(model, x, y, SEED + k)
        acc = accuracy(model, info)
        state = {key: v.detach().contiguous().clone() for key, v in model.state_dict().items()}
        path = args.out / f"{name}.safetensors"
        # one metadata entry: safetensors orders several keys arbitrarily, and a
        # byte-identical file on regeneration keeps the recorded weights_hash stable
        info_json = json.dumps({"model": name, "seed": SEED + k,
                                "test_accuracy": round(acc, 6)}, sort_keys=True)
        save_file(state, str(path), metadata={"kernelfi": info_json})
        meta["test_accuracy"][name] = acc
        print(f"{name}: test accuracy {100 * acc:.2f}% ({time.time() - t0:.0f} s, "
              f"{path.stat().st_size / 1024:.0f} KiB)")
    (args.out / "digits.json").write_text(json.dumps(meta, indent=2) + "\n")


if __name__ == "__main__":
    main()
