"""How an image becomes a model input — fit, resize, crop, normalisation — and its record.

A vulnerability figure is measured on the inputs the golden run saw, so the preparation is
part of what a campaign measures: it is resolved once against the model (``Preparation``),
described in the campaign's input source and stored with it, so that ``replay`` and
``harden`` prepare the same inputs again.

Three fits (``--fit``), the default chosen by the model:

- ``crop`` (3-channel models; torchvision's evaluation transform): resize the short side to
  ``--resize`` pixels (default ``round(256 * crop / 224)``: 256 for a 224 crop, 342 for 299, or
  the model's own convention, ``ModelInfo.resize``), the long side in proportion
  (``int(S * long / short)``), bilinear as PIL does it (an image whose short side already is
  S is left alone); then the centre ``--crop`` (default: the model's H x W; an image smaller
  than the crop is padded with zeros; the top-left corner is ``round((H - h) / 2)``,
  ``round((W - w) / 2)``). A crop of another size than the model's input is then resized to it.
- ``letterbox`` (Darknet cfg models; what ``darknet classifier predict`` does to an image):
  scale the image to fit inside the model's W x H keeping its aspect ratio (the side that
  limits takes the full size, the other ``(side * size) // other`` pixels), with Darknet's
  bilinear resize (corner-aligned samples ``x * (in - 1) / (out - 1)``, columns first, in
  float32), centred on a canvas of 0.5 grey at ``((W - w) // 2, (H - h) // 2)``. Chosen as the
  cfg models' default because it is how Darknet itself classifies an image, so a Darknet
  checkpoint sees what it sees in Darknet.

``--resize`` or ``--crop`` without ``--fit`` mean ``--fit crop``, whatever the model's default.
- ``stretch`` (every other model, the one-channel digits models among them): resize to H x W,
  bilinear, aspect ratio not kept — how the digits models were trained.

Then ``(x - mean[c]) / std[c]`` with the model's mean/std (ImageNet's for the torchvision
models, the training set's for the digits models, none for Darknet's: it feeds [0, 1] pixels),
or ``--mean``/``--std``, or none at all (``--no-normalize``).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from kernelfi._utils import KernelfiError

__all__ = ["FITS", "PrepOptions", "Preparation", "custom_normalisation", "default_resize", "darknet_resize",
           "letterbox"]

FITS: tuple[str, ...] = ("crop", "letterbox", "stretch")
#: torchvision's evaluation resize for a 224 crop (the ratio scales to other crop sizes)
RESIZE_FOR_224 = 256
_MODES = {1: "L", 3: "RGB"}


def default_resize(crop: tuple[int, int]) -> int:
    """The short side torchvision's evaluation transform resizes to before a centre crop."""
    return int(round(RESIZE_FOR_224 * min(crop) / 224))


@dataclass(frozen=True)
class PrepOptions:
    """What the user asked for; ``None``: the model's default. Validated on construction."""

    fit: str | None = None
    resize: int | None = None
    crop: tuple[int, int] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    normalize: bool = True

    def __post_init__(self) -> None:
        if self.fit is not None and self.fit not in FITS:
            raise KernelfiError(f"--fit: unknown fit '{self.fit}' (known: {', '.join(FITS)})")
        if self.resize is not None and int(self.resize) < 1:
            raise KernelfiError(f"--resize must be at least 1 pixel, got {self.resize}")
        if self.crop is not None:
            object.__setattr__(self, "crop", tuple(int(v) for v in self.crop))
            if len(self.crop) != 2 or min(self.crop) < 1:  # type: ignore[arg-type]
                raise KernelfiError(f"--crop must be N or HxW of at least 1 pixel, got {self.crop}")
        for name in ("mean", "std"):
            v = getattr(self, name)
            if v is not None:
                v = tuple(float(x) for x in v)
                object.__setattr__(self, name, v)
                if not v or not all(np.isfinite(v)):
                    raise KernelfiError(f"--{name}: expected finite numbers, got {v}")
        if self.std is not None and min(self.std) <= 0:
            raise KernelfiError(f"--std must be positive, got {self.std}")
        if not self.normalize and (self.mean is not None or self.std is not None):
            raise KernelfiError("--no-normalize cannot go with --mean/--std")
        if self.fit in ("letterbox", "stretch") and (self.resize is not None or self.crop is not None):
            raise KernelfiError(f"--resize and --crop apply to --fit crop, not --fit {self.fit}")

    @property
    def geometric(self) -> list[str]:
        """The options given that only an image folder can use (flags as the CLI spells them)."""
        return [f"--{n}" for n in ("fit", "resize", "crop") if getattr(self, n) is not None]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> "PrepOptions":
        d = dict(d or {})
        for k in ("crop", "mean", "std"):
            if d.get(k) is not None:
                d[k] = tuple(d[k])
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


def _per_channel(values: Sequence[float], c: int, name: str) -> tuple[float, ...]:
    v = tuple(float(x) for x in values)
    if len(v) == 1:
        v = v * c
    if len(v) != c:
        raise KernelfiError(f"--{name}: {len(v)} values for a {c}-channel model (give 1 or {c})")
    return v


@dataclass(frozen=True)
class Preparation:
    """A preparation resolved against one model: what turns an image into its input."""

    fit: str
    size: tuple[int, int]          # the model's H, W
    channels: int
    resize: int | None             # short side before the crop (fit "crop" only)
    crop: tuple[int, int] | None   # the centre crop (fit "crop" only)
    mean: tuple[float, ...]        # per channel
    std: tuple[float, ...]
    normalize: bool = True

    @classmethod
    def resolve(cls, options: PrepOptions, info: Any) -> "Preparation":
        """``options`` with the model's defaults filled in (``info``: input_shape, mean, std and
        optionally ``fit``/``resize``, as ``kernelfi.models.ModelInfo`` has them)."""
        c, h, w = (int(d) for d in info.input_shape)
        cropping = options.resize is not None or options.crop is not None  # they imply --fit crop
        fit = options.fit or ("crop" if cropping else None) or getattr(info, "fit", None) or \
            ("crop" if c == 3 else "stretch")
        if fit not in FITS:
            raise KernelfiError(f"model fit '{fit}' is not one of {', '.join(FITS)}")
        crop = resize = None
        if fit == "crop":
            crop = options.crop or (h, w)
            resize = options.resize or getattr(info, "resize", None) or default_resize(crop)
        mean = _per_channel(options.mean if options.mean is not None else info.mean, c, "mean")
        std = _per_channel(options.std if options.std is not None else info.std, c, "std")
        return cls(fit, (h, w), c, resize, crop, mean, std, options.normalize)

    # -- what it does, in words (recorded in the campaign's input source) ------------------------
    def geometry(self) -> str:
        h, w = self.size
        if self.fit == "crop":
            assert self.crop is not None
            text = f"short side resized to {self.resize}, centre crop {self.crop[0]}x{self.crop[1]}"
            return text + (f", resized to {h}x{w}" if tuple(self.crop) != (h, w) else "")
        if self.fit == "letterbox":
            return f"letterboxed into {h}x{w} (Darknet: aspect ratio kept, 0.5 grey border)"
        return f"stretched to {h}x{w} (aspect ratio not kept)"

    def normalisation(self) -> str:
        if not self.normalize:
            return "not normalised ([0, 1] pixels)"
        if all(m == 0.0 for m in self.mean) and all(s == 1.0 for s in self.std):
            return "no mean/std ([0, 1] pixels)"
        fmt = lambda v: "(" + ", ".join(f"{x:g}" for x in v) + ")"  # noqa: E731
        return f"mean {fmt(self.mean)}, std {fmt(self.std)}"

    def describe(self) -> str:
        return f"{self.geometry()}; {self.normalisation()}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    # -- doing it ---------------------------------------------------------------------------------
    def image(self, im: Image.Image) -> np.ndarray:
        """One image -> (H, W, C) float32 in [0, 1], converted to the model's channel count."""
        if self.channels not in _MODES:
            raise KernelfiError(f"images cannot feed a {self.channels}-channel model")
        im = im.convert(_MODES[self.channels])
        h, w = self.size
        if self.fit == "letterbox":
            return letterbox(_pixels(im), w, h)
        if self.fit == "stretch":
            return _pixels(im.resize((w, h), Image.BILINEAR))
        assert self.crop is not None and self.resize is not None
        im = _resize_short(im, self.resize)
        im = _centre_crop(im, *self.crop)
        if im.size != (w, h):
            im = im.resize((w, h), Image.BILINEAR)
        return _pixels(im)

    def normalise(self, x: Tensor) -> Tensor:
        """(x - mean[c]) / std[c] over (N, C, H, W) inputs in [0, 1] (as they are with normalize off)."""
        x = x.to(torch.float32)
        if not self.normalize:
            return x.contiguous()
        c = self.channels
        m = torch.tensor(self.mean, dtype=torch.float32).view(1, c, 1, 1)
        s = torch.tensor(self.std, dtype=torch.float32).view(1, c, 1, 1)
        return ((x - m) / s).contiguous()


def custom_normalisation(prep: Preparation, info: Any) -> str:
    """``"; <normalisation>"`` where ``prep`` normalises otherwise than the model does by default,
    else ``""``: sources that never described their normalisation keep the input source (and so
    the campaign key) they always had."""
    default = Preparation.resolve(PrepOptions(), info)
    same = (prep.mean, prep.std, prep.normalize) == (default.mean, default.std, default.normalize)
    return "" if same else f"; {prep.normalisation()}"


def _pixels(im: Image.Image) -> np.ndarray:
    a = np.asarray(im, dtype=np.float32) / 255.0
    return a.reshape(a.shape[0], a.shape[1], -1)


def _resize_short(im: Image.Image, short_side: int) -> Image.Image:
    """torchvision's ``Resize(int)`` on a PIL image: the short side to ``short_side``, the long
    side ``int(short_side * long / short)``; left alone where the short side already fits."""
    w, h = im.size
    short, long = (w, h) if w <= h else (h, w)
    if short == short_side:
        return im
    new_long = int(short_side * long / short)
    size = (short_side, new_long) if w <= h else (new_long, short_side)
    return im.resize(size, Image.BILINEAR)


def _centre_crop(im: Image.Image, ch: int, cw: int) -> Image.Image:
    """torchvision's ``CenterCrop``: zero padding where the image is smaller than the crop, the
    top-left corner at ``round((H - h) / 2)``, ``round((W - w) / 2)`` (Python's rounding)."""
    w, h = im.size
    if cw > w or ch > h:
        pad_l, pad_t = max(cw - w, 0) // 2, max(ch - h, 0) // 2
        canvas = Image.new(im.mode, (max(w, cw), max(h, ch)), 0)
        canvas.paste(im, (pad_l, pad_t))
        im, (w, h) = canvas, canvas.size
    top, left = int(round((h - ch) / 2.0)), int(round((w - cw) / 2.0))
    return im.crop((left, top, left + cw, top + ch))


def darknet_resize(a: np.ndarray, w: int, h: int) -> np.ndarray:
    """Darknet's ``resize_image`` on (H, W, C) float32: bilinear with samples at
    ``x * (in - 1) / (out - 1)``, columns first; the last column copies the source's last one;
    in the row pass the last row keeps only its ``(1 - dy)`` term, as Darknet computes it (all
    in float32, so its rounding is Darknet's)."""
    a = np.asarray(a, dtype=np.float32)
    in_h, in_w = a.shape[:2]
    one = np.float32(1.0)
    part = np.empty((in_h, w, a.shape[2]), np.float32)
    w_scale = np.float32(in_w - 1) / np.float32(w - 1) if w > 1 else np.float32(0.0)
    for c in range(w):
        if c == w - 1 or in_w == 1:
            part[:, c] = a[:, in_w - 1]
        else:
            sx = np.float32(c) * w_scale
            ix = int(sx)
            dx = sx - np.float32(ix)
            part[:, c] = (one - dx) * a[:, ix] + dx * a[:, ix + 1]
    out = np.empty((h, w, a.shape[2]), np.float32)
    h_scale = np.float32(in_h - 1) / np.float32(h - 1) if h > 1 else np.float32(0.0)
    for r in range(h):
        sy = np.float32(r) * h_scale
        iy = int(sy)
        dy = sy - np.float32(iy)
        out[r] = (one - dy) * part[iy]
        if r == h - 1 or in_h == 1:
            continue
        out[r] += dy * part[iy + 1]
    return out


def letterbox(a: np.ndarray, w: int, h: int) -> np.ndarray:
    """Darknet's ``letterbox_image`` on (H, W, C) float32 in [0, 1]: fit inside w x h keeping
    the aspect ratio (integer sizes as Darknet computes them), on a 0.5 canvas, centred."""
    in_h, in_w = a.shape[:2]
    if np.float32(w) / np.float32(in_w) < np.float32(h) / np.float32(in_h):
        new_w, new_h = w, (in_h * w) // in_w
    else:
        new_w, new_h = (in_w * h) // in_h, h
    new_w, new_h = max(new_w, 1), max(new_h, 1)
    boxed = np.full((h, w, a.shape[2]), 0.5, np.float32)
    dx, dy = (w - new_w) // 2, (h - new_h) // 2
    boxed[dy:dy + new_h, dx:dx + new_w] = darknet_resize(a, new_w, new_h)
    return boxed
