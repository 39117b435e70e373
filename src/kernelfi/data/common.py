"""What every data source returns, and the checks they share.

All sources end in the same place — an (N, C, H, W) float32 tensor prepared as
``kernelfi.data.prep`` describes (normalised with the model's own mean/std unless told
otherwise) — so that a campaign's golden run sees what the model was trained on, whichever
format the user's inputs came in.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, Sequence

from torch import Tensor

from kernelfi._utils import KernelfiError

__all__ = ["InputInfo", "InputSet", "check_limit", "take", "IMAGE_SUFFIXES"]

IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".ppm", ".pgm",
                                   ".tif", ".tiff", ".webp")


class InputInfo(Protocol):
    """The part of ``kernelfi.models.ModelInfo`` the data layer needs (data may not import
    models: they are the same layer); ``fit`` and ``resize`` are read where present
    (``kernelfi.data.prep``)."""

    @property
    def input_shape(self) -> tuple[int, ...]: ...
    @property
    def mean(self) -> Sequence[float]: ...
    @property
    def std(self) -> Sequence[float]: ...
    @property
    def default_data(self) -> str | None: ...


@dataclass
class InputSet:
    """Model-ready inputs: ``x`` (N, C, H, W) float32 prepared, labels where known.

    ``source`` describes the inputs — what they are, their content digest where they come
    from files, how they were prepared — without their location: it is part of what defines a
    campaign (``store.KEY_FIELDS``), and a moved file with the same content is the same
    experiment. ``path`` (absolute) and ``digest`` (sha256 of an ``.npz`` file, or of the
    images read from a folder: ``files.TreeDigest``) are recorded beside it. ``positions`` are
    the inputs' places in the data set (``load_inputs(positions=...)`` loads the same ones
    again); ``notes`` say, one line each, what the loading did that changes what is measured
    (colour or size conversions, random inputs), for the user to read before a campaign.
    """

    x: Tensor
    y: Tensor | None
    ids: list[str]
    source: str
    positions: list[int] = field(default_factory=list)
    notes: tuple[str, ...] = ()
    path: str | None = None
    digest: str = ""

    def __post_init__(self) -> None:
        if not self.positions:
            self.positions = list(range(int(self.x.shape[0])))

    def __len__(self) -> int:
        return int(self.x.shape[0])


def check_limit(limit: int | None) -> None:
    """``limit`` keeps the first N inputs; zero or negative is a user mistake, not "all"."""
    if limit is not None and int(limit) < 1:
        raise KernelfiError(f"limit must be at least 1 (got {limit})")


def take(n_all: int, limit: int | None, positions: Sequence[int] | None) -> list[int]:
    """The data-set positions to load: ``positions`` (those inside the data set, in order), else
    the first ``limit`` (all without one)."""
    check_limit(limit)
    if positions is not None:
        return [int(p) for p in positions if 0 <= int(p) < n_all]
    return list(range(n_all if limit is None else min(int(limit), n_all)))


def model_chw(info: InputInfo) -> tuple[int, int, int]:
    """The model's (C, H, W); data sources only handle image models."""
    shape = tuple(int(d) for d in info.input_shape)
    if len(shape) != 3:
        raise KernelfiError(f"the model's input shape {shape} is not (C, H, W)")
    return shape  # type: ignore[return-value]
