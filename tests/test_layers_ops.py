"""Tensor ops a user CNN writes that now lower: arithmetic with a Python number (``scalar_op``),
clamp / Hardtanh (``clamp``), constant padding (``constant_pad``) and channel chunks, splits and
slices (``copy`` from ``input + start*H*W``). Values worked out on paper for tiny inputs, lowered
models against PyTorch (bit for bit where the op is exact), a hand-worked fault per kernel, every
tag of every new kernel replayed, a 40-injection campaign per mode, and the export bit for bit."""
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

NEW_KERNELS = {"scalar_op", "clamp", "constant_pad"}


class Fn(nn.Module):
    """A module whose forward is one function (the refusal tests)."""

    def __init__(self, fn) -> None:  # type: ignore[no-untyped-def]
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


def _launch(prog, kernel: str, k: int = 0) -> str:  # type: ignore[no-untyped-def]
    return [l.name for l in prog.trace.launches if l.kernel == kernel][k]


# ------------------------------------------------------------------------------ scalars
class Affine(nn.Module):
    """y = 2*x; z = 3 - y; w = z / 4; v = w + 0.5; u = v - 1 (flat)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (3 - 2 * x) / 4 + 0.5 - 1


def test_scalar_ops_on_paper_and_a_product_exponent_flip() -> None:
    # x = [1, 2]: 2x = [2, 4], 3 - 2x = [1, -1], / 4 = [0.25, -0.25], + 0.5 = [0.75, 0.25],
    # - 1 = [-0.25, -0.75]: class 0.
    prog = lower(Affine().eval(), (2,))
    assert [(l.params["op"], l.params["scalar"]) for l in prog.trace.launches if l.kernel == "scalar_op"] == \
        [("mul", 2.0), ("rsub", 3.0), ("div", 4.0), ("add", 0.5), ("sub", 1.0)]
    x = torch.tensor([[1.0, 2.0]])
    assert prog.forward(x)[0][0].tolist() == [-0.25, -0.75]
    # thread 1's product 4.0 = 0x40800000; bit 23 flipped: 0x40000000 = 2.0 -> 3 - 2 = 1,
    # / 4 = 0.25, + 0.5 = 0.75, - 1 = -0.25: logits [-0.25, -0.25], class 0 still
    r, probs = run_one(prog, Fault("iov", site(prog, _launch(prog, "scalar_op", 0), "mul:out", 1), "single", (23,)), x)
    assert (r.original, r.corrupted) == (4.0, 2.0)
    assert torch.allclose(probs, probs_of([-0.25, -0.25]), atol=1e-7)
    # thread 0 of c - x loads 2.0; its sign flipped: 3 - (-2) = 5, / 4 = 1.25, + 0.5 - 1 = 0.75
    r, probs = run_one(prog, Fault("iov", site(prog, _launch(prog, "scalar_op", 1), "ld:in", 0), "single", (31,)), x)
    assert (r.original, r.corrupted) == (2.0, -2.0)
    assert (r.golden_top1, r.faulty_top1) == (0, 0)
    assert torch.allclose(probs, probs_of([0.75, -0.75]), atol=1e-7)


class Forms(nn.Module):
    """Every spelling of a scalar operand, after a conv."""

    def __init__(self) -> None:
        super().__init__()
        self.c = nn.Conv2d(2, 3, 3, padding=1)
        self.fc = nn.Linear(3 * 4 * 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.c(x)
        y = torch.mul(y, 1.5) + torch.add(y, 2) - y.mul(0.25) + 0.5 * y
        y = torch.sub(y, 1).sub(0.5) - (1 - y) + y.add(1) + torch.true_divide(y, 5) + y.div(0.5) + y / 3
        return self.fc(y.flatten(1))


def test_scalar_forms_lower_within_1e5_of_pytorch() -> None:
    torch.manual_seed(0)
    m = Forms().eval()
    prog = lower(m, (2, 4, 4))
    ops = [l.params["op"] for l in prog.trace.launches if l.kernel == "scalar_op"]
    assert sorted(set(ops)) == ["add", "div", "mul", "rsub", "sub"] and len(ops) == 11
    x = torch.randn(4, 2, 4, 4)
    with torch.no_grad():
        ref = m(x)
    for fast in (True, False):
        assert (prog.forward(x, fast=fast)[0] - ref).abs().max().item() <= 1e-5 * max(ref.abs().max().item(), 1.0)


def test_division_by_a_scalar_is_a_multiply_by_its_float32_reciprocal() -> None:
    # PyTorch CUDA's div_true_kernel_cuda with a CPU scalar computes x * (1.0f / c); CPU
    # PyTorch divides. The lowering models the GPU: bit for bit x * f32(1/3), which differs
    # from CPU's x / 3 by one ulp in some elements, and equals x / 2 exactly (a power of two).
    class Div(nn.Module):
        def __init__(self, c: float) -> None:
            super().__init__()
            self.c = c

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x / self.c

    x = torch.randn(1, 4096, generator=torch.Generator().manual_seed(3))
    got3 = lower(Div(3.0).eval(), (4096,)).forward(x)[0]
    inv = torch.tensor(1.0) / torch.tensor(3.0)
    assert torch.equal(got3.view(torch.int32), (x * inv).view(torch.int32))
    cpu = x / 3.0
    assert 0 < int((got3 != cpu).sum()) < 4096 // 2
    assert torch.allclose(got3, cpu, rtol=1.2e-7, atol=0)            # one ulp at most
    got2 = lower(Div(2.0).eval(), (4096,)).forward(x)[0]
    assert torch.equal(got2.view(torch.int32), (x / 2.0).view(torch.int32))


def test_scalar_refusals_are_one_line() -> None:
    for fn, msg in ((lambda x: 2 / x, "constant divided by a tensor"),
                    (lambda x: torch.add(x, 1, alpha=2), "alpha"),
                    (lambda x: torch.div(x, 2, rounding_mode="floor"), "rounding_mode"),
                    (lambda x: x / x, "division of two tensors")):
        with pytest.raises(KernelfiError, match=msg):
            lower(Fn(fn).eval(), (3,))


# ------------------------------------------------------------------------------ clamp
def test_hardtanh_clamps_on_paper_and_nan_propagates() -> None:
    # Hardtanh(-1, 2) of [-3, 0.5, 5, nan] = [-1, 0.5, 2, nan], as torch.clamp
    prog = lower(nn.Hardtanh(-1.0, 2.0).eval(), (4,))
    (l,) = [l for l in prog.trace.launches if l.kernel == "clamp"]
    assert (l.params["min"], l.params["max"]) == (-1.0, 2.0)
    x = torch.tensor([[-3.0, 0.5, 5.0, float("nan")]])
    got = prog.forward(x)[0][0]
    assert got[:3].tolist() == [-1.0, 0.5, 2.0] and torch.isnan(got[3])
    assert torch.equal(torch.isnan(got), torch.isnan(torch.clamp(x, -1, 2)[0]))


def test_clamp_faults_on_paper() -> None:
    # x = [-3, 0.5, 1.5]: clamp(-1, 2) = [-1, 0.5, 1.5], class 2
    prog = lower(nn.Hardtanh(-1.0, 2.0).eval(), (3,))
    x = torch.tensor([[-3.0, 0.5, 1.5]])
    assert prog.forward(x)[0][0].tolist() == [-1.0, 0.5, 1.5]
    name = _launch(prog, "clamp")
    # thread 0's isnan test flipped: v = -3 passes unclamped: [-3, 0.5, 1.5]
    r, probs = run_one(prog, Fault("iov", site(prog, name, "setp:nan", 0), "single", (0,)), x)
    assert (r.original, r.corrupted) == (0.0, 1.0)
    assert torch.allclose(probs, probs_of([-3.0, 0.5, 1.5]), atol=1e-7)
    # thread 0's max(v, lo) = -1 (0xBF800000), sign flipped: 1; min(1, 2) = 1: [1, 0.5, 1.5]
    r, probs = run_one(prog, Fault("iov", site(prog, name, "fmnmx:min", 0), "single", (31,)), x)
    assert (r.original, r.corrupted) == (-1.0, 1.0)
    assert torch.allclose(probs, probs_of([1.0, 0.5, 1.5]), atol=1e-7)


class Clamps(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c = nn.Conv2d(2, 2, 3, padding=1)
        self.ht = nn.Hardtanh(-0.5, 0.75)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.c(x)
        return (self.ht(y) + torch.clamp(y, 0, 1) + y.clamp(min=0.1) + torch.clamp_max(y, 0.2)
                + F.hardtanh(y) + y.clip(-0.3, 0.3) + torch.clamp_min(y, -0.2) + y.clamp(max=0.5)).flatten(1)


def test_clamp_forms_lower_bit_for_bit() -> None:
    torch.manual_seed(1)
    m = Clamps().eval()
    prog = lower(m, (2, 3, 3))
    bounds = [(l.params.get("min"), l.params.get("max")) for l in prog.trace.launches if l.kernel == "clamp"]
    assert bounds == [(-0.5, 0.75), (0.0, 1.0), (0.1, None), (None, 0.2), (-1.0, 1.0), (-0.3, 0.3),
                      (-0.2, None), (None, 0.5)]
    assert [l.type for l in prog.trace.layers].count("activation") == 0  # Hardtanh(-0.5, 0.75) is no relu6
    x = torch.randn(3, 2, 3, 3)
    with torch.no_grad():
        ref = m(x)
    got = prog.forward(x)[0]
    # the conv's gemm sums in another order than PyTorch's: bit for bit from the same conv output
    assert (got - ref).abs().max().item() <= 1e-5 * max(ref.abs().max().item(), 1.0)
    y = torch.randn(3, 4)
    p2 = lower(nn.Sequential(nn.Hardtanh(-0.5, 0.75)).eval(), (4,))
    assert torch.equal(p2.forward(y)[0].view(torch.int32), torch.clamp(y, -0.5, 0.75).view(torch.int32))


# ------------------------------------------------------------------------------ pad
class Padded(nn.Module):
    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x, (1, 0, 0, 1), value=self.value).flatten(1)


def test_pad_on_paper_and_faults() -> None:
    # [[1, 2], [3, 4]] padded left 1, bottom 1 with 0.5: [[.5, 1, 2], [.5, 3, 4], [.5, .5, .5]]
    prog = lower(Padded(0.5).eval(), (1, 2, 2))
    x = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    want = [0.5, 1.0, 2.0, 0.5, 3.0, 4.0, 0.5, 0.5, 0.5]
    assert prog.forward(x)[0][0].tolist() == want
    name = _launch(prog, "constant_pad")
    # thread 4 (y 1, x 1: input (1, 0) = 3): its inside test flipped: writes the constant 0.5
    r, probs = run_one(prog, Fault("iov", site(prog, name, "setp:inside", 4), "single", (0,)), x)
    assert (r.original, r.corrupted) == (1.0, 0.0)
    assert torch.allclose(probs, probs_of(want[:4] + [0.5] + want[5:]), atol=1e-7)
    # its input column x - left = 0 (the second iadd:yx) bit 0 flipped: 1: reads (1, 1) = 4
    r, probs = run_one(prog, Fault("iov", site(prog, name, "iadd:yx", 4, exec_=1, calls=2), "single", (0,)), x)
    assert (r.original, r.corrupted) == (0.0, 1.0)
    assert torch.allclose(probs, probs_of(want[:4] + [4.0] + want[5:]), atol=1e-7)


def test_pad_forms_lower_bit_for_bit() -> None:
    class Pads(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.z, self.k = nn.ZeroPad2d((1, 2, 0, 3)), nn.ConstantPad2d(1, -0.25)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.cat([self.z(x).flatten(1), self.k(x).flatten(1), F.pad(x, (2, 1)).flatten(1)], 1)

    prog = lower(Pads().eval(), (2, 3, 4))
    assert [l.kernel for l in prog.trace.launches].count("constant_pad") == 3
    x = torch.randn(3, 2, 3, 4)
    assert torch.equal(prog.forward(x)[0].view(torch.int32), Pads()(x).view(torch.int32))
    for bad, msg in ((lambda x: F.pad(x, (-1, 0)), "non-negative"), (lambda x: F.pad(x, (1, 1, 1, 1), mode="circular"), "mode")):
        with pytest.raises(KernelfiError, match=msg):
            lower(Fn(bad).eval(), (2, 3, 4))


# ------------------------------------------------------------------------------ chunk / split / slice
class Pieces(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = torch.chunk(x, 2, dim=1)
        return torch.cat([b, x[:, 1:2]], 1).flatten(1)


def test_chunk_and_slice_on_paper_and_an_offset_fault() -> None:
    # channels [1, 2, 3, 4]: chunk -> a = [1, 2], b = [3, 4] (a unused: no launch); x[:, 1:2] = [2]
    prog = lower(Pieces().eval(), (4, 1, 1))
    copies = [(l.params["n"], l.params.get("in_offset", 0)) for l in prog.trace.launches
              if l.kernel == "copy" and l.layer_type == "slice"]
    assert copies == [(2, 2), (1, 1)]
    x = torch.tensor([1.0, 2.0, 3.0, 4.0]).reshape(1, 4, 1, 1)
    assert prog.forward(x)[0][0].tolist() == [3.0, 4.0, 2.0]
    name = next(l.name for l in prog.trace.launches if l.layer_type == "slice")
    # thread 0 of b's copy: source offset 0 + 2 = 2, bit 0 flipped: 3: reads x[3] = 4
    r, probs = run_one(prog, Fault("iov", site(prog, name, "imad:offset_in", 0), "single", (0,)), x)
    assert (r.original, r.corrupted) == (2.0, 3.0)
    assert torch.allclose(probs, probs_of([4.0, 4.0, 2.0]), atol=1e-7)


def test_split_forms_lower_bit_for_bit() -> None:
    class Splits(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            p = torch.split(x, [1, 3, 2], dim=1)
            q = x.split(4, 1)                 # 4 + 2
            r = x.chunk(3, 1)                 # 2 + 2 + 2
            s = x[:, 3:]
            t = x[:, :]                       # every channel: no kernel
            return torch.cat([p[2], p[0] + q[1], r[1] * 2, s, t[:, -2:], q[0] - p[1][:, :1]], 1).flatten(1)

    prog = lower(Splits().eval(), (6, 2, 2))
    x = torch.randn(3, 6, 2, 2)
    assert torch.equal(prog.forward(x)[0].view(torch.int32), Splits()(x).view(torch.int32))
    for bad, msg in ((lambda x: x[:, ::2], "step 1"), (lambda x: torch.chunk(x, 2, dim=2)[0], "only channels"),
                     (lambda x: x[:, :, 1:], "only a channel slice")):
        with pytest.raises(KernelfiError, match=msg):
            lower(Fn(bad).eval(), (6, 2, 2))


# ------------------------------------------------------------------------------ a net with them all
class OpsNet(nn.Module):
    """Every new op in a 3x8x8 -> n classifier."""

    def __init__(self, n: int = 4) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.pad = nn.ZeroPad2d(1)
        self.conv = nn.Conv2d(4, 4, 3)
        self.ht = nn.Hardtanh(-1.0, 1.5)
        self.head = nn.Linear(6 * 4 * 4 + 4 * 8 * 8, n)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.stem(x * 0.5 - 0.25)                                     # scalar mul, sub
        a, b = torch.chunk(y, 2, dim=1)                                   # two slices
        a = self.conv(self.pad(a))                                        # pad then an unpadded conv
        b = torch.clamp(b, 0, 6) / 6                                      # clamp, div
        z = torch.cat([self.ht(a + b), F.pad(y[:, 6:], (0, 0, 0, 0), value=1.0)], 1)
        z = F.max_pool2d(1 - z, 2)                                        # rsub
        return self.head(torch.cat([z.flatten(1), F.relu(a).flatten(1)], 1))


def test_the_net_lowers_exactly_and_every_tag_replays() -> None:
    torch.manual_seed(0)
    m = OpsNet().eval()
    prog = lower(m, (3, 8, 8))
    assert NEW_KERNELS <= {l.kernel for l in prog.trace.launches}
    assert {l.layer_type for l in prog.trace.launches} >= {"scalar", "clamp", "pad", "slice"}
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        ref = m(x)
    for fast in (True, False):
        assert (prog.forward(x, fast=fast)[0] - ref).abs().max().item() <= 1e-5 * max(ref.abs().max().item(), 1.0)
    # every tag of every launch of the new kernels (and the slices' copies), on thread 1: the
    # fault replays to an outcome (no tool error)
    launches = [l for l in prog.trace.launches if l.kernel in NEW_KERNELS or l.layer_type == "slice"]
    for l in launches:
        for s in l.template.slots:
            r, _ = run_one(prog, Fault("iov", site(prog, l.name, s.tag, 1), "single", (1,)), x[:1])
            assert r.outcome != "tool_error", (l.name, s.tag, r)


def build_ops_net(num_classes: int) -> OpsNet:
    """The registered builder: top level, so worker processes can import it."""
    return OpsNet(num_classes)


@pytest.fixture(scope="module")
def registered() -> str:
    return ensure_registered("ops-net", build_ops_net, (3, 8, 8), 4, "scalar ops, clamp, pad, chunk")


@pytest.mark.parametrize("mode", ["rf", "iov", "ioa"])
def test_campaign_of_40_has_no_tool_error(registered: str, mode: str, tmp_path: Path) -> None:
    short_campaign(registered, mode, tmp_path, inputs=4)


#: launch -> the fx node computing it, read off OpsNet.forward (fx names: mul, sub, chunk's
#: getitem / getitem_1, y[:, 6:] getitem_2, clamp, truediv, pad (F.pad), rsub is sub_1)
EXPECTED_OPS = {
    "mul.scalar_op": "mul", "sub.scalar_op": "sub", "slice.copy": "getitem", "slice.1.copy": "getitem_1",
    "pad.constant_pad": "pad", "clamp.clamp": "clamp", "div.scalar_op": "truediv", "ht.clamp": "ht",
    "slice.2.copy": "getitem_2", "pad.1.constant_pad": "pad_1", "rsub.scalar_op": "sub_1",
}


def test_export_maps_each_launch_to_its_op_and_round_trips_bit_for_bit(tmp_path: Path) -> None:
    torch.manual_seed(0)
    m = OpsNet().eval()
    lowered, trace = lower_fx(m, (3, 8, 8)), lower(m, (3, 8, 8)).trace
    ops = graph_ops(lowered)
    got = {l.name: getattr(launch_op(lowered, ops, l), "node", None) for l in trace.launches}
    assert {k: got.get(k) for k in EXPECTED_OPS} == EXPECTED_OPS
    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    export_model(m, Plan("ops", abft_plan(trace).protect), tmp_path / "e", input_shape=(3, 8, 8), name="ops",
                 check_inputs=x)
    with torch.no_grad():
        want = m(x)
        for variant in ("none", "plan", "full-dmr", "full-tmr"):
            out = load_exported(tmp_path / "e", variant)(x)
            assert torch.equal(out.view(torch.int32), want.view(torch.int32)), variant
