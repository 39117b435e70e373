"""What every data source returns, and the preprocessing they share.

All sources end in the same place — an (N, C, H, W) float32 tensor normalised with the
model's own mean/std — so that a campaign's golden run sees exactly what the model was
trained on, whichever format the user's images came in.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

import torch
from torch import Tensor

from kernelfi._utils import KernelfiError

__all__ = ["InputInfo", "InputSet", "normalise", "check_limit", "IMAGE_SUFFIXES"]

IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".ppm", ".pgm",
                                   ".tif", ".tiff", ".webp")


class InputInfo(Protocol):
    """The part of ``kernelfi.models.ModelInfo`` the data layer needs (data may not import
    models: they are the same layer)."""

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
    """Model-ready inputs: ``x`` (N, C, H, W) float32 normalised, labels where known.

    ``source`` describes where the inputs came from (with a file hash where there is a file),
    for the campaign metadata.
    """

    x: Tensor
    y: Tensor | None
    ids: list[str]
    source: str

    def __len__(self) -> int:
        return int(self.x.shape[0])


def normalise(x: Tensor, info: InputInfo, origin: str) -> Tensor:
    """(x - mean[c]) / std[c] for images in [0, 1]; one-element mean/std apply to all channels."""
    c = int(x.shape[1])
    mean, std = list(info.mean), list(info.std)
    if len(mean) == 1:
        mean = mean * c
    if len(std) == 1:
        std = std * c
    if len(mean) != c or len(std) != c:
        raise KernelfiError(f"{origin}: {c}-channel inputs but the model's mean/std have "
                            f"{len(mean)}/{len(std)} entries")
    m = torch.tensor(mean, dtype=torch.float32).view(1, c, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, c, 1, 1)
    return ((x.to(torch.float32) - m) / s).contiguous()


def check_limit(limit: int | None) -> None:
    """``limit`` keeps the first N inputs; zero or negative is a user mistake, not "all"."""
    if limit is not None and int(limit) < 1:
        raise KernelfiError(f"limit must be at least 1 (got {limit})")


def model_chw(info: InputInfo) -> tuple[int, int, int]:
    """The model's (C, H, W); data sources only handle image models."""
    shape = tuple(int(d) for d in info.input_shape)
    if len(shape) != 3:
        raise KernelfiError(f"the model's input shape {shape} is not (C, H, W)")
    return shape  # type: ignore[return-value]
