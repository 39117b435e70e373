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
from typing import Callable

from torch import nn

from kernelfi._utils import KernelfiError, sha256_file
from kernelfi.models.checkpoints import apply_state, load_state
from kernelfi.models.random_init import RANDOM_INIT_SCHEME, build_empty, init_random

__all__ = [
    "ModelInfo", "LoadedModel", "Builder", "register_model", "register_darknet",
    "list_models", "get_model_info", "load_model", "ASSETS",
]

#: Shipped files: Darknet cfgs, the embedded digits weights and their statistics.
ASSETS: Path = Path(__file__).resolve().parent.parent / "assets"
#: ``weights=`` values that are not paths.
RANDOM, EMBEDDED = "random", "embedded"

Builder = Callable[[int], nn.Module]  # num_classes -> module


@dataclass(frozen=True)
class ModelInfo:
    """What the rest of kernelfi needs to know about a model without building it.

    ``mean``/``std`` are per input channel and are applied by ``kernelfi.data`` to inputs in
    [0, 1]; ``default_data`` is the data source used when the user names none (``None``: the
    user must name one). ``fit`` is how images are fit to the input by default
    (``kernelfi.data.prep``: ``crop``, ``letterbox``, ``stretch``; ``None``: ``crop`` for
    3-channel models, else ``stretch``), ``resize`` the short side before the centre crop where
    the model has its own convention (``None``: 256 x crop / 224, torchvision's).
    """

    name: str
    input_shape: tuple[int, int, int]
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    default_data: str | None = None
    description: str = ""
    fit: str | None = None
    resize: int | None = None


@dataclass
class LoadedModel:
    """A ready-to-run model and the provenance a campaign records with it.

    ``module`` is in eval mode with gradients off: kernelfi only runs inference, and frozen
    parameters let fault-injection code edit weight copies without autograd complaints.
    """

    module: nn.Module
    info: ModelInfo
    weights_source: str   # a path, "embedded", or "random (seed S)"
    weights_hash: str     # sha256 of the weights file, or of the random-init description
    note: str             # one human line about the weights, shown in reports


@dataclass(frozen=True)
class _Entry:
    info: ModelInfo
    builder: Builder | None = None
    head: str | None = None          # state-dict key whose dim 0 is num_classes
    embedded: str | None = None      # asset file with shipped weights
    fixed_classes: bool = False      # num_classes cannot change (embedded-weights models)
    darknet_cfg: Path | None = None  # Darknet entries build from this cfg instead


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

    def deco(builder: Builder) -> Builder:
        _add(name, _Entry(info, builder, head, embedded, fixed_classes))
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


def list_models() -> list[ModelInfo]:
    """Every registered model, in registration order (a broken cfg shows its placeholder)."""
    out = []
    for name, entry in _REGISTRY.items():
        try:
            out.append(get_model_info(name))
        except KernelfiError:
            out.append(entry.info)
    return out


def get_model_info(name: str) -> ModelInfo:
    """Metadata of a registered model (or a ``.cfg`` path) without building it."""
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
               num_classes: int | None = None, seed: int = 0) -> LoadedModel:
    """Build ``name`` in eval mode with the requested weights.

    ``weights``: a ``.pth``/``.pt``/``.safetensors`` checkpoint (a Darknet ``.weights`` file for
    cfg models), ``"random"`` to force seeded random weights, ``"embedded"`` or ``None`` for
    the shipped weights where a model has them (else seeded random weights with ``seed``).
    """
    weights = None if weights is None else os.fspath(weights)
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

    module = init_random(build_empty(lambda: builder(classes)), seed)
    if state is not None and path is not None:
        apply_state(module, state, path)
        digest = sha256_file(path)
        note = ("embedded trained weights" if source == EMBEDDED
                else f"weights from {path.name}")
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
