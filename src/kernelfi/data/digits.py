"""sklearn's digits as a fixed, reproducible test set for the embedded digits models.

The split is deterministic (``train_test_split(test_size=0.25, random_state=0, stratify=y)``)
and shared with ``scripts/train_digits.py``, so the shipped models are always evaluated on
images they never trained on, and every campaign on ``digits`` sees the same 450 images.
sklearn bundles the data, so nothing is downloaded.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from kernelfi._utils import KernelfiError
from kernelfi.data.common import InputInfo, InputSet, model_chw, take
from kernelfi.data.prep import Preparation, PrepOptions, custom_normalisation

__all__ = ["DigitsSplit", "digits_split", "upsample", "load_digits_inputs", "SPLIT_DESCRIPTION"]

TEST_SIZE = 0.25
RANDOM_STATE = 0
SPLIT_DESCRIPTION = (f"sklearn load_digits, train_test_split(test_size={TEST_SIZE}, "
                     f"random_state={RANDOM_STATE}, stratify=y)")


@dataclass(frozen=True)
class DigitsSplit:
    """8x8 images scaled to [0, 1] (float32), labels (int64), and original dataset indexes."""

    x_train: np.ndarray
    y_train: np.ndarray
    idx_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    idx_test: np.ndarray


@lru_cache(maxsize=1)
def digits_split() -> DigitsSplit:
    """The fixed train/test split (cached; arrays are read-only)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = (d.images.astype(np.float32) / 16.0)
    y = d.target.astype(np.int64)
    idx = np.arange(len(y))
    xtr, xte, ytr, yte, itr, ite = train_test_split(
        x, y, idx, test_size=TEST_SIZE, random_state=RANDOM_STATE, stratify=y)
    arrays = [xtr, ytr, itr, xte, yte, ite]
    for a in arrays:
        a.setflags(write=False)
    return DigitsSplit(*arrays)


def upsample(images: np.ndarray | Tensor, size: tuple[int, int]) -> Tensor:
    """(N, 8, 8) images in [0, 1] -> (N, 1, H, W), bilinear (align_corners=False)."""
    x = torch.as_tensor(np.array(images, dtype=np.float32) if isinstance(images, np.ndarray)
                        else images, dtype=torch.float32)
    if x.dim() == 3:
        x = x.unsqueeze(1)
    if tuple(x.shape[-2:]) == tuple(size):
        return x.clone()
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


def load_digits_inputs(info: InputInfo, limit: int | None = None, prep: Preparation | None = None,
                       positions: Sequence[int] | None = None) -> InputSet:
    """The test split (the first ``limit`` images, or those at ``positions``), upsampled to the
    model's H x W, replicated to its channel count and normalised (the model's mean/std unless
    ``prep`` says otherwise)."""
    c, h, w = model_chw(info)
    if c not in (1, 3):
        raise KernelfiError(f"digits: grey images cannot feed a {c}-channel model")
    prep = prep or Preparation.resolve(PrepOptions(), info)
    s = digits_split()
    chosen = take(len(s.y_test), limit, positions)
    idx = np.array(chosen, dtype=np.int64)
    n = len(chosen)
    x = upsample(s.x_test[idx], (h, w)).expand(-1, c, -1, -1)
    ids = [f"digits[{int(i)}]" for i in s.idx_test[idx]]
    source = (f"digits test split ({SPLIT_DESCRIPTION}; {n} of {len(s.y_test)} images, "
              f"bilinear {h}x{w}, {c} channel{'s' if c > 1 else ''}){custom_normalisation(prep, info)}")
    notes: tuple[str, ...] = ()
    if info.default_data != "digits":  # the digits models were trained on exactly this
        notes = (f"inputs: digits test split, {n} images of 8x8 grey upsampled to {h}x{w}"
                 f"{' and copied to 3 channels' if c == 3 else ''}; {prep.normalisation()}",)
    return InputSet(prep.normalise(x), torch.from_numpy(s.y_test[idx].copy()), ids, source,
                    positions=chosen, notes=notes)
