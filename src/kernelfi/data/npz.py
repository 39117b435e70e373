"""Inputs prepared by the user as a NumPy ``.npz`` archive: ``x`` and optionally ``y``.

For inputs that are already tensors (preprocessed elsewhere, or synthetic). Archives are read
with ``allow_pickle=False``: an object array in an ``.npz`` is a pickle and could run code.

``x`` may be (N, C, H, W) or (N, H, W, C) (or (N, H, W) for one-channel models) and must
already have the model's size: resizing tensors silently would hide a mismatch. ``uint8``
values are pixels 0..255, float values are intensities in [0, 1]; both are then normalised
with the model's mean/std (or ``--mean``/``--std``, or not at all with ``--no-normalize``). An
archive holding ``normalized=True`` is used as given (then no normalisation option applies).
Keys read: ``x`` (required), ``y`` (optional integer labels, one per input), ``normalized``
(optional boolean).
"""
from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from kernelfi._utils import KernelfiError, one_line, sha256_file
from kernelfi.data.common import InputInfo, InputSet, model_chw, take
from kernelfi.data.prep import Preparation, PrepOptions, custom_normalisation

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


def load_npz(path: str | Path, info: InputInfo, limit: int | None = None, prep: Preparation | None = None,
             positions: Sequence[int] | None = None, options: PrepOptions | None = None) -> InputSet:
    """Read ``x`` (and ``y``) from ``path`` (the first ``limit`` inputs, or those at
    ``positions``), checking shapes against the model's input. ``options``: what the user
    asked for, to refuse normalisation options an archive of normalised inputs cannot take."""
    p = Path(path)
    name = p.name
    prep = prep or Preparation.resolve(PrepOptions(), info)
    try:
        with open(p, "rb") as f:
            head = f.read(4)
    except OSError as e:
        raise KernelfiError(f"{name}: cannot read: {e.strerror}") from None
    if head not in (b"PK\x03\x04", b"PK\x05\x06"):  # np.savez writes a zip archive
        raise KernelfiError(f"{name}: not an .npz archive (a zip of .npy arrays, as np.savez writes; "
                            f"this file starts with {head!r})")
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
    chosen = take(n_all, limit, positions)
    idx = np.array(chosen, dtype=np.int64)
    n = len(chosen)
    y = None
    if "y" in arrays:
        yy = arrays["y"]
        if yy.shape != (n_all,) or not np.issubdtype(yy.dtype, np.integer):
            raise KernelfiError(f"{name}: y must be {n_all} integer labels "
                                f"(got shape {tuple(yy.shape)}, dtype {yy.dtype})")
        y = torch.from_numpy(yy[idx].astype(np.int64))
    xt = torch.from_numpy(np.ascontiguousarray(x[idx]))
    given = bool(arrays.get("normalized", np.array(False)).any())
    o = options or PrepOptions()
    if given and (o.mean is not None or o.std is not None or not o.normalize):
        raise KernelfiError(f"{name}: holds normalized=True inputs, used as given: --mean, --std and "
                            "--no-normalize do not apply")
    if given:
        xt = xt.to(torch.float32).contiguous()
        how, done = "as given (normalized)", "used as given (the archive says normalized=True)"
    else:
        scaled = x.dtype == np.uint8
        xt = xt.to(torch.float32) / 255.0 if scaled else xt.to(torch.float32)
        xt = prep.normalise(xt)
        how = "normalised" + custom_normalisation(prep, info).replace(";", ":")
        done = (f"{'uint8 pixels scaled to [0, 1]' if scaled else f'{x.dtype} values taken as [0, 1] intensities'}, "
                f"{prep.normalisation()} (an archive holding normalized=True is used as given)")
    ids = [f"{name}[{i}]" for i in chosen]
    digest = sha256_file(p)
    source = f"npz sha256 {digest[:16]} ({n} of {n_all} inputs, {how})"
    note = f"inputs: {n} of {n_all} from {p.resolve()}: {done}"
    return InputSet(xt, y, ids, source, positions=chosen, notes=(note,), path=str(p.resolve()), digest=digest)
