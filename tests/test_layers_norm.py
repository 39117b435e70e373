"""GroupNorm lowered as PyTorch's two CUDA passes (kernels.norm): statistics on paper, against
nn.GroupNorm, every thread replayed fault-free equal to the fast path, hand-worked faults in the
statistics pass, short campaigns, export round trip."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from kernelfi._utils import KernelfiError
from kernelfi.faults.replay import F32, Target
from kernelfi.lowering import lower
from kernelfi.types import Fault
from tests.tiny import probs_of, run_one, site

from layer_campaign import ensure_registered, short_campaign

from layer_replay import replay_every_thread

X8 = torch.arange(1.0, 9.0).reshape(1, 2, 2, 2)  # channel 0: 1..4, channel 1: 5..8


def _gn_out(prog, x):  # type: ignore[no-untyped-def]
    """The lowered GroupNorm's output buffer (lane 0, flat) and the stats it computed."""
    mem = prog.run(prog.memory(x), fast=True)
    apply = next(l for l in prog.trace.launches if l.kernel == "group_norm_apply")
    return mem[apply.writes[0]][0].reshape(-1), mem[apply.reads[1]][0].reshape(-1), mem


def _lone(g: int, affine: bool = False, eps: float = 1.0) -> nn.Module:
    return nn.Sequential(nn.GroupNorm(g, 2, eps=eps, affine=affine)).eval()


def test_statistics_on_paper() -> None:
    # G=1: one row 1..8, mean 4.5, squared deviations 2*(0.25+2.25+6.25+12.25) = 42, var 42/8
    # = 5.25, + eps 1 = 6.25, rstd = 0.4: y = (x - 4.5)*0.4
    y, st, _ = _gn_out(lower(_lone(1), (2, 2, 2), append_softmax=False), X8)
    assert st.tolist() == [4.5, np.float32(0.4)]
    want = [(v - 4.5) * np.float32(0.4) for v in range(1, 9)]
    assert y.tolist() == [float(np.float32(np.float32(v - 4.5) * np.float32(0.4))) for v in range(1, 9)]
    assert np.allclose(y.tolist(), want)
    # G=2: rows 1..4 and 5..8, means 2.5 and 6.5, var (2.25+0.25)*2/4 = 1.25, + 1 = 2.25, rstd 2/3.
    # Welford: lanes 0..3 hold one element each; offsets 16, 8, 4 meet empty lanes; offset 2
    # combines (1, 3) -> mean 2, m2 = 2^2*1*0.5 = 2; offset 1: (2, 2) with (3, 2) -> 2.5, 2+2+1*2*0.5 = 5
    y, st, _ = _gn_out(lower(_lone(2), (2, 2, 2), append_softmax=False), X8)
    r = float(np.float32(1 / np.sqrt(np.float32(2.25))))
    assert st.tolist() == [2.5, r, 6.5, r]
    assert np.allclose(y.tolist(), [-1, -1 / 3, 1 / 3, 1] * 2, atol=1e-6)


class GnNet(nn.Module):
    def __init__(self, g: int, affine: bool, c: int = 8, n: int = 5) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, c, 3, padding=1)
        self.gn = nn.GroupNorm(g, c, eps=1e-5, affine=affine)
        self.head = nn.Linear(c * 6 * 6, n)
        if affine:
            with torch.no_grad():
                self.gn.weight.uniform_(0.5, 1.5)
                self.gn.bias.uniform_(-1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.relu(self.gn(self.conv(x))).flatten(1))


@pytest.mark.parametrize("g,affine", [(1, True), (2, False), (4, True), (8, False)])
def test_lowered_matches_pytorch(g: int, affine: bool) -> None:
    torch.manual_seed(g)
    net = GnNet(g, affine).eval()
    prog = lower(net, (3, 6, 6), append_softmax=False)
    x = torch.randn(3, 3, 6, 6)
    with torch.no_grad():
        want = net(x)
        gn_want = net.gn(net.conv(x))
    got = prog.forward(x)[0]
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-5), (got - want).abs().max()
    # per element: a lone GroupNorm's output within 4 ulp (of max(|y|, 1)) of nn.GroupNorm's (CPU)
    lone = nn.Sequential(net.gn).eval()
    plone = lower(lone, (8, 6, 6), append_softmax=False)
    xs = torch.randn(3, 8, 6, 6) * 3 + 1
    y, _, _ = _gn_out(plone, xs)
    with torch.no_grad():
        ref = lone(xs)
    y = plone.run(plone.memory(xs), fast=True)[next(l for l in plone.trace.launches
                                                     if l.kernel == "group_norm_apply").writes[0]].reshape(ref.shape)
    spacing = torch.from_numpy(np.spacing(np.maximum(ref.abs().numpy(), 1.0).astype(np.float32))).double()
    ulps = ((y.double() - ref.double()).abs() / spacing).max().item()
    assert ulps <= 4, ulps
    assert gn_want.shape == ref.shape


def _replayed(prog, launch, mem):  # type: ignore[no-untyped-def]
    """Every thread of ``launch`` replayed without a fault on lane 0 of ``mem``: buffer -> {index: value}."""
    return replay_every_thread(prog, launch, mem, once=False)


@pytest.mark.parametrize("g,affine,hw", [(2, True, 6), (4, False, 6), (1, True, 5)])
def test_fault_free_replay_equals_fast_path(g: int, affine: bool, hw: int) -> None:
    torch.manual_seed(3)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.GroupNorm(g, 8, affine=affine)).eval()
    if affine:
        with torch.no_grad():
            net[1].weight.uniform_(0.5, 1.5)
            net[1].bias.uniform_(-1, 1)
    prog = lower(net, (3, hw, hw), append_softmax=False)
    x = torch.randn(1, 3, hw, hw)
    mem = prog.run(prog.memory(x), fast=True)
    for l in prog.trace.launches:
        if not l.kernel.startswith("group_norm"):
            continue
        got = _replayed(prog, l, mem)
        want = mem[l.writes[0]][0].reshape(-1)
        assert set(got[l.writes[0]]) == set(range(want.numel())), l.kernel
        vals = torch.tensor([float(got[l.writes[0]][i]) for i in range(want.numel())])
        assert torch.equal(vals, want), (l.kernel, (vals - want).abs().max())


def _moments_thread(prog, x, thread: int, target: Target):  # type: ignore[no-untyped-def]
    from kernelfi.faults import programs_layers  # noqa: F401
    from kernelfi.faults.memmap import MemoryMap
    from kernelfi.faults.programs import PROGRAMS
    from kernelfi.faults.replay import ThreadCtx

    l = next(l for l in prog.trace.launches if l.kernel == "group_norm_moments")
    flat = x.reshape(-1)
    ctx = ThreadCtx(MemoryMap.from_trace(prog.trace), lambda b, i: F32(flat[i].item()),
                    {"x": l.reads[0], "stats": l.writes[0]}, target)
    PROGRAMS[l.kernel](ctx, l.params, thread)
    return ctx, {i: float(v) for (b, i), v in ctx.overlay.items() if b == l.writes[0]}


def test_flipped_load_moves_its_groups_mean() -> None:
    prog = lower(_lone(2), (2, 2, 2), append_softmax=False)
    # lane 0 of row 0 loads x = 1.0; its sign flipped: the row is -1, 2, 3, 4: mean 2 (moved by
    # (-1 - 1)/4 = -0.5), deviations -3, 0, 1, 2: var 14/4 = 3.5, + 1: rstd = 1/sqrt(4.5)
    ctx, st = _moments_thread(prog, X8, 0, Target("ld:x", 0, "iov", "single", (31,)))
    assert (ctx.original, ctx.corrupted) == (1.0, -1.0)
    # row 1 is not this thread's; rsqrt is torch.rsqrt's (1 ulp of the correctly rounded value,
    # as MUFU.RSQ is not correctly rounded either)
    assert set(st) == {0, 1} and st[0] == 2.0 and st[1] == pytest.approx(1 / np.sqrt(4.5), rel=1.2e-7)
    # lane 3 of row 1 (thread 35) loads 8.0; bit 22 flipped: 12.0. Lane 3 stores nothing, yet row
    # 1's mean (lane 0's store) becomes (5+6+7+12)/4 = 7.5; deviations -2.5, -1.5, -0.5, 4.5:
    # var (6.25+2.25+0.25+20.25)/4 = 7.25, + 1 = 8.25
    ctx, st = _moments_thread(prog, X8, 35, Target("ld:x", 0, "iov", "single", (22,)))
    assert (ctx.original, ctx.corrupted) == (8.0, 12.0)
    assert set(st) == {2, 3} and st[2] == 7.5
    assert st[3] == pytest.approx(1 / np.sqrt(8.25), rel=1e-6)


def test_moments_fault_shifts_every_output_of_its_group_end_to_end() -> None:
    net = nn.Sequential(nn.GroupNorm(2, 2, eps=1.0, affine=False), nn.Flatten(), nn.Linear(8, 2, bias=False)).eval()
    with torch.no_grad():
        net[2].weight.zero_()
        net[2].weight[0, 0] = 1.0   # logit 0 = y[0] (group 0)
        net[2].weight[1, 7] = 1.0   # logit 1 = y[7] (group 1)
    prog = lower(net, (2, 2, 2))
    name = next(l.name for l in prog.trace.launches if l.kernel == "group_norm_moments")
    # golden: y0 = (1 - 2.5)*2/3 = -1, y7 = 1; the sign flip of thread 0's load: mean 2, rstd
    # 1/sqrt(4.5): y0 = (1 - 2)/sqrt(4.5) = -0.4714 (the apply pass reads the true 1.0)
    r, probs = run_one(prog, Fault("iov", site(prog, name, "ld:x", 0), "single", (31,)), X8)
    assert (r.original, r.corrupted) == (1.0, -1.0)
    assert torch.allclose(probs, probs_of([-1 / np.sqrt(4.5), 1.0]), atol=1e-6)
    assert (r.golden_top1, r.faulty_top1) == (1, 1)


def test_long_rows_run_512_threads_and_a_block_reduction() -> None:
    # a row of 2*16*20 = 640 elements: 512 threads (two Welford trips for lanes below 128), the
    # warp reductions, then warp 0 over the 16 warps' results
    net = nn.Sequential(nn.GroupNorm(1, 2, eps=1e-5, affine=False)).eval()
    prog = lower(net, (2, 16, 20), append_softmax=False)
    mom = next(l for l in prog.trace.launches if l.kernel == "group_norm_moments")
    assert (mom.template.threads, mom.template.block, prog.trace.launches.index(mom) >= 0) == (512, 512, True)
    x = torch.randn(1, 2, 16, 20) * 2 + 3
    y, st, mem = _gn_out(prog, x)
    with torch.no_grad():
        ref = net(x).reshape(-1)
    spacing = torch.from_numpy(np.spacing(np.maximum(ref.abs().numpy(), 1.0).astype(np.float32))).double()
    assert ((y.double() - ref.double()).abs() / spacing).max().item() <= 4
    for l in prog.trace.launches:  # every thread of both launches replayed = the fast path
        got = _replayed(prog, l, mem)[l.writes[0]]
        want = mem[l.writes[0]][0].reshape(-1)
        assert torch.equal(torch.tensor([float(got[i]) for i in range(want.numel())]), want), l.kernel
    # all ones: mean 1, var 0. Thread 33 (warp 1, lane 1) loads element 33; its sign flipped, the
    # row holds 639 ones and a -1: mean 638/640, var (639*(1 - m)^2 + (1 + m)^2)/640
    ones = torch.ones(1, 2, 16, 20)
    ctx, got = _moments_thread(prog, ones, 33, Target("ld:x", 0, "iov", "single", (31,)))
    assert (ctx.original, ctx.corrupted) == (1.0, -1.0)
    m = 638 / 640
    var = (639 * (1 - m) ** 2 + (1 + m) ** 2) / 640
    assert got[0] == pytest.approx(m, rel=1e-6) and got[1] == pytest.approx(1 / np.sqrt(var + 1e-5), rel=1e-5)


class GnBoth(nn.Module):
    """An affine GroupNorm and one without (a non-affine apply reads no gamma/beta: the fuzzer
    found the replay's operand lookup failing on it), 3x6x6 -> n."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.body = GnNet(2, True, n=n)
        self.gn2 = nn.GroupNorm(4, 8, affine=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.body
        return b.head(F.relu(self.gn2(b.gn(b.conv(x)))).flatten(1))


def build_gn(num_classes: int) -> nn.Module:
    return GnBoth(num_classes)


@pytest.mark.parametrize("mode", ["rf", "iov", "ioa"])
def test_short_campaign_has_no_tool_error(mode: str, tmp_path: Path) -> None:
    name = ensure_registered("groupnorm-tiny", build_gn, (3, 6, 6), 5, "GroupNorm")
    struck = {r.launch_name for r in short_campaign(name, mode, tmp_path)}
    assert any(l.startswith(("gn", "body.gn")) for l in struck), struck


class GnExport(nn.Module):
    """Two GroupNorms (affine and not) between convs, on a 3x6x6 input."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.gn = nn.GroupNorm(2, 4, eps=1e-3)
        self.conv2 = nn.Conv2d(4, 4, 1)
        self.gn2 = nn.GroupNorm(4, 4, affine=False)
        self.head = nn.Linear(4 * 6 * 6, 3)
        with torch.no_grad():
            self.gn.weight.copy_(torch.tensor([0.5, 1.5, -1.0, 2.0]))
            self.gn.bias.copy_(torch.tensor([0.1, -0.2, 0.3, 0.0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.gn2(self.conv2(F.relu(self.gn(self.conv(x))))).flatten(1))


def test_export_round_trip_bitwise(tmp_path: Path) -> None:
    from kernelfi.harden import Plan
    from kernelfi.harden.export import export_model, launch_op, load_exported
    from kernelfi.harden.export.mapping import graph_ops
    from kernelfi.harden.units import abft_plan
    from kernelfi.lowering import lower_fx

    torch.manual_seed(0)
    m, x = GnExport().eval(), torch.randn(4, 3, 6, 6, generator=torch.Generator().manual_seed(1))
    lowered, trace = lower_fx(m, (3, 6, 6)), lower(m, (3, 6, 6)).trace
    ops = graph_ops(lowered)
    got = {l.name: getattr(launch_op(lowered, ops, l), "node", None) for l in trace.launches
           if l.kernel.startswith("group_norm")}
    assert got == {"gn.group_norm_moments": "gn", "gn.group_norm_apply": "gn",
                   "gn2.group_norm_moments": "gn2", "gn2.group_norm_apply": "gn2"}
    export_model(m, Plan("gn", abft_plan(trace).protect), tmp_path / "e", input_shape=(3, 6, 6), name="gn",
                 check_inputs=x)
    src = "\n".join(p.read_text() for p in (tmp_path / "e").rglob("*.py"))
    assert "nn.GroupNorm(2, 4, eps=0.001, affine=True)" in src and "nn.GroupNorm(4, 4, eps=1e-05, affine=False)" in src
    with torch.no_grad():
        want = m(x)
        for variant in ("none", "plan", "full-dmr", "full-tmr"):
            assert torch.equal(load_exported(tmp_path / "e", variant)(x).view(torch.int32), want.view(torch.int32)), variant


@pytest.mark.parametrize("mod, says", [(nn.InstanceNorm2d(2), "batch_norm_collect_statistics_kernel"),
                                       (nn.InstanceNorm2d(2, affine=True), "GroupNorm\\(C, C\\)"),
                                       (nn.LayerNorm((2, 3, 3)), "vectorized_layer_norm_kernel")])
def test_instance_and_layer_norm_are_refused_in_one_line(mod: nn.Module, says: str) -> None:
    with pytest.raises(KernelfiError, match=says) as e:
        lower(nn.Sequential(mod).eval(), (2, 3, 3))
    assert "\n" not in str(e.value)


def test_group_norm_with_one_group_per_channel_is_instance_norm() -> None:
    # the refusal's suggestion holds: GroupNorm(C, C) lowered equals nn.InstanceNorm2d(C) within 1e-6
    x = torch.randn(2, 4, 5, 5)
    prog = lower(nn.Sequential(nn.GroupNorm(4, 4, affine=False)).eval(), (4, 5, 5), append_softmax=False)
    mem = prog.run(prog.memory(x), fast=True)
    y = mem[next(l for l in prog.trace.launches if l.kernel == "group_norm_apply").writes[0]].reshape(x.shape)
    assert torch.allclose(y, F.instance_norm(x), atol=1e-6)
