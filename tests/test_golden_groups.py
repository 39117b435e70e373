"""The golden run and the struck layer's starts on grouped and depthwise convolutions.

The fast path runs a grouped convolution's G im2col+gemm pairs as one grouped call
(``lowering.groups``); the golden run keeps the C that call leaves (``golden.pre_items``: one
item at the layer's last GEMM) and ``StruckStarts`` restarts a struck grouped layer after any
of its G GEMMs from it, each start checked bit for bit against the per-group pairs. Values
here are worked out with per-group ``F.conv2d`` calls; the campaign test compares rows with
the grouped path switched off entirely.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kernelfi.campaign.batches import batches
from kernelfi.campaign.planner import Planner
from kernelfi.execution import Golden, Runner
from kernelfi.execution.golden import SharedGolden, pre_choice, pre_items
from kernelfi.lowering import groups as groups_mod
from kernelfi.lowering import lower

from tiny import whole_weights

SHAPE = (4, 5, 5)


def _net() -> nn.Module:
    """Depthwise 3x3 (pad 1), then groups=2 3x3 (no pad) and a linear head, with small whole
    weights and biases: every sum is exact in float32, whatever order a path sums in."""
    return whole_weights(nn.Sequential(nn.Conv2d(4, 4, 3, padding=1, groups=4), nn.ReLU(),
                                       nn.Conv2d(4, 4, 3, groups=2), nn.ReLU(), nn.Flatten(), nn.Linear(36, 3)), 3)


def _per_group(x: torch.Tensor, conv: nn.Conv2d) -> list[torch.Tensor]:
    """Each group's output channels (lanes, M*N) by its own F.conv2d, without the bias."""
    cin, cout = conv.in_channels // conv.groups, conv.out_channels // conv.groups
    return [F.conv2d(x[:, g * cin:(g + 1) * cin], conv.weight[g * cout:(g + 1) * cout], padding=conv.padding)
            .reshape(x.shape[0], -1) for g in range(conv.groups)]


@pytest.fixture()
def case(monkeypatch) -> tuple[nn.Module, object, torch.Tensor, list[list[torch.Tensor]]]:
    """The net lowered, three whole-number inputs, and per grouped layer its groups' outputs.

    The grouped call's self-check runs on random operands, so its verdict depends on this
    machine's oneDNN; with whole-number operands both paths are exact, so the verdict is set
    to pass here: these tests are about what is kept and restored, not about rounding (the
    campaign test below keeps the real verdicts)."""
    monkeypatch.setattr(groups_mod, "grouped_agrees", lambda *a: True)
    net = _net()
    prog = lower(net, SHAPE, "grouped-golden")
    x = torch.randint(-3, 4, (3, *SHAPE), generator=torch.Generator().manual_seed(4)).float()
    with torch.no_grad():
        hidden = torch.relu(net[0](x))
        blocks = [_per_group(x, net[0]), _per_group(hidden, net[2])]
    return net, prog, x, blocks


def _runs(prog) -> list[groups_mod.GroupRun]:
    return sorted(prog.groups.values(), key=lambda r: r.start)


def test_the_golden_run_keeps_each_grouped_calls_C(case) -> None:
    """One kept item per grouped layer, at its last GEMM: the C of all its groups, equal to
    the groups' own F.conv2d outputs side by side (the fill is 0); no item per group."""
    _, prog, x, blocks = case
    runs = _runs(prog)
    assert [r.groups for r in runs] == [4, 2]
    items = pre_items(prog.trace)
    gemms = [l.index for l in prog.trace.launches if l.kernel == "gemm"]
    grouped_gemms = {j for r in runs for j in range(r.start + 1, r.end, 2)}
    assert set(items) == {r.end - 1 for r in runs} | (set(gemms) - grouped_gemms)  # + the linear head's
    for r in runs:
        k, numel = items[r.end - 1]
        assert (k, numel) == (int(prog.trace.launches[r.start + 1].params["K"]),
                              math.prod(prog.trace.buffer(prog.trace.launches[r.start + 1].writes[0]).shape))
    golden = Golden.compute(prog, x)
    assert set(golden.pre) == set(items) == pre_choice(prog.trace, 3)
    for r, want in zip(runs, blocks):
        assert torch.equal(golden.pre[r.end - 1], torch.cat(want, dim=1))


def test_the_shared_golden_block_is_sized_for_the_grouped_items(case) -> None:
    """``compute(share=True)`` sizes one block from the keep rules; every kept C fits in it,
    so a pool's workers map it without a copy."""
    _, prog, x, _ = case
    golden = Golden.compute(prog, x, share=True)
    assert golden.block is not None and len(golden.pre) == 3
    assert SharedGolden.of(golden, prog.trace.output).flat is golden.block


def test_struck_starts_after_each_groups_gemm_equal_the_per_group_convolutions(case) -> None:
    """After group g's GEMM a struck layer starts from C with the blocks of groups 0..g (their
    own F.conv2d outputs) and the fill's zeros after them, bit for bit; and these starts are
    what a run of the layer's launches from its start leaves."""
    _, prog, x, blocks = case
    golden = Golden.compute(prog, x)
    runner = Runner(prog, golden)
    starts = runner.starts
    ls = prog.trace.launches
    for r, want in zip(_runs(prog), blocks):
        gemms = list(range(r.start + 1, r.end, 2))
        assert set(gemms) <= set(starts.gemm_cache)  # every group's GEMM passed its check
        layer, c = ls[r.start].layer, ls[r.start + 1].writes[0]
        first_launch = runner.layout.layer_span[layer][0]
        for g, gemm in enumerate(gemms):
            starts.clear()
            state = starts.at(layer, gemm + 1, [2, 0, 1])
            expect = torch.cat(want[:g + 1] + [torch.zeros_like(b) for b in want[g + 1:]], dim=1)[[2, 0, 1]]
            got = state[c].reshape(3, -1)
            assert torch.equal(got.view(torch.int32), expect.view(torch.int32)), (r.groups, g)
            mem = prog.lane_memory({n: golden.buffers[n][[2, 0, 1]] for n in runner.layout.live[runner.layout.layer_pos[layer]]}, 3)
            with torch.no_grad():
                prog.run(mem, first_launch, gemm + 1)
            assert torch.equal(mem[c].reshape(3, -1).view(torch.int32), got.view(torch.int32))


def test_a_kept_C_off_by_one_ulp_refuses_the_starts_that_read_that_block(case) -> None:
    """One element of the depthwise layer's group 2 one ulp off in the kept C: the starts after
    groups 0 and 1 (which do not read it) stay, those after groups 2 and 3 (the layer's last
    GEMM) are refused; the other grouped layer keeps all of its."""
    _, prog, x, _ = case
    golden = Golden.compute(prog, x)
    r = _runs(prog)[0]
    n = int(prog.trace.launches[r.start + 1].params["N"])
    kept = golden.pre[r.end - 1].clone()
    kept[0, 2 * n + 3] = torch.nextafter(kept[0, 2 * n + 3], torch.tensor(math.inf))
    golden.pre[r.end - 1] = kept
    cache = Runner(prog, golden).starts.gemm_cache
    gemms = list(range(r.start + 1, r.end, 2))
    assert [g in cache for g in gemms] == [True, True, False, False]
    other = _runs(prog)[1]
    assert all(g in cache for g in range(other.start + 1, other.end, 2))


def _depthwise_net() -> nn.Module:
    """A small MobileNet-like stack with seeded random weights (rounding matters): a stem, a
    depthwise 3x3, a pointwise 1x1, a strided depthwise, a 2x2 depthwise with padding='same'
    (asymmetric) and a groups=2 conv, BN after most."""
    torch.manual_seed(11)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU6(),
        nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 16, 3, stride=2, padding=1, groups=16), nn.ReLU(),
        nn.Conv2d(16, 16, 2, padding="same", groups=16), nn.ReLU(),
        nn.Conv2d(16, 8, 3, padding=1, groups=2), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return net.eval()


def _rows(prog, x: torch.Tensor, mode: str) -> tuple[dict[int, str], Runner]:
    golden = Golden.compute(prog, x)
    runner = Runner(prog, golden)
    planner = Planner(prog.trace, mode, "single", False, 5, x.shape[0])
    planned = [planner.draw(i) for i in range(150)]
    layer_of = {l.index: l.layer for l in prog.trace.launches}
    with torch.no_grad():
        return {e.planned.id: repr(e.result) for b in batches(planned, layer_of, 40) for e in runner.run(b)}, runner


@pytest.mark.parametrize("mode", ["iov", "ioa", "rf"])
def test_campaign_rows_with_the_grouped_golden_equal_those_without_it(mode: str, monkeypatch) -> None:
    """A campaign on a small depthwise model: the same rows with the grouped calls (the kept C
    per grouped layer, the per-group starts from it, the tails after a struck pair) as with
    every grouped convolution run pair by pair (no grouped call, nothing kept for it)."""
    prog = lower(_depthwise_net(), (3, 12, 12), "depthwise")
    x = torch.randn(3, 3, 12, 12, generator=torch.Generator().manual_seed(12))
    grouped, runner = _rows(prog, x, mode)
    grouped_gemms = {j for r in prog.groups.values() for j in range(r.start + 1, r.end, 2)}
    assert len(prog.groups) == 4
    assert len(grouped_gemms & set(runner.starts.gemm_cache)) >= 16  # the grouped golden really ran here
    monkeypatch.setattr("kernelfi.lowering.engine.run_group", lambda *a, **k: False)
    prog = lower(_depthwise_net(), (3, 12, 12), "depthwise")
    pairs, runner = _rows(prog, x, mode)
    assert not grouped_gemms & set(runner.starts.gemm_cache)  # nothing kept without the grouped call
    assert grouped == pairs
    assert len(set(grouped.values())) > 10  # a real mix of outcomes and values, not one row
