"""Input preparation (``kernelfi.data.prep``) checked on tiny images against values worked out by hand."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from kernelfi._utils import KernelfiError
from kernelfi.data import PrepOptions, Preparation, load_inputs
from kernelfi.data.prep import darknet_resize, default_resize, letterbox
from tests.test_data import Info


def rgb_4x6() -> Image.Image:
    """H=4, W=6; channel k holds 50k + 10 * row + column (uint8)."""
    r, c = np.mgrid[0:4, 0:6]
    return Image.fromarray(np.stack([50 * k + 10 * r + c for k in range(3)], axis=-1).astype(np.uint8), "RGB")


def test_centre_crop_by_hand() -> None:
    # --resize 4 leaves a 4x6 image alone (its short side is 4); the 2x2 centre crop starts at
    # row round((4 - 2) / 2) = 1, column round((6 - 2) / 2) = 2: pixels (1..2, 2..3).
    prep = Preparation.resolve(PrepOptions(resize=4), Info((3, 2, 2), (0.5,), (0.25,)))
    assert (prep.fit, prep.resize, prep.crop) == ("crop", 4, (2, 2))
    got = prep.image(rgb_4x6())
    want = np.array([[12, 13], [22, 23]], np.float32) / 255
    for k in range(3):
        assert np.allclose(got[..., k], want + 50 * k / 255, atol=1e-7)
    x = prep.normalise(torch.from_numpy(got).permute(2, 0, 1)[None])
    assert torch.allclose(x[0, 0], (torch.from_numpy(want) - 0.5) / 0.25, atol=1e-6)


def test_odd_margin_rounds_as_python_does() -> None:
    # crop 2 of W=7: left = round(2.5) = 2; of W=9: round(3.5) = 4 (half to even, torchvision's round)
    assert Preparation.resolve(PrepOptions(), Info((1, 2, 2))).fit == "stretch"  # one-channel models stretch
    prep = Preparation.resolve(PrepOptions(resize=4), Info((1, 2, 2)))  # ... unless --resize/--crop say crop
    assert prep.fit == "crop"
    for width, left in ((7, 2), (9, 4)):
        im = Image.fromarray(np.tile(np.arange(width, dtype=np.uint8) * 10, (4, 1)), "L")
        assert np.allclose(prep.image(im)[0, :, 0] * 255, [10 * left, 10 * left + 10], atol=1e-4)


def test_short_side_resize_then_crop_by_hand() -> None:
    # a 2x3 grey image, rows [0, 100, 200]: --resize 4 takes the short side 2 -> 4 and the long
    # side 3 -> int(4 * 3 / 2) = 6; PIL's bilinear upsampling by 2 samples at (x + 0.5) / 2 - 0.5:
    # [0, 25, 75, 125, 175, 200]; the 4x6 crop is the whole image.
    im = Image.fromarray(np.array([[0, 100, 200]] * 2, np.uint8), "L")
    prep = Preparation.resolve(PrepOptions(fit="crop", resize=4), Info((1, 4, 6)))
    got = prep.image(im)[..., 0] * 255
    assert np.allclose(got, [[0, 25, 75, 125, 175, 200]] * 4, atol=1e-4)
    stretched = Preparation.resolve(PrepOptions(), Info((1, 4, 6))).image(im)[..., 0] * 255
    assert np.allclose(stretched, got, atol=1e-4)  # the same here: stretch resizes straight to 4x6


def test_darknet_letterbox_by_hand() -> None:
    # 4x6 into 4x4: 4/6 < 4/4, so the width limits: 4 wide, (4 * 4) // 6 = 2 high, at row (4 - 2) // 2 = 1.
    # Darknet's resize samples columns at c * 5/3 (0, 1.667, 3.333, last) and rows at r * 3 (0, last).
    r, c = np.mgrid[0:4, 0:6]
    a = ((10 * c + 60 * r) / 255).astype(np.float32)[..., None]
    got = letterbox(a, 4, 4)[..., 0] * 255
    row0 = [0, (10 + 2 * 20) / 3, (2 * 30 + 40) / 3, 50]
    row3 = [v + 180 for v in row0]
    want = np.array([[127.5] * 4, row0, row3, [127.5] * 4])
    assert np.allclose(got, want, atol=1e-3)
    assert np.allclose(darknet_resize(a, 6, 4), a)  # the same size: the identity


def test_letterbox_is_the_cfg_default(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    r, c = np.mgrid[0:4, 0:6]
    Image.fromarray(np.stack([10 * c + 60 * r] * 3, -1).astype(np.uint8), "RGB").save(tmp_path / "a" / "0.png")
    s = load_inputs(str(tmp_path), Info((3, 4, 4), (0.0,) * 3, (1.0,) * 3, fit="letterbox"))
    assert "letterboxed into 4x4" in s.source and "no mean/std" in s.source
    assert torch.allclose(s.x[0, 1, 1], torch.tensor([0, 50 / 3, 100 / 3, 50]) / 255, atol=1e-5)
    assert s.y is not None and s.y.tolist() == [0]


def test_defaults_and_conventions() -> None:
    assert (default_resize((224, 224)), default_resize((299, 299)), default_resize((227, 227))) == (256, 342, 259)
    imagenet = Preparation.resolve(PrepOptions(), Info((3, 224, 224), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)))
    assert (imagenet.fit, imagenet.resize, imagenet.crop) == ("crop", 256, (224, 224))
    assert imagenet.describe() == ("short side resized to 256, centre crop 224x224; "
                                   "mean (0.485, 0.456, 0.406), std (0.229, 0.224, 0.225)")
    own = Preparation.resolve(PrepOptions(), Info((3, 224, 224), resize=232))
    assert own.resize == 232  # a model's own convention
    bigger = Preparation.resolve(PrepOptions(crop=(256, 256)), Info((3, 224, 224)))
    assert bigger.resize == 293 and "resized to 224x224" in bigger.describe()
    raw = Preparation.resolve(PrepOptions(normalize=False), Info((3, 8, 8), (0.5,), (0.5,)))
    assert torch.equal(raw.normalise(torch.ones(1, 3, 8, 8)), torch.ones(1, 3, 8, 8))


@pytest.mark.parametrize("options, message", [
    (dict(fit="squash"), "unknown fit 'squash'"),
    (dict(resize=0), "--resize must be at least 1"),
    (dict(fit="letterbox", resize=300), "--resize and --crop apply to --fit crop"),
    (dict(std=(0.0,)), "--std must be positive"),
    (dict(mean=(0.5,), normalize=False), "--no-normalize cannot go with --mean"),
])
def test_bad_options(options: dict, message: str) -> None:
    with pytest.raises(KernelfiError, match=message):
        PrepOptions(**options)


def test_options_that_do_not_fit_the_model_or_source(tmp_path: Path) -> None:
    with pytest.raises(KernelfiError, match="--mean: 2 values for a 3-channel model"):
        Preparation.resolve(PrepOptions(mean=(0.1, 0.2)), Info((3, 8, 8)))
    assert Preparation.resolve(PrepOptions(resize=10), Info((3, 8, 8), fit="letterbox")).fit == "crop"
    with pytest.raises(KernelfiError, match="--resize: image preparation applies to an image folder"):
        load_inputs("digits", Info((1, 8, 8)), options=PrepOptions(resize=10))
    np.savez(tmp_path / "n.npz", x=np.zeros((2, 1, 8, 8), np.float32), normalized=True)
    with pytest.raises(KernelfiError, match="normalized=True inputs, used as given"):
        load_inputs(str(tmp_path / "n.npz"), Info((1, 8, 8)), options=PrepOptions(mean=(0.5,)))


def test_positions_load_exactly_those(tmp_path: Path) -> None:
    d = load_inputs("digits", Info((1, 8, 8)), positions=[5, 2, 9])
    every = load_inputs("digits", Info((1, 8, 8)), limit=10)
    assert d.positions == [5, 2, 9] and torch.equal(d.x, every.x[[5, 2, 9]]) and d.ids == [every.ids[i] for i in (5, 2, 9)]
    r = load_inputs("random", Info((1, 4, 4)), positions=[3, 1])
    assert torch.equal(r.x, load_inputs("random", Info((1, 4, 4)), limit=4).x[[3, 1]])
