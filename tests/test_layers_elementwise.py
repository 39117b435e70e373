"""Issue 20 elementwise layers: squeeze-and-excitation (scale_channels), a - b, broadcast a * b
and a + b (binary_op), standalone BatchNorm, x.mean((2, 3)), flat concatenation: lowered models
equal their native forward; faults in the new kernels corrupt what was worked out on paper."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from kernelfi.lowering import lower
from kernelfi.types import Fault
from tests.tiny import probs_of, run_one, site


class SE(nn.Module):
    """Squeeze-and-excitation, either with 1x1 convs (MobileNetV3) or Linear + view (SENet)."""

    def __init__(self, c: int, linear: bool) -> None:
        super().__init__()
        self.linear = linear
        self.f1 = nn.Linear(c, 2) if linear else nn.Conv2d(c, 2, 1)
        self.f2 = nn.Linear(2, c) if linear else nn.Conv2d(2, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.linear:
            b, c, _, _ = x.size()
            y = F.adaptive_avg_pool2d(x, 1).view(b, c)
            return x * torch.sigmoid(self.f2(F.relu(self.f1(y)))).view(b, c, 1, 1)
        return x * F.hardsigmoid(self.f2(F.relu(self.f1(F.adaptive_avg_pool2d(x, 1)))))


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.se, self.se2 = SE(4, False), SE(4, True)
        self.c2 = nn.Conv2d(4, 4, 1)
        self.bn2 = nn.BatchNorm2d(4)
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.se2(self.se(self.bn(F.relu(self.c1(x)))))       # BN after ReLU: standalone
        z = self.c2(y) - y                                        # sub
        z = self.bn2(z * y) + y.mean((2, 3), keepdim=True)        # mul, BN after mul, broadcast add
        return self.fc(torch.cat([z.mean((2, 3)), y.mean(dim=(2, 3), keepdim=True).flatten(1)], 1))


def _randomise_bn(m: nn.Module) -> None:
    for b in m.modules():
        if isinstance(b, nn.BatchNorm2d):
            b.running_mean.uniform_(-1, 1)
            b.running_var.uniform_(0.5, 2)
            b.weight.data.uniform_(0.5, 1.5)
            b.bias.data.uniform_(-1, 1)


def test_lowered_equals_native() -> None:
    torch.manual_seed(0)
    net = Net()
    _randomise_bn(net)
    net.eval()
    prog = lower(net, (3, 6, 6))
    types = [l.type for l in prog.trace.layers]
    assert types.count("scale_channels") == 2 and types.count("batchnorm") == 2 and types.count("binary") == 3
    x = torch.randn(3, 3, 6, 6)
    with torch.no_grad():
        ref = net(x)
    for fast in (True, False):
        assert (prog.forward(x, fast=fast)[0] - ref).abs().max().item() <= 1e-5 * max(ref.abs().max().item(), 1.0)


def test_broadcast_shapes_of_binary_op() -> None:
    class B(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            row = x.mean((2, 3), keepdim=True)
            return (x - row) * x.mean((2, 3), keepdim=True) + x
    torch.manual_seed(2)
    m = nn.Sequential(nn.Conv2d(2, 3, 1), B(), nn.Flatten(), nn.Linear(3 * 4 * 4, 2)).eval()
    prog = lower(m, (2, 4, 4))
    x = torch.randn(2, 2, 4, 4)
    with torch.no_grad():
        assert torch.allclose(prog.forward(x)[0], m(x), atol=1e-6)


# ------------------------------------------------------------------------------ hand faults
class Scaled(nn.Module):
    """x (2 channels, 1x2) times a per-channel scale s = conv1x1(mean(x)); then flattened."""

    def __init__(self) -> None:
        super().__init__()
        self.s = nn.Conv2d(2, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x * self.s(x.mean((2, 3), keepdim=True))).flatten(1)


def _scaled() -> tuple:  # type: ignore[type-arg]
    """Scaled with s weights 0, biases [2, 0.5], lowered, and x = [[1, 2], [3, 4]]."""
    m = Scaled().eval()
    with torch.no_grad():
        m.s.weight.zero_()
        m.s.bias.copy_(torch.tensor([2.0, 0.5]))
    return lower(m, (2, 1, 2)), torch.tensor([[[[1.0, 2.0]], [[3.0, 4.0]]]])


def test_scale_channels_product_exponent_flip() -> None:
    # x = [[1, 2], [3, 4]] (channel, pixel). mean = [1.5, 3.5]; s weights 0, biases [2, 0.5]:
    # s = [2, 0.5]; out = [2, 4, 1.5, 2] (flat logits), class 1. Thread 3 (channel 1, pixel 1)
    # product 2.0 = 0x40000000; bit 23 flipped: 0x40800000 = 4.0 -> logits [2, 4, 1.5, 4]: class 1
    # still (the first maximum), probabilities change: Light Malfunction.
    prog, x = _scaled()
    assert prog.forward(x)[0][0].tolist() == [2.0, 4.0, 1.5, 2.0]
    launch = next(l.name for l in prog.trace.launches if l.kernel == "scale_channels")
    r, probs = run_one(prog, Fault("iov", site(prog, launch, "fmul:out", 3), "single", (23,)), x)
    assert (r.original, r.corrupted) == (2.0, 4.0)
    assert r.outcome == "sdc_light_malfunction"
    assert torch.allclose(probs, probs_of([2.0, 4.0, 1.5, 4.0]), atol=1e-7)


def test_scale_channels_scale_load_reaches_one_element() -> None:
    # thread 0 loads s[0] = 2; its sign flipped: out[0] = 1 * -2 = -2; the others keep theirs
    prog, x = _scaled()
    launch = next(l.name for l in prog.trace.launches if l.kernel == "scale_channels")
    r, probs = run_one(prog, Fault("iov", site(prog, launch, "ld:scale", 0), "single", (31,)), x)
    assert (r.original, r.corrupted) == (2.0, -2.0)
    assert torch.allclose(probs, probs_of([-2.0, 4.0, 1.5, 2.0]), atol=1e-7)


class Diff(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x) - x


def test_sub_operand_flip_and_broadcast_index() -> None:
    # fc = identity * 3 + [1, 0]: x = [1, 2] -> fc [4, 6]; minus x -> [3, 4], class 1.
    m = Diff().eval()
    with torch.no_grad():
        m.fc.weight.copy_(torch.eye(2) * 3)
        m.fc.bias.copy_(torch.tensor([1.0, 0.0]))
    prog = lower(m, (2,))
    x = torch.tensor([[1.0, 2.0]])
    assert prog.forward(x)[0][0].tolist() == [3.0, 4.0]
    launch = next(l.name for l in prog.trace.launches if l.kernel == "binary_op")
    # thread 1 loads b = x[1] = 2.0 (0x40000000); bit 30 flipped: 0x00000000 = 0: out[1] = 6 - 0 = 6
    r, probs = run_one(prog, Fault("iov", site(prog, launch, "ld:b", 1), "single", (30,)), x)
    assert (r.original, r.corrupted) == (2.0, 0.0)
    assert r.outcome == "sdc_light_malfunction"
    assert torch.allclose(probs, probs_of([3.0, 6.0]), atol=1e-7)
    # thread 0's offset of a corrupted from 0 to 1 (bit 0): reads fc[1] = 6: out[0] = 6 - 1 = 5, class 0
    r, probs = run_one(prog, Fault("iov", site(prog, launch, "imad:off_a", 0), "single", (0,)), x)
    assert (r.original, r.corrupted) == (0.0, 1.0)
    assert (r.golden_top1, r.faulty_top1) == (1, 0)
    assert torch.allclose(probs, probs_of([5.0, 4.0]), atol=1e-7)


def test_standalone_batchnorm_normalize_fault() -> None:
    # Linear -> ReLU -> BatchNorm1d: the BN cannot fuse (after the ReLU): Darknet's batchnorm
    # layer. fc identity, x = [2, -1] -> relu [2, 0]; BN mean [1, 0], var [4 - 1e-5, 1 - 1e-5],
    # weight [1, 1], bias [0, 0.75]: [(2-1)/2, 0/1 + 0.75] = [0.5, 0.75], class 1. A sign flip of
    # thread 0's centred value (x - mean = 1) gives -1/2 = -0.5: [-0.5, 0.75].
    m = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.BatchNorm1d(2)).eval()
    with torch.no_grad():
        m[0].weight.copy_(torch.eye(2))
        m[0].bias.zero_()
        m[2].running_mean.copy_(torch.tensor([1.0, 0.0]))
        m[2].running_var.copy_(torch.tensor([4.0, 1.0]) - 1e-5)
        m[2].bias.copy_(torch.tensor([0.0, 0.75]))
    prog = lower(m, (2,))
    assert [l.kernel for l in prog.trace.launches if l.layer == 1] == ["copy", "normalize", "scale_bias", "add_bias"]
    x = torch.tensor([[2.0, -1.0]])
    g = prog.forward(x)[0][0].tolist()
    assert g == pytest.approx([0.5, 0.75], abs=1e-6)
    with torch.no_grad():
        assert torch.allclose(prog.forward(x)[0], m(x), atol=1e-6)
    r, probs = run_one(prog, Fault("iov", site(prog, "2.normalize", "fadd:centered", 0), "single", (31,)), x)
    assert (r.original, r.corrupted) == (1.0, -1.0)
    assert torch.allclose(probs, probs_of([-g[0], g[1]]), atol=1e-6)
