"""What the rest of kernelfi knows of a model: ``ModelInfo`` (without building it) and
``LoadedModel`` (built, with the provenance of its weights). Shared by the registry and the
models of user files (``kernelfi.models.user``), which both produce them."""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

__all__ = ["ModelInfo", "LoadedModel"]


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
