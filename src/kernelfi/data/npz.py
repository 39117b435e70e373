"""Inputs prepared by the user as a NumPy ``.npz`` archive: ``x`` and optionally ``y``.

For inputs that are already tensors (preprocessed elsewhere, or synthetic). Archives are read
with ``allow_pickle=False``: an object array in an ``.npz`` is a pickle and could run code.

``x`` may be (N, C, H, W) or (N, H, W, C) (or (N, H, W) for one-channel models) and must
already have the model's size: resizing tensors silently would hide a mismatch. ``uint8``
values are pixels 0..255, float values are intensities in [0, 1]; both are then normalised
with the model's mean/std. An archive holding ``normalized=True`` is used as given.
"""
from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import torch

from kernelfi._utils import KernelfiError, one_line, sha256_file
from kernelfi.data.common import InputInfo, InputSet, check_limit, model_chw, normalise

__all__ = ["load_npz"]


def _to_nchw(x: np.ndarray, chw: tuple[int, int, int], name: str) -> np.ndarray:
    c, h, w = chw
    if x.ndim == 3 and c == 1 and x.shape[1:] == (h, w):
        return x[:, None]
    if x.ndim == 4 and x.shape[1:] == (c, h, w):
        return x
    if x.ndim == 4 and x.shape[1:] == (h, w, c):
        return x.transpose(0, 3, 1, 2)
    want = f"(N, {c}, {h}, {w}) or (N, {h}, {w}, {c})"
    if x.ndim == 4 and (x.shape[2:] == (h, w) or x.shape[1:3] == (h, w)):
        got_c = x.shape[1] if x.shape[2:] == (h, w) else x.shape[3]
        raise KernelfiError(f"{name}: x has {got_c} channels but the model expects {c} "
                            f"(x shape {tuple(x.shape)}, expected {want})")
    raise KernelfiError(f"{name}: x has shape {tuple(x.shape)} but the model expects {want}")


def load_npz(path: str | Path, info: InputInfo, limit: int | None = None) -> InputSet:
    """Read ``x`` (and ``y``) from ``path``, checking shapes against the model's input."""
    check_limit(limit)
    p = Path(path)
    name = p.name
    try:
        with np.load(p, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except ValueError as e:  # object arrays need pickle
        raise KernelfiError(f"{name}: refusing pickled arrays ({one_line(str(e))})") from None
    except (OSError, zipfile.BadZipFile, EOFError) as e:
        raise KernelfiError(f"{name}: not a readable .npz file: {one_line(str(e))}") from None
    if "x" not in arrays:
        raise KernelfiError(f"{name}: no array named 'x' (found: {', '.join(arrays) or 'none'})")
    x = arrays["x"]
    if not (np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_):
        raise KernelfiError(f"{name}: x has non-numeric dtype {x.dtype}")
    chw = model_chw(info)
    x = _to_nchw(x, chw, name)
    n_all = x.shape[0]
    n = n_all if limit is None else min(int(limit), n_all)
    y = None
    if "y" in arrays:
        yy = arrays["y"]
        if yy.shape != (n_all,) or not np.issubdtype(yy.dtype, np.integer):
            raise KernelfiError(f"{name}: y must be {n_all} integer labels "
                                f"(got shape {tuple(yy.shape)}, dtype {yy.dtype})")
        y = torch.from_numpy(yy[:n].astype(np.int64))
    xt = torch.from_numpy(np.ascontiguousarray(x[:n]))
    given = bool(arrays.get("normalized", np.array(False)).any())
    if given:
        xt = xt.to(torch.float32).contiguous()
    else:
        xt = xt.to(torch.float32) / 255.0 if x.dtype == np.uint8 else xt.to(torch.float32)
        xt = normalise(xt, info, name)
    ids = [f"{name}[{i}]" for i in range(n)]
    how = "as given (normalized)" if given else "normalised"
    source = (f"npz:{p.resolve()} (sha256 {sha256_file(p)[:16]}; {n} of {n_all} inputs, {how})")
    return InputSet(xt, y, ids, source)
