"""Export of models using every layer the lowering supports since issue 20 (docs/export.md §3):
each launch of a new kernel maps to the op that computes it (worked out from the model by hand),
the exported variants equal the original bit for bit under full TMR, full DMR and ABFT, range
clamps hold their bounds, and a bit flipped in one replica of a new-layer op is out-voted by TMR
and detected and recovered by DMR.

Two models: ``AllLayers`` (tests/test_layers_campaign.py: modules, F. functions, SE, padding='same',
non-square convs) and ``MoreLayers`` below, the forms AllLayers leaves out: activation modules
(ReLU6 in place, Tanh, GELU, Hardswish, Hardsigmoid, SiLU in place, LeakyReLU(0.3), Hardtanh(0, 6)),
``F.interpolate``, ``F.max_pool2d(ceil_mode=True)``, ``F.avg_pool2d``, ``F.relu(inplace=True)``,
``AdaptiveAvgPool2d(2)``, tensor methods (``.sub``, ``.tanh``, ``.sigmoid``, ``.mean``), ``torch.mul``
and ``torch.sub``, views following ``x.size()`` (an SE block's ``.view(b, c, 1, 1)``, ``x.view(x.size(0), -1)``,
``.reshape(b, -1)``), and ``F.softmax(dim=1)``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kernelfi.harden import Plan, Protection, profile_bounds
from kernelfi.harden.export import export_model, flip_in, launch_op, load_exported, read_manifest
from kernelfi.harden.export.mapping import graph_ops
from kernelfi.harden.units import abft_checkable, abft_plan, conv_pairs
from kernelfi.lowering import lower, lower_fx
from tests.test_layers_campaign import AllLayers
from tests.threads import one_thread  # noqa: F401  (autouse: one intra-op thread)


class MoreLayers(nn.Module):
    """The new-layer forms AllLayers does not use, on a 3x8x8 input."""

    def __init__(self, n: int = 4) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.relu6 = nn.ReLU6(inplace=True)
        self.tanh = nn.Tanh()
        self.gelu = nn.GELU()
        self.hsw, self.hsig = nn.Hardswish(), nn.Hardsigmoid()
        self.silu = nn.SiLU(inplace=True)
        self.leaky = nn.LeakyReLU(0.3)
        self.ht = nn.Hardtanh(0.0, 6.0)
        self.adapt = nn.AdaptiveAvgPool2d(2)
        self.fc1, self.fc2 = nn.Linear(8, 2), nn.Linear(2, 8)
        self.drop = nn.Dropout(0.1)
        self.head = nn.Linear(8 * 2 * 2 + 8, n)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.tanh(self.relu6(self.conv(x)))                                   # standalone Tanh after a fused ReLU6
        b, c, _, _ = y.size()
        s = F.adaptive_avg_pool2d(y, (1, 1)).view(b, c)
        s = torch.sigmoid(self.fc2(F.silu(self.fc1(s)))).view(b, c, 1, 1)        # SE through linear layers
        y = self.gelu(y * s)
        z = torch.mul(self.hsw(y).sub(self.hsig(y)), self.leaky(y))
        z = F.interpolate(z, scale_factor=2, mode="nearest")                      # 16x16
        z = F.max_pool2d(z, 3, 2, ceil_mode=True)                                 # 8x8
        z = F.avg_pool2d(F.relu(z, inplace=True), 2)                              # 4x4
        z = self.silu(z).tanh()
        a = self.adapt(z)                                                         # 2x2: adaptive_avgpool
        f = torch.cat([a.view(a.size(0), -1), z.mean((2, 3))], 1)                 # 40 flat
        f = self.ht(torch.sub(f, f.sigmoid()))
        return F.softmax(self.head(self.drop(f.reshape(b, -1))), dim=1)          # traced with _stacklevel, dtype


#: Per model: launch -> the fx node (the op of the exported forward) that computes it, read off
#: the model's forward (fx names a node after its function or module path, with _1, _2 on reuse).
EXPECTED_OPS: dict[str, dict[str, str]] = {
    "all": {
        "stem.0.gemm": "stem_0", "stem.0.activate_array": "stem_1",                  # conv + fused SiLU
        "relu6.act.copy": "relu6", "relu6.act.activate_array": "relu6",             # standalone F.relu6
        "bn.copy": "bn", "bn.normalize": "bn", "bn.scale_bias": "bn", "bn.add_bias": "bn",   # standalone BN
        "dw.activate_array": "hardswish", "avgpool.forward_avgpool": "adaptive_avg_pool2d",
        "mul.scale_channels": "mul", "pool.forward_local_avgpool": "pool", "gelu.act.activate_array": "gelu",
        "mp.forward_maxpool": "mp", "sub.binary_op": "sub", "tanh.act.activate_array": "tanh",
        "mean.forward_avgpool": "mean", "mul.1.scale_channels": "mul_1", "leaky_relu.act.copy": "leaky_relu",
        "add.shortcut": "add", "up.fill": "up", "up.upsample": "up", "mean.1.forward_avgpool": "mean_1",
        "sigmoid.act.activate_array": "sigmoid", "cat.copy.1": "cat", "fc.activate_array": "relu_1",
    },
    "more": {
        "conv.activate_array": "relu6", "tanh.act.copy": "tanh", "avgpool.forward_avgpool": "adaptive_avg_pool2d",
        "fc1.activate_array": "silu", "mul.scale_channels": "mul", "hsw.act.activate_array": "hsw",
        "sub.binary_op": "sub", "leaky.act.activate_array": "leaky", "mul.1.binary_op": "mul_1",
        "upsample.fill": "interpolate", "upsample.upsample": "interpolate", "pool.forward_maxpool": "max_pool2d",
        "relu.act.activate_array": "relu", "pool.1.forward_local_avgpool": "avg_pool2d",
        "silu.act.activate_array": "silu_1", "tanh_1.act.activate_array": "tanh_1",
        "adapt.adaptive_avgpool": "adapt", "mean.forward_avgpool": "mean", "cat.copy.0": "cat",
        "sub.1.binary_op": "sub_1", "ht.act.activate_array": "ht", "softmax.softmax": "softmax",
    },
}
SHAPES = {"all": (3, 12, 12), "more": (3, 8, 8)}


def build(name: str) -> nn.Module:
    torch.manual_seed(0)
    m = (AllLayers() if name == "all" else MoreLayers()).eval()
    for b in m.modules():
        if isinstance(b, nn.BatchNorm2d):
            b.running_mean.uniform_(-1, 1)
            b.running_var.uniform_(0.5, 2)
    return m


def inputs(name: str) -> torch.Tensor:
    return torch.randn(6, *SHAPES[name], generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module", params=["all", "more"])
def abft_export(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """The model exported with full ABFT (every gemm ABFT can check); every export also holds
    the full-DMR and full-TMR variants."""
    name = request.param
    m = build(name)
    plan = Plan(name, abft_plan(lower(m, SHAPES[name]).trace).protect)
    out = tmp_path_factory.mktemp(name) / "export"
    export_model(m, plan, out, input_shape=SHAPES[name], name=name, check_inputs=inputs(name))
    return name, out


@pytest.mark.parametrize("name", ["all", "more"])
def test_each_new_kernel_launch_maps_to_the_op_computing_it(name: str) -> None:
    m = build(name)
    lowered, trace = lower_fx(m, SHAPES[name]), lower(m, SHAPES[name]).trace
    ops = graph_ops(lowered)
    got = {l.name: getattr(launch_op(lowered, ops, l), "node", None) for l in trace.launches}
    assert {k: got.get(k) for k in EXPECTED_OPS[name]} == EXPECTED_OPS[name]


def test_full_tmr_dmr_and_abft_equal_the_original_bitwise(abft_export: tuple[str, Path]) -> None:
    name, out = abft_export
    x = inputs(name)
    with torch.no_grad():
        want = build(name)(x)
        for variant in ("none", "plan", "full-dmr", "full-tmr"):
            assert torch.equal(load_exported(out, variant)(x).view(torch.int32), want.view(torch.int32)), variant
    manifest = read_manifest(out)
    abft = {op["module"] for e in manifest["entries"] for op in e["ops"]}
    # every conv and linear but the non-square ones (AllLayers' dw (1, 3) and pw (3, 1))
    assert abft == ({"stem.0", "se1", "se2", "fc", "head"} if name == "all" else {"conv", "fc1", "fc2", "head"})


def test_range_clamps_hold_their_bounds(tmp_path: Path) -> None:
    name = "all"
    m, x = build(name), inputs(name)
    prog = lower(m, SHAPES[name])
    bounds = profile_bounds(prog, x)
    layers = sorted({l.layer for l in prog.trace.launches if l.kernel != "softmax"})
    plan = Plan(name, tuple(Protection("layer", prog.trace.layers[i].name, "range", bounds) for i in layers))
    export_model(m, plan, tmp_path / "e", input_shape=SHAPES[name], name=name, check_inputs=x)
    net = load_exported(tmp_path / "e", "plan")
    seen: list[tuple[Any, torch.Tensor, torch.Tensor]] = []
    clamps = [mod for mod in net.modules() if type(mod).__name__ == "Clamp"]
    assert len(clamps) == len(layers)  # one per layer with launches (the dropout layer has none)
    hooks = [c.register_forward_hook(lambda mod, a, y: seen.append((mod, a[0].clone(), y.clone()))) for c in clamps]
    try:
        with torch.no_grad():
            got, want = net(x), m(x)
    finally:
        for h in hooks:
            h.remove()
    assert len(seen) == len(layers)
    for mod, before, after in seen:
        assert bool(((after >= mod.lo) & (after <= mod.hi)).all())
        inside = (before >= mod.lo) & (before <= mod.hi)
        assert torch.equal(after[inside].view(torch.int32), before[inside].view(torch.int32))
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-6)


#: Protected new-layer ops (fx nodes) and the flipped element / bit of their output.
FLIPS = {"all": [("mul", 5, 30), ("sub", 0, 23), ("pool", 17, 31), ("up", 100, 30), ("bn", 3, 29),
                 ("relu6", 9, 30), ("mean", 2, 26), ("gelu", 40, 30), ("stem_1", 1, 30)],
         "more": [("interpolate", 7, 30), ("adapt", 3, 29), ("avg_pool2d", 11, 30), ("mul_1", 2, 31),
                  ("relu6", 0, 30), ("silu_1", 5, 28), ("ht", 4, 30), ("softmax", 3, 29)]}


@pytest.mark.parametrize("variant", ["full-tmr", "full-dmr"])
def test_a_flip_in_one_replica_of_a_new_layer_op_is_corrected(abft_export: tuple[str, Path], variant: str) -> None:
    name, out = abft_export
    net = load_exported(out, variant)
    x = inputs(name)[:2]
    golden: dict[str, torch.Tensor] = {}
    hooks = [net.hardening.get_submodule(n).register_forward_hook(
        lambda mod, a, y, n=n: golden.__setitem__(n, y.clone())) for n, _, _ in FLIPS[name]]
    try:
        with torch.no_grad():
            want = net(x)
    finally:
        for h in hooks:
            h.remove()
    for k, (node, index, bit) in enumerate(FLIPS[name]):
        replica = k % (3 if variant == "full-tmr" else 2)
        before = getattr(net.hardening.get_submodule(node), "reexecuted", 0)
        with flip_in(net.hardening.get_submodule(node), index, bit, replica) as rec, torch.no_grad():
            final = net(x)
        (faulty,), (op_out,) = rec.handed, rec.outputs   # one call of the op's technique
        assert faulty.injected != 0.0, node                     # the flip changed the run's output
        assert torch.equal(op_out.view(torch.int32), golden[node].view(torch.int32)), node
        assert torch.equal(final.view(torch.int32), want.view(torch.int32)), node
        assert faulty.calls == 3, node                          # TMR: three runs; DMR: two, a mismatch, a third
        if variant == "full-dmr":
            assert net.hardening.get_submodule(node).reexecuted == before + 1, node


class EvenSame(nn.Module):
    """padding='same' of a 2x2 kernel (pads 0 before, 1 after) between two symmetric convs."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.even = nn.Conv2d(4, 4, 2, padding="same")
        self.b = nn.Conv2d(4, 2, 3, padding="same")
        self.head = nn.Linear(2 * 5 * 5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.b(F.relu(self.even(F.relu(self.a(x))))).flatten(1))


def test_even_same_exports_as_same_and_abft_leaves_it(tmp_path: Path) -> None:
    # ABFT's virtual im2col pads alike on both sides: the 2x2 'same' gemm is not checkable, so
    # full ABFT protects a, b and head only; the export spells the asymmetric conv 'same'
    torch.manual_seed(0)
    m, x = EvenSame().eval(), torch.randn(4, 3, 5, 5, generator=torch.Generator().manual_seed(1))
    trace = lower(m, (3, 5, 5)).trace
    checkable = {trace.launches[g].name: abft_checkable(trace, g) for g in conv_pairs(trace).values()}
    assert checkable == {"a.gemm": True, "even.gemm": False, "b.gemm": True}
    export_model(m, Plan("even", abft_plan(trace).protect), tmp_path / "e", input_shape=(3, 5, 5), name="even",
                 check_inputs=x)
    src = "\n".join(p.read_text() for p in (tmp_path / "e").rglob("*.py"))
    assert "nn.Conv2d(4, 4, kernel_size=(2, 2), stride=(1, 1), padding='same'" in src
    with torch.no_grad():
        want = m(x)
        for variant in ("none", "plan", "full-dmr", "full-tmr"):
            got = load_exported(tmp_path / "e", variant)(x)
            assert torch.equal(got.view(torch.int32), want.view(torch.int32)), variant
    assert {op["module"] for e in read_manifest(tmp_path / "e")["entries"] for op in e["ops"]} == {"a", "b", "head"}


class CeilPools(nn.Module):
    """ceil_mode pools past stride 2 (their launches carry the far-side ``ceil_pad_*`` params):
    a module max pool and a functional average pool, both padded or not."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, padding=1)
        self.mp = nn.MaxPool2d(3, 3, ceil_mode=True)
        self.head = nn.Linear(3 * 3 * 3 + 3 * 3 * 3, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.conv(x))
        a = self.mp(y)                                                            # 8x8 -> 3x3
        b = F.avg_pool2d(y, 3, 4, 1, ceil_mode=True, count_include_pad=False)     # 8x8 -> 3x3
        return self.head(torch.cat([a.flatten(1), b.flatten(1)], 1))


def test_ceil_pools_past_stride_2_map_and_export_bitwise(tmp_path: Path) -> None:
    torch.manual_seed(0)
    m, x = CeilPools().eval(), torch.randn(4, 2, 8, 8, generator=torch.Generator().manual_seed(1))
    lowered, trace = lower_fx(m, (2, 8, 8)), lower(m, (2, 8, 8)).trace
    pools = [l for l in trace.launches if l.kernel in ("forward_maxpool", "forward_local_avgpool")]
    assert all("ceil_pad_h" in l.params for l in pools) and len(pools) == 2
    ops = graph_ops(lowered)
    assert {l.kernel: getattr(launch_op(lowered, ops, l), "node", None) for l in pools} == \
        {"forward_maxpool": "mp", "forward_local_avgpool": "avg_pool2d"}
    export_model(m, Plan("ceil", abft_plan(trace).protect), tmp_path / "e", input_shape=(2, 8, 8), name="ceil",
                 check_inputs=x)
    src = "\n".join(p.read_text() for p in (tmp_path / "e").rglob("*.py"))
    assert "nn.MaxPool2d(kernel_size=3, stride=3, padding=0" in src and "ceil_mode=True" in src
    with torch.no_grad():
        want = m(x)
        for variant in ("none", "plan", "full-dmr", "full-tmr"):
            got = load_exported(tmp_path / "e", variant)(x)
            assert torch.equal(got.view(torch.int32), want.view(torch.int32)), variant


class TanhGelus(nn.Module):
    """GELU(approximate='tanh') as a module fused into a conv and as F.gelu standalone."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.g = nn.GELU(approximate="tanh")
        self.head = nn.Linear(4 * 3 * 3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.gelu(F.max_pool2d(self.g(self.conv(x)), 2), approximate="tanh")
        return self.head(y.flatten(1))


def test_gelu_tanh_exports_as_the_tanh_form(tmp_path: Path) -> None:
    # the exported model computes GELU(approximate='tanh') (an erf GELU would differ in every
    # output bit pattern), equal to the original bit for bit, and TMR out-votes a flip in it
    torch.manual_seed(0)
    m, x = TanhGelus().eval(), torch.randn(4, 3, 6, 6, generator=torch.Generator().manual_seed(1)) * 2
    lowered, trace = lower_fx(m, (3, 6, 6)), lower(m, (3, 6, 6)).trace
    ops = graph_ops(lowered)
    got = {l.name: getattr(launch_op(lowered, ops, l), "node", None) for l in trace.launches
           if l.kernel == "activate_array" and l.params["activation"] == "gelu_tanh"}
    assert got == {"conv.activate_array": "g", "gelu.act.activate_array": "gelu"}
    export_model(m, Plan("gt", abft_plan(trace).protect), tmp_path / "e", input_shape=(3, 6, 6), name="gt",
                 check_inputs=x)
    src = "\n".join(p.read_text() for p in (tmp_path / "e").rglob("*.py"))
    assert "nn.GELU(approximate='tanh')" in src and "approximate='tanh'" in src.replace("nn.GELU(approximate='tanh')", "")
    with torch.no_grad():
        want = m(x)
        erf = m.head(F.gelu(F.max_pool2d(F.gelu(m.conv(x)), 2)).flatten(1))
        assert not torch.equal(erf, want)
        for variant in ("none", "plan", "full-dmr", "full-tmr"):
            assert torch.equal(load_exported(tmp_path / "e", variant)(x).view(torch.int32), want.view(torch.int32)), variant
    net = load_exported(tmp_path / "e", "full-tmr")
    with torch.no_grad():
        clean = net(x[:2])
        with flip_in(net.hardening.get_submodule("gelu"), 5, 30, 1) as rec:
            final = net(x[:2])
    (faulty,), _ = rec.handed, rec.outputs
    assert faulty.injected != 0.0 and faulty.calls == 3
    assert torch.equal(final.view(torch.int32), clean.view(torch.int32))


class Bilinears(nn.Module):
    """Bilinear upsampling as a module (scale factor, align_corners=False) and as F.interpolate
    (a size, align_corners=True), the forms the exported model must spell back."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, padding=1)
        self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
        self.head = nn.Linear(3 * 8 * 8 + 3 * 5 * 7, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.conv(x))
        z = F.interpolate(y, size=(5, 7), mode="bilinear", align_corners=True)
        return self.head(torch.cat([self.up(y).flatten(1), z.flatten(1)], 1))


def test_bilinear_upsamples_map_and_export_as_the_same_interpolation(tmp_path: Path) -> None:
    # each upsample_bilinear launch is its op; the exported source spells mode and
    # align_corners back (nearest, or the other corner alignment, would differ bit for bit), and
    # every variant equals the original bitwise; TMR out-votes a flip in the functional one
    torch.manual_seed(0)
    m, x = Bilinears().eval(), torch.randn(4, 2, 4, 4, generator=torch.Generator().manual_seed(1))
    lowered, trace = lower_fx(m, (2, 4, 4)), lower(m, (2, 4, 4)).trace
    ups = [l for l in trace.launches if l.kernel == "upsample_bilinear"]
    ops = graph_ops(lowered)
    assert {l.params["align_corners"]: getattr(launch_op(lowered, ops, l), "node", None) for l in ups} == \
        {False: "up", True: "interpolate"}
    export_model(m, Plan("bil", abft_plan(trace).protect), tmp_path / "e", input_shape=(2, 4, 4), name="bil",
                 check_inputs=x)
    src = "\n".join(p.read_text() for p in (tmp_path / "e").rglob("*.py"))
    assert "nn.Upsample(size=None, scale_factor=2.0, mode='bilinear', align_corners=False" in src
    assert "F.interpolate(relu, size=(5, 7), scale_factor=None, mode='bilinear', align_corners=True" in src
    with torch.no_grad():
        want = m(x)
        for variant in ("none", "plan", "full-dmr", "full-tmr"):
            got = load_exported(tmp_path / "e", variant)(x)
            assert torch.equal(got.view(torch.int32), want.view(torch.int32)), variant
    net = load_exported(tmp_path / "e", "full-tmr")
    with flip_in(net.hardening.get_submodule("interpolate"), 10, 30, 1) as rec, torch.no_grad():
        final = net(x[:2])
    assert rec.handed[0].injected != 0.0
    with torch.no_grad():
        assert torch.equal(final.view(torch.int32), m(x[:2]).view(torch.int32))


class NewActs(nn.Module):
    """Each activation lowered since Mish, as a module (fused after the conv) and in its F. form
    (standalone after a pool), on a 3x6x6 input."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.mish = nn.Mish()
        self.conv2 = nn.Conv2d(4, 4, 1)
        self.elu, self.selu, self.celu = nn.ELU(0.7), nn.SELU(), nn.CELU(0.6)
        self.sp = nn.Softplus(2.0, 3.0)
        self.pr, self.pr1 = nn.PReLU(4), nn.PReLU()
        with torch.no_grad():
            self.pr.weight.copy_(torch.tensor([0.1, -0.3, 0.7, 1.5]))
        self.head = nn.Linear(4 * 3 * 3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.mish(F.max_pool2d(self.mish(self.conv(x)), 2))
        z = self.celu(F.elu(self.selu(self.elu(self.conv2(y))), alpha=0.5))
        z = F.softplus(self.sp(F.celu(F.selu(z), 0.8)), beta=0.5, threshold=1.0)
        return self.pr1(self.head(self.pr(z).flatten(1)))


#: launch -> the fx node that computes it, read off NewActs.forward (modules fuse into the conv
#: before them or get an [activation] layer named after their path; F. forms after their node)
NEW_ACT_OPS = {"conv.activate_array": "mish", "mish_1.act.activate_array": "mish_1",
               "conv2.activate_array": "elu", "selu.act.activate_array": "selu", "elu_1.act.activate_array": "elu_1",
               "celu.act.activate_array": "celu", "selu_1.act.activate_array": "selu_1",
               "celu_1.act.activate_array": "celu_1", "sp.act.activate_array": "sp",
               "softplus.act.activate_array": "softplus", "pr.prelu": "pr", "pr1.prelu": "pr1"}


def test_new_activations_export_bitwise(tmp_path: Path) -> None:
    # every variant of the exported model equals the original bit for bit, each new activation
    # launch maps to its node, and TMR out-votes a flip in one replica of the standalone Mish
    torch.manual_seed(0)
    m, x = NewActs().eval(), torch.randn(4, 3, 6, 6, generator=torch.Generator().manual_seed(1)) * 2
    lowered, trace = lower_fx(m, (3, 6, 6)), lower(m, (3, 6, 6)).trace
    ops = graph_ops(lowered)
    got = {l.name: getattr(launch_op(lowered, ops, l), "node", None) for l in trace.launches
           if (l.kernel == "activate_array" and l.params["activation"] != "linear") or l.kernel == "prelu"}
    assert got == NEW_ACT_OPS
    export_model(m, Plan("na", abft_plan(trace).protect), tmp_path / "e", input_shape=(3, 6, 6), name="na",
                 check_inputs=x)
    src = "\n".join(p.read_text() for p in (tmp_path / "e").rglob("*.py"))
    for spelt in ("nn.Mish(inplace=False)", "F.mish(", "nn.ELU(alpha=0.7, inplace=False)", "nn.SELU(inplace=False)",
                  "nn.CELU(alpha=0.6, inplace=False)", "F.elu(", "F.selu(", "F.celu(",
                  "nn.Softplus(beta=2.0, threshold=3.0)", "F.softplus(",
                  "nn.PReLU(num_parameters=4)", "nn.PReLU(num_parameters=1)"):
        assert spelt in src, spelt
    with torch.no_grad():
        want = m(x)
        for variant in ("none", "plan", "full-dmr", "full-tmr"):
            assert torch.equal(load_exported(tmp_path / "e", variant)(x).view(torch.int32), want.view(torch.int32)), variant
    net = load_exported(tmp_path / "e", "full-tmr")
    with torch.no_grad():
        clean = net(x[:2])
        with flip_in(net.hardening.get_submodule("mish_1"), 5, 30, 1) as rec:
            final = net(x[:2])
    (faulty,), _ = rec.handed, rec.outputs
    assert faulty.injected != 0.0 and faulty.calls == 3
    assert torch.equal(final.view(torch.int32), clean.view(torch.int32))
