"""Darknet's shortcut on mismatched shapes, worked out on paper; the stock ResNet/ResNeXt cfgs;
duplicate cfg options (Darknet keeps the first)."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from kernelfi.cli import cli
from kernelfi.faults.inject import LaneEffect, fault_writes
from kernelfi.faults.memmap import MemoryMap
from kernelfi.faults.registers import rf_registers
from kernelfi.lowering import Program, lower
from kernelfi.models.darknet import CfgWarning, DarknetNet, asset_path, build_layers, parse_cfg, parse_cfg_text
from kernelfi.types import Fault, Site
from tests.tiny import launch, site

# input x[c][h][w] = 16c + 4h + w (4 channels, 4x4)
#   layer 0 maxpool 1/1      -> x                               (4, 4, 4)
#   layer 1 maxpool 2/2      -> m[c][a][b] = x[c][2a+1][2b+1] = 16c + 8a + 2b + 5      (4, 2, 2)
#   layer 2 conv 1x1, 8 filters: filter f < 4 copies channel f, f >= 4 is its bias -1  (8, 2, 2)
#   layer 3 shortcut from=0: x (4x4, 4 channels) onto layer 2 (2x2, 8 channels)
#   layer 4 route 0          -> x                               (4, 4, 4)
#   layer 5 shortcut from=2: layer 2 (2x2, 8 channels) onto x (4x4, 4 channels)
CFG_UP = """[net]
width=4
height=4
channels=4
[maxpool]
size=1
stride=1
[maxpool]
size=2
stride=2
[convolutional]
filters=8
size=1
activation=linear
[shortcut]
from=0
activation=linear
[route]
layers=0
[shortcut]
from=2
activation=linear
"""


def _identity_conv(filters: int, channels: int, bias_rest: float) -> dict[str, torch.Tensor]:
    w = torch.zeros(filters, channels)
    for f in range(min(filters, channels)):
        w[f, f] = 1.0
    b = torch.tensor([0.0 if f < channels else bias_rest for f in range(filters)])
    return {"weights": w, "biases": b}


def _net(cfg: str, convs: dict[int, dict[str, torch.Tensor]]) -> DarknetNet:
    layers, shape = build_layers(parse_cfg_text(cfg))
    state = {f"layers.{i}.{role}": t for i, d in convs.items() for role, t in d.items()}
    return DarknetNet(layers, state, shape)


def _x(channels: int) -> torch.Tensor:
    return torch.arange(16.0 * channels).reshape(1, channels, 4, 4)


def _all_paths(net: DarknetNet, x: torch.Tensor, layer: int) -> list[torch.Tensor]:
    """Layer ``layer``'s output by the reference forward and by the kernels (fused and plain)."""
    prog = lower(net, net.kernelfi_input_shape, "t", append_softmax=False)
    buf = f"layers.{layer}.output"
    outs = [net.layer_outputs(x)[layer][0]]
    for fast in (True, False):
        mem = prog.run(prog.memory(x), fast=fast)
        outs.append(mem[buf][0].reshape(net.kernelfi_layers[layer].out_shape))
    return outs


def test_strided_shortcut_four_onto_eight_channels() -> None:
    net = _net(CFG_UP, {2: _identity_conv(8, 4, -1.0)})
    spec = net.kernelfi_layers[3]
    assert spec.out_shape == (8, 2, 2) and spec.params["add_shape"] == (4, 4, 4)
    # w1 = 4, w2 = 2: stride 2, sample 1, minc 4. For k < 4: r[k][a][b] = m[k][a][b] + x[k][2a][2b]
    #   = (16k + 8a + 2b + 5) + (16k + 8a + 2b) = 32k + 16a + 4b + 5; channels 4..7 keep -1.
    want = torch.full((8, 2, 2), -1.0)
    want[0] = torch.tensor([[5.0, 9.0], [21.0, 25.0]])
    want[1] = torch.tensor([[37.0, 41.0], [53.0, 57.0]])
    want[2] = torch.tensor([[69.0, 73.0], [85.0, 89.0]])
    want[3] = torch.tensor([[101.0, 105.0], [117.0, 121.0]])
    for got in _all_paths(net, _x(4), 3):
        assert torch.equal(got, want)


def test_upsampling_shortcut_eight_onto_four_channels() -> None:
    net = _net(CFG_UP, {2: _identity_conv(8, 4, -1.0)})
    # w1 = 2, w2 = 4: stride 1, sample 2, minc 4 (layer 2's channels 4..7, all -1, are not used):
    # r[k][2a][2b] = x[k][2a][2b] + m[k][a][b] = 32k + 16a + 4b + 5; every other pixel stays x
    x = _x(4)[0]
    want = x.clone()
    for k in range(4):
        for a in range(2):
            for b in range(2):
                want[k, 2 * a, 2 * b] = 32 * k + 16 * a + 4 * b + 5
    assert want[0, 0].tolist() == [5.0, 1.0, 9.0, 3.0] and want[3, 2].tolist() == [117.0, 57.0, 121.0, 59.0]
    for got in _all_paths(net, _x(4), 5):
        assert torch.equal(got, want)


# input 8 channels, x[c][h][w] = 16c + 4h + w; layer 2 keeps channels 0..3 of the pooled map:
#   layer 3 shortcut from=0: x (4x4, 8 channels) onto layer 2 (2x2, 4 channels)
CFG_DOWN = CFG_UP.split("[shortcut]")[0].replace("channels=4", "channels=8").replace("filters=8", "filters=4") \
    + "[shortcut]\nfrom=0\nactivation=leaky\n"


def test_strided_shortcut_eight_onto_four_channels() -> None:
    net = _net(CFG_DOWN, {2: _identity_conv(4, 8, 0.0)})
    spec = net.kernelfi_layers[3]
    assert spec.out_shape == (4, 2, 2) and spec.params["add_shape"] == (8, 4, 4)
    # stride 2, minc 4: x's channels 4..7 are not added; r = 32k + 16a + 4b + 5 as above, all
    # positive, so leaky leaves them
    want = torch.tensor([[[32.0 * k + 16 * a + 4 * b + 5 for b in range(2)] for a in range(2)] for k in range(4)])
    assert want[2].tolist() == [[69.0, 73.0], [85.0, 89.0]]
    for got in _all_paths(net, _x(8), 3):
        assert torch.equal(got, want)


# ------------------------------------------------------------------------------ fault effects
@pytest.fixture(scope="module")
def up() -> tuple[Program, dict[str, torch.Tensor]]:
    net = _net(CFG_UP, {2: _identity_conv(8, 4, -1.0)})
    prog = lower(net, net.kernelfi_input_shape, "t", append_softmax=False)
    return prog, prog.memory(_x(4))


def _writes(prog: Program, mem0: dict[str, torch.Tensor], fault: Fault) -> list[tuple[str, int, float]]:
    """What the struck thread of the shortcut launch leaves different from the clean run."""
    l = prog.trace.launches[fault.site.launch]
    mem = prog.run(dict(mem0), stop=l.index, fast=False)
    before = {n: mem[n] for n in set(l.reads) | set(l.writes) if n in mem}
    prog.run(mem, start=l.index, stop=l.index + 1, fast=False)
    eff = LaneEffect(golden_lane=0)
    return fault_writes(l, mem, before, 0, fault, eff, MemoryMap.from_trace(prog.trace),
                        lambda n, t: not n.endswith((".weights", ".biases")))


def test_channel_index_fault_moves_the_add_by_the_mismatched_strides(up) -> None:
    prog, mem = up
    # layer 3's thread 1 is (i, j, k) = (1, 0, 0): out_index 1, add_index i*stride = 2, so it
    # stores m[0][0][1] + x[0][0][2] = 7 + 2 = 9. Bit 0 of k (imod:c) makes k = 1: out_index
    # = 1 + w2*h2*1 = 5, add_index = 2 + w1*h1*1 = 18: it stores out[5] + add[18] = 23 + 18 = 41
    # (what thread 5 stores there too) and out[1] keeps the copied 7: the add is lost.
    s = site(prog, "layers.3.shortcut", "imod:c", thread=1)
    assert _writes(prog, mem, Fault("iov", s, "single", (0,))) == [
        ("layers.3.output", 1, 7.0), ("layers.3.output", 5, 41.0)]
    # the same flip in the register that holds k while it is live (RF)
    l = launch(prog, "layers.3.shortcut")
    regs = rf_registers(l).registers
    r = next(i for i, reg in enumerate(regs) if reg.name == "r_k")
    lo, hi = regs[r].live
    total = sum(x.count for x in l.template.slots)
    pos, acc = int((lo + hi) / 2 * total), 0
    for slot, x in enumerate(l.template.slots):
        if acc + x.count > pos:
            break
        acc += x.count
    rf = Site(l.index, l.template.slots[slot].group, 1, slot, pos - acc, register=r)
    assert _writes(prog, mem, Fault("rf", rf, "single", (0,))) == [
        ("layers.3.output", 1, 7.0), ("layers.3.output", 5, 41.0)]


def test_add_index_fault_reads_the_neighbouring_pixel(up) -> None:
    prog, mem = up
    # thread 1 again: add_index 2 -> bit 0 -> 3: x[0][0][3] = 3, so out[1] = 7 + 3 = 10
    s = site(prog, "layers.3.shortcut", "imad:add_index", thread=1)
    assert _writes(prog, mem, Fault("iov", s, "single", (0,))) == [("layers.3.output", 1, 10.0)]
    # layer 5 (sample 2): thread 1 is (1, 0, 0): out_index = i*sample = 2, add_index 1;
    # it stores x[0][0][2] + m[0][0][1] = 2 + 7 = 9; bit 0 of out_index -> 3: out[3] = x[0][0][3]
    # + 7 = 10 and out[2] keeps the copied 2
    s = site(prog, "layers.5.shortcut", "imad:out_index", thread=1)
    assert _writes(prog, mem, Fault("iov", s, "single", (0,))) == [
        ("layers.5.output", 2, 2.0), ("layers.5.output", 3, 10.0)]


# ------------------------------------------------------------------------------ stock cfgs
STOCK = {
    # cfg: (layers, convolutional, shortcut, grouped convolutions)
    "resnet18.cfg": (29, 18, 8, 0), "resnet34.cfg": (53, 34, 16, 0), "resnet50.cfg": (69, 50, 16, 0),
    "resnet101.cfg": (137, 101, 33, 0), "resnet152.cfg": (205, 152, 50, 0),
    "resnext50.cfg": (69, 50, 16, 16), "resnext101-32x4d.cfg": (137, 101, 33, 33),
    "resnext152-32x4d.cfg": (205, 152, 50, 50),
}


@pytest.mark.parametrize("name", sorted(STOCK))
def test_stock_resnet_cfgs_build(name: str) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        layers, shape = build_layers(parse_cfg(asset_path(name)))
    # resnext101-32x4d.cfg's [net] repeats batch and subdivisions (Darknet takes the first)
    assert len([w for w in caught if issubclass(w.category, CfgWarning)]) == (2 if "101-32x4d" in name else 0)
    n, convs, shortcuts, grouped = STOCK[name]
    types = [l.type for l in layers]
    assert shape == (3, 256, 256) and len(layers) == n
    assert (types.count("convolutional"), types.count("shortcut")) == (convs, shortcuts)
    assert sum(l.params.get("groups", 1) == 32 for l in layers) == grouped
    assert [types.count(t) for t in ("maxpool", "avgpool", "softmax")] == [1, 1, 1]
    assert layers[-1].out_shape == (1000,)
    # every shortcut adds its block's input: the first of each strided stage (and, in the
    # bottleneck nets, of the first stage: 64 channels onto 256) mismatches the block's output
    mismatched = [l for l in layers if l.type == "shortcut" and l.params["add_shape"] != l.out_shape]
    assert len(mismatched) == (3 if name in ("resnet18.cfg", "resnet34.cfg") else 4)


def test_resnet50_darknet_profile_lists_darknets_69_layers() -> None:
    r = CliRunner().invoke(cli, ["profile", "resnet50-darknet", "--format", "json"])
    assert r.exit_code == 0, r.output
    layers = json.loads(r.stdout)["layers"]
    types = [l["type"] for l in layers]
    assert [l["index"] for l in layers] == list(range(69))
    assert {t: types.count(t) for t in set(types)} == {
        "convolutional": 50, "shortcut": 16, "maxpool": 1, "avgpool": 1, "softmax": 1}
    first = layers[5]  # 256x64x64 <- the maxpool's 64x64x64: one thread per element of 64 channels
    assert first["type"] == "shortcut" and [k["name"] for k in first["kernels"]] == ["copy", "shortcut",
                                                                                    "activate_array"]
    assert first["kernels"][1]["threads"] == 64 * 64 * 64 and first["kernels"][0]["threads"] == 256 * 64 * 64


# ------------------------------------------------------------------------------ duplicates
def test_duplicate_option_keeps_the_first_with_one_warning(tmp_path: Path) -> None:
    text = "[net]\nwidth=4\nheight=4\nchannels=1\n[maxpool]\nsize=2\nstride=2\nstride=1\n"
    with pytest.warns(CfgWarning, match=r"^<cfg>:8: \[maxpool\] duplicate option 'stride=1' ignored: "
                                        r"Darknet uses the first, stride=2 at line 7$"):
        (pool,), _ = build_layers(parse_cfg_text(text))
    assert pool.params["stride"] == 2 and pool.out_shape == (1, 2, 2)
    cfg = tmp_path / "dup.cfg"
    cfg.write_text(text)
    r = CliRunner().invoke(cli, ["profile", str(cfg), "--format", "json"])
    assert r.exit_code == 0, r.output
    assert r.stderr.splitlines().count(f"kernelfi: warning: {cfg}:8: [maxpool] duplicate option 'stride=1' "
                                       "ignored: Darknet uses the first, stride=2 at line 7") == 1


# ------------------------------------------------------------------------------ campaigns
# A ResNet in miniature, shaped like Darknet's resnext50.cfg: a strided stem, a bottleneck whose
# shortcut adds 4 channels onto 8, a strided grouped bottleneck (8 channels 8x8 onto 16 at 4x4),
# average pool, 1x1 classifier, softmax.
TINY_RESNET = """[net]
width=16
height=16
channels=3
[convolutional]
batch_normalize=1
filters=4
size=3
stride=2
pad=1
activation=leaky
[convolutional]
batch_normalize=1
filters=4
size=1
activation=leaky
[convolutional]
batch_normalize=1
filters=4
size=3
groups=2
pad=1
activation=leaky
[convolutional]
batch_normalize=1
filters=8
size=1
activation=linear
[shortcut]
from=-4
activation=leaky
[convolutional]
batch_normalize=1
filters=8
size=1
activation=leaky
[convolutional]
batch_normalize=1
filters=8
size=3
groups=4
stride=2
pad=1
activation=leaky
[convolutional]
batch_normalize=1
filters=16
size=1
activation=linear
[shortcut]
from=-4
activation=leaky
[avgpool]
[convolutional]
filters=5
size=1
activation=linear
[softmax]
"""


def test_tiny_resnet_cfg_lowers_and_campaigns_in_every_mode(tmp_path: Path) -> None:
    from kernelfi.campaign import CampaignConfig, ModelSpec, run_campaign
    from kernelfi.models import load_model
    from kernelfi.store import Store

    cfg = tmp_path / "tiny-resnet.cfg"
    cfg.write_text(TINY_RESNET)
    lm = load_model(str(cfg), seed=3)
    prog = lower(lm.module, lm.info.input_shape, str(cfg))
    kinds = [l.kernel for l in prog.trace.launches if l.layer == 2]
    assert kinds.count("im2col") == kinds.count("gemm") == 2  # one im2col + gemm per group
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    ref = lm.module.logits(x).reshape(2, -1)
    for fast in (True, False):
        logits, _ = prog.forward(x, fast=fast)
        assert (logits - ref).abs().max().item() <= 1e-5 * max(ref.abs().max().item(), 1.0)
    db = tmp_path / "c.db"
    for mode in ("iov", "ioa", "rf"):
        cid = run_campaign(CampaignConfig(ModelSpec(str(cfg), seed_weights=3), mode, "single", n=36, seed=1,
                                          data="random", inputs=3), str(db))
        with Store(db) as s:
            counts = s.outcome_counts(cid)
            struck = {s.injection(cid, i).kernel for i in range(36)}
        assert sum(counts.values()) == 36, (mode, counts)
        assert "gemm" in struck, (mode, struck)
