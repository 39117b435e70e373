"""The model registry: names users type (``alexnet``, ``resnet50``, ``digits-resnet``, a
``.cfg`` path) mapped to architectures, metadata and weights.

Every campaign records *which* weights it injected into (``weights_source``,
``weights_hash``), because vulnerability figures of a random-weights model and of a trained
one are different results. Loading never downloads: weights are either a user file, the
embedded digits weights, or seeded random weights that replay identically.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Mapping

from torch import nn

from kernelfi._utils import KernelfiError, sha256_file
from kernelfi.models.checkpoints import apply_state, load_state
from kernelfi.models.info import LoadedModel, ModelInfo
from kernelfi.models.random_init import RANDOM_INIT_SCHEME, build_empty, init_random
from kernelfi.models.user import (
    FACTORY_WEIGHTS, import_file, is_model_file, load_file_model, lookup, reproducible, source_of, state_digest,
    user_code,
)

__all__ = [
    "ModelInfo", "LoadedModel", "Builder", "register_model", "register_darknet",
    "list_models", "get_model_info", "load_model", "ASSETS", "registration", "ensure_registered",
]

#: Shipped files: Darknet cfgs, the embedded digits weights and their statistics.
ASSETS: Path = Path(__file__).resolve().parent.parent / "assets"
#: ``weights=`` values that are not paths.
RANDOM, EMBEDDED = "random", "embedded"

Builder = Callable[[int], nn.Module]  # num_classes -> module


@dataclass(frozen=True)
class _Entry:
    info: ModelInfo
    builder: Builder | None = None
    head: str | None = None          # state-dict key whose dim 0 is num_classes
    embedded: str | None = None      # asset file with shipped weights
    fixed_classes: bool = False      # num_classes cannot change (embedded-weights models)
    darknet_cfg: Path | None = None  # Darknet entries build from this cfg instead
    own_weights: bool = False        # a user's builder: the weights it sets are the model's
    kwargs: Mapping[str, Any] | None = None  # register_model's arguments (to register it elsewhere)


_REGISTRY: dict[str, _Entry] = {}


def _add(name: str, entry: _Entry) -> None:
    if name in _REGISTRY:
        raise KernelfiError(f"model '{name}' is already registered")
    if name.lower().endswith(".cfg"):
        raise KernelfiError(f"model name '{name}' must not end in .cfg (reserved for cfg paths)")
    _REGISTRY[name] = entry


def register_model(name: str, *, input_shape: tuple[int, int, int], num_classes: int,
                   mean: tuple[float, ...], std: tuple[float, ...], description: str,
                   default_data: str | None = None, head: str | None = None,
                   embedded: str | None = None, fixed_classes: bool = False,
                   fit: str | None = None, resize: int | None = None) -> Callable[[Builder], Builder]:
    """Register ``builder(num_classes) -> nn.Module`` under ``name``; duplicates are refused.

    ``head`` names the classifier weight, so a checkpoint's class count is read from it when
    the user gives none (a 7-class AlexNet checkpoint loads without ``--num-classes``).
    ``fit``/``resize``: how images are prepared for it by default (``ModelInfo``).
    """
    info = ModelInfo(name, tuple(input_shape), int(num_classes), tuple(mean), tuple(std),  # type: ignore[arg-type]
                     default_data, description, fit, resize)
    kwargs = {"input_shape": list(input_shape), "num_classes": int(num_classes), "mean": list(mean),
              "std": list(std), "description": description, "default_data": default_data, "head": head,
              "fixed_classes": fixed_classes, "fit": fit, "resize": resize}

    def deco(builder: Builder) -> Builder:
        own = user_code(builder) and embedded is None
        _add(name, _Entry(info, builder, head, embedded, fixed_classes, own_weights=own, kwargs=kwargs))
        return builder

    return deco


def register_darknet(name: str, cfg: Path, description: str,
                     input_shape: tuple[int, int, int] = (3, 227, 227),
                     num_classes: int = 1000) -> None:
    """Register a model built from a Darknet ``.cfg`` by ``kernelfi.models.darknet``.

    The cfg is parsed only when the model is asked for, so a missing or broken cfg cannot
    break ``import kernelfi.models``; ``input_shape``/``num_classes`` stand in until then.
    """
    c = input_shape[0]
    info = ModelInfo(name, input_shape, num_classes, (0.0,) * c, (1.0,) * c, None, description,
                     fit="letterbox")
    _add(name, _Entry(info, darknet_cfg=cfg))


def registration(name: str) -> dict[str, Any] | None:
    """How another process registers the user's model ``name`` as this one did: the builder's
    file (absolute path, sha256), its qualified name and ``register_model``'s arguments; None
    for kernelfi's own models and names not registered. A builder defined inside a function
    is refused in one line (no other process can find it)."""
    entry = _REGISTRY.get(name)
    if entry is None or not entry.own_weights or entry.builder is None:
        return None
    found = source_of(entry.builder)
    if found is None:
        raise KernelfiError(f"model '{name}': its builder has no source file; define it in a .py file")
    path, qual = found
    return {"source": path, "qualname": qual, "sha256": sha256_file(path), "kwargs": dict(entry.kwargs or {})}


def ensure_registered(name: str, reg: Mapping[str, Any] | None) -> None:
    """Register ``name`` from its ``registration`` where this process does not know it yet (a
    worker, a later command): import the builder's file by path (its content checked), then
    register the builder found there unless importing registered it."""
    if name in _REGISTRY or not reg:
        return
    mod = import_file(reg["source"], reg.get("sha256") or None)
    if name in _REGISTRY:
        return
    builder = lookup(mod, str(reg["qualname"]), f"{reg['source']}:{reg['qualname']}")
    kw = dict(reg["kwargs"])
    register_model(name, **{**kw, "input_shape": tuple(kw["input_shape"]), "mean": tuple(kw["mean"]),
                            "std": tuple(kw["std"])})(builder)


def list_models() -> list[ModelInfo]:
    """Every registered model, in registration order (a broken cfg shows its placeholder)."""
    out = []
    for name, entry in _REGISTRY.items():
        try:
            out.append(get_model_info(name))
        except KernelfiError:
            out.append(entry.info)
    return out


def get_model_info(name: str, input_shape: tuple[int, ...] | None = None) -> ModelInfo:
    """Metadata of a registered model (or a ``.cfg`` path) without building it; a model file
    (``PATH.py:FACTORY``, ``kernelfi.models.user``) is built to know it."""
    if is_model_file(name) and name not in _REGISTRY:
        return load_file_model(name, input_shape=input_shape).info
    if name in _REGISTRY:
        e = _REGISTRY[name]
        if e.darknet_cfg is not None:  # the cfg may have changed since registration
            shape, classes = _cfg_summary(e.darknet_cfg)
            return replace(e.info, input_shape=shape, num_classes=classes,
                           mean=(0.0,) * shape[0], std=(1.0,) * shape[0])
        return e.info
    if name.lower().endswith(".cfg"):
        return _cfg_info(Path(name))
    raise _unknown(name)


def _unknown(name: str) -> KernelfiError:
    return KernelfiError(f"unknown model '{name}' (known: {', '.join(_REGISTRY)}; "
                         "or a Darknet .cfg path)")


def load_model(name: str, weights: str | os.PathLike[str] | None = None,
               num_classes: int | None = None, seed: int = 0, input_shape: tuple[int, ...] | None = None,
               source_sha256: str | None = None) -> LoadedModel:
    """Build ``name`` in eval mode with the requested weights.

    ``weights``: a ``.pth``/``.pt``/``.safetensors`` checkpoint (a Darknet ``.weights`` file for
    cfg models), ``"random"`` to force seeded random weights, ``"embedded"`` or ``None`` for
    the shipped weights where a model has them, else the weights a user's builder or factory
    sets itself, else (kernelfi's architectures) seeded random weights with ``seed``.
    ``input_shape``, ``source_sha256``: of a model file ``PATH.py:FACTORY``
    (``kernelfi.models.user.load_file_model``).
    """
    weights = None if weights is None else os.fspath(weights)
    if is_model_file(name) and name not in _REGISTRY:
        if num_classes is not None:
            raise KernelfiError(f"{name}: --num-classes does not apply to a model file (its factory sets the classes)")
        return load_file_model(name, weights, seed, input_shape, source_sha256)
    if name not in _REGISTRY and name.lower().endswith(".cfg"):
        return _load_darknet(Path(name), _cfg_info(Path(name)), weights, num_classes, seed)
    if name not in _REGISTRY:
        raise _unknown(name)
    entry = _REGISTRY[name]
    if entry.darknet_cfg is not None:
        return _load_darknet(entry.darknet_cfg, get_model_info(name), weights, num_classes, seed)
    return _load_torch(entry, weights, num_classes, seed)


def _load_torch(entry: _Entry, weights: str | None, num_classes: int | None,
                seed: int) -> LoadedModel:
    info, builder = entry.info, entry.builder
    assert builder is not None
    path: Path | None = None
    source = ""
    if weights in (None, EMBEDDED) and entry.embedded:
        path, source = ASSETS / entry.embedded, EMBEDDED
        if not path.is_file():
            raise KernelfiError(f"{path}: embedded weights of '{info.name}' are missing "
                                "(run scripts/train_digits.py)")
    elif weights == EMBEDDED:
        raise KernelfiError(f"model '{info.name}' has no embedded weights")
    elif weights not in (None, RANDOM):
        path = Path(weights)
        source = str(path)
        if path.suffix.lower() == ".weights":
            raise KernelfiError(f"{path}: Darknet .weights need a Darknet model (a .cfg path "
                                f"or alexnet-darknet), not '{info.name}'")
    state = load_state(path) if path is not None else None

    classes = info.num_classes if num_classes is None else int(num_classes)
    if num_classes is None and state is not None and entry.head in state:
        classes = int(state[entry.head].shape[0])
    if classes < 1 or (entry.fixed_classes and classes != info.num_classes):
        fixed = f"fixed at {info.num_classes}" if entry.fixed_classes else "at least 1"
        raise KernelfiError(f"model '{info.name}': num_classes={classes} is invalid ({fixed})")

    own = False
    if entry.own_weights and weights != RANDOM:  # the user's builder: the weights it sets are kept
        module, own = reproducible(lambda: builder(classes)) if state is None else (builder(classes), False)
        if state is None and not own:  # PyTorch's default initialisation: no weights of the model's
            try:
                init_random(module, seed)
            except TypeError as e:
                raise KernelfiError(f"model '{info.name}': its builder's weights differ from call to call and "
                                    f"there are no seeded random ones for it ({e}); set them in the builder, or "
                                    "give --weights") from None
    else:
        module = init_random(build_empty(lambda: builder(classes)), seed)
    if state is not None and path is not None:
        apply_state(module, state, path)
        digest = sha256_file(path)
        note = ("embedded trained weights" if source == EMBEDDED
                else f"weights from {path.name}")
    elif own:
        digest, source = state_digest(module), FACTORY_WEIGHTS
        note = f"the builder's own weights (state sha256 {digest[:12]})"
    else:
        desc = f"random:{info.name}:num_classes={classes}:seed={seed}:{RANDOM_INIT_SCHEME}"
        digest = hashlib.sha256(desc.encode()).hexdigest()
        source = f"random (seed {seed})"
        note = f"no trained weights: running with seeded random weights (seed {seed})"
    module.eval().requires_grad_(False)
    return LoadedModel(module, replace(info, num_classes=classes), source, digest, note)


def _load_darknet(cfg: Path, info: ModelInfo, weights: str | None, num_classes: int | None,
                  seed: int) -> LoadedModel:
    """Build through ``kernelfi.models.darknet.load_darknet`` (imported only when needed)."""
    if weights == EMBEDDED:
        raise KernelfiError(f"model '{info.name}' has no embedded weights")
    wpath = None if weights in (None, RANDOM) else Path(weights)  # type: ignore[arg-type]
    if wpath is not None:
        if wpath.suffix.lower() != ".weights":
            raise KernelfiError(f"{wpath}: a Darknet model needs a Darknet .weights file")
        if not wpath.is_file():
            raise KernelfiError(f"{wpath}: no such weights file")
    if num_classes is not None and int(num_classes) != info.num_classes:
        raise KernelfiError(f"{cfg.name}: the cfg fixes {info.num_classes} classes; "
                            f"num_classes={num_classes} cannot change it (edit the cfg)")
    try:
        from kernelfi.models.darknet import load_darknet
    except ImportError as e:
        raise KernelfiError(f"{cfg.name}: Darknet cfg support is unavailable ({e})") from None
    built = load_darknet(str(cfg), weights_path=None if wpath is None else str(wpath), seed=seed)
    module = built if isinstance(built, nn.Module) else getattr(built, "module", None)
    if not isinstance(module, nn.Module):
        raise TypeError(f"load_darknet returned {type(built).__name__}, not an nn.Module")
    module.eval().requires_grad_(False)
    if wpath is not None:
        return LoadedModel(module, info, str(wpath), sha256_file(wpath),
                           f"weights from {wpath.name}")
    desc = f"random:darknet:{sha256_file(cfg)}:seed={seed}"
    return LoadedModel(module, info, f"random (seed {seed})",
                       hashlib.sha256(desc.encode()).hexdigest(),
                       f"no trained weights: running with seeded random weights (seed {seed})")


def _cfg_info(cfg: Path) -> ModelInfo:
    shape, classes = _cfg_summary(cfg)
    return ModelInfo(str(cfg), shape, classes, (0.0,) * shape[0], (1.0,) * shape[0], None,
                     f"Darknet cfg {cfg}", fit="letterbox")


def _cfg_summary(cfg: Path) -> tuple[tuple[int, int, int], int]:
    """(C, H, W) and class count of a cfg, by Darknet's own parser and shape rules."""
    if not cfg.is_file():
        raise KernelfiError(f"{cfg}: no such Darknet cfg file")
    try:
        from kernelfi.models.darknet import build_layers, parse_cfg
    except ImportError as e:
        raise KernelfiError(f"{cfg.name}: Darknet cfg support is unavailable ({e})") from None
    layers, shape = build_layers(parse_cfg(cfg))
    classes = 1
    for d in layers[-1].out_shape:
        classes *= int(d)
    c, h, w = (int(d) for d in shape)
    return (c, h, w), classes
