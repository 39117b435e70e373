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

from layer_campaign import short_campaign

from layer_replay import replay_every_thread

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
    with pytest.raises(KernelfiError, match="mode 'bicubic'"):  # bilinear: tests/test_layers_bilinear.py
        lower(nn.Sequential(nn.Conv2d(1, 1, 1), nn.Upsample(scale_factor=2, mode="bicubic")).eval(), (1, 2, 2))


# ------------------------------------------------------------------------------ hand faults
def identity_conv() -> nn.Conv2d:
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
    net = nn.Sequential(identity_conv(), nn.AvgPool2d(2, 2, 1), nn.Flatten()).eval()
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
    net = nn.Sequential(identity_conv(), nn.AvgPool2d(2, 2, 1, count_include_pad=False), nn.Flatten()).eval()
    prog = lower(net, (1, 3, 3))
    assert prog.forward(X)[0][0].tolist() == [1.0, 2.5, 5.5, 7.0]
    launch = next(l.name for l in prog.trace.launches if l.kernel == "forward_local_avgpool")
    r, probs = run_one(prog, Fault("iov", site(prog, launch, "cvt:counter", 0), "single", (30,)), X)
    assert (r.original, r.corrupted) == (1.0, float("inf"))
    assert torch.allclose(probs, probs_of([0.0, 2.5, 5.5, 7.0]), atol=1e-6)


def test_upsample_index_fault_reads_the_neighbour() -> None:
    # 2x upsampling of [[1, 2], [3, 4]]: thread 0 reads x[0] = 1; its in_index corrupted from 0 to
    # 1 (bit 0) reads x[1] = 2: output [2, 1, 2, 2, 1, 1, 2, 2, 3, 3, 4, 4, 3, 3, 4, 4] (flat)
    net = nn.Sequential(identity_conv(), nn.Upsample(scale_factor=2), nn.Flatten()).eval()
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
    net = nn.Sequential(identity_conv(), nn.AdaptiveAvgPool2d(2), nn.Flatten()).eval()
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


# ------------------------------------------------------------------ ceil_mode past stride 2
def _plane(n: int) -> torch.Tensor:
    """1x1xnxn input x[r][c] = n*r + c + 1."""
    return torch.arange(1, n * n + 1, dtype=torch.float32).reshape(1, 1, n, n)


def _pool_launch(prog):  # type: ignore[no-untyped-def]
    return next(l for l in prog.trace.launches if l.kernel in ("forward_maxpool", "forward_local_avgpool"))


def test_ceil_maxpool_stride3_by_hand() -> None:
    # MaxPool2d(3, 3, ceil_mode=True) on 7x7 (1..49): ceil((7-3)/3) + 1 = 3 windows a side,
    # rows {0,1,2}, {3,4,5}, {6} (the last starts at 6, inside the input): each max is its
    # window's bottom-right valid element 7r + c + 1, r and c in {2, 5, 6}.
    net = nn.Sequential(identity_conv(), nn.MaxPool2d(3, 3, ceil_mode=True), nn.Flatten()).eval()
    prog = lower(net, (1, 7, 7))
    want = [17.0, 20.0, 21.0, 38.0, 41.0, 42.0, 45.0, 48.0, 49.0]
    for fast in (True, False):
        assert prog.forward(_plane(7), fast=fast)[0][0].tolist() == want
    l = _pool_launch(prog)
    # Darknet's pad stays 2*padding = 0; the last window reaches 2 rows/columns past the input
    assert (l.params["pad"], l.params["ceil_pad_h"], l.params["ceil_pad_w"], l.params["out_h"]) == (0, 2, 2, 3)
    mem = prog.run(prog.memory(_plane(7)), fast=False)
    assert mem[l.writes[1]].reshape(-1).tolist() == [16, 19, 20, 37, 40, 41, 44, 47, 48]  # argmax 7r + c
    with torch.no_grad():
        assert net(_plane(7))[0].tolist() == want  # PyTorch agrees



def test_ceil_pad_iadd_fault_misplaces_a_window() -> None:
    # The same pool: thread 3 adds ceil_pad_w into the width's dividend, 7 + 0 + 2 - 3 = 6 (the
    # second iadd:out_hw of 4: dh, dw, then the two +1). Bit 1 flipped: 4, so w = 4/3 + 1 = 2 and
    # thread 3 splits its id as j = 3 % 2 = 1, i = (3/2) % 3 = 1: the window at rows/columns 3..5
    # (max 7*5 + 5 + 1 = 41) is stored at out_index 1 + 2*1 = 3, over the golden 38.
    net = nn.Sequential(identity_conv(), nn.MaxPool2d(3, 3, ceil_mode=True), nn.Flatten()).eval()
    prog = lower(net, (1, 7, 7))
    launch = _pool_launch(prog).name
    golden = [17.0, 20.0, 21.0, 38.0, 41.0, 42.0, 45.0, 48.0, 49.0]
    r, probs = run_one(prog, Fault("iov", site(prog, launch, "iadd:out_hw", 3, exec_=1, calls=4), "single", (1,)),
                       _plane(7))
    assert (r.original, r.corrupted) == (6.0, 4.0)
    assert torch.allclose(probs, probs_of(golden[:3] + [41.0] + golden[4:]), atol=1e-7)

# AvgPool2d(3, 4, padding=1, ceil_mode=True) on 8x8 (x = 8r + c + 1): ceil((8+2-3)/4) + 1 = 3
# windows a side starting at -1, 3, 7 (7 < 8 + 1: kept): rows {0,1}, {3,4,5}, {7}, row sums
# 1, 12, 7. A window's sum is |C|*8*sum(R) + |R|*sum(C) + |R||C|:
#   22 54 24 / 201 333 120 / 115 183 64.
# count_include_pad divides by the window clipped to the padded input (rows -1..8, not the
# ceil overhang row 9): 3, 3, 2 a side; count_include_pad=False by the valid taps: 2, 3, 1.
SUMS8 = [22.0, 54.0, 24.0, 201.0, 333.0, 120.0, 115.0, 183.0, 64.0]
DIV8 = {True: [9, 9, 6, 9, 9, 6, 6, 6, 4], False: [4, 6, 2, 6, 9, 3, 2, 3, 1]}
# On 7x7 (x = 7r + c + 1) the third window would start at 7 = 7 + 1, in the right padding:
# PyTorch drops it, 2 windows a side, rows {0,1}, {3,4,5}: sums 20 51 / 177 297, divisors
# 9 everywhere (count_include_pad) or 4 6 / 6 9 (valid taps).
SUMS7 = [20.0, 51.0, 177.0, 297.0]
DIV7 = {True: [9, 9, 9, 9], False: [4, 6, 6, 9]}


@pytest.mark.parametrize("include", [True, False])
def test_ceil_avgpool_stride4_by_hand(include: bool) -> None:
    for n, sums, divs, ceil_pad in ((8, SUMS8, DIV8, 1), (7, SUMS7, DIV7, None)):
        net = nn.Sequential(identity_conv(), nn.AvgPool2d(3, 4, 1, ceil_mode=True, count_include_pad=include),
                            nn.Flatten()).eval()
        prog = lower(net, (1, n, n))
        want = torch.tensor(sums) / torch.tensor(divs[include], dtype=torch.float32)
        for fast in (True, False):
            assert torch.allclose(prog.forward(_plane(n), fast=fast)[0][0], want, rtol=0, atol=1e-6)
        with torch.no_grad():
            assert torch.allclose(net(_plane(n))[0], want, rtol=0, atol=1e-6)  # PyTorch agrees
        l = _pool_launch(prog)
        assert l.params["pad"] == 2 and l.params.get("ceil_pad_h") == ceil_pad
        if ceil_pad is None:
            assert "ceil_pad_w" not in l.params  # Darknet's own geometry: params unchanged


CEIL_POOLS = [nn.MaxPool2d(3, 3, ceil_mode=True), nn.MaxPool2d(3, 4, 1, ceil_mode=True), nn.MaxPool2d(2, 5, ceil_mode=True),
              nn.MaxPool2d(4, 3, 2, ceil_mode=True), nn.AvgPool2d(3, 4, 1, ceil_mode=True),
              nn.AvgPool2d(3, 4, 1, ceil_mode=True, count_include_pad=False), nn.AvgPool2d(4, 3, 2, ceil_mode=True),
              nn.AvgPool2d(2, 3, ceil_mode=True, count_include_pad=False), nn.AvgPool2d(3, 3, ceil_mode=True)]


def _ceil_net(pool: nn.Module) -> nn.Module:
    """The pool alone on the input (a conv before it would round differently from PyTorch's)."""
    return nn.Sequential(pool, nn.Flatten()).eval()


@pytest.mark.parametrize("pool", CEIL_POOLS, ids=repr)
@pytest.mark.parametrize("hw", [(7, 7), (8, 10), (11, 9), (13, 13)])
def test_ceil_pool_lowered_equals_pytorch(pool: nn.Module, hw: tuple[int, int]) -> None:
    net = _ceil_net(pool)
    prog = lower(net, (2, *hw))
    x = torch.randn(3, 2, *hw)
    with torch.no_grad():
        ref = net(x)
    for fast in (True, False):
        y = prog.forward(x, fast=fast)[0]
        if isinstance(pool, nn.MaxPool2d):
            assert torch.equal(y, ref)
        else:
            assert (y - ref).abs().max().item() <= 1e-6


def test_ceil_pool_functional_forms() -> None:
    class Net(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            a = F.max_pool2d(x, 3, 3, 0, 1, True)
            b = F.avg_pool2d(x, 3, stride=3, ceil_mode=True, count_include_pad=False)
            return (a + b).flatten(1)

    net = Net().eval()
    prog = lower(net, (1, 8, 8))
    assert {"ceil_pad_h", "ceil_pad_w"} <= set(_pool_launch(prog).params)
    x = torch.randn(2, 1, 8, 8)
    assert (prog.forward(x)[0] - net(x)).abs().max().item() <= 1e-6


def replayed(prog, launch, mem):  # type: ignore[no-untyped-def]
    """Every thread of ``launch`` replayed without a fault on lane 0 of ``mem``: buffer -> {index: value}."""
    return replay_every_thread(prog, launch, mem)


@pytest.mark.parametrize("pool", CEIL_POOLS, ids=repr)
def test_ceil_pool_fault_free_replay_equals_the_fast_path(pool: nn.Module) -> None:
    net = _ceil_net(pool)
    # the first map size whose pool needs the far-side rows/columns
    prog = next(p for p in (lower(net, (2, h, w)) for h, w in ((11, 9), (12, 10), (10, 12), (8, 8), (9, 9)))
                if "ceil_pad_h" in _pool_launch(p).params)
    l = _pool_launch(prog)
    x = torch.randn(1, *prog.trace.input_shape)
    mem = prog.run(prog.memory(x), fast=True)
    plain = prog.run(prog.memory(x), fast=False)  # the argmax, which the fast path does not write
    got = replayed(prog, l, mem)
    assert torch.equal(mem[l.writes[0]], plain[l.writes[0]])
    for buf in l.writes:
        want = (mem if buf in mem else plain)[buf][0].reshape(-1)
        assert sorted(got[buf]) == list(range(want.numel()))  # every output written, once a thread
        vals = torch.tensor([float(got[buf][i]) for i in range(want.numel())], dtype=want.dtype)
        assert torch.equal(vals, want), buf


CEIL_NAME = "i20-ceil-pools"


class CeilPools(nn.Module):
    """A max and an average pool of the ceil-mode geometry (stride 3 and 4) on a small map."""

    def __init__(self, n: int = 3) -> None:
        super().__init__()
        self.c = nn.Conv2d(1, 2, 1)
        self.mp = nn.MaxPool2d(3, 3, ceil_mode=True)
        self.ap = nn.AvgPool2d(3, 4, 1, ceil_mode=True)
        self.fc = nn.Linear(2 * 9 + 2 * 9, n)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.c(x)
        return self.fc(torch.cat([self.mp(y).flatten(1), self.ap(y).flatten(1)], 1))


def build_ceil_pools(num_classes: int) -> CeilPools:
    """The registered builder (top level: worker processes import it)."""
    return CeilPools(num_classes)


@pytest.mark.parametrize("mode", ["rf", "iov", "ioa"])
def test_ceil_pool_short_campaign_has_no_tool_error(mode: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from kernelfi.models import list_models, register_model

    if CEIL_NAME not in {m.name for m in list_models()}:
        register_model(CEIL_NAME, input_shape=(1, 8, 8), num_classes=3, mean=(0.5,), std=(0.25,),
                       description="ceil_mode pools past stride 2")(build_ceil_pools)
    prog = lower(CeilPools().eval(), (1, 8, 8))
    assert all("ceil_pad_h" in l.params for l in prog.trace.launches if "pool" in l.kernel)
    # scope sassifi: Darknet's own kernels (not cuBLAS' SGEMM, which holds most sites here)
    kernels = {r.kernel for r in short_campaign(CEIL_NAME, mode, tmp_path, scope="sassifi")}
    assert {"forward_maxpool", "forward_local_avgpool"} <= kernels, kernels  # both pools are struck
