"""Pools kernelfi used to refuse: ``AdaptiveMaxPool2d`` / ``F.adaptive_max_pool2d`` (PyTorch's
adaptivemaxpool kernel) and dilated ``MaxPool2d`` / ``F.max_pool2d(dilation=)`` (PyTorch's
max_pool_forward_nchw), and ``AvgPool2d(divisor_override=k)`` / ``F.avg_pool2d(divisor_override=)``
(the local_avgpool launch with a ``divisor`` param, only where given). Hand-worked windows and faults, the lowering against PyTorch (bitwise
for the max forms, NaN and inf inputs included: the pools run first on the raw input, so no conv
rounding sits in between), every thread's fault-free replay equal to the fast path, a short
campaign per mode with no tool error, and the export round trip bit for bit."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from kernelfi._utils import KernelfiError
from kernelfi.harden import Plan
from kernelfi.harden.export import export_model, launch_op, load_exported
from kernelfi.harden.export.mapping import graph_ops
from kernelfi.harden.units import abft_plan
from kernelfi.lowering import lower, lower_fx
from kernelfi.models import list_models, register_model
from kernelfi.types import Fault
from tests.test_layers_pools import identity_conv
from layer_replay import replay_every_thread
from tests.tiny import probs_of, run_one, site

from layer_campaign import short_campaign

X = torch.tensor([[[[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]]]])


def _bits_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit for bit, NaNs included (every NaN here is the input's own, passed through)."""
    return a.shape == b.shape and torch.equal(a.contiguous().view(torch.int32), b.contiguous().view(torch.int32))


def _launch(prog, kernel: str):  # type: ignore[no-untyped-def]
    return next(l for l in prog.trace.launches if l.kernel == kernel)


# ------------------------------------------------------------------------ adaptive max pooling
def test_adaptive_maxpool_by_hand_and_compare_fault() -> None:
    # AdaptiveMaxPool2d(2) on 1..9 (3x3): rows [0, 2) and [1, 3), columns likewise (overlapping):
    # (0,0) = max(1, 2, 4, 5) = 5, (0,1) = max(2, 3, 5, 6) = 6, (1,0) = 8, (1,1) = 9.
    net = nn.Sequential(identity_conv(), nn.AdaptiveMaxPool2d(2), nn.Flatten()).eval()
    prog = lower(net, (1, 3, 3))
    assert prog.forward(X)[0][0].tolist() == [5.0, 6.0, 8.0, 9.0]
    l = _launch(prog, "adaptive_maxpool")
    assert l.params == {"channels": 1, "height": 3, "width": 3, "out_h": 2, "out_w": 2}
    # thread 0 scans 1, 2, 4, 5: its 4th compare (5 > 4) flipped keeps 4 (isnan(5) is false)
    r, probs = run_one(prog, Fault("iov", site(prog, l.name, "setp:gt", 0, exec_=3, calls=4), "single", (0,)), X)
    assert torch.allclose(probs, probs_of([4.0, 6.0, 8.0, 9.0]), atol=1e-7)
    # thread 3's isnan test of its first tap (5, not NaN) flipped: taken anyway (it is > -inf too),
    # then 6, 8, 9 win in turn: no change
    r, probs = run_one(prog, Fault("iov", site(prog, l.name, "setp:nan", 3, exec_=0, calls=4), "single", (0,)), X)
    assert r.outcome == "masked"


ADAPTIVE_MAX = [nn.AdaptiveMaxPool2d(2), nn.AdaptiveMaxPool2d((3, 5)), nn.AdaptiveMaxPool2d((None, 2)),
                nn.AdaptiveMaxPool2d(4), nn.AdaptiveMaxPool2d(1)]


@pytest.mark.parametrize("pool", ADAPTIVE_MAX, ids=repr)
@pytest.mark.parametrize("hw", [(7, 7), (5, 9)])
def test_adaptive_maxpool_bitwise_against_pytorch_with_nan_and_inf(pool: nn.Module, hw: tuple[int, int]) -> None:
    h, w = hw
    net = nn.Sequential(pool, nn.Flatten()).eval()
    prog = lower(net, (3, h, w))
    assert _launch(prog, "adaptive_maxpool")
    g = torch.Generator().manual_seed(3)
    x = torch.randn(4, 3, h, w, generator=g)
    x[0, 0, 0, 0] = float("nan")                       # NaN first in a window: it stays
    x[1, 1, 2, 3] = float("nan")                       # NaN mid-window after larger values
    x[1, 1, 2, 4] = float("nan")                       # a second NaN: replaces the first (same bits)
    x[2, 2, 1:3, 1:3] = float("inf")
    x[3, 0] = float("-inf")                            # a whole plane of -inf
    x[3, 1, 0, 1] = -0.0
    with torch.no_grad():
        ref = net(x)
    for fast in (True, False):
        assert _bits_equal(prog.forward(x, fast=fast)[0], ref), fast


def test_adaptive_maxpool_functional_identity_and_refusals() -> None:
    class Fn(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.cat([F.adaptive_max_pool2d(x, (2, 3)).flatten(1),
                              F.adaptive_max_pool2d(x, output_size=6).flatten(1)], 1)

    net = Fn().eval()
    prog = lower(net, (2, 6, 6))
    assert [l.kernel for l in prog.trace.launches].count("adaptive_maxpool") == 1   # to 6x6: no kernel
    x = torch.randn(3, 2, 6, 6)
    assert _bits_equal(prog.forward(x)[0], net(x))
    with pytest.raises(KernelfiError, match="return_indices=True"):
        lower(nn.Sequential(nn.AdaptiveMaxPool2d(2, return_indices=True)).eval(), (1, 4, 4))


def _replay_equals_fast_path(prog, l) -> None:  # type: ignore[no-untyped-def]
    x = torch.randn(1, *prog.trace.input_shape, generator=torch.Generator().manual_seed(5))
    x.view(-1)[3] = float("nan")
    mem = prog.run(prog.memory(x), fast=True)
    plain = prog.run(prog.memory(x), fast=False)
    got = replay_every_thread(prog, l, mem)
    for buf in l.writes:
        want = (mem if buf in mem else plain)[buf][0].reshape(-1)
        assert sorted(got[buf]) == list(range(want.numel()))       # every output written, once a thread
        vals = torch.tensor([float(got[buf][i]) for i in range(want.numel())], dtype=want.dtype)
        assert _bits_equal(vals, want) if vals.is_floating_point() else torch.equal(vals, want), buf


@pytest.mark.parametrize("pool, chw", [(nn.AdaptiveMaxPool2d((3, 2)), (2, 7, 5)),
                                       (nn.AdaptiveMaxPool2d(4), (1, 3, 9))], ids=repr)
def test_adaptive_maxpool_fault_free_replay_equals_the_fast_path(pool: nn.Module, chw: tuple[int, ...]) -> None:
    prog = lower(nn.Sequential(pool, nn.Flatten()).eval(), chw)
    _replay_equals_fast_path(prog, _launch(prog, "adaptive_maxpool"))


# ------------------------------------------------------------------------ dilated max pooling
P4 = torch.arange(1.0, 17.0).reshape(1, 1, 4, 4)   # x[r][c] = 4r + c + 1


def test_dilated_maxpool_by_hand_and_index_fault() -> None:
    # MaxPool2d(2, stride 1, dilation 2) on 1..16 (4x4): output (4 + 0 - 2*(2 - 1) - 1)/1 + 1 = 2; taps at rows {i, i+2}, columns {j, j+2}:
    # (0,0) = max(1, 3, 9, 11) = 11, (0,1) = max(2, 4, 10, 12) = 12, (1,0) = 15, (1,1) = 16.
    net = nn.Sequential(identity_conv(), nn.MaxPool2d(2, 1, dilation=2), nn.Flatten()).eval()
    prog = lower(net, (1, 4, 4))
    assert prog.forward(P4)[0][0].tolist() == [11.0, 12.0, 15.0, 16.0]
    l = _launch(prog, "max_pool_nchw")
    assert l.params == {"channels": 1, "height": 4, "width": 4, "size": 2, "stride": 1, "pad": 0, "dilation": 2,
                        "out_h": 2, "out_w": 2}
    assert not any(x.kernel == "forward_maxpool" for x in prog.trace.launches)
    # thread 0's last tap index h*W + w = 2*4 + 2 = 10, bit 0 flipped: 11 -> x = 12: max 12
    r, probs = run_one(prog, Fault("iov", site(prog, l.name, "imad:in_index", 0, exec_=3, calls=4), "single", (0,)),
                       P4)
    assert (r.original, r.corrupted) == (10.0, 11.0)
    assert torch.allclose(probs, probs_of([12.0, 12.0, 15.0, 16.0]), atol=1e-7)


def test_dilated_maxpool_padded_window_by_hand() -> None:
    # MaxPool2d(2, stride 2, padding 1, dilation 2) on 1..16: out (4 + 2 - 2 - 1)/2 + 1 = 2.
    # (0,0): hstart = -1 -> +2 = 1, hend = min(-1 + 3, 4) = 2: row {1}, column {1}: x = 6.
    # (0,1): wstart = 1, wend = min(1 + 3, 4) = 4: columns {1, 3}: max(6, 8) = 8.
    # (1,0): rows {1, 3}, column {1}: max(6, 14) = 14; (1,1): max(6, 8, 14, 16) = 16.
    net = nn.Sequential(nn.MaxPool2d(2, 2, 1, dilation=2), nn.Flatten()).eval()
    prog = lower(net, (1, 4, 4))
    assert prog.forward(P4)[0][0].tolist() == [6.0, 8.0, 14.0, 16.0]
    assert net(P4)[0].tolist() == [6.0, 8.0, 14.0, 16.0]


DILATED = [nn.MaxPool2d(2, 1, 0, dilation=2), nn.MaxPool2d(3, 2, 1, dilation=2), nn.MaxPool2d(3, 2, 1, dilation=3),
           nn.MaxPool2d(3, 2, 1, dilation=2, ceil_mode=True), nn.MaxPool2d(2, 3, 1, dilation=2, ceil_mode=True),
           nn.MaxPool2d((3, 3), (2, 2), (1, 1), (2, 2))]


@pytest.mark.parametrize("pool", DILATED, ids=repr)
@pytest.mark.parametrize("hw", [(9, 9), (8, 11)])
def test_dilated_maxpool_bitwise_against_pytorch_with_nan_and_inf(pool: nn.Module, hw: tuple[int, int]) -> None:
    h, w = hw
    net = nn.Sequential(pool, nn.Flatten()).eval()
    prog = lower(net, (3, h, w))
    assert _launch(prog, "max_pool_nchw")
    g = torch.Generator().manual_seed(4)
    x = torch.randn(4, 3, h, w, generator=g)
    x[0, 0, 0, 0] = float("nan")
    x[1, 1, 2, 2] = float("nan")
    x[1, 1, 4, 4] = float("nan")
    x[2, 2, 1:4, 1:4] = float("inf")
    x[3, 0] = float("-inf")
    with torch.no_grad():
        ref = net(x)
    for fast in (True, False):
        assert _bits_equal(prog.forward(x, fast=fast)[0], ref), fast


def test_dilated_maxpool_functional_and_undilated_unchanged() -> None:
    class Fn(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.cat([F.max_pool2d(x, 3, 1, 1, 2).flatten(1),
                              F.max_pool2d(x, 2, dilation=1).flatten(1)], 1)

    net = Fn().eval()
    prog = lower(net, (2, 6, 6))
    kinds = [l.kernel for l in prog.trace.launches]
    assert kinds.count("max_pool_nchw") == 1 and kinds.count("forward_maxpool") == 1
    mp = _launch(prog, "forward_maxpool")   # the undilated pool: Darknet's launch, its params exactly
    assert mp.params == {"channels": 2, "height": 6, "width": 6, "size": 2, "stride": 2, "pad": 0,
                         "out_h": 3, "out_w": 3}
    x = torch.randn(3, 2, 6, 6)
    assert _bits_equal(prog.forward(x)[0], net(x))


@pytest.mark.parametrize("pool, chw", [(nn.MaxPool2d(3, 2, 1, dilation=2), (2, 7, 6)),
                                       (nn.MaxPool2d(2, 3, 1, dilation=2, ceil_mode=True), (1, 8, 9))], ids=repr)
def test_dilated_maxpool_fault_free_replay_equals_the_fast_path(pool: nn.Module, chw: tuple[int, ...]) -> None:
    prog = lower(nn.Sequential(pool, nn.Flatten()).eval(), chw)
    _replay_equals_fast_path(prog, _launch(prog, "max_pool_nchw"))


# ------------------------------------------------------------------ avg pooling divisor_override
def test_avgpool_divisor_override_by_hand_and_faults() -> None:
    # AvgPool2d(2, 2, padding=1, divisor_override=3) on 1..9 (3x3): windows origin -1, output 2x2:
    # (0,0) = {1}/3, (0,1) = {2, 3}/3 = 5/3, (1,0) = {4, 7}/3 = 11/3, (1,1) = {5, 6, 8, 9}/3 = 28/3.
    net = nn.Sequential(identity_conv(), nn.AvgPool2d(2, 2, 1, divisor_override=3), nn.Flatten()).eval()
    prog = lower(net, (1, 3, 3))
    want = [torch.tensor(v, dtype=torch.float32) / 3 for v in (1.0, 5.0, 11.0, 28.0)]
    assert prog.forward(X)[0][0].tolist() == [v.item() for v in want]
    l = _launch(prog, "forward_local_avgpool")
    assert l.params == {"channels": 1, "height": 3, "width": 3, "size": 2, "stride": 2, "pad": 2, "out_h": 2,
                        "out_w": 2, "divisor": 3}
    # thread 0's divisor 3 (the MOV of divisor_override), bit 1 flipped: 1: output 1/1 = 1
    r, probs = run_one(prog, Fault("iov", site(prog, l.name, "mov:divisor", 0), "single", (1,)), X)
    assert (r.original, r.corrupted) == (3.0, 1.0)
    assert torch.allclose(probs, probs_of([1.0, 5 / 3, 11 / 3, 28 / 3]), atol=1e-6)
    # thread 3's float(3) = 0x40400000, bit 22 flipped: 0x40000000 = 2.0: 28/2 = 14
    r, probs = run_one(prog, Fault("iov", site(prog, l.name, "cvt:counter", 3), "single", (22,)), X)
    assert (r.original, r.corrupted) == (3.0, 2.0)
    assert torch.allclose(probs, probs_of([1 / 3, 5 / 3, 11 / 3, 14.0]), atol=1e-6)


def _avg_reference(x: torch.Tensor, k: int, s: int, p: int, ceil: bool, divisor: int) -> torch.Tensor:
    """PyTorch's avg_pool2d with divisor_override written out: float32 sums of the taps inside the
    input, row by row, divided by the divisor (the output extents taken from F.avg_pool2d)."""
    oh, ow = F.avg_pool2d(x, k, s, p, ceil).shape[-2:]
    n, c, h, w = x.shape
    out = torch.empty(n, c, oh, ow)
    for i in range(oh):
        for j in range(ow):
            acc = torch.zeros(n, c)
            for r in range(i * s - p, i * s - p + k):
                for q in range(j * s - p, j * s - p + k):
                    if 0 <= r < h and 0 <= q < w:
                        acc = acc + x[:, :, r, q]
            out[:, :, i, j] = acc / torch.tensor(float(divisor))
    return out.flatten(1)


DIVISOR = [(2, 2, 0, False, 3), (3, 2, 1, False, 5), (3, 2, 1, True, 2), (3, 4, 1, True, 7), (4, 4, 0, False, 7)]


@pytest.mark.parametrize("k, s, p, ceil, divisor", DIVISOR)
@pytest.mark.parametrize("include_pad", [True, False])
def test_avgpool_divisor_override_against_pytorch(k: int, s: int, p: int, ceil: bool, divisor: int,
                                                   include_pad: bool) -> None:
    """Bitwise against the written-out float32 reference; within 1e-6 (relative) of PyTorch CPU's
    module (bitwise on these inputs too, but its CPU kernel is not ours to pin)."""
    net = nn.Sequential(nn.AvgPool2d(k, s, p, ceil, include_pad, divisor_override=divisor), nn.Flatten()).eval()
    prog = lower(net, (3, 8, 8))
    assert _launch(prog, "forward_local_avgpool").params["divisor"] == divisor
    x = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        ref = net(x)
    want = _avg_reference(x, k, s, p, ceil, divisor)
    for fast in (True, False):
        got = prog.forward(x, fast=fast)[0]
        assert _bits_equal(got, want), fast
        assert (got - ref).abs().max().item() <= 1e-6 * max(ref.abs().max().item(), 1.0)


def test_avgpool_divisor_functional_and_launches_without_it_unchanged() -> None:
    class Fn(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.cat([F.avg_pool2d(x, 2, 2, 0, False, True, 3).flatten(1),
                              F.avg_pool2d(x, 3, 2, 1, divisor_override=4).flatten(1),
                              F.avg_pool2d(x, 3, 2, 1).flatten(1), F.avg_pool2d(x, 6).flatten(1)], 1)

    net = Fn().eval()
    prog = lower(net, (2, 6, 6))
    pools = [l.params for l in prog.trace.launches if l.kernel == "forward_local_avgpool"]
    assert [q.get("divisor") for q in pools] == [3, 4, None]
    assert pools[2] == {"channels": 2, "height": 6, "width": 6, "size": 3, "stride": 2, "pad": 2, "out_h": 3,
                        "out_w": 3, "count_include_pad": True}          # the plain launch: params as before
    assert [l.kernel for l in prog.trace.launches].count("forward_avgpool") == 1   # the global pool: Darknet's
    x = torch.randn(3, 2, 6, 6)
    assert (prog.forward(x)[0] - net(x)).abs().max().item() <= 1e-6
    with pytest.raises(KernelfiError, match="divisor_override=0"):
        lower(nn.Sequential(nn.AvgPool2d(2, divisor_override=0)).eval(), (1, 4, 4))


def test_avgpool_divisor_registers_only_where_given() -> None:
    from kernelfi.kernels import get_kernel, ptxas_registers
    k = get_kernel("forward_local_avgpool")
    base = {"channels": 1, "height": 4, "width": 4, "size": 2, "stride": 2, "pad": 0, "out_h": 2, "out_w": 2}
    assert (ptxas_registers("forward_local_avgpool"), ptxas_registers("forward_local_avgpool_divisor")) == (26, 27)
    assert k.registers({**base, "divisor": 3}) is not None
    plain, div = k.template(base), k.template({**base, "divisor": 3})
    assert [s.tag for s in div.slots if s.tag not in {t.tag for t in plain.slots}] == ["mov:divisor"]


@pytest.mark.parametrize("pool, chw", [(nn.AvgPool2d(3, 2, 1, divisor_override=4), (2, 7, 6)),
                                       (nn.AvgPool2d(3, 4, 1, ceil_mode=True, divisor_override=2), (1, 8, 8))],
                         ids=repr)
def test_avgpool_divisor_fault_free_replay_equals_the_fast_path(pool: nn.Module, chw: tuple[int, ...]) -> None:
    prog = lower(nn.Sequential(pool, nn.Flatten()).eval(), chw)
    _replay_equals_fast_path(prog, _launch(prog, "forward_local_avgpool"))


# --------------------------------------------------------------------- campaign and export
NAME = "pools2"


class Pools2(nn.Module):
    """The newly lowered pools in one 3x9x9 -> n classifier."""

    def __init__(self, n: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.amp = nn.AdaptiveMaxPool2d((3, 2))
        self.dmp = nn.MaxPool2d(3, 2, 1, dilation=2)
        self.dap = nn.AvgPool2d(3, 3, divisor_override=4)
        self.head = nn.Linear(4 * 3 * 2 + 4 * 2 * 2 + 4 * 4 * 4 + 4 * 4 * 4 + 4 * 3 * 3 + 4 * 5 * 5, n)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.conv(x))
        a = self.amp(y)                                          # 9x9 -> 3x2
        b = F.adaptive_max_pool2d(y, 2)                          # 9x9 -> 2x2
        c = self.dmp(y)                                          # 9x9 -> 4x4, dilated: (9 + 2 - 4 - 1)/2 + 1
        d = F.max_pool2d(y, 2, 3, 1, 2, True)                    # 9x9 -> 4x4, dilated, ceil_mode: (9 + 2 - 2 - 1 + 2)/3 + 1
        e = self.dap(y)                                          # 9x9 -> 3x3, sums / 4
        f = F.avg_pool2d(y, 3, 2, 1, divisor_override=5)         # 9x9 -> 5x5, sums / 5
        return self.head(torch.cat([t.flatten(1) for t in (a, b, c, d, e, f)], 1))


def build_pools2(num_classes: int) -> Pools2:
    """The registered builder (top level: worker processes import it)."""
    return Pools2(num_classes)


NEW = {"adaptive_maxpool", "max_pool_nchw", "forward_local_avgpool"}


@pytest.fixture(scope="module")
def registered() -> str:
    if NAME not in {m.name for m in list_models()}:
        register_model(NAME, input_shape=(3, 9, 9), num_classes=3, mean=(0.5,) * 3, std=(0.25,) * 3,
                       description="pools2: adaptive max")(build_pools2)
    return NAME


@pytest.mark.parametrize("mode", ["rf", "iov", "ioa"])
def test_campaign_per_mode_has_no_tool_error(registered: str, mode: str, tmp_path: Path) -> None:
    short_campaign(registered, mode, tmp_path, inputs=3)


def test_export_round_trip_bitwise(tmp_path: Path) -> None:
    torch.manual_seed(0)
    m, x = Pools2().eval(), torch.randn(4, 3, 9, 9, generator=torch.Generator().manual_seed(1))
    lowered, trace = lower_fx(m, (3, 9, 9)), lower(m, (3, 9, 9)).trace
    pools = [l for l in trace.launches if l.kernel in NEW]
    ops = graph_ops(lowered)
    assert sorted(getattr(launch_op(lowered, ops, l), "node", None) for l in pools) == \
        ["adaptive_max_pool2d", "amp", "avg_pool2d", "dap", "dmp", "max_pool2d"]
    export_model(m, Plan("pools2", abft_plan(trace).protect), tmp_path / "e", input_shape=(3, 9, 9), name="pools2",
                 check_inputs=x)
    src = "\n".join(p.read_text() for p in (tmp_path / "e").rglob("*.py"))
    assert "nn.AdaptiveMaxPool2d((3, 2), return_indices=False)" in src and "dilation=2" in src \
        and "divisor_override=4" in src
    with torch.no_grad():
        want = m(x)
        for variant in ("none", "plan", "full-dmr", "full-tmr"):
            assert _bits_equal(load_exported(tmp_path / "e", variant)(x), want), variant
