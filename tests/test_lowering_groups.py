"""Grouped and depthwise convolutions in the fast path: one F.conv2d(groups=G) where the
self-check finds it equal to the per-group calls, else the per-group calls (lowering.groups)."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from kernelfi.lowering import groups as groups_mod
from kernelfi.lowering import lower

from tiny import whole_weights

SHAPE = (4, 5, 5)


def _net() -> nn.Module:
    """Depthwise 3x3 (pad 1) then groups=2 3x3 (no pad) and a linear head, with small whole
    weights and biases so every sum is exact in float32 (each path gives the same bits)."""
    return whole_weights(nn.Sequential(nn.Conv2d(4, 4, 3, padding=1, groups=4), nn.ReLU(),
                                       nn.Conv2d(4, 2, 3, groups=2), nn.ReLU(), nn.Flatten(), nn.Linear(18, 3)), 3)


def _hand(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The network's logits by explicit loops over groups, channels and windows (float64)."""
    def conv(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, groups: int, pad: int) -> torch.Tensor:
        x = torch.nn.functional.pad(x, (pad, pad, pad, pad)).double()
        cin, cout = x.shape[0] // groups, w.shape[0] // groups
        oh, ow = x.shape[1] - 2, x.shape[2] - 2
        y = torch.zeros(w.shape[0], oh, ow, dtype=torch.float64)
        for o in range(w.shape[0]):
            gi = o // cout
            for i in range(oh):
                for j in range(ow):
                    win = x[gi * cin:(gi + 1) * cin, i:i + 3, j:j + 3]
                    y[o, i, j] = (win * w[o].double()).sum() + float(b[o])
        return y.clamp(min=0)
    outs = []
    for lane in x:
        h = conv(lane, net[0].weight, net[0].bias, 4, 1)
        h = conv(h, net[2].weight, net[2].bias, 2, 0)
        outs.append(h.reshape(-1) @ net[5].weight.double().T + net[5].bias.double())
    return torch.stack(outs)


@pytest.fixture()
def case() -> tuple[object, torch.Tensor, torch.Tensor]:
    net = _net()
    prog = lower(net, SHAPE, "grouped")
    x = torch.randint(-3, 4, (3, *SHAPE), generator=torch.Generator().manual_seed(4)).float()
    return prog, x, _hand(net, x)


def test_grouped_layers_are_planned_as_one_call_each(case) -> None:
    prog, _, _ = case
    runs = sorted(prog.groups.values(), key=lambda r: r.start)
    assert [r.groups for r in runs] == [4, 2]
    assert [r.end - r.start for r in runs] == [8, 4]  # G im2col+gemm pairs each


@pytest.mark.parametrize("lanes", [1, 3])
def test_fast_grouped_equals_hand_and_the_kernel_path(case, lanes: int, monkeypatch) -> None:
    prog, x, want = case
    x, want = x[:lanes], want[:lanes]
    calls: list[bool] = []
    real = groups_mod.run_group
    monkeypatch.setattr("kernelfi.lowering.engine.run_group",
                        lambda *a: calls.append(r := real(*a)) or r)
    with torch.no_grad():
        fast, _ = prog.forward(x)
        slow, _ = prog.forward(x, fast=False)
    assert len(calls) == 2  # both grouped layers were offered (whether the check passes depends
    # on oneDNN here: the groups=2 layer rounds differently grouped on the lead's machine)
    assert torch.equal(fast.double(), want) and torch.equal(slow.double(), want)
    assert torch.equal(fast, slow)


def test_failed_self_check_falls_back_to_the_per_group_path(case, monkeypatch) -> None:
    prog, _, _ = case
    x = torch.randn(2, *SHAPE, generator=torch.Generator().manual_seed(5))  # rounding matters now
    with torch.no_grad():
        grouped = prog.run(prog.memory(x))
        monkeypatch.setattr(groups_mod, "grouped_agrees", lambda *a: False)
        fallback = prog.run(prog.memory(x))
        monkeypatch.setattr("kernelfi.lowering.engine.run_group", lambda *a: False)
        per_group = prog.run(prog.memory(x))
    assert fallback.keys() == per_group.keys()
    for k in per_group:  # the fallback is exactly today's per-group path
        assert torch.equal(fallback[k], per_group[k]), k
    # and where the (real) self-check passed, the grouped call gave the same bits as well
    assert all(torch.equal(grouped[k], per_group[k]) for k in per_group if k in grouped)


def test_self_check_compares_with_the_per_group_calls(case) -> None:
    prog, x, _ = case
    run = min(prog.groups.values(), key=lambda r: r.start)
    ls = prog.trace.launches
    mem = prog.memory(x)
    w = mem[ls[run.start + 1].reads[0]]
    c = torch.zeros(3, 4 * 25)
    got = groups_mod.grouped(run, ls, x, w, c)
    ref = groups_mod.per_group(run, ls, x, w, c)
    assert torch.equal(got, ref)  # whole-number operands: exact either way
    # the verdict is the bitwise comparison on seeded random operands of these shapes
    gen = torch.Generator().manual_seed(0)
    px, pw = torch.randn(tuple(x.shape), generator=gen), torch.randn(tuple(w.shape), generator=gen)
    same = torch.equal(groups_mod.grouped(run, ls, px, pw, c), groups_mod.per_group(run, ls, px, pw, c))
    assert groups_mod.grouped_agrees(run, ls, x, w, c) == same


def _whole(net: nn.Module) -> nn.Module:
    """``net`` with small whole-number weights and biases (every sum exact in float32)."""
    return whole_weights(net, 7)


def test_asymmetric_padding_grouped_conv_is_one_call_equal_to_the_per_group_calls(monkeypatch) -> None:
    """padding='same' of even kernels (2x2 depthwise, 4x4 with groups=2) pads one more row and
    column after the input than before (pad_h_after/pad_w_after): the grouped call pads the
    whole input as each group's fused_conv pads its own, in one F.conv2d, and gives PyTorch's
    own convolution of the module."""
    net = _whole(nn.Sequential(nn.Conv2d(4, 4, 2, padding="same", groups=4), nn.ReLU(),
                               nn.Conv2d(4, 4, 4, padding="same", groups=2), nn.Flatten(), nn.Linear(100, 3)))
    prog = lower(net, (4, 5, 5), "same")
    ls = prog.trace.launches
    runs = sorted(prog.groups.values(), key=lambda r: r.start)
    assert [r.groups for r in runs] == [4, 2]
    assert all("pad_h_after" in ls[r.start].params for r in runs)  # asymmetric, as lowered
    x = torch.randint(-3, 4, (3, 4, 5, 5), generator=torch.Generator().manual_seed(8)).float()
    inputs = [x, torch.relu(net[0](x))]
    calls: list[int] = []
    real = torch.nn.functional.conv2d
    monkeypatch.setattr(torch.nn.functional, "conv2d", lambda *a, **k: calls.append(k.get("groups", 1)) or real(*a, **k))
    for run, conv, inp in zip(runs, (net[0], net[2]), inputs):
        w = prog.weights[ls[run.start + 1].reads[0]]
        c = torch.zeros(3, math.prod(prog.trace.buffer(ls[run.start + 1].writes[0]).shape))
        calls.clear()
        got = groups_mod.grouped(run, ls, inp, w, c)
        assert calls == [run.groups]  # one grouped call for all G groups
        want = real(inp, conv.weight, padding="same", groups=conv.groups)  # PyTorch's own, no bias
        assert torch.equal(got, want.reshape(3, -1))
        assert torch.equal(got, groups_mod.per_group(run, ls, inp, w, c))


def test_a_tail_adds_its_groups_blocks_from_the_grouped_call(case) -> None:
    """The pairs after a struck one (groups g..G-1, ``tails``) run as the one grouped call of
    all G groups, adding only their blocks to C: C's earlier blocks stay as they were (here
    whole numbers standing for a struck group's output), later ones get C + that group's
    convolution, computed here per group with F.conv2d."""
    prog, x, _ = case
    run = min(prog.groups.values(), key=lambda r: r.start)  # the depthwise layer: 4 groups of 1 channel
    ls = prog.trace.launches
    tails = groups_mod.tails(prog.groups)
    depthwise = {k: t for k, t in tails.items() if run.start < k < run.end}
    assert sorted(depthwise) == [run.start + 2, run.start + 4]  # groups 1.. and 2.. (a lone last group: its pair)
    w = prog.weights[ls[run.start + 1].reads[0]]
    kern = w.reshape(4, 1, 3, 3)
    c = torch.randint(-5, 6, (3, 100), generator=torch.Generator().manual_seed(9)).float()
    for k, tail in depthwise.items():
        first = (k - run.start) // 2
        assert (tail.first, tail.end, tail.whole) == (first, run.end, run)
        got = groups_mod.grouped(tail, ls, x, w, c)
        want = c.clone().reshape(3, 4, 25)
        for g in range(first, 4):
            want[:, g] += torch.nn.functional.conv2d(x[:, g:g + 1], kern[g:g + 1], padding=1).reshape(3, 25)
        assert torch.equal(got, want.reshape(3, 100))
        assert torch.equal(got, groups_mod.per_group(tail, ls, x, w, c))


def test_a_run_from_inside_the_groups_takes_the_tail_with_the_pairs_bits(case, monkeypatch) -> None:
    """Program.run from group 1's im2col (where a struck layer goes on after its struck pair)
    runs the tail as one call and leaves every buffer as the pairs one by one do."""
    prog, _, _ = case
    run = min(prog.groups.values(), key=lambda r: r.start)
    x = torch.randn(2, *SHAPE, generator=torch.Generator().manual_seed(10))
    with torch.no_grad():
        before = prog.run(prog.memory(x), 0, run.start + 2)
        seen: list[int] = []
        real = groups_mod.run_group
        monkeypatch.setattr("kernelfi.lowering.engine.run_group",
                            lambda r, *a: (seen.append(r.first) if (ok := real(r, *a)) else None) or ok)
        tail = prog.run(dict(before), run.start + 2, run.end + 1)
        monkeypatch.setattr("kernelfi.lowering.engine.run_group", lambda *a: False)
        pairs = prog.run(dict(before), run.start + 2, run.end + 1)
    ls = prog.trace.launches
    if groups_mod.grouped_agrees(run, ls, before[ls[run.start].reads[0]], before[ls[run.start + 1].reads[0]],
                                 before[ls[run.start + 1].writes[0]]):
        assert seen == [1]  # the tail of groups 1..3, in one call
    assert tail.keys() == pairs.keys()
    for k in pairs:
        assert torch.equal(tail[k], pairs[k]), k
