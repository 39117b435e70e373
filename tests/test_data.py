"""Data sources: digits split, ImageFolder directories, .npz archives, random inputs."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from kernelfi._utils import KernelfiError
from kernelfi.data import digits_split, load_inputs, upsample


@dataclass(frozen=True)
class Info:
    """What the data layer reads of a model (``kernelfi.data.common.InputInfo``)."""

    input_shape: tuple[int, int, int]
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    default_data: str | None = None
    fit: str | None = None
    resize: int | None = None


def test_digits_split_is_fixed_and_stratified() -> None:
    s = digits_split()
    assert s.x_train.shape == (1347, 8, 8) and s.x_test.shape == (450, 8, 8)
    assert s.x_test.min() >= 0.0 and s.x_test.max() <= 1.0
    assert set(s.idx_train).isdisjoint(s.idx_test)
    counts = np.bincount(s.y_test, minlength=10)
    assert counts.min() >= 43 and counts.max() <= 46  # stratified: 25% of each class
    assert s.idx_test[:3].tolist() == [1364, 1579, 1023]  # random_state=0


def test_digits_loader_shapes_and_normalisation() -> None:
    raw = load_inputs("digits", Info((1, 32, 32)))
    assert raw.x.shape == (450, 1, 32, 32) and raw.x.dtype == torch.float32
    assert raw.y is not None and raw.y.shape == (450,) and len(set(raw.ids)) == 450
    assert raw.x.min() >= 0.0 and raw.x.max() <= 1.0
    assert torch.allclose(raw.x, upsample(digits_split().x_test, (32, 32)))
    mean, std = 0.3, 0.25
    norm = load_inputs(None, Info((1, 32, 32), (mean,), (std,), "digits"), limit=10)
    assert norm.x.shape == (10, 1, 32, 32) and norm.ids == raw.ids[:10]
    assert torch.allclose(norm.x * std + mean, raw.x[:10], atol=1e-6)
    assert "test_size=0.25" in norm.source and "10 of 450" in norm.source
    rgb = load_inputs("digits", Info((3, 16, 16), (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)), limit=2)
    assert rgb.x.shape == (2, 3, 16, 16) and torch.equal(rgb.x[:, 0], rgb.x[:, 2])


def test_source_errors(tmp_path: Path) -> None:
    with pytest.raises(KernelfiError, match="no default data set"):
        load_inputs(None, Info((3, 8, 8)))
    with pytest.raises(KernelfiError, match="nothere: no such data file"):
        load_inputs(str(tmp_path / "nothere"), Info((1, 8, 8)))
    with pytest.raises(KernelfiError, match="limit"):
        load_inputs("digits", Info((1, 8, 8)), limit=0)
    (tmp_path / "a.csv").write_text("1,2")
    with pytest.raises(KernelfiError, match="a.csv: unsupported"):
        load_inputs(str(tmp_path / "a.csv"), Info((1, 8, 8)))
    with pytest.raises(KernelfiError, match="empty: no images"):
        (tmp_path / "empty").mkdir()
        load_inputs(str(tmp_path / "empty"), Info((1, 8, 8)))


def test_image_folder(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for cls, n in (("cat", 3), ("dog", 2)):
        (tmp_path / cls).mkdir()
        for i in range(n):
            arr = rng.integers(0, 256, (20 + i, 30, 3), dtype=np.uint8)
            Image.fromarray(arr, "RGB").save(tmp_path / cls / f"{i}.png")
    (tmp_path / "dog" / "notes.txt").write_text("ignored")
    info = Info((3, 16, 16), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    s = load_inputs(str(tmp_path), info)
    assert s.x.shape == (5, 3, 16, 16) and s.y is not None
    assert s.y.tolist() == [0, 1, 0, 1, 0]  # sorted class names, round-robin order
    assert s.ids[:2] == ["cat/0.png", "dog/0.png"]
    assert s.x.min() >= -2.0 - 1e-6 and s.x.max() <= 2.0 + 1e-6
    assert "2 classes: cat, dog" in s.source
    grey = load_inputs(str(tmp_path), Info((1, 8, 8)), limit=2)
    assert grey.x.shape == (2, 1, 8, 8) and grey.y.tolist() == [0, 1]  # type: ignore[union-attr]
    exact = Image.open(tmp_path / "cat" / "0.png").convert("L").resize((8, 8), Image.BILINEAR)
    assert torch.allclose(grey.x[0, 0], torch.from_numpy(np.asarray(exact, np.float32) / 255))
    (tmp_path / "cat" / "bad.png").write_bytes(b"not a png")
    with pytest.raises(KernelfiError, match="bad.png: cannot read image"):
        load_inputs(str(tmp_path), info)


def test_npz_layouts(tmp_path: Path) -> None:
    x = np.random.default_rng(1).random((4, 2, 6, 5)).astype(np.float32)
    y = np.arange(4)
    info = Info((2, 6, 5), (0.5, 0.5), (0.5, 0.5))
    np.savez(tmp_path / "nchw.npz", x=x, y=y)
    np.savez(tmp_path / "nhwc.npz", x=x.transpose(0, 2, 3, 1))
    a = load_inputs(str(tmp_path / "nchw.npz"), info, limit=3)
    b = load_inputs(str(tmp_path / "nhwc.npz"), info)
    assert a.x.shape == (3, 2, 6, 5) and a.y.tolist() == [0, 1, 2]  # type: ignore[union-attr]
    assert b.y is None and torch.allclose(b.x[:3], a.x)
    assert torch.allclose(a.x, (torch.from_numpy(x[:3]) - 0.5) / 0.5)
    u8 = (x * 255).astype(np.uint8)
    np.savez(tmp_path / "u8.npz", x=u8)
    c = load_inputs(str(tmp_path / "u8.npz"), info)
    assert torch.allclose(c.x, (torch.from_numpy(u8 / 255).float() - 0.5) / 0.5, atol=1e-6)
    np.savez(tmp_path / "given.npz", x=x, normalized=True)
    assert torch.equal(load_inputs(str(tmp_path / "given.npz"), info).x, torch.from_numpy(x))
    assert "sha256" in a.source


def test_npz_errors(tmp_path: Path) -> None:
    info = Info((3, 32, 32), (0.0,) * 3, (1.0,) * 3)
    np.savez(tmp_path / "small.npz", x=np.zeros((2, 3, 28, 28), np.float32))
    with pytest.raises(KernelfiError, match=r"small\.npz: x has shape \(2, 3, 28, 28\) but the "
                                            r"model expects \(N, 3, 32, 32\)"):
        load_inputs(str(tmp_path / "small.npz"), info)
    np.savez(tmp_path / "grey.npz", x=np.zeros((2, 1, 32, 32), np.float32))
    with pytest.raises(KernelfiError, match=r"grey\.npz: x has 1 channels but the model "
                                            r"expects 3 \(x shape \(2, 1, 32, 32\)"):
        load_inputs(str(tmp_path / "grey.npz"), info)
    np.savez(tmp_path / "obj.npz", x=np.array([{"a": 1}, None], dtype=object))
    with pytest.raises(KernelfiError, match="obj.npz: refusing pickled arrays"):
        load_inputs(str(tmp_path / "obj.npz"), info)
    np.savez(tmp_path / "noy.npz", x=np.zeros((2, 3, 32, 32)), y=np.zeros(3, np.int64))
    with pytest.raises(KernelfiError, match="noy.npz: y must be 2 integer labels"):
        load_inputs(str(tmp_path / "noy.npz"), info)
    np.savez(tmp_path / "nox.npz", images=np.zeros(2))
    with pytest.raises(KernelfiError, match="nox.npz: no array named 'x'"):
        load_inputs(str(tmp_path / "nox.npz"), info)


def test_random_source_is_seeded() -> None:
    info = Info((3, 8, 8), (0.5,) * 3, (0.5,) * 3)
    a, b = load_inputs("random", info, limit=3), load_inputs("random", info)
    assert a.x.shape == (3, 3, 8, 8) and a.y is None and len(b) == 16
    assert torch.equal(a.x, b.x[:3]) and a.x.min() >= -1.0 and a.x.max() <= 1.0
