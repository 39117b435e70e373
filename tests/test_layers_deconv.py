"""``nn.ConvTranspose2d`` lowered as Darknet's [deconvolutional] layer (PyTorch's
slow_conv_transpose2d): fill of the columns, gemm with A transposed (columns = W^T . X), col2im,
bias/BN/activation. Hand examples worked out on paper, a small U-Net against PyTorch, every
col2im thread replayed fault-free against the batched kernel, hand-worked faults in the col2im
loop, and short campaigns per mode."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from kernelfi._utils import KernelfiError
from kernelfi.lowering import lower
from kernelfi.types import Fault
from tests.tiny import probs_of, run_one, site

from layer_campaign import ensure_registered, short_campaign

from layer_replay import replay_every_thread

X2 = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])


def _deconv_net(k: int, stride: int, pad: int, weight: torch.Tensor) -> nn.Module:
    up = nn.ConvTranspose2d(1, 1, k, stride=stride, padding=pad, bias=False)
    with torch.no_grad():
        up.weight.copy_(weight.reshape(1, 1, k, k))
    return nn.Sequential(up, nn.Flatten()).eval()


def _col2im(prog):  # type: ignore[no-untyped-def]
    return next(l for l in prog.trace.launches if l.kernel == "col2im")


# ------------------------------------------------------------------ by hand
#: k=2, s=2: each input pixel x[i][j] paints x[i][j]*K onto the 2x2 block at (2i, 2j); no overlap
K2 = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
HAND_K2 = [1, 2, 2, 4,
           3, 4, 6, 8,
           3, 6, 4, 8,
           9, 12, 12, 16]
#: k=3 (K[a][b] = 3a + b + 1), s=1, p=1 on 2x2 -> 2x2: out[h][w] = sum_ij x[i][j]*K[h+1-i][w+1-j],
#: every output covered by all four windows: out[0][0] = 1*5 + 2*4 + 3*2 + 4*1 = 23,
#: out[0][1] = 1*6 + 2*5 + 3*3 + 4*2 = 33, out[1][0] = 1*8 + 2*7 + 3*5 + 4*4 = 53,
#: out[1][1] = 1*9 + 2*8 + 3*6 + 4*5 = 63
K3 = torch.arange(1.0, 10.0).reshape(3, 3)
HAND_K3 = [23.0, 33.0, 53.0, 63.0]


@pytest.mark.parametrize("k, stride, pad, weight, want", [(2, 2, 0, K2, HAND_K2), (3, 1, 1, K3, HAND_K3)])
def test_hand_examples(k: int, stride: int, pad: int, weight: torch.Tensor, want: list[float]) -> None:
    net = _deconv_net(k, stride, pad, weight)
    prog = lower(net, (1, 2, 2))
    assert [l.kernel for l in prog.trace.launches] == ["fill", "gemm", "col2im", "add_bias", "activate_array",
                                                        "softmax"]
    g = next(l for l in prog.trace.launches if l.kernel == "gemm")
    assert (g.params["M"], g.params["N"], g.params["K"], g.params["trans_a"]) == (k * k, 4, 1, True)
    for fast in (True, False):
        assert prog.forward(X2, fast=fast)[0][0].tolist() == [float(v) for v in want]
    with torch.no_grad():
        assert net(X2)[0].tolist() == [float(v) for v in want]  # PyTorch agrees


def test_k3_s2_output_padding_by_hand() -> None:
    # ConvTranspose2d(1, 1, 3, stride=2, padding=1, output_padding=1), weights all 1, on 2x2:
    # output 4x4 ((2-1)*2 - 2 + 3 + 1). Padded coordinate y = h + 1 is covered by window i where
    # 0 <= y - 2i < 3: y=1 (h=0): i=0; y=2: i=0, 1; y=3: i=1; y=4: i=1 (the output_padding row).
    # So row 0 reads input row 0, row 1 rows 0+1, rows 2 and 3 row 1 (columns alike):
    # out[0] = [1, 1+2, 2, 2], out[1] = [1+3, 10, 2+4, 6], out[2] = out[3] = [3, 7, 4, 4]
    net = nn.Sequential(nn.ConvTranspose2d(1, 1, 3, stride=2, padding=1, output_padding=1, bias=False),
                        nn.Flatten()).eval()
    with torch.no_grad():
        net[0].weight.fill_(1.0)
    prog = lower(net, (1, 2, 2))
    want = [1, 3, 2, 2, 4, 10, 6, 6, 3, 7, 4, 4, 3, 7, 4, 4]
    assert prog.forward(X2, fast=False)[0][0].tolist() == [float(v) for v in want]


# ------------------------------------------------------------------ against PyTorch
class TinyUNet(nn.Module):
    """Down (conv, pool), up (ConvTranspose2d k2 s2 + BN + ReLU), skip concat, up (k3 s2 p1
    op1, no bias), head: on 2x8x8."""

    def __init__(self, n: int = 4) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(2, 4, 3, padding=1)
        self.down = nn.MaxPool2d(2)
        self.c2 = nn.Conv2d(4, 6, 3, padding=1)
        self.up = nn.ConvTranspose2d(6, 4, 2, stride=2)
        self.bn = nn.BatchNorm2d(4)
        self.up2 = nn.ConvTranspose2d(8, 3, 3, stride=2, padding=1, output_padding=1, bias=False)
        self.head = nn.Linear(3 * 16 * 16, n)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = F.relu(self.c1(x))
        b = F.relu(self.c2(self.down(a)))
        u = torch.cat([F.relu(self.bn(self.up(b))), a], 1)
        return self.head(torch.tanh(self.up2(u)).flatten(1))


def build_unet(num_classes: int) -> TinyUNet:
    """The registered builder (top level: campaign workers import it)."""
    torch.manual_seed(3)
    m = TinyUNet(num_classes).eval()
    with torch.no_grad():
        m.bn.running_mean.uniform_(-0.5, 0.5)
        m.bn.running_var.uniform_(0.5, 2.0)
    return m


def test_unet_lowers_exactly() -> None:
    m = build_unet(4)
    prog = lower(m, (2, 8, 8))
    kinds = [l.kernel for l in prog.trace.launches]
    assert kinds.count("col2im") == 2
    up = [l for l in prog.trace.launches if l.layer_type == "deconvolutional"]
    assert [l.kernel for l in up[:7]] == ["fill", "gemm", "col2im", "normalize", "scale_bias", "add_bias",
                                         "activate_array"]   # BN and ReLU fused into the layer
    torch.manual_seed(1)
    x = torch.randn(3, 2, 8, 8)
    with torch.no_grad():
        ref = m(x)
    for fast in (True, False):
        assert (prog.forward(x, fast=fast)[0] - ref).abs().max().item() <= 1e-5 * max(ref.abs().max().item(), 1.0)


def test_unsupported_forms_refused_in_one_line() -> None:
    for mod, what in ((nn.ConvTranspose2d(2, 2, 3, groups=2), "groups=2"),
                      (nn.ConvTranspose2d(2, 2, 3, dilation=2), "dilation"),
                      (nn.ConvTranspose2d(2, 2, (2, 3)), "non-square kernel")):
        with pytest.raises(KernelfiError, match=what) as e:
            lower(nn.Sequential(mod, nn.Flatten()).eval(), (2, 4, 4))
        assert "\n" not in str(e.value)

    class Sized(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.up = nn.ConvTranspose2d(2, 2, 3, stride=2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.up(x, output_size=[10, 10]).flatten(1)

    with pytest.raises(KernelfiError, match="output_size"):
        lower(Sized().eval(), (2, 4, 4))


# ------------------------------------------------------------------ replay
def _replayed(prog, launch, mem):  # type: ignore[no-untyped-def]
    """Every thread of ``launch`` replayed without a fault on lane 0: {output index: value}."""
    got = replay_every_thread(prog, launch, mem)
    assert set(got) == {launch.writes[0]}
    return got[launch.writes[0]]


def test_fault_free_replay_of_every_col2im_thread_equals_the_kernel() -> None:
    m = build_unet(4)
    prog = lower(m, (2, 8, 8))
    torch.manual_seed(2)
    x = torch.randn(1, 2, 8, 8)
    for l in (l for l in prog.trace.launches if l.kernel == "col2im"):
        mem = prog.run(prog.memory(x), stop=l.index, fast=True, keep=(l.reads[0],))
        cols = mem[l.reads[0]].clone()
        prog.run(mem, start=l.index, stop=l.index + 1, keep=(l.writes[0],))
        want = mem[l.writes[0]][0].reshape(-1)
        got = _replayed(prog, l, {l.reads[0]: cols})
        assert sorted(got) == list(range(want.numel()))
        assert torch.equal(torch.tensor([float(got[i]) for i in range(want.numel())]), want)
        # the windows overlap (k3 s2) or not (k2 s2); F.fold sums in another order: close, not the point
        c, h, w = (l.params[k] for k in ("channels", "height", "width"))
        ks, st, pad = (l.params[k] for k in ("ksize", "stride", "pad"))
        n = l.params["height_col"] * l.params["width_col"]
        fold = F.fold(cols[0, :c * ks * ks * n].reshape(1, c * ks * ks, n), (h, w), ks, padding=pad, stride=st)
        assert torch.allclose(fold.reshape(-1), want, atol=1e-5)


# ------------------------------------------------------------------ faults by hand
def test_flipped_column_load_changes_one_pixel() -> None:
    # k=2, s=2: thread 0 (output (0, 0)) loads one column entry, x[0][0]*K[0][0] = 1.0
    # (0x3F800000); bit 23 flipped: 0x3F000000 = 0.5. Only output 0 changes, 1 -> 0.5.
    prog = lower(_deconv_net(2, 2, 0, K2), (1, 2, 2))
    l = _col2im(prog).name
    r, probs = run_one(prog, Fault("iov", site(prog, l, "ld:col", 0), "single", (23,)), X2)
    assert (r.original, r.corrupted) == (1.0, 0.5)
    assert torch.allclose(probs, probs_of([0.5] + [float(v) for v in HAND_K2[1:]]), atol=1e-7)


def test_flipped_running_sum_in_overlapping_windows() -> None:
    # k=3, s=1, p=1: thread 0 sums (h_col, w_col) = (0,0), (0,1), (1,0), (1,1): entries
    # x00*K11 = 5, x01*K10 = 8, x10*K01 = 6, x11*K00 = 4; running sums 5, 13, 19, 23. The second
    # FADD's 13.0 (0x41500000) with bit 23 flipped: 0x41D00000 = 26.0, then 26 + 6 + 4 = 36.
    prog = lower(_deconv_net(3, 1, 1, K3), (1, 2, 2))
    l = _col2im(prog).name
    r, probs = run_one(prog, Fault("iov", site(prog, l, "fadd:val", 0, exec_=1, calls=4), "single", (23,)), X2)
    assert (r.original, r.corrupted) == (13.0, 26.0)
    assert torch.allclose(probs, probs_of([36.0, 33.0, 53.0, 63.0]), atol=1e-6)
    # its third load (x10*K01 = 6.0 = 0x40C00000), bit 22 flipped: 0x40800000 = 4.0: 23 - 2 = 21
    r, probs = run_one(prog, Fault("iov", site(prog, l, "ld:col", 0, exec_=2, calls=4), "single", (22,)), X2)
    assert (r.original, r.corrupted) == (6.0, 4.0)
    assert torch.allclose(probs, probs_of([21.0, 33.0, 53.0, 63.0]), atol=1e-6)


# ------------------------------------------------------------------ campaigns
NAME = "test_tiny_unet_deconv"


@pytest.fixture(scope="module")
def registered() -> str:
    return ensure_registered(NAME, build_unet, (2, 8, 8), 4, "ConvTranspose2d: gemm (A transposed) + col2im")


@pytest.mark.parametrize("mode", ["rf", "iov", "ioa"])
def test_campaign_has_no_tool_error(registered: str, mode: str, tmp_path: Path) -> None:
    short_campaign(registered, mode, tmp_path, inputs=4)


# ------------------------------------------------------------------ hardening and export
def test_trace_hardening_of_deconv_launches_keeps_the_values() -> None:
    # full TMR and full DMR of every kernel (fill, gemm and col2im of a deconv as one unit) and ABFT of every gemm (the deconv's trans_a
    # gemm onto its zero-filled columns included) give the unhardened logits bit for bit
    from kernelfi.harden import abft_plan, apply_plan
    from kernelfi.harden.plan import full_plan

    m = build_unet(4)
    prog = lower(m, (2, 8, 8))
    x = torch.randn(2, 2, 8, 8, generator=torch.Generator().manual_seed(4))
    want = prog.forward(x, fast=False)[0]
    kernels = sorted({l.kernel for l in prog.trace.launches})
    for plan in (full_plan("model", kernels, "tmr"), full_plan("model", kernels, "dmr"), abft_plan(prog.trace)):
        hard = apply_plan(prog, plan)
        assert {"col2im", "gemm"} <= {l.kernel for l in hard.trace.launches}
        assert len(hard.trace.launches) > len(prog.trace.launches)
        assert torch.equal(hard.forward(x, fast=False)[0], want)


def test_export_runs_bit_identical_and_refuses_abft_of_a_deconv(tmp_path: Path) -> None:
    from kernelfi.harden import Plan, Protection, abft_plan
    from kernelfi.harden.export import export_model, launch_op, load_exported
    from kernelfi.harden.export.mapping import graph_ops
    from kernelfi.lowering import lower_fx

    m, shape = build_unet(4), (2, 8, 8)
    lowered, trace = lower_fx(m, shape), lower(m, shape).trace
    ops = graph_ops(lowered)
    got = {l.name: launch_op(lowered, ops, l).node for l in trace.launches if l.layer_type == "deconvolutional"}
    # the gemm and col2im (and fill) to the ConvTranspose2d, BN's launches to the BN, ReLU to relu
    assert {k: got[k] for k in ("up.fill", "up.gemm", "up.col2im", "up.normalize", "up.add_bias",
                                "up.activate_array", "up2.col2im", "up2.add_bias")} == {
        "up.fill": "up", "up.gemm": "up", "up.col2im": "up", "up.normalize": "bn", "up.add_bias": "bn",
        "up.activate_array": "relu_2", "up2.col2im": "up2", "up2.add_bias": "up2"}
    x = torch.randn(5, *shape, generator=torch.Generator().manual_seed(6))
    export_model(m, Plan("u", ()), tmp_path / "e", input_shape=shape, name="u", check_inputs=x)
    with torch.no_grad():
        want = m(x)
        for variant in ("none", "full-dmr", "full-tmr"):
            assert torch.equal(load_exported(tmp_path / "e", variant)(x).view(torch.int32), want.view(torch.int32))
    # full ABFT (and so the planner) leaves the transposed convolutions' gemms out: it exports
    full = abft_plan(trace).protect
    named = {p.name for p in full}
    assert "up.gemm" not in named and "up2.gemm" not in named and named  # the ordinary convs' gemms stay
    export_model(m, Plan("u", full), tmp_path / "g", input_shape=shape, name="u", check_inputs=x)
    assert torch.equal(load_exported(tmp_path / "g", "plan")(x).view(torch.int32), want.view(torch.int32))
    # a plan naming one anyway is refused by the export in one line
    with pytest.raises(KernelfiError, match="abft of up.gemm maps to ConvTranspose2d up, not a Conv2d or Linear"):
        export_model(m, Plan("u", (Protection("launch", "up.gemm", "abft"),)), tmp_path / "f", input_shape=shape,
                     name="u", check_inputs=x)
