"""Bilinear upsampling (PyTorch's upsample_bilinear2d_out_frame, kernels/interp.py): outputs
worked out on paper for both align_corners settings, lowered models against PyTorch's
F.interpolate, the fault-free replay of every thread equal to the fast path, faults in a
loaded tap and in a weight that change exactly the output computed by hand, and short
campaigns (rf, iov, ioa) without a tool error.

Against PyTorch's CPU F.interpolate the lowered output is not bitwise: the GPU kernel's nvcc
contracts each row's ``w0*x00 + w1*x01`` and the output's ``h0*top + h1*bottom`` into FFMAs
(kernels/cuda/interp.cu), PyTorch's CPU kernel interpolates in separable passes that round
elsewhere. The difference is bounded by one float32 ulp of the largest input magnitude (the
lambdas are in [0, 1], so each rounding is at most half an ulp of that), and is zero where
every product is exact (whole-number inputs, lambdas in quarters).
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from kernelfi.kernels import bilinear_scale
from kernelfi.lowering import lower
from kernelfi.types import Fault
from tests.tiny import probs_of, run_one, site

from layer_campaign import ensure_registered, short_campaign

from layer_replay import replay_every_thread

X = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])


def _identity_conv(c: int = 1) -> nn.Conv2d:
    """A 1x1 conv that passes its input through exactly (weights 1 on the diagonal, bias 0)."""
    conv = nn.Conv2d(c, c, 1)
    with torch.no_grad():
        conv.weight.copy_(torch.eye(c).view(c, c, 1, 1))
        conv.bias.zero_()
    return conv


def _net(up: nn.Module, c: int = 1) -> nn.Module:
    return nn.Sequential(_identity_conv(c), up, nn.Flatten()).eval()


def _launch(prog):  # type: ignore[no-untyped-def]
    return next(l for l in prog.trace.launches if l.kernel == "upsample_bilinear")


# ------------------------------------------------------------------------------ on paper
def test_hand_example_align_corners_false() -> None:
    # scale 1/2: source rows max(0.5*(d + 0.5) - 0.5, 0) = 0, 0.25, 0.75, 1.25 (h1 = 1 is the
    # last row: h1p = 0, so 1.25 reads row 1 twice): fractions 0, 1/4, 3/4, 1 on both axes;
    # out = 1 + 2*a + b for row fraction a and column fraction b, exact in float32
    prog = lower(_net(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)), (1, 2, 2))
    fr = (0.0, 0.25, 0.75, 1.0)
    want = [1 + 2 * a + b for a in fr for b in fr]
    assert want[:4] == [1.0, 1.25, 1.75, 2.0]
    assert prog.forward(X)[0][0].tolist() == want


def test_hand_example_align_corners_true() -> None:
    # scale (2-1)/(4-1) = 1/3: fractions 0, 1/3, 2/3, 1, out = 1 + (2i + j)/3; first row
    # 1, 4/3, 5/3, 2; the float32 weights round 1/3, so within an ulp of the paper values
    prog = lower(_net(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)), (1, 2, 2))
    got = prog.forward(X)[0][0].double()
    want = torch.tensor([1 + (2 * i + j) / 3 for i in range(4) for j in range(4)], dtype=torch.float64)
    assert torch.allclose(got[:4], torch.tensor([1.0, 4 / 3, 5 / 3, 2.0], dtype=torch.float64), rtol=0, atol=2.4e-7)
    assert torch.allclose(got, want, rtol=0, atol=4.8e-7)
    assert got[[0, 3, 12, 15]].tolist() == [1.0, 2.0, 3.0, 4.0]  # corners are the inputs exactly


def test_scale_is_pytorchs() -> None:
    # area_pixel_compute_scale: (in-1)/(out-1) in float; 1/scale_factor in double then float;
    # in/out in float when only a size is known
    assert bilinear_scale(2, 4, True, 2.0) == float(np.float32(1) / np.float32(3))
    assert bilinear_scale(4, 12, False, 3.0) == float(np.float32(1 / 3))
    assert bilinear_scale(3, 5, False, None) == float(np.float32(0.6))
    assert bilinear_scale(5, 1, True, None) == 0.0
    l = _launch(lower(_net(nn.Upsample(scale_factor=1.7, mode="bilinear")), (1, 3, 3)))
    assert (l.params["out_h"], l.params["rheight"]) == (5, float(np.float32(1 / 1.7)))
    l = _launch(lower(_net(nn.Upsample(scale_factor=1.7, mode="bilinear", recompute_scale_factor=True)), (1, 3, 3)))
    assert (l.params["out_h"], l.params["rheight"]) == (5, float(np.float32(3) / np.float32(5)))


# ------------------------------------------------------------------------------ against PyTorch
UPS = [dict(scale_factor=2), dict(scale_factor=3), dict(size=(5, 7)), dict(scale_factor=(2, 3)),
       dict(scale_factor=1.5), dict(size=(9, 4))]


@pytest.mark.parametrize("kw", UPS, ids=repr)
@pytest.mark.parametrize("align", [False, True])
@pytest.mark.parametrize("functional", [False, True])
def test_lowered_against_pytorch(kw: dict, align: bool, functional: bool) -> None:
    class Fn(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.interpolate(x, mode="bilinear", align_corners=align, **kw)

    up = Fn() if functional else nn.Upsample(mode="bilinear", align_corners=align, **kw)
    torch.manual_seed(1)
    for shape in ((3, 4, 5), (2, 6, 3)):   # non-square inputs
        prog = lower(_net(up, shape[0]), shape)
        x = torch.randn(2, *shape)
        ref = F.interpolate(x, mode="bilinear", align_corners=align, **kw).flatten(1)
        got = prog.forward(x)[0]
        assert got.shape == ref.shape
        ulp = float(np.spacing(np.float32(x.abs().max())))
        assert (got - ref).abs().max().item() <= ulp, (shape, (got - ref).abs().max().item())


@pytest.mark.parametrize("align", [False, True])
def test_exact_products_are_bitwise(align: bool) -> None:
    # whole numbers, lambdas in quarters (x2 without align_corners) or integer-exact corners:
    # every rounding is exact, so PyTorch's CPU kernel and the GPU's agree bit for bit
    x = torch.randint(-8, 9, (1, 2, 3, 4)).float()
    prog = lower(_net(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=align), 2), (2, 3, 4))
    ref = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=align).flatten(1)
    got = prog.forward(x)[0]
    if not align:
        assert torch.equal(got, ref)
    assert torch.equal(got.view(1, 2, 6, 8)[..., ::5, ::7], ref.view(1, 2, 6, 8)[..., ::5, ::7])  # corners


def test_same_size_is_the_input() -> None:
    prog = lower(_net(nn.Upsample(size=(3, 4), mode="bilinear"), 2), (2, 3, 4))
    assert not [l for l in prog.trace.launches if l.kernel == "upsample_bilinear"]


# ------------------------------------------------------------------------------ replay
def _replayed(prog, launch, mem):  # type: ignore[no-untyped-def]
    """Every thread of ``launch`` replayed without a fault on lane 0 of ``mem``: {index: value}."""
    return replay_every_thread(prog, launch, mem)[launch.writes[0]]


@pytest.mark.parametrize("kw", [dict(scale_factor=2), dict(size=(5, 7)), dict(scale_factor=3)], ids=repr)
@pytest.mark.parametrize("align", [False, True])
def test_fault_free_replay_equals_the_fast_path(kw: dict, align: bool) -> None:
    torch.manual_seed(2)
    prog = lower(_net(nn.Upsample(mode="bilinear", align_corners=align, **kw), 3), (3, 4, 3))
    l = _launch(prog)
    mem = prog.run(prog.memory(torch.randn(1, 3, 4, 3)), fast=True)
    got = _replayed(prog, l, mem)
    want = mem[l.writes[0]][0].reshape(-1)
    assert sorted(got) == list(range(want.numel()))   # every output written by one thread
    assert torch.equal(torch.tensor([float(got[i]) for i in range(want.numel())]), want)


# ------------------------------------------------------------------------------ hand faults
FR = (0.0, 0.25, 0.75, 1.0)
GOLDEN = [1 + 2 * a + b for a in FR for b in FR]


def _up_prog():  # type: ignore[no-untyped-def]
    prog = lower(_net(nn.Upsample(scale_factor=2, mode="bilinear")), (1, 2, 2))
    return prog, _launch(prog).name


def test_a_flipped_tap_changes_its_output() -> None:
    # thread 1 = output (0, 1): w1 = 0, w1lambda 0.25; its second load is x01 = 2.0
    # (0x40000000); bit 23 flipped: 4.0 (0x40800000): top = 0.75*1 + 0.25*4 = 1.75, h1lambda = 0
    prog, name = _up_prog()
    r, probs = run_one(prog, Fault("iov", site(prog, name, "ld:in", 1, exec_=1, calls=4), "single", (23,)), X)
    assert (r.original, r.corrupted) == (2.0, 4.0)
    assert torch.allclose(probs, probs_of(GOLDEN[:1] + [1.75] + GOLDEN[2:]), atol=1e-7)


def test_a_flipped_weight_changes_its_output() -> None:
    # thread 1's w1lambda (its second lambda1, 0.25 = 0x3E800000), bit 23 flipped: 0.125; then
    # w0lambda = 1 - 0.125 = 0.875: output (0, 1) = 0.875*1 + 0.125*2 = 1.125
    prog, name = _up_prog()
    r, probs = run_one(prog, Fault("iov", site(prog, name, "fadd:lambda1", 1, exec_=1, calls=2), "single", (23,)), X)
    assert (r.original, r.corrupted) == (0.25, 0.125)
    assert torch.allclose(probs, probs_of(GOLDEN[:1] + [1.125] + GOLDEN[2:]), atol=1e-7)


def test_a_flipped_step_reads_past_the_last_column() -> None:
    # thread 3 = output (0, 3): w1 = 1 = W - 1, so w1p = 0; the flipped predicate makes it 1:
    # x01 is read from index 2 (the next row's first, 3) with weight w1lambda = 0.25:
    # top = 0.75*2 + 0.25*3 = 2.25 instead of 2
    prog, name = _up_prog()
    r, probs = run_one(prog, Fault("iov", site(prog, name, "setp:step", 3, exec_=1, calls=2), "single", (0,)), X)
    assert (r.original, r.corrupted) == (0.0, 1.0)
    assert torch.allclose(probs, probs_of(GOLDEN[:3] + [2.25] + GOLDEN[4:]), atol=1e-7)


# ------------------------------------------------------------------------------ campaigns
NAME = "bilinear-up"


class BilinearNet(nn.Module):
    """Two bilinear upsamples (one each align_corners) between convs, then a linear head."""

    def __init__(self, n: int = 3) -> None:
        super().__init__()
        self.c = nn.Conv2d(1, 2, 3, padding=1)
        self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
        self.fc = nn.Linear(2 * 8 * 8 + 2 * 7 * 5, n)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.c(x)
        z = F.interpolate(y, size=(7, 5), mode="bilinear", align_corners=True)
        return self.fc(torch.cat([self.up(y).flatten(1), z.flatten(1)], 1))


def build_bilinear(num_classes: int) -> BilinearNet:
    """The registered builder (top level: worker processes import it)."""
    return BilinearNet(num_classes)


@pytest.mark.parametrize("mode", ["rf", "iov", "ioa"])
def test_short_campaign_has_no_tool_error(mode: str, tmp_path: Path) -> None:

    ensure_registered(NAME, build_bilinear, (1, 4, 4), 3, "bilinear upsampling, both align_corners")
    kernels = Counter(r.kernel for r in short_campaign(NAME, mode, tmp_path, scope="sassifi"))
    assert kernels["upsample_bilinear"] > 0, kernels
