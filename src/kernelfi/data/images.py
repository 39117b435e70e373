"""A directory of image files in torchvision's ImageFolder layout (one subfolder per class).

Users bring their own images this way (ImageNet validation images, frames of their own
application). Labels are the indexes of the sorted class-folder names, as ImageFolder assigns
them, so a model fine-tuned with torchvision scores its own label order. A directory with
images but no subfolders loads unlabelled. Each image is prepared as ``kernelfi.data.prep``
says (by default torchvision's evaluation transform for 3-channel models, Darknet's letterbox
for cfg models); the folder's digest covers the images read, their names and their order.
"""
from __future__ import annotations

import hashlib
import io
from collections import Counter
from itertools import zip_longest
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from kernelfi._utils import KernelfiError
from kernelfi.data.common import IMAGE_SUFFIXES, InputInfo, InputSet, model_chw, take
from kernelfi.data.prep import Preparation, PrepOptions
from kernelfi.files import TreeDigest

__all__ = ["load_image_folder"]

_COLOUR = {"L": "grey", "1": "black-and-white", "P": "palette", "RGB": "RGB", "RGBA": "RGBA", "LA": "grey+alpha",
           "CMYK": "CMYK", "I;16": "16-bit grey", "I": "32-bit grey", "F": "float grey"}


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


def load_image_folder(root: str | Path, info: InputInfo, limit: int | None = None,
                      prep: Preparation | None = None, positions: Sequence[int] | None = None) -> InputSet:
    """Read the images (the first ``limit``, or those at ``positions`` in round-robin class
    order), prepare each with ``prep`` (default: the model's own), normalise."""
    root = Path(root)
    c, h, w = model_chw(info)
    prep = prep or Preparation.resolve(PrepOptions(), info)
    if c not in (1, 3):
        raise KernelfiError(f"{root}: images cannot feed a {c}-channel model")
    samples, classes = _samples(root)
    if not samples:
        raise KernelfiError(f"{root}: no images found (expected class subfolders of "
                            f"{'/'.join(s.lstrip('.') for s in IMAGE_SUFFIXES[:4])} files)")
    chosen = take(len(samples), limit, positions)
    arrays, modes, sizes = [], Counter(), Counter()
    tree = TreeDigest()
    for pos in chosen:
        path = samples[pos][0]
        try:
            data = path.read_bytes()
            with Image.open(io.BytesIO(data)) as im:
                im.load()
                modes[im.mode] += 1
                sizes[im.size] += 1
                arrays.append(prep.image(im))
        except (UnidentifiedImageError, OSError, ValueError) as e:
            raise KernelfiError(f"{path}: cannot read image: {e}") from None
        tree.add(path.relative_to(root).as_posix(), hashlib.sha256(data).hexdigest())
    x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)
    y = None if classes == [] else torch.tensor([samples[p][1] for p in chosen], dtype=torch.int64)
    ids = [samples[p][0].relative_to(root).as_posix() for p in chosen]
    kinds = f", {len(classes)} classes: {', '.join(classes[:10])}" if classes else ", unlabelled"
    more = "..." if len(classes) > 10 else ""
    digest = tree.hexdigest()
    n = len(chosen)
    source = f"images sha256 {digest[:16]} ({n} image{'s' if n != 1 else ''}{kinds}{more}; {prep.describe()})"
    note = (f"inputs: {n} of the {len(samples)} images in {root.resolve()} ({_found(modes, sizes)}); "
            f"{_converted(modes, c)}{prep.describe()}")
    return InputSet(prep.normalise(x), y, ids, source, positions=chosen, notes=(note,),
                    path=str(root.resolve()), digest=digest)


def _found(modes: Counter, sizes: Counter) -> str:
    kinds = ", ".join(f"{n} {_COLOUR.get(m, m)}" for m, n in modes.most_common())
    (w0, h0), (w1, h1) = min(sizes, key=lambda s: s[0] * s[1]), max(sizes, key=lambda s: s[0] * s[1])
    size = f"{w0}x{h0}" if len(sizes) == 1 else f"{w0}x{h0} to {w1}x{h1}"
    return f"{kinds}; {size} pixels (W x H)"


def _converted(modes: Counter, channels: int) -> str:
    """What the colour conversion did, said where it changed the images."""
    target = "L" if channels == 1 else "RGB"
    other = {m: n for m, n in modes.items() if m != target}
    if not other:
        return ""
    if channels == 1:
        return f"{sum(other.values())} converted to grey for the 1-channel model; "
    return f"{sum(other.values())} converted to RGB for the 3-channel model; "
