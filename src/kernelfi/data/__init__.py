"""Data loading: turn a ``--data`` argument into model-ready inputs (``InputSet``).

Sources: ``digits`` (the fixed sklearn digits test split), a directory in ImageFolder layout,
an ``.npz`` archive, or ``random`` (seeded uniform images, for models with no data at hand).
Nothing is downloaded. The keywords win over same-named paths: write ``./digits`` for a
directory called digits. How images become inputs (fit, resize, crop, mean/std) is
``kernelfi.data.prep``; every source normalises as its ``Preparation`` says.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from kernelfi._utils import KernelfiError, check_fits
from kernelfi.data.common import InputInfo, InputSet, check_limit, model_chw, take
from kernelfi.data.digits import digits_split, load_digits_inputs, upsample
from kernelfi.data.images import load_image_folder
from kernelfi.data.npz import load_npz
from kernelfi.data.prep import FITS, Preparation, PrepOptions, custom_normalisation

__all__ = ["InputSet", "InputInfo", "load_inputs", "check_finite", "digits_split", "upsample", "SOURCES",
           "RANDOM_DEFAULT_COUNT", "FITS", "PrepOptions", "Preparation"]

SOURCES: tuple[str, ...] = ("digits", "random", "<directory>", "<file.npz>")
RANDOM_DEFAULT_COUNT = 16
RANDOM_SEED = 0


def load_inputs(source: str | None, info: InputInfo, limit: int | None = None,
                options: PrepOptions | None = None, positions: Sequence[int] | None = None) -> InputSet:
    """Load ``source`` for a model described by ``info`` (input_shape, mean, std, default_data).

    ``None`` means the model's default data set; ``limit`` keeps the first N inputs,
    ``positions`` (data-set positions, as ``InputSet.positions`` gives them) exactly those;
    ``options`` prepare them (``kernelfi.data.prep``; fit, resize and crop apply to image
    folders only).
    """
    return check_finite(_load(source, info, limit, options, positions))


def check_finite(inputs: InputSet) -> InputSet:
    """Inputs must be finite: a NaN or inf pixel would make every outcome of its lane
    meaningless (and a golden NaN is not a fault's doing). One line naming the first."""
    bad = ~torch.isfinite(inputs.x.reshape(len(inputs), -1))
    if bool(bad.any()):
        rows = bad.any(dim=1).nonzero().flatten()
        first = int(rows[0])
        raise KernelfiError(f"{inputs.ids[first]}: input holds {int(bad[first].sum())} NaN or infinite values "
                            f"({len(rows)} of {len(inputs)} inputs do); inputs must be finite")
    return inputs


def _load(source: str | None, info: InputInfo, limit: int | None, options: PrepOptions | None,
          positions: Sequence[int] | None) -> InputSet:
    check_limit(limit)
    options = options or PrepOptions()
    if source is None:
        source = info.default_data
        if source is None:
            raise KernelfiError("this model has no default data set: give one (digits, random, "
                                "an ImageFolder directory or an .npz file)")
    prep = Preparation.resolve(options, info)
    p = Path(source)
    folder = source not in ("digits", "random") and p.is_dir()
    if options.geometric and not folder:
        raise KernelfiError(f"{', '.join(options.geometric)}: image preparation applies to an image folder, "
                            f"not to --data {source}")
    if source == "digits":
        return load_digits_inputs(info, limit, prep, positions)
    if source == "random":
        return _random_inputs(info, limit, prep, positions)
    if folder:
        return load_image_folder(p, info, limit, prep, positions)
    if p.is_file():
        if p.suffix.lower() == ".npz":
            return load_npz(p, info, limit, prep, positions, options)
        raise KernelfiError(f"{p}: unsupported data file (expected an .npz archive or an "
                            "ImageFolder directory)")
    raise KernelfiError(f"{source}: no such data file or directory (sources: "
                        f"{', '.join(SOURCES)})")


def _random_inputs(info: InputInfo, limit: int | None, prep: Preparation,
                   positions: Sequence[int] | None) -> InputSet:
    """Seeded uniform [0, 1] images, normalised like real ones; unlabelled.

    For ImageNet-shaped models when no images are at hand: outcomes then compare faulty with
    golden predictions only, which is all the SDC categories need; there is no accuracy.
    """
    c, h, w = model_chw(info)
    n_all = (max(positions) + 1 if positions else 0) if positions is not None else \
        (RANDOM_DEFAULT_COUNT if limit is None else int(limit))
    check_fits(4 * n_all * c * h * w, f"random: {n_all:,} inputs of {c}x{h}x{w} floats")
    chosen = take(n_all, limit, positions)
    g = torch.Generator().manual_seed(RANDOM_SEED)
    x = torch.rand((n_all, c, h, w), generator=g, dtype=torch.float32)[chosen]
    ids = [f"random[{i}]" for i in chosen]
    n = len(chosen)
    source = (f"random ({n} uniform [0,1] images, seed {RANDOM_SEED}, {c}x{h}x{w})"
              f"{custom_normalisation(prep, info)}")
    note = (f"inputs: --data random: {n} seeded uniform [0, 1] images (seed {RANDOM_SEED}), "
            f"{prep.normalisation()}; no labels, so no golden accuracy")
    return InputSet(prep.normalise(x), None, ids, source, positions=chosen, notes=(note,))
