"""A directory of image files in torchvision's ImageFolder layout (one subfolder per class).

Users bring their own images this way (the seed's Cholec80 frames, ImageNet validation
crops). Labels are the indexes of the sorted class-folder names, as ImageFolder assigns them,
so a model fine-tuned with torchvision scores its own label order. A directory with images
but no subfolders loads unlabelled.
"""
from __future__ import annotations

from itertools import zip_longest
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from kernelfi._utils import KernelfiError
from kernelfi.data.common import (
    IMAGE_SUFFIXES, InputInfo, InputSet, check_limit, model_chw, normalise,
)

__all__ = ["load_image_folder"]

_MODES = {1: "L", 3: "RGB", 4: "RGBA"}


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*")
                  if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _samples(root: Path) -> tuple[list[tuple[Path, int | None]], list[str]]:
    """(path, label) in round-robin class order, so ``limit`` keeps the classes balanced."""
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        return [(p, None) for p in _images_in(root)], []
    per_class = [[(p, k) for p in _images_in(root / name)] for k, name in enumerate(classes)]
    ordered = [s for group in zip_longest(*per_class) for s in group if s is not None]
    return ordered, classes  # type: ignore[return-value]


def load_image_folder(root: str | Path, info: InputInfo, limit: int | None = None) -> InputSet:
    """Read, convert to the model's channel count, resize to H x W (bilinear), normalise."""
    check_limit(limit)
    root = Path(root)
    c, h, w = model_chw(info)
    if c not in _MODES:
        raise KernelfiError(f"{root}: images cannot feed a {c}-channel model")
    samples, classes = _samples(root)
    if not samples:
        raise KernelfiError(f"{root}: no images found (expected class subfolders of "
                            f"{'/'.join(s.lstrip('.') for s in IMAGE_SUFFIXES[:4])} files)")
    if limit is not None:
        samples = samples[: int(limit)]
    arrays = []
    for path, _ in samples:
        try:
            with Image.open(path) as im:
                im = im.convert(_MODES[c]).resize((w, h), Image.BILINEAR)
                arrays.append(np.asarray(im, dtype=np.float32).reshape(h, w, c) / 255.0)
        except (UnidentifiedImageError, OSError, ValueError) as e:
            raise KernelfiError(f"{path}: cannot read image: {e}") from None
    x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)
    labels = [k for _, k in samples]
    y = None if classes == [] else torch.tensor(labels, dtype=torch.int64)
    ids = [p.relative_to(root).as_posix() for p, _ in samples]
    kinds = f", {len(classes)} classes: {', '.join(classes[:10])}" if classes else ", unlabelled"
    more = "..." if len(classes) > 10 else ""
    source = f"images:{root.resolve()} ({len(samples)} images{kinds}{more}; resized {h}x{w})"
    return InputSet(normalise(x, info, str(root)), y, ids, source)
