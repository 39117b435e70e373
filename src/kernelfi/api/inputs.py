"""A campaign's inputs as the API takes them (a tensor, a Dataset, a DataLoader, a path) turned
into what every process reads: a ``--data`` value.

A path (image folder, ``.npz``) or a keyword (``digits``, ``random``) is used as it is. A tensor,
a ``Dataset`` or a ``DataLoader`` is collected once into an ``.npz`` archive (``x`` float32,
``y`` int64 where labels were given, ``normalized=True``: the values are model-ready and used as
given), named by its content in the campaign's data directory; workers and later commands read
that file (no pickle: ``np.load(allow_pickle=False)``), and the campaign records its path and
digest like any data file.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Iterable, Union

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from kernelfi._utils import KernelfiError

__all__ = ["Inputs", "as_data"]

#: what ``Campaign(inputs=...)`` takes
Inputs = Union[str, "os.PathLike[str]", torch.Tensor, "tuple[torch.Tensor, torch.Tensor]", Dataset, DataLoader]


def _pairs(items: Iterable[Any]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Inputs and labels of a Dataset's items or a DataLoader's batches: ``x`` or ``(x, y, ...)``."""
    xs: list[torch.Tensor] = []
    ys: list[torch.Tensor] = []
    for item in items:
        x, y = (item[0], item[1]) if isinstance(item, (tuple, list)) and len(item) >= 2 else (item, None)
        xs.append(torch.as_tensor(x))
        if y is not None:
            ys.append(torch.as_tensor(y).reshape(-1))
    if ys and len(ys) != len(xs):
        raise KernelfiError("inputs: some items carry a label and some do not")
    return xs, ys


def _collect(inputs: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    if isinstance(inputs, torch.Tensor):
        return inputs, None
    if isinstance(inputs, tuple) and len(inputs) == 2 and all(isinstance(t, torch.Tensor) for t in inputs):
        return inputs[0], inputs[1]
    if isinstance(inputs, DataLoader):
        xs, ys = _pairs(inputs)
        return torch.cat(xs) if xs else torch.zeros(0), torch.cat(ys) if ys else None
    if isinstance(inputs, Dataset):
        n = len(inputs)  # type: ignore[arg-type]
        xs, ys = _pairs(inputs[i] for i in range(n))
        return torch.stack(xs) if xs else torch.zeros(0), torch.cat(ys) if ys else None
    raise KernelfiError(f"inputs: expected a tensor, (x, y) tensors, a Dataset, a DataLoader or a path, "
                        f"got {type(inputs).__name__}")


def as_data(inputs: Inputs, directory: str | os.PathLike[str]) -> str:
    """The ``--data`` value of ``inputs``; a tensor, Dataset or DataLoader is written to
    ``directory`` as an ``.npz`` named by its content."""
    if isinstance(inputs, (str, os.PathLike)):
        return os.fspath(inputs)
    x, y = _collect(inputs)
    if x.ndim != 4 or x.shape[0] == 0:
        raise KernelfiError(f"inputs: expected a batch (N, C, H, W) of at least one input, got shape {tuple(x.shape)}")
    arrays: dict[str, np.ndarray] = {"x": x.detach().cpu().to(torch.float32).contiguous().numpy(),
                                     "normalized": np.array(True)}
    if y is not None:
        if y.shape[0] != x.shape[0]:
            raise KernelfiError(f"inputs: {x.shape[0]} inputs but {y.shape[0]} labels")
        arrays["y"] = y.detach().cpu().to(torch.int64).numpy()
    h = hashlib.sha256()
    for k in sorted(arrays):
        h.update(k.encode() + str(arrays[k].shape).encode() + arrays[k].tobytes())
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"inputs-{h.hexdigest()[:20]}.npz"
    if not path.is_file():
        tmp = d / f".{path.name}.tmp{os.getpid()}.npz"
        np.savez(tmp, **arrays)  # type: ignore[arg-type]
        tmp.replace(path)
    return str(path.resolve())
