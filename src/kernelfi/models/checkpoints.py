"""Reading users' checkpoints safely and applying them strictly.

A ``.pth`` file is a pickle, and unpickling runs code: a checkpoint downloaded from the
internet must never be able to execute anything in a fault-injection campaign. We therefore
only ever call ``torch.load(weights_only=True)`` and turn its refusal into a clear error. Loading
is strict because a silently half-loaded model (a renamed layer left at random init) would make
every vulnerability figure meaningless.
"""
from __future__ import annotations

import pickle
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from kernelfi._utils import KernelfiError, one_line

__all__ = ["load_state", "apply_state", "check_weight", "TORCH_SUFFIXES", "SAFETENSORS_SUFFIXES"]

TORCH_SUFFIXES: tuple[str, ...] = (".pth", ".pt", ".bin", ".ckpt")
SAFETENSORS_SUFFIXES: tuple[str, ...] = (".safetensors",)
#: Keys under which training scripts commonly nest the state dict.
_WRAPPER_KEYS: tuple[str, ...] = ("state_dict", "model_state_dict", "model", "net")
#: Prefixes added by DataParallel/DistributedDataParallel and torch.compile.
_STRIP_PREFIXES: tuple[str, ...] = ("module.", "_orig_mod.")
_SHOW = 4  # keys named in an error message


def load_state(path: str | Path) -> dict[str, Tensor]:
    """Read a state dict from ``.pth``/``.pt`` (weights-only unpickling) or ``.safetensors``.

    Accepts ``{'state_dict': ...}``/``{'model': ...}`` wrappers and strips ``module.`` prefixes,
    so checkpoints saved by common training scripts load as they are.
    """
    p = Path(path)
    if not p.is_file():
        raise KernelfiError(f"{p}: no such weights file")
    suffix = p.suffix.lower()
    if suffix in SAFETENSORS_SUFFIXES:
        raw: Any = _load_safetensors(p)
    elif suffix in TORCH_SUFFIXES:
        raw = _load_torch(p)
    else:
        known = ", ".join(TORCH_SUFFIXES + SAFETENSORS_SUFFIXES)
        raise KernelfiError(f"{p}: unknown weights format '{suffix}' (expected one of {known}; "
                            "Darknet .weights go with a .cfg model)")
    return _normalise(_unwrap(raw), p)


def _load_safetensors(p: Path) -> dict[str, Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(p), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise KernelfiError(f"{p.name}: not a readable safetensors file: {one_line(str(e))}") from None


def _load_torch(p: Path) -> Any:
    with open(p, "rb") as f:
        head = f.read(2)
    if not zipfile.is_zipfile(p) and head[:1] != b"\x80":  # neither torch zip nor a pickle
        raise KernelfiError(f"{p.name}: not a PyTorch checkpoint (neither a torch.save zip "
                            "archive nor a pickle)")
    try:
        with warnings.catch_warnings():  # protocol-version chatter; refusals raise below
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(str(p), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise KernelfiError(f"{p.name}: not a weights-only checkpoint (refusing to unpickle "
                            f"arbitrary objects): {_reason(e)}{_advice(e, p)}") from None
    except (RuntimeError, OSError, EOFError, ValueError) as e:
        raise KernelfiError(f"{p.name}: cannot read checkpoint: {_reason(e)}") from None


def _advice(e: BaseException, p: Path) -> str:
    """For a file that pickles Python objects (a whole ``torch.save(model)``): how to turn it
    into a state dict, in one line a user can run on a file they trust."""
    m = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(e))
    if m is None or not m.group(1).rsplit(".", 1)[-1][:1].isupper():  # a class (a module's model), not a function
        return ""
    out = p.with_name(p.stem + "_state.pth")
    return (f". If it is a whole model saved with torch.save(model) and you trust the file, save its state dict "
            f"and give that: python -c \"import torch; torch.save(torch.load('{p}', weights_only=False)"
            f".state_dict(), '{out}')\" (or safetensors.torch.save_file(model.state_dict(), 'x.safetensors'))")


def _reason(e: BaseException) -> str:
    """The informative part of torch's (long, multi-line, advice-laden) load error."""
    msg = one_line(str(e))
    for marker in ("WeightsUnpickler error:", "from a trusted source."):
        if marker in msg:  # drop torch's preamble (incl. its advice to load unsafely)
            msg = msg.split(marker, 1)[1]
    msg = msg.split(" was not an allowed global", 1)[0]  # torch's advice (add_safe_globals) fits no CLI user
    msg = msg.split(" Check the documentation of torch.load", 1)[0].strip() or type(e).__name__
    return msg if len(msg) <= 240 else msg[:237] + "..."


def _unwrap(raw: Any) -> Any:
    """Descend into the usual training-script wrappers until a flat tensor mapping remains."""
    for _ in range(3):
        if not isinstance(raw, Mapping) or all(isinstance(v, Tensor) for v in raw.values()):
            break
        inner = next((raw[k] for k in _WRAPPER_KEYS if isinstance(raw.get(k), Mapping)), None)
        if inner is None:
            break
        raw = inner
    return raw


def _normalise(raw: Any, p: Path) -> dict[str, Tensor]:
    if not isinstance(raw, Mapping):
        raise KernelfiError(f"{p.name}: not a state dict (the file holds a {type(raw).__name__})")
    bad = [str(k) for k, v in raw.items() if not isinstance(v, Tensor)]
    if bad:
        raise KernelfiError(f"{p.name}: not a state dict: non-tensor entries {_few(bad)}")
    state = {str(k): v for k, v in raw.items()}
    for prefix in _STRIP_PREFIXES:
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def apply_state(module: nn.Module, state: Mapping[str, Tensor], path: str | Path) -> None:
    """Load ``state`` into ``module`` strictly, or raise one line naming the file and keys.

    A missing ``num_batches_tracked`` is tolerated: checkpoints older than PyTorch 0.4.1
    (torchvision's original ImageNet files among them) lack it, and inference never reads it.
    """
    name = Path(path).name
    own = module.state_dict()
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    mismatched = [f"{k} (file {tuple(state[k].shape)} vs model {tuple(own[k].shape)})"
                  for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    problems = []
    if missing:
        problems.append(f"missing keys {_few(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {_few(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatch {_few(mismatched)}")
    if problems:
        raise KernelfiError(f"{name}: checkpoint does not match the model: " + "; ".join(problems))
    for k in own:
        if k in state:
            check_weight(name, k, state[k], own[k])
    full = dict(state)
    for k in own:
        if k not in full:  # only num_batches_tracked can get here
            full[k] = torch.zeros_like(own[k]) if own[k].device.type != "meta" else torch.tensor(0)
    with torch.no_grad():
        module.load_state_dict(full, strict=True)


def check_weight(name: str, key: str, t: Tensor, want: Tensor | None = None) -> None:
    """A weight must be floating point where the model's is (``want``; any float without one)
    and finite: an int32 tensor would be converted silently, a NaN makes every row meaningless."""
    floating = want is None or want.is_floating_point()
    if floating and not t.is_floating_point():
        raise KernelfiError(f"{name}: {key} holds {str(t.dtype).replace('torch.', '')} values, not floating-point "
                            "weights")
    if t.is_floating_point():
        bad = ~torch.isfinite(t)
        if bool(bad.any()):
            first = int(bad.reshape(-1).nonzero()[0])
            raise KernelfiError(f"{name}: {key} holds {int(bad.sum()):,} NaN or infinite values (first: element "
                                f"{first} = {t.reshape(-1)[first].item()}); weights must be finite")


def _few(keys: list[str]) -> str:
    shown = ", ".join(keys[:_SHOW])
    more = f" (+{len(keys) - _SHOW} more)" if len(keys) > _SHOW else ""
    return f"[{shown}{more}]"
