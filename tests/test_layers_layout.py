"""Layout ops a user CNN writes that now lower: ShuffleNet's channel shuffle (``view`` into
(g, C/g), swap, ``contiguous``/``reshape`` back, and ``nn.ChannelShuffle``) as PyTorch's strided
copy ``channel_shuffle``; ``PixelShuffle``/``PixelUnshuffle`` as the same copy ``pixel_shuffle``; reflect and replicate
padding (``F.pad``, ``ReflectionPad2d``, ``ReplicationPad2d``, ``Conv2d(padding_mode=...)``) as
PyTorch's ``reflection_pad2d`` / ``replication_pad2d`` kernels. Index maps worked on paper, lowered models bit for bit against PyTorch
(they are copies), every thread's replay equal to the fast path, a hand-worked fault per kernel,
a 40-injection campaign per mode and the export bit for bit."""
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
from kernelfi.types import Fault
from tests.tiny import probs_of, run_one, site

from layer_campaign import ensure_registered, short_campaign

NEW_KERNELS = {"channel_shuffle", "pixel_shuffle", "reflection_pad2d", "replication_pad2d"}


class Fn(nn.Module):
    """A module whose forward is one function (the refusal tests)."""

    def __init__(self, fn) -> None:  # type: ignore[no-untyped-def]
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x).flatten(1)


def _launch(prog, kernel: str, k: int = 0) -> str:  # type: ignore[no-untyped-def]
    return [l.name for l in prog.trace.launches if l.kernel == kernel][k]


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(torch.int32)


# ------------------------------------------------------------------------------ channel shuffle
class Shuffle(nn.Module):
    """ShuffleNet's channel_shuffle in one of its spellings, then flat."""

    def __init__(self, g: int, form: int = 0) -> None:
        super().__init__()
        self.g, self.form = g, form

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.size()
        y = x.view(b, self.g, c // self.g, h, w)
        if self.form == 0:
            y = y.transpose(1, 2).contiguous().view(b, c, h, w)
        elif self.form == 1:
            y = torch.transpose(y, 2, 1).reshape(b, -1, h, w)
        elif self.form == 2:
            y = y.permute(0, 2, 1, 3, 4).contiguous().flatten(1, 2)
        else:
            y = y.transpose(1, 2).reshape(b, c * h * w)
        return y.flatten(1)


def test_shuffle_on_paper_and_a_source_offset_fault() -> None:
    # 1x4x2x2, g = 2: channel k holds 10k + s (s the position). The (2, 2) view's groups are
    # [c0, c1], [c2, c3]; swapped: output channels c0, c2, c1, c3.
    prog = lower(Shuffle(2).eval(), (4, 2, 2))
    assert [l.kernel for l in prog.trace.launches] == ["channel_shuffle", "softmax"]
    x = torch.tensor([10.0 * k + s for k in range(4) for s in range(4)]).reshape(1, 4, 2, 2)
    want = [0.0, 1, 2, 3, 20, 21, 22, 23, 10, 11, 12, 13, 30, 31, 32, 33]
    for fast in (True, False):
        assert prog.forward(x, fast=fast)[0][0].tolist() == want
    # thread 5: co 1 = j*2 + i with j 0, i 1, s 1: source 1 + 1*(2*4) + 0*4 = 9 (x = 21);
    # bit 2 flipped: 13 = channel 3, position 1: it copies 31
    r, probs = run_one(prog, Fault("iov", site(prog, _launch(prog, "channel_shuffle"), "imad:off_in", 5),
                                   "single", (2,)), x)
    assert (r.original, r.corrupted) == (9.0, 13.0)
    assert torch.allclose(probs, probs_of(want[:5] + [31.0] + want[6:]), atol=1e-7)
    # its loaded value 21 = 0x41a80000, bit 31 flipped: -21
    r, probs = run_one(prog, Fault("iov", site(prog, _launch(prog, "channel_shuffle"), "ld:in", 5),
                                   "single", (31,)), x)
    assert (r.original, r.corrupted) == (21.0, -21.0)
    assert torch.allclose(probs, probs_of(want[:5] + [-21.0] + want[6:]), atol=1e-7)


@pytest.mark.parametrize("form", [0, 1, 2, 3])
def test_shuffle_spellings_lower_bit_for_bit(form: int) -> None:
    m = Shuffle(3, form).eval()
    prog = lower(m, (6, 3, 5))
    assert [l.kernel for l in prog.trace.launches].count("channel_shuffle") == 1
    x = torch.randn(3, 6, 3, 5)
    for fast in (True, False):
        assert torch.equal(_bits(prog.forward(x, fast=fast)[0]), _bits(m(x)))


def test_channel_shuffle_module_lowers_bit_for_bit() -> None:
    m = nn.Sequential(nn.ChannelShuffle(4), nn.Flatten()).eval()
    prog = lower(m, (8, 2, 3))
    x = torch.randn(2, 8, 2, 3)
    assert torch.equal(_bits(prog.forward(x)[0]), _bits(m(x)))


def test_other_transposes_are_refused_in_one_line() -> None:
    bad = (
        (lambda x: x.transpose(2, 3), "only the channel shuffle"),
        (lambda x: x.view(x.size(0), 2, 2, 3, 3).transpose(1, 3).reshape(x.size(0), 4, 3, 3), "only the channel"),
        (lambda x: x.view(x.size(0), 2, 2, 3, 3).permute(0, 1, 2, 4, 3).reshape(x.size(0), 4, 3, 3), "only the"),
        (lambda x: x.view(x.size(0), 2, 2, 3, 3).transpose(1, 2) * 2, "used other than"),
        (lambda x: x.view(x.size(0), 2, 2, 3, 3).transpose(1, 2).reshape(x.size(0), 2, 18), "only back to"),
        (lambda x: x.permute(0, 2, 3, 1), "only the channel shuffle"),
    )
    for fn, msg in bad:
        with pytest.raises(KernelfiError, match=msg) as e:
            lower(Fn(fn).eval(), (4, 3, 3))
        assert "\n" not in str(e.value)


# ------------------------------------------------------------------------------ pixel shuffle
def test_pixel_shuffle_on_paper_and_a_source_offset_fault() -> None:
    # 4x1x1 -> 1x2x2, r = 2: out[0, dy, dx] = in[dy*2 + dx]: [a, b, c, d] -> [[a, b], [c, d]]
    prog = lower(nn.Sequential(nn.PixelShuffle(2), nn.Flatten()).eval(), (4, 1, 1))
    assert [l.kernel for l in prog.trace.launches] == ["pixel_shuffle", "softmax"]
    x = torch.tensor([1.0, 2.0, 3.0, 4.0]).reshape(1, 4, 1, 1)
    for fast in (True, False):
        assert prog.forward(x, fast=fast)[0][0].tolist() == [1.0, 2.0, 3.0, 4.0]
    # thread 1: dx 1 (input stride H*W = 1), x 0, dy 0, y 0, c 0: source 1 (b = 2); bit 1
    # flipped: 3 (d = 4)
    name = _launch(prog, "pixel_shuffle")
    r, probs = run_one(prog, Fault("iov", site(prog, name, "imad:off_in", 1), "single", (1,)), x)
    assert (r.original, r.corrupted) == (1.0, 3.0)
    assert torch.allclose(probs, probs_of([1.0, 4.0, 3.0, 4.0]), atol=1e-7)
    # the inverse on paper: 1x2x2 [[a, b], [c, d]] -> 4x1x1 [a, b, c, d]
    inv = lower(nn.Sequential(nn.PixelUnshuffle(2), nn.Flatten()).eval(), (1, 2, 2))
    assert inv.forward(x.reshape(1, 1, 2, 2))[0][0].tolist() == [1.0, 2.0, 3.0, 4.0]
    # its thread 2 (dy 1, dx 0: input (1, 0) = c, offset 2): bit 0 flipped reads (1, 1) = d
    r, probs = run_one(inv, Fault("iov", site(inv, _launch(inv, "pixel_shuffle"), "imad:off_in", 2), "single", (0,)),
                       x.reshape(1, 1, 2, 2))
    assert (r.original, r.corrupted) == (2.0, 3.0)
    assert torch.allclose(probs, probs_of([1.0, 2.0, 4.0, 4.0]), atol=1e-7)


@pytest.mark.parametrize("r", [2, 3])
def test_pixel_shuffle_forms_lower_bit_for_bit(r: int) -> None:
    class Pix(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.up, self.down = nn.PixelShuffle(r), nn.PixelUnshuffle(r)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.up(x)
            z = F.pixel_unshuffle(y, r) + self.down(F.pixel_shuffle(x, r))
            return torch.cat([y.flatten(1), z.flatten(1)], 1)

    m = Pix().eval()
    prog = lower(m, (2 * r * r, 3, 2))
    assert [l.kernel for l in prog.trace.launches].count("pixel_shuffle") == 4
    x = torch.randn(3, 2 * r * r, 3, 2)
    for fast in (True, False):
        assert torch.equal(_bits(prog.forward(x, fast=fast)[0]), _bits(m(x)))
    for bad, msg in ((lambda x: F.pixel_shuffle(x, 4), "pixel_shuffle by 4"),
                     (lambda x: F.pixel_unshuffle(x, 2), "pixel_unshuffle by 2")):
        with pytest.raises(KernelfiError, match=msg):
            lower(Fn(bad).eval(), (2 * r * r, 3, 3))


# ------------------------------------------------------------------------------ reflect / replicate pads
def test_reflect_pad_on_paper_and_a_reflection_fault() -> None:
    # [[1, 2, 3]] reflected by 2 each side: [3, 2, 1, 2, 3, 2, 1]
    prog = lower(Fn(lambda x: F.pad(x, (2, 2, 0, 0), mode="reflect")).eval(), (1, 1, 3))
    assert [l.kernel for l in prog.trace.launches] == ["reflection_pad2d", "softmax"]
    x = torch.tensor([[[[1.0, 2.0, 3.0]]]])
    want = [3.0, 2.0, 1.0, 2.0, 3.0, 2.0, 1.0]
    for fast in (True, False):
        assert prog.forward(x, fast=fast)[0][0].tolist() == want
    # thread 0 (ox 0): |0 - 2| = 2, |0 - (3 + 2 - 1)| = 4, ix = 2 - 4 - 0 + 2 + 3 - 1 = 2 (x = 3);
    # the first |.| bit 1 flipped: 0, ix = 0: it copies 1
    name = _launch(prog, "reflection_pad2d")
    r, probs = run_one(prog, Fault("iov", site(prog, name, "iabs:reflect", 0, exec_=0, calls=4), "single", (1,)), x)
    assert (r.original, r.corrupted) == (2.0, 0.0)
    assert torch.allclose(probs, probs_of([1.0] + want[1:]), atol=1e-7)


def test_replicate_pad_on_paper_a_masked_and_an_offset_fault() -> None:
    # [[1, 2, 3]] replicated 2 left, 1 right: [1, 1, 1, 2, 3, 3]
    prog = lower(nn.Sequential(nn.ReplicationPad2d((2, 1, 0, 0)), nn.Flatten()).eval(), (1, 1, 3))
    x = torch.tensor([[[[1.0, 2.0, 3.0]]]])
    want = [1.0, 1.0, 1.0, 2.0, 3.0, 3.0]
    for fast in (True, False):
        assert prog.forward(x, fast=fast)[0][0].tolist() == want
    name = _launch(prog, "replication_pad2d")
    # thread 5 (ox 5): max(5, 2) = 5, min(5, 3 + 2 - 1) = 4, ix = 2 (x = 3). The max's bit 1
    # flipped: 7, min(7, 4) = 4 still: masked
    r, probs = run_one(prog, Fault("iov", site(prog, name, "imnmx:clamp", 5, exec_=0, calls=4), "single", (1,)), x)
    assert (r.original, r.corrupted) == (5.0, 7.0) and r.outcome == "masked"
    # its input offset 2, bit 1 flipped: 0: it copies 1
    r, probs = run_one(prog, Fault("iov", site(prog, name, "imad:off_in", 5), "single", (1,)), x)
    assert (r.original, r.corrupted) == (2.0, 0.0)
    assert torch.allclose(probs, probs_of(want[:5] + [1.0]), atol=1e-7)


def test_pad_modes_and_conv_padding_modes_lower_against_pytorch() -> None:
    class Pads(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.r, self.p = nn.ReflectionPad2d((2, 1, 1, 2)), nn.ReplicationPad2d(3)
            self.c1 = nn.Conv2d(2, 3, 3, padding=1, padding_mode="reflect")
            self.c2 = nn.Conv2d(2, 3, 3, padding=(2, 1), padding_mode="replicate")

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            pads = [self.r(x), self.p(x), F.pad(x, (1, 2, 0, 0), mode="reflect"),
                    F.pad(x, (0, 1, 2, 3), mode="replicate")]
            return torch.cat([t.flatten(1) for t in pads] + [self.c1(x).flatten(1), self.c2(x).flatten(1)], 1)

    torch.manual_seed(0)
    m = Pads().eval()
    prog = lower(m, (2, 3, 4))
    kernels = [l.kernel for l in prog.trace.launches]
    assert kernels.count("reflection_pad2d") == 3 and kernels.count("replication_pad2d") == 3
    x = torch.randn(3, 2, 3, 4)
    with torch.no_grad():
        ref = m(x)
    n = 2 * (6 * 7 + 9 * 10 + 3 * 7 + 8 * 5)    # the four pads: copies, bit for bit
    for fast in (True, False):
        got = prog.forward(x, fast=fast)[0]
        assert torch.equal(_bits(got[:, :n]), _bits(ref[:, :n]))
        assert (got - ref).abs().max().item() <= 1e-5 * max(ref.abs().max().item(), 1.0)
    for bad, msg in ((lambda x: F.pad(x, (1, 1, 1, 1), mode="circular"), "circular"),
                     (lambda x: F.pad(x, (4, 0, 0, 0), mode="reflect"), "smaller than its extent"),
                     (lambda x: F.pad(x, (1, 1), mode="replicate"), "all four")):
        with pytest.raises(KernelfiError, match=msg) as e:
            lower(Fn(bad).eval(), (2, 3, 4))
        assert "\n" not in str(e.value)
    with pytest.raises(KernelfiError, match="padding_mode 'circular'"):
        lower(nn.Sequential(nn.Conv2d(2, 2, 3, padding=1, padding_mode="circular")).eval(), (2, 3, 4))


# ------------------------------------------------------------------------------ a net with them all
class LayoutNet(nn.Module):
    """Every new layout op in a 3x8x8 -> n classifier."""

    def __init__(self, n: int = 4) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1, padding_mode="replicate")
        self.shuffle = nn.ChannelShuffle(2)
        self.rpad = nn.ReflectionPad2d(1)
        self.conv = nn.Conv2d(8, 8, 3, groups=4)
        self.unshuf = nn.PixelUnshuffle(2)
        self.mix = nn.Conv2d(32, 32, 1)
        self.head = nn.Linear(8 * 8 * 8, n)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.stem(x))
        b, c, h, w = y.size()
        y = y.view(b, 4, c // 4, h, w).transpose(1, 2).contiguous().view(b, c, h, w)
        y = self.conv(self.rpad(y))
        y = F.pixel_shuffle(self.mix(self.unshuf(y)), 2)
        y = self.shuffle(y)
        return self.head(y.flatten(1))


def test_the_net_lowers_exactly_and_every_thread_replays_as_the_fast_path() -> None:
    torch.manual_seed(0)
    m = LayoutNet().eval()
    prog = lower(m, (3, 8, 8))
    assert [l.kernel for l in prog.trace.launches].count("channel_shuffle") == 2
    assert [l.kernel for l in prog.trace.launches].count("pixel_shuffle") == 2
    assert {"reflection_pad2d", "replication_pad2d"} <= {l.kernel for l in prog.trace.launches}
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        ref = m(x)
    for fast in (True, False):  # (the convs' per-thread sums round apart from the fast path's)
        got = prog.forward(x, fast=fast)[0]
        assert (got - ref).abs().max().item() <= 1e-5 * max(ref.abs().max().item(), 1.0)
    # every tag of every launch of the new kernels, on thread 1: the fault replays to an outcome
    for l in (l for l in prog.trace.launches if l.kernel in NEW_KERNELS):
        for s in l.template.slots:
            r, _ = run_one(prog, Fault("iov", site(prog, l.name, s.tag, 1), "single", (1,)), x[:1])
            assert r.outcome != "tool_error", (l.name, s.tag, r)


def build_layout_net(num_classes: int) -> LayoutNet:
    """The registered builder: top level, so worker processes can import it."""
    return LayoutNet(num_classes)


@pytest.fixture(scope="module")
def registered() -> str:
    return ensure_registered("layout-net", build_layout_net, (3, 8, 8), 4,
                             "channel and pixel shuffles, reflect and replicate pads")


@pytest.mark.parametrize("mode", ["rf", "iov", "ioa"])
def test_campaign_of_40_has_no_tool_error(registered: str, mode: str, tmp_path: Path) -> None:
    short_campaign(registered, mode, tmp_path, inputs=4)


def test_export_maps_each_launch_to_its_op_and_round_trips_bit_for_bit(tmp_path: Path) -> None:
    torch.manual_seed(0)
    m = LayoutNet().eval()
    lowered, trace = lower_fx(m, (3, 8, 8)), lower(m, (3, 8, 8)).trace
    ops = graph_ops(lowered)
    got = {l.name: getattr(launch_op(lowered, ops, l), "node", None) for l in trace.launches
           if l.kernel in NEW_KERNELS}
    assert got == {"shuffle.channel_shuffle": "view_1", "shuffle.1.channel_shuffle": "shuffle",
                   "unshuf.pixel_shuffle": "unshuf", "pixel_shuffle.pixel_shuffle": "pixel_shuffle",
                   "stem.pad.replication_pad2d": "stem", "rpad.reflection_pad2d": "rpad"}, got
    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    export_model(m, Plan("layout", abft_plan(trace).protect), tmp_path / "e", input_shape=(3, 8, 8), name="layout",
                 check_inputs=x)
    with torch.no_grad():
        want = m(x)
        for variant in ("none", "plan", "full-dmr", "full-tmr"):
            out = load_exported(tmp_path / "e", variant)(x)
            assert torch.equal(_bits(out), _bits(want)), variant


def test_abft_is_not_offered_for_a_mode_padded_convs_gemm() -> None:
    # stem is Conv2d(padding_mode='replicate'): the export's ABFT wrapper would check it with zero
    # padding, so its gemm is left to DMR/TMR; conv after the explicit ReflectionPad2d is checkable
    from kernelfi.harden.units import abft_checkable
    trace = lower(LayoutNet().eval(), (3, 8, 8)).trace
    gemms = {l.name: l.index for l in trace.launches if l.kernel == "gemm"}
    assert not abft_checkable(trace, gemms["stem.gemm"])
    assert abft_checkable(trace, gemms["conv.gemm.g0"]) and abft_checkable(trace, gemms["mix.gemm"])
    # a grouped mode-padded conv: none of its per-group gemms
    grouped = lower(nn.Sequential(nn.Conv2d(4, 4, 3, padding=1, groups=2, padding_mode="reflect"),
                                  nn.Flatten()).eval(), (4, 5, 5)).trace
    assert [abft_checkable(grouped, l.index) for l in grouped.launches if l.kernel == "gemm"] == [False, False]
