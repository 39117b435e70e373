"""Data loading: turn a ``--data`` argument into model-ready inputs (``InputSet``).

Sources: ``digits`` (the fixed sklearn digits test split), a directory in ImageFolder layout,
an ``.npz`` archive, or ``random`` (seeded uniform images, for models with no data at hand).
Nothing is downloaded. The keywords win over same-named paths: write ``./digits`` for a
directory called digits.
"""
from __future__ import annotations

from pathlib import Path

import torch

from kernelfi._utils import KernelfiError
from kernelfi.data.common import InputInfo, InputSet, check_limit, model_chw, normalise
from kernelfi.data.digits import digits_split, load_digits_inputs, upsample
from kernelfi.data.images import load_image_folder
from kernelfi.data.npz import load_npz

__all__ = ["InputSet", "InputInfo", "load_inputs", "digits_split", "upsample", "SOURCES",
           "RANDOM_DEFAULT_COUNT"]

SOURCES: tuple[str, ...] = ("digits", "random", "<directory>", "<file.npz>")
RANDOM_DEFAULT_COUNT = 16
RANDOM_SEED = 0


def load_inputs(source: str | None, info: InputInfo, limit: int | None = None) -> InputSet:
    """Load ``source`` for a model described by ``info`` (input_shape, mean, std, default_data).

    ``None`` means the model's default data set; ``limit`` keeps the first N inputs.
    """
    check_limit(limit)
    if source is None:
        source = info.default_data
        if source is None:
            raise KernelfiError("this model has no default data set: give one (digits, random, "
                                "an ImageFolder directory or an .npz file)")
    if source == "digits":
        return load_digits_inputs(info, limit)
    if source == "random":
        return _random_inputs(info, limit)
    p = Path(source)
    if p.is_dir():
        return load_image_folder(p, info, limit)
    if p.is_file():
        if p.suffix.lower() == ".npz":
            return load_npz(p, info, limit)
        raise KernelfiError(f"{p}: unsupported data file (expected an .npz archive or an "
                            "ImageFolder directory)")
    raise KernelfiError(f"{source}: no such data file or directory (sources: "
                        f"{', '.join(SOURCES)})")


def _random_inputs(info: InputInfo, limit: int | None) -> InputSet:
    """Seeded uniform [0, 1] images, normalised like real ones; unlabelled.

    For ImageNet-shaped models when no images are at hand: outcomes then compare faulty with
    golden predictions only, which is all the SDC categories need.
    """
    c, h, w = model_chw(info)
    n = RANDOM_DEFAULT_COUNT if limit is None else int(limit)
    g = torch.Generator().manual_seed(RANDOM_SEED)
    x = torch.rand((n, c, h, w), generator=g, dtype=torch.float32)
    ids = [f"random[{i}]" for i in range(n)]
    source = f"random ({n} uniform [0,1] images, seed {RANDOM_SEED}, {c}x{h}x{w})"
    return InputSet(normalise(x, info, "random"), None, ids, source)
