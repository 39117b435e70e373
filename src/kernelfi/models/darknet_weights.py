"""Darknet's binary ``.weights`` format: read and write, byte-compatible with pjreddie/darknet.

Layout (``load_weights_upto`` / ``save_weights_upto`` in Darknet's ``parser.c``): int32 major,
minor, revision; then ``seen`` as uint64 when ``major*10 + minor >= 2`` and both are < 1000,
else as uint32; then, layer by layer in cfg order, little-endian float32 arrays:

- convolutional: biases[n], (batch_normalize: scales[n], rolling_mean[n], rolling_variance[n]),
  weights[n * c/groups * size * size]
- connected: biases[out], weights[out * in], (batch_normalize: scales, rolling_mean,
  rolling_variance) -- the BN block comes *after* the weights here, unlike conv.  When
  ``major > 1000 or minor > 1000`` the connected weights are stored transposed (in x out).

Darknet's ``fread`` never complains: a short file leaves the remaining layers at their random
initialisation and trailing bytes are ignored.  For fault injection either case means the
golden run is not the network the user thinks it is, so both are errors here (trailing bytes can
be allowed explicitly with ``allow_trailing=True``).  Nothing here unpickles: the file is raw
floats.
"""
from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch

from kernelfi._utils import KernelfiError, one_line
from kernelfi.models.checkpoints import check_weight
from kernelfi.types import LayerSpec

__all__ = ["read_weights", "write_weights", "weight_shapes", "weight_roles_in_file_order",
           "DEFAULT_VERSION"]

#: What Darknet's ``save_weights`` writes.
DEFAULT_VERSION: tuple[int, int, int] = (0, 2, 0)

_BN_ROLES: tuple[str, ...] = ("scales", "rolling_mean", "rolling_variance")


def _numel(shape: Sequence[int]) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def _in_shape(layer: LayerSpec) -> tuple[int, ...]:
    shape = layer.params.get("in_shape")
    if shape is None:
        raise KernelfiError(one_line(
            f"layer {layer.index} ({layer.type}): LayerSpec.params lacks 'in_shape', needed to size its weights"))
    return tuple(int(d) for d in shape)


def weight_shapes(layer: LayerSpec) -> dict[str, tuple[int, ...]]:
    """The state-dict tensor shape of each weight role of a layer ({} for weightless layers).

    Conv weights are (filters, C/groups*size*size), the flat row-major rows Darknet's GEMM
    uses; connected weights are (outputs, inputs).
    """
    p = layer.params
    if layer.type == "convolutional":
        in_shape = _in_shape(layer)
        c = in_shape[0]
        n, size, groups = int(p["filters"]), int(p["size"]), int(p.get("groups", 1))
        shapes: dict[str, tuple[int, ...]] = {"weights": (n, c // groups * size * size), "biases": (n,)}
        if p.get("batch_normalize"):
            shapes.update({role: (n,) for role in _BN_ROLES})
        return shapes
    if layer.type == "connected":
        outputs = int(p.get("outputs", p.get("output", 0)))
        inputs = int(p["inputs"]) if "inputs" in p else _numel(_in_shape(layer))
        shapes = {"weights": (outputs, inputs), "biases": (outputs,)}
        if p.get("batch_normalize"):
            shapes.update({role: (outputs,) for role in _BN_ROLES})
        return shapes
    return {}


def weight_roles_in_file_order(layer: LayerSpec) -> tuple[str, ...]:
    """The order Darknet reads a layer's arrays in (conv and connected differ on BN)."""
    bn = bool(layer.params.get("batch_normalize"))
    if layer.type == "convolutional":
        return ("biases", *(_BN_ROLES if bn else ()), "weights")
    if layer.type == "connected":
        return ("biases", "weights", *(_BN_ROLES if bn else ()))
    return ()


def _key(layer: LayerSpec, role: str) -> str:
    return layer.weights.get(role, f"{layer.name}.{role}")


def _seen_is_64bit(major: int, minor: int) -> bool:
    return (major * 10 + minor) >= 2 and major < 1000 and minor < 1000


def _transposed(major: int, minor: int) -> bool:
    return major > 1000 or minor > 1000


def read_weights(path: str | Path, layers: Sequence[LayerSpec], *,
                 allow_trailing: bool = False) -> dict[str, torch.Tensor]:
    """Read a Darknet ``.weights`` file into a state dict keyed by ``LayerSpec.weights``.

    Sizes are checked before anything is allocated, so a corrupt or mismatched file fails
    fast with the layer it stopped at instead of exhausting memory.
    """
    path = Path(path)
    name = str(path)
    try:
        total = os.path.getsize(path)
        f = open(path, "rb")
    except (OSError, ValueError) as exc:
        raise KernelfiError(one_line(f"{name}: cannot read weights file: {exc}")) from None
    state: dict[str, torch.Tensor] = {}
    with f:
        header = f.read(12)
        if len(header) < 12:
            raise KernelfiError(f"{name}: truncated: header needs 12 bytes, only {len(header)} in the file")
        major, minor, revision = struct.unpack("<iii", header)
        seen_size = 8 if _seen_is_64bit(major, minor) else 4
        seen_raw = f.read(seen_size)
        if len(seen_raw) < seen_size:
            raise KernelfiError(one_line(
                f"{name}: truncated: header (version {major}.{minor}.{revision}) needs a {seen_size}-byte "
                f"'seen' counter, only {len(seen_raw)} bytes left"))
        transpose = _transposed(major, minor)
        pos = 12 + seen_size
        last: LayerSpec | None = None
        for layer in layers:
            shapes = weight_shapes(layer)
            if not shapes:
                continue
            need = sum(_numel(s) for s in shapes.values())
            left_bytes = total - pos
            if need * 4 > left_bytes:
                raise KernelfiError(one_line(
                    f"{name}: truncated: layer {layer.index} ({layer.type}) needs {need} floats, "
                    f"only {max(left_bytes, 0) // 4} left"))
            for role in weight_roles_in_file_order(layer):
                shape = shapes[role]
                count = _numel(shape)
                arr = np.fromfile(f, dtype="<f4", count=count)
                if arr.size != count:  # the file shrank under us
                    raise KernelfiError(one_line(
                        f"{name}: truncated: layer {layer.index} ({layer.type}) {role} needs {count} floats, "
                        f"only {arr.size} read"))
                arr = arr.astype(np.float32, copy=False)
                if role == "weights" and layer.type == "connected" and transpose:
                    # stored (inputs, outputs); Darknet transposes to (outputs, inputs) on load
                    arr = np.ascontiguousarray(arr.reshape(shape[1], shape[0]).T)
                state[_key(layer, role)] = t = torch.from_numpy(arr.reshape(shape))
                check_weight(name, f"layer {layer.index} ({layer.type}) {role}", t)
            pos += need * 4
            last = layer
        extra = total - pos
        if extra > 0 and not allow_trailing:
            after = f"layer {last.index} ({last.type})" if last is not None else "the header"
            raise KernelfiError(one_line(
                f"{name}: {extra} trailing bytes after {after}: the weights do not match this cfg "
                f"(Darknet would ignore them; pass allow_trailing=True to do the same)"))
    return state


def write_weights(path: str | Path, layers: Sequence[LayerSpec], state: Mapping[str, torch.Tensor],
                  version: tuple[int, int, int] = DEFAULT_VERSION, seen: int = 0) -> None:
    """Write ``state`` as a Darknet ``.weights`` file that Darknet itself can load.

    The header's width of ``seen`` and the connected-weights transposition follow ``version``
    exactly as the reader (and Darknet) interpret it, so any version round-trips.
    """
    major, minor, revision = (int(v) for v in version)
    if not all(-(2**31) <= v < 2**31 for v in (major, minor, revision)):
        raise KernelfiError(f"{path}: version {tuple(version)} does not fit the header's int32 fields")
    seen_64 = _seen_is_64bit(major, minor)
    if seen < 0 or seen >= (1 << (64 if seen_64 else 32)):
        raise KernelfiError(f"{path}: seen={seen} does not fit the header's {'64' if seen_64 else '32'}-bit field")
    transpose = _transposed(major, minor)
    # Validate everything before opening the file, so a bad state never leaves a partial file.
    arrays: list[tuple[LayerSpec, str, torch.Tensor]] = []
    for layer in layers:
        shapes = weight_shapes(layer)
        for role in weight_roles_in_file_order(layer):
            key = _key(layer, role)
            if key not in state:
                raise KernelfiError(one_line(f"{path}: cannot write layer {layer.index} ({layer.type}): state has no '{key}'"))
            t = state[key]
            if tuple(t.shape) != shapes[role] and t.numel() != _numel(shapes[role]):
                raise KernelfiError(one_line(
                    f"{path}: cannot write layer {layer.index} ({layer.type}): '{key}' has shape "
                    f"{tuple(t.shape)}, expected {shapes[role]}"))
            arrays.append((layer, role, t.detach().reshape(shapes[role])))
    try:
        with open(path, "wb") as f:
            f.write(struct.pack("<iii", major, minor, revision))
            f.write(struct.pack("<Q" if seen_64 else "<I", seen))
            for layer, role, t in arrays:
                arr = t.to("cpu", torch.float32).contiguous().numpy()
                if role == "weights" and layer.type == "connected" and transpose:
                    arr = np.ascontiguousarray(arr.T)
                f.write(arr.astype("<f4", copy=False).tobytes())
    except OSError as exc:
        raise KernelfiError(one_line(f"{path}: cannot write weights file: {exc}")) from None
