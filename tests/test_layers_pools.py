"""Issue 20 pools and upsampling: local/padded/ceil_mode average pooling (AlexeyAB's
local_avgpool), ceil_mode max pooling, adaptive pooling by a whole factor, nearest upsampling
(AlexeyAB's upsample): lowered models equal their native forward; faults in the new kernels
corrupt what was worked out on paper."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from kernelfi._utils import KernelfiError
from kernelfi.lowering import lower
from kernelfi.types import Fault
from tests.tiny import probs_of, run_one, site

POOLS = [nn.AvgPool2d(2), nn.AvgPool2d(3, 2, 1), nn.AvgPool2d(3, 1, 1, count_include_pad=False),
         nn.AvgPool2d(3, 2, ceil_mode=True), nn.AvgPool2d(3, 2, 1, ceil_mode=True), nn.AdaptiveAvgPool2d(2),
         nn.AdaptiveAvgPool2d((3, 5)), nn.AdaptiveAvgPool2d(9),
         nn.MaxPool2d(3, 2, ceil_mode=True), nn.MaxPool2d(2, 2, ceil_mode=True), nn.Upsample(scale_factor=2),
         nn.UpsamplingNearest2d(scale_factor=3)]


@pytest.mark.parametrize("pool", POOLS, ids=repr)
@pytest.mark.parametrize("size", [7, 8])
def test_lowered_equals_native(pool: nn.Module, size: int) -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), pool, nn.Flatten()).eval()
    prog = lower(net, (2, size, size))
    x = torch.randn(2, 2, size, size)
    with torch.no_grad():
        ref = net(x)
    for fast in (True, False):
        assert (prog.forward(x, fast=fast)[0] - ref).abs().max().item() <= 1e-5 * max(ref.abs().max().item(), 1.0)


def test_functional_forms() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c = nn.Conv2d(1, 2, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = F.interpolate(self.c(x), scale_factor=2, mode="nearest")
            y = F.avg_pool2d(y, 3, 1, 1) + F.max_pool2d(y, 3, 1, 1)
            return F.interpolate(y, size=(12, 12)).flatten(1)

    torch.manual_seed(3)
    net = Net().eval()
    prog = lower(net, (1, 3, 3))
    x = torch.randn(2, 1, 3, 3)
    with torch.no_grad():
        assert torch.allclose(prog.forward(x)[0], net(x), atol=1e-6)
    with pytest.raises(KernelfiError, match="mode 'bilinear'"):
        lower(nn.Sequential(nn.Conv2d(1, 1, 1), nn.Upsample(scale_factor=2, mode="bilinear")).eval(), (1, 2, 2))


# ------------------------------------------------------------------------------ hand faults
def _identity_conv() -> nn.Conv2d:
    c = nn.Conv2d(1, 1, 1)
    with torch.no_grad():
        c.weight.fill_(1.0)
        c.bias.zero_()
    return c


X = torch.tensor([[[[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]]]])


def test_local_avgpool_padded_divisor_and_sum_fault() -> None:
    # AvgPool2d(2, 2, padding=1) on 1..9 (3x3): windows origin -1, output 2x2:
    # (0,0): {1} / 4 (count_include_pad: window clipped to the padded 5x5 is 2x2) = 0.25
    # (0,1): {2, 3} / 4 = 1.25, (1,0): {4, 7} / 4 = 2.75, (1,1): {5, 6, 8, 9} / 4 = 7.
    net = nn.Sequential(_identity_conv(), nn.AvgPool2d(2, 2, 1), nn.Flatten()).eval()
    prog = lower(net, (1, 3, 3))
    assert prog.forward(X)[0][0].tolist() == [0.25, 1.25, 2.75, 7.0]
    launch = next(l.name for l in prog.trace.launches if l.kernel == "forward_local_avgpool")
    # thread 3's running sum: taps (1,1)..(2,2) = 5, 6, 8, 9; its second addition gives 11.0
    # (0x41300000); bit 30 flipped: 0x01300000 (3.2e-38) + 8 + 9 = 17 -> 17/4 = 4.25
    r, probs = run_one(prog, Fault("iov", site(prog, launch, "fadd:avg", 3, exec_=1, calls=4), "single", (30,)), X)
    assert r.original == 11.0
    assert torch.allclose(probs, probs_of([0.25, 1.25, 2.75, 4.25]), atol=1e-6)
    assert r.outcome == "sdc_light_malfunction"


def test_local_avgpool_valid_count_fault() -> None:
    # count_include_pad=False: (0,0) = 1/1, (0,1) = 5/2 = 2.5, (1,0) = 11/2 = 5.5, (1,1) = 28/4 = 7.
    # thread 0's divisor (1 valid tap) through I2F: 1.0 -> bit 30 -> 0x7F800000 = inf: 1/inf = 0.
    net = nn.Sequential(_identity_conv(), nn.AvgPool2d(2, 2, 1, count_include_pad=False), nn.Flatten()).eval()
    prog = lower(net, (1, 3, 3))
    assert prog.forward(X)[0][0].tolist() == [1.0, 2.5, 5.5, 7.0]
    launch = next(l.name for l in prog.trace.launches if l.kernel == "forward_local_avgpool")
    r, probs = run_one(prog, Fault("iov", site(prog, launch, "cvt:counter", 0), "single", (30,)), X)
    assert (r.original, r.corrupted) == (1.0, float("inf"))
    assert torch.allclose(probs, probs_of([0.0, 2.5, 5.5, 7.0]), atol=1e-6)


def test_upsample_index_fault_reads_the_neighbour() -> None:
    # 2x upsampling of [[1, 2], [3, 4]]: thread 0 reads x[0] = 1; its in_index corrupted from 0 to
    # 1 (bit 0) reads x[1] = 2: output [2, 1, 2, 2, 1, 1, 2, 2, 3, 3, 4, 4, 3, 3, 4, 4] (flat)
    net = nn.Sequential(_identity_conv(), nn.Upsample(scale_factor=2), nn.Flatten()).eval()
    prog = lower(net, (1, 2, 2))
    x = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    golden = [1.0, 1, 2, 2, 1, 1, 2, 2, 3, 3, 4, 4, 3, 3, 4, 4]
    assert prog.forward(x)[0][0].tolist() == golden
    launch = next(l.name for l in prog.trace.launches if l.kernel == "upsample")
    r, probs = run_one(prog, Fault("iov", site(prog, launch, "imad:in_index", 0), "single", (0,)), x)
    assert (r.original, r.corrupted) == (0.0, 1.0)
    assert torch.allclose(probs, probs_of([2.0] + golden[1:]), atol=1e-7)
    # the output's load (0 from the fill) with bit 30 set: 2.0 + 1*x[5 -> 1] = 2 + 1 = 3 at thread 5
    r, probs = run_one(prog, Fault("iov", site(prog, launch, "ld:out", 5), "single", (30,)), x)
    assert (r.original, r.corrupted) == (0.0, 2.0)
    assert torch.allclose(probs, probs_of(golden[:5] + [3.0] + golden[6:]), atol=1e-7)


def test_adaptive_avgpool_windows_and_divisor_fault() -> None:
    # AdaptiveAvgPool2d(2) on 1..9 (3x3): rows [0, 2) and [1, 3), columns likewise (overlapping):
    # (0,0) = (1+2+4+5)/2/2 = 3, (0,1) = (2+3+5+6)/4 = 4, (1,0) = (4+5+7+8)/4 = 6, (1,1) = 7.
    net = nn.Sequential(_identity_conv(), nn.AdaptiveAvgPool2d(2), nn.Flatten()).eval()
    prog = lower(net, (1, 3, 3))
    assert prog.forward(X)[0][0].tolist() == [3.0, 4.0, 6.0, 7.0]
    launch = next(l.name for l in prog.trace.launches if l.kernel == "adaptive_avgpool")
    # thread 3's kW (2.0 = 0x40000000) through I2F, bit 30 flipped: 0.0: 28 / 2 / 0 = inf. Darknet's
    # softmax of [3, 4, 6, inf]: the largest saturates to 2^31 - 1, exp(inf) / inf = NaN for class
    # 3 and exp(x - 2^31)/inf = 0 for the others: a non-finite Malfunction
    r, probs = run_one(prog, Fault("iov", site(prog, launch, "cvt:extent", 3, exec_=1, calls=2), "single", (30,)), X)
    assert (r.original, r.corrupted) == (2.0, 0.0)
    assert r.outcome == "sdc_malfunction" and "nonfinite" in r.flags
    assert probs[:3].tolist() == [0.0, 0.0, 0.0] and torch.isnan(probs[3])
    # thread 0's running sum after its second tap (1 + 2 = 3.0 = 0x40400000), bit 22: 2.0
    # (0x40000000): 2 + 4 + 5 = 11 -> 11/2/2 = 2.75
    r, probs = run_one(prog, Fault("iov", site(prog, launch, "fadd:sum", 0, exec_=1, calls=4), "single", (22,)), X)
    assert (r.original, r.corrupted) == (3.0, 2.0)
    assert torch.allclose(probs, probs_of([2.75, 4.0, 6.0, 7.0]), atol=1e-6)
