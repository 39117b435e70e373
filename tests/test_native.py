"""The one-pass C propagation figures (``execution.native``) against the torch path: the same
counts and largest errors bit for bit, by hand and on random rows, and campaigns that store
the same rows with the library and without it."""
from __future__ import annotations

import math

import pytest
import torch

from kernelfi.execution import native
from kernelfi.execution.cone import REL_FLOOR, diff_rows

from tiny import campaign_rows

needs_native = pytest.mark.skipif(not native.available(), reason="no C compiler: the torch path only")


@pytest.fixture(params=["default", "generic"])
def build(request: pytest.FixtureRequest):
    """The library as built for this machine (AVX-512 gathers and window figures where the CPU
    has them) and its generic C loops (``KERNELFI_NATIVE_GENERIC=1``): both must agree with
    the torch path. Its own monkeypatch: tests undo theirs inside."""
    with pytest.MonkeyPatch.context() as mp:
        if request.param == "generic":
            mp.setenv("KERNELFI_NATIVE_GENERIC", "1")
            mp.setattr(native, "_tried", False)
            mp.setattr(native, "_lib", None)
            assert native.available()
        yield request.param


@needs_native
def test_native_by_hand() -> None:
    """Rows against their own golden rows: 0.5 off 2.5 is rel 0.2 (float32 division); 3 off a
    golden 0 is divided by 1e-30; NaN and inf errors are infinite and their elements differ;
    a golden NaN leaves the row to the torch path (None)."""
    g = torch.tensor([[1.0, 2.5, 0.0, -4.0], [1.0, math.nan, 0.0, 0.0]])
    a = torch.tensor([[1.0, 2.5, 0.0, -4.0],
                      [1.0, 2.0, 0.0, -4.0],
                      [1.0, 2.5, 3.0, -6.0],
                      [math.nan, 2.5, -math.inf, -4.0],
                      [1.0, math.nan, 0.0, 0.0]])
    got = native.diff_rows(a, g, REL_FLOOR, [0, 1, 2, 3, 4], [0, 0, 0, 0, 1])
    assert got == [(0, 0.0, 0.0), (1, 0.5, float(torch.tensor(0.5) / torch.tensor(2.5))),
                   (2, 3.0, float(torch.tensor(3.0) / torch.tensor(1e-30))), (2, math.inf, math.inf), None]
    # the same rows picked in another order, the golden row broadcast
    assert native.diff_rows(a, g[:1], REL_FLOOR, [2, 0]) == [got[2], got[0]]


@needs_native
def test_native_equals_the_torch_path_on_random_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rows of every length, some errors overflowing float32, golden zeros and denormals, NaN
    and inf lanes: the native figures equal the torch path's (whole-row and gathering)."""
    gen = torch.Generator().manual_seed(11)
    cases = []
    for t in range(80):
        rows, n = 1 + t % 6, 1 + 37 * t
        g = torch.randn(3, n, generator=gen)
        g[:, ::3] = 0.0
        g[:, 1::5] *= 1e-38
        gi = [int(x) for x in torch.randint(0, 3, (rows,), generator=gen)]
        a = g[gi].clone()
        hit = torch.rand(rows, n, generator=gen) < (t % 7) / 6
        a[hit] += torch.randn(int(hit.sum()), generator=gen) * 10.0 ** (t % 11 * 4 - 20)
        if t % 3 == 0:
            a[-1, -1] = (math.inf, math.nan, 3e38, -math.inf)[t // 3 % 4]
        cases.append((a, g, gi, native.diff_rows(a, g, REL_FLOOR, list(range(rows)), gi)))
    monkeypatch.setattr(native, "_lib", None)
    for a, g, gi, got in cases:
        want = [diff_rows(a[i:i + 1], g[k:k + 1], finite=True)[0] for i, k in enumerate(gi)]
        assert got == want
        assert got == [diff_rows(a[i:i + 1], g[k:k + 1], finite=False)[0] for i, k in enumerate(gi)]


@needs_native
def test_native_refuses_what_it_cannot_read() -> None:
    a = torch.zeros(2, 6)
    assert native.diff_rows(a.double(), a.double(), REL_FLOOR) is None       # not float32
    assert native.diff_rows(a.t().contiguous().t(), a, REL_FLOOR) is None   # elements 2 apart
    with pytest.raises(IndexError):
        native.diff_rows(a, a, REL_FLOOR, [0, 2], [0, 0])


def test_campaign_rows_with_and_without_the_library(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An IOV campaign (Darknet non-finite semantics included: bit 30 flips) stores the same
    rows, propagation figures and all, with the native figures and with the torch path."""
    from kernelfi.campaign import CampaignConfig, ModelSpec

    rows = []
    for use in (True, False):
        if not use:
            monkeypatch.setattr(native, "_tried", True)
            monkeypatch.setattr(native, "_lib", None)
        config = CampaignConfig(ModelSpec("digits-resnet"), "iov", "single", n=120, seed=9, inputs=4)
        rows.append(campaign_rows(config, tmp_path / f"{use}.db"))
    assert rows[0] == rows[1]
    assert any("propagation=(Propagation" in r for r in rows[0])


@needs_native
def test_diff_boxes_equals_bboxes_and_diff_rows(monkeypatch: pytest.MonkeyPatch, build: str) -> None:
    """The cone's one-pass figures and windows, read against windows of the golden planes in
    place, equal ``bboxes(different(...))`` and the torch ``diff_rows`` on the copied windows,
    on random blocks with corruptions of every spread, NaN and inf included, windows from 1 to
    over 32 columns wide (the AVX-512 loop takes 16 at a time); a golden inf leaves the step
    to the torch path."""
    from kernelfi.execution.cone import bboxes, different

    gen = torch.Generator().manual_seed(5)
    for t in range(48):
        lanes, c, h, w = 1 + t % 4, 1 + t % 5, 1 + t % 9, 1 + (7 * t) % 37
        planes = [torch.randn(c, h + 3, w + 2, generator=gen) for _ in range(lanes)]
        corners = [(int(torch.randint(0, 4, (1,), generator=gen)), int(torch.randint(0, 3, (1,), generator=gen)))
                   for _ in range(lanes)]
        g = torch.stack([p[:, y:y + h, x:x + w] for p, (y, x) in zip(planes, corners)])
        a = g.clone()
        hit = torch.rand(lanes, c, h, w, generator=gen) < (t % 6) / 10
        a[hit] += torch.randn(int(hit.sum()), generator=gen) * 10.0 ** (t % 7 - 3)
        if t % 5 == 0:
            a[0, 0, h - 1, w - 1] = (math.nan, math.inf, -3e38)[t // 5 % 3]
        got = native.diff_boxes(a, planes, corners, REL_FLOOR)
        assert got is not None
        monkeypatch.setattr(native, "_lib", None)
        assert [b for _, b in got] == bboxes(different(a, g, True))
        assert [d for d, _ in got] == diff_rows(a.reshape(lanes, -1), g.reshape(lanes, -1), True)
        monkeypatch.undo()
    planes[0][0, corners[0][0], corners[0][1]] = math.inf
    assert native.diff_boxes(a, planes, corners, REL_FLOOR) is None
    assert native.diff_boxes(a, planes, [(4, 0)] * lanes, REL_FLOOR) is None  # the window leaves the plane


@needs_native
def test_gather_equals_crop_gather(build: str) -> None:
    """Windows reaching past every edge (filled), patches partly outside the window, lanes
    without a patch: the native batch gather writes what ``lowering.crop.gather`` returns."""
    from kernelfi.lowering.crop import gather

    gen = torch.Generator().manual_seed(8)
    planes = [torch.randn(3, 6, 7, generator=gen) for _ in range(4)]
    regions = [(-2, 3, -1, 5), (4, 9, 3, 9), (1, 6, 2, 8), (-3, 2, 5, 11)]  # 5 x 6 windows
    patches = [((0, 2, 0, 3), torch.randn(3, 2, 3, generator=gen)), None,
               ((5, 6, 0, 7), torch.randn(3, 1, 7, generator=gen)), ((2, 4, 4, 6), torch.randn(3, 2, 2, generator=gen))]
    for fill in (0.0, -math.inf):
        out = torch.full((4, 3, 5, 6), 7.0)
        assert native.gather(planes, [(r[0], r[2]) for r in regions], fill, patches, out)
        for j in range(4):
            assert torch.equal(out[j], gather(planes[j], regions[j], fill, patches[j]))
    assert not native.gather(planes, [(0, 0)] * 4, 0.0, [None] * 4, torch.empty(4, 3, 5, 6).transpose(2, 3))


@needs_native
def test_gather_of_wide_windows_with_view_patches(build: str) -> None:
    """Windows 1 to 40 columns wide at corners past every edge, patches that are views of the
    windows of an earlier step (channel and row strides of the bigger tensor, as the cone keeps
    them) or column-transposed copies (refused: elements not adjacent): the gather writes what
    ``lowering.crop.gather`` returns, and each view's values are those of its own elements."""
    from kernelfi.lowering.crop import gather

    gen = torch.Generator().manual_seed(12)
    for t in range(30):
        c, h, w = 1 + t % 4, 1 + t % 6, 1 + (11 * t) % 40
        planes = [torch.randn(c, 9, 45, generator=gen) for _ in range(3)]
        corners = [(int(torch.randint(-3, 8, (1,), generator=gen)), int(torch.randint(-5, 43, (1,), generator=gen)))
                   for _ in range(3)]
        base = torch.randn(c, 12, 50, generator=gen)  # an earlier step's window output
        patches = []
        for j, (y, x) in enumerate(corners):
            ph, pw = 1 + (t + j) % 5, 1 + (5 * t + j) % 30
            py, px = y + (t + j) % 4 - 1, x + (3 * t + j) % 7 - 2
            patches.append(None if (t + j) % 4 == 0 else ((py, py + ph, px, px + pw), base[:, 2:2 + ph, 3:3 + pw]))
        out = torch.full((3, c, h, w), 7.0)
        assert native.gather(planes, corners, -1.5, patches, out)
        for j, (y, x) in enumerate(corners):
            assert torch.equal(out[j], gather(planes[j], (y, y + h, x, x + w), -1.5, patches[j]))
    flipped = [((0, 2, 0, 3), torch.randn(c, 3, 2, generator=gen).transpose(1, 2)), None, None]
    assert not native.gather(planes, corners, 0.0, flipped, torch.empty(3, c, h, w))


@needs_native
def test_column_layout_gather_and_figures(build: str) -> None:
    """Lanes side by side as the columns of a (C, P) matrix: each lane's window of its plane
    (with its patch, partly or wholly covering the window) lands in its own columns row by row,
    and the figures and tight boxes read from those columns equal the (L, C, h, w) ones."""
    from kernelfi.lowering.crop import gather

    gen = torch.Generator().manual_seed(9)
    planes = [torch.randn(4, 7, 6, generator=gen) for _ in range(3)]
    boxes = [(0, 7, 0, 6), (2, 5, 1, 3), (6, 7, 5, 6)]  # the whole plane, 3 x 2, one pixel
    patches = [((1, 3, 0, 6), torch.randn(4, 2, 6, generator=gen)), None,
               ((6, 7, 5, 6), torch.randn(4, 1, 1, generator=gen))]
    offsets = [0, 42, 48]
    out = torch.full((4, 50), 7.0)
    assert native.gather_cols(planes, boxes, offsets, patches, out)
    for j, (b, o) in enumerate(zip(boxes, offsets)):
        n = (b[1] - b[0]) * (b[3] - b[2])
        assert torch.equal(out[:, o:o + n], gather(planes[j], b, 0.0, patches[j]).reshape(4, n))
    assert not native.gather_cols(planes, boxes, [0, 42, 50], patches, out)  # past the last column
    # figures against golden planes that hold the gathered values, two elements changed
    golden = []
    for p, b, q in zip(planes, boxes, patches):
        g = p.clone()
        g[:, b[0]:b[1], b[2]:b[3]] = gather(p, b, 0.0, q)
        golden.append(g)
    a = out.clone()
    a[2, 3] += 1.0         # lane 0: row 0, column 3
    a[0, 47] = a[0, 47] + 2.0  # lane 1: its last pixel, row 2, column 1
    got = native.diff_boxes_cols(a, golden, boxes, offsets, REL_FLOOR)
    assert got is not None
    assert got[0][1] == (0, 1, 3, 4) and got[0][0][0] == 1
    assert got[1][1] == (2, 3, 1, 2) and got[1][0][0] == 1
    assert got[2] == ((0, 0.0, 0.0), None)
    lane1 = a[:, 42:48].reshape(1, 4, 3, 2).contiguous()
    assert [got[1]] == native.diff_boxes(lane1, [golden[1]], [(2, 1)], REL_FLOOR)
