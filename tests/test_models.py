"""Architectures (torchvision layout), registry, checkpoints and the shipped digits models."""
from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
import torch.fx
from safetensors.torch import save_file

from kernelfi._utils import KernelfiError
from kernelfi.data import load_inputs
from kernelfi.models import (
    AlexNet, DigitsAlexNet, DigitsResNet, apply_state, get_model_info, list_models, load_model,
    load_state, register_model, resnet18, resnet34, resnet50, resnet101, resnet152,
)
from kernelfi.models import registry
from kernelfi.models.registry import ASSETS


def meta(builder, *args):  # noqa: ANN001 - shapes and counts without allocating memory
    with torch.device("meta"):
        return builder(*args)


def nparams(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


# ------------------------------------------------------------------ torchvision layout
@pytest.mark.parametrize("builder, expected", [
    (AlexNet, 61_100_840), (resnet18, 11_689_512), (resnet34, 21_797_672),
    (resnet50, 25_557_032), (resnet101, 44_549_160), (resnet152, 60_192_808),
])
def test_parameter_counts_match_torchvision(builder, expected) -> None:  # noqa: ANN001
    assert nparams(meta(builder)) == expected


def test_resnet50_keys() -> None:
    sd = meta(resnet50).state_dict()
    shapes = {k: tuple(v.shape) for k, v in sd.items()}
    assert shapes["conv1.weight"] == (64, 3, 7, 7)
    assert shapes["layer1.0.downsample.0.weight"] == (256, 64, 1, 1)
    assert shapes["layer1.0.downsample.1.running_mean"] == (256,)
    assert shapes["layer4.2.bn3.running_var"] == (2048,)
    assert shapes["fc.weight"] == (1000, 2048)
    assert "layer1.0.bn1.num_batches_tracked" in shapes
    assert len(sd) == 320  # torchvision's resnet50 state_dict has 320 entries


def test_resnet18_and_alexnet_keys() -> None:
    r = {k: tuple(v.shape) for k, v in meta(resnet18).state_dict().items()}
    assert r["layer2.0.downsample.0.weight"] == (128, 64, 1, 1)
    assert r["layer1.1.conv2.weight"] == (64, 64, 3, 3)
    assert "layer1.0.downsample.0.weight" not in r
    a = {k: tuple(v.shape) for k, v in meta(AlexNet, 7).state_dict().items()}
    assert list(a) == [f"{s}.{i}.{w}" for s, i in [("features", 0), ("features", 3),
                                                    ("features", 6), ("features", 8),
                                                    ("features", 10), ("classifier", 1),
                                                    ("classifier", 4), ("classifier", 6)]
                       for w in ("weight", "bias")]
    assert a["features.0.weight"] == (64, 3, 11, 11)
    assert a["classifier.1.weight"] == (4096, 9216)
    assert a["classifier.6.weight"] == (7, 4096)


@pytest.mark.parametrize("builder", [AlexNet, resnet18, DigitsAlexNet, DigitsResNet])
def test_fx_traceable_with_residual_add(builder) -> None:  # noqa: ANN001
    gm = torch.fx.symbolic_trace(meta(builder))
    targets = {str(n.target) for n in gm.graph.nodes}
    assert any("flatten" in t for t in targets)
    if builder in (resnet18, DigitsResNet):
        assert any("add" in t for t in targets)  # out += identity


# ------------------------------------------------------------------ registry
def test_list_and_info() -> None:
    names = [i.name for i in list_models()]
    for n in ("alexnet", "resnet18", "resnet50", "resnet152", "digits-alexnet",
              "digits-resnet", "alexnet-darknet"):
        assert n in names
    a = get_model_info("alexnet")
    assert a.input_shape == (3, 224, 224) and a.num_classes == 1000 and a.default_data is None
    d = get_model_info("digits-resnet")
    assert d.input_shape == (1, 32, 32) and d.default_data == "digits"
    assert 0.2 < d.mean[0] < 0.4 and 0.2 < d.std[0] < 0.4


def test_duplicate_registration_refused() -> None:
    name = "test-dup-model"
    kw = dict(input_shape=(1, 8, 8), num_classes=2, mean=(0.0,), std=(1.0,), description="t")
    register_model(name, **kw)(lambda n: torch.nn.Linear(64, n))
    try:
        with pytest.raises(KernelfiError, match="already registered"):
            register_model(name, **kw)(lambda n: torch.nn.Linear(64, n))
        with pytest.raises(KernelfiError, match="already registered"):
            register_model("alexnet", **kw)(lambda n: torch.nn.Linear(64, n))
    finally:
        registry._REGISTRY.pop(name)


def test_unknown_model() -> None:
    with pytest.raises(KernelfiError, match=r"unknown model 'vgg16' \(known: .*resnet50"):
        load_model("vgg16")
    with pytest.raises(KernelfiError, match="unknown model"):
        get_model_info("nope")


def test_random_weights_are_seeded() -> None:
    a, b = load_model("alexnet", num_classes=7), load_model("alexnet", num_classes=7)
    c = load_model("alexnet", num_classes=7, seed=1)
    assert a.weights_source == "random (seed 0)" and "seeded random weights (seed 0)" in a.note
    assert a.weights_hash == b.weights_hash != c.weights_hash
    assert a.info.num_classes == 7 and not a.module.training
    x = torch.rand(1, 3, 224, 224)
    with torch.no_grad():
        ya, yb, yc = a.module(x), b.module(x), c.module(x)
    assert torch.equal(ya, yb) and not torch.equal(ya, yc)
    assert ya.shape == (1, 7) and torch.isfinite(ya).all()


def test_random_weights_cover_transposed_convolutions() -> None:
    """A ConvTranspose2d(4 -> 2, k=2, stride 2) sums 4 inputs x (2x2 / 2x2) = 4 terms per output:
    He-normal of fan-in 4 (std sqrt(2/4)), zero bias; it was refused as 'does not know how to
    initialise'."""
    from kernelfi.models.random_init import init_random
    from torch import nn
    m = init_random(nn.Sequential(nn.ConvTranspose2d(4, 2, 2, 2), nn.ConvTranspose2d(2, 2, 3, 1, bias=False)), 0)
    t = m[0].weight.detach()
    g = torch.Generator(device="cpu").manual_seed(0)
    want = torch.empty_like(t).normal_(0.0, (2.0 / 4) ** 0.5, generator=g)
    assert torch.equal(t, want) and torch.equal(m[0].bias.detach(), torch.zeros(2))
    # the second: 2 inputs x 3x3 taps at stride 1 = fan-in 18, drawn next from the same stream
    assert torch.equal(m[1].weight.detach(), torch.empty_like(m[1].weight).normal_(0.0, (2.0 / 18) ** 0.5, generator=g))


def test_random_resnet_bn_identity() -> None:
    m = load_model("resnet18").module
    bn = m.layer1[0].bn1
    assert torch.equal(bn.running_var, torch.ones(64)) and torch.equal(bn.weight, torch.ones(64))
    assert torch.equal(m.bn1.running_mean, torch.zeros(64)) and not bn.weight.requires_grad


# ------------------------------------------------------------------ checkpoints
def test_pth_round_trip_with_wrappers(tmp_path: Path) -> None:
    src = load_model("resnet18", seed=3).module
    plain, wrapped = tmp_path / "r18.pth", tmp_path / "r18_ddp.pt"
    torch.save(src.state_dict(), plain)
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in src.state_dict().items()}},
               wrapped)
    x = torch.rand(2, 3, 224, 224)
    with torch.no_grad():
        ref = src(x)
        for path in (plain, wrapped):
            lm = load_model("resnet18", weights=str(path), seed=99)
            assert lm.weights_source == str(path)
            assert torch.equal(lm.module(x), ref)
    assert set(load_state(wrapped)) == set(src.state_dict())


def test_safetensors_round_trip_and_class_count_from_head(tmp_path: Path) -> None:
    src = load_model("alexnet", num_classes=7, seed=5).module
    path = tmp_path / "cholec80.safetensors"
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(path))
    lm = load_model("alexnet", weights=path)  # num_classes read from classifier.6.weight
    assert lm.info.num_classes == 7 and len(lm.weights_hash) == 64
    x = torch.rand(1, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(lm.module(x), src(x))


class _Evil:
    marker = ""

    def __reduce__(self):  # noqa: ANN204 - runs code on unpickling
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


def test_malicious_pickle_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned.txt"
    evil = _Evil()
    evil.marker = str(marker)
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"fc.weight": torch.zeros(1)}, "payload": evil}, path)
    with pytest.raises(KernelfiError, match=r"evil\.pth: not a weights-only checkpoint "
                                            r"\(refusing to unpickle arbitrary objects\): ") as e:
        load_state(path)
    assert "\n" not in str(e.value)
    with pytest.raises(KernelfiError, match="not a weights-only checkpoint"):
        load_model("resnet18", weights=str(path))
    assert not marker.exists()
    # plain pickle (not a torch zip file) with the same payload
    raw = tmp_path / "evil2.pt"
    raw.write_bytes(pickle.dumps(evil))
    with pytest.raises(KernelfiError):
        load_state(raw)
    assert not marker.exists()


def test_strict_mismatch_errors_name_file(tmp_path: Path) -> None:
    sd = dict(meta(DigitsResNet).state_dict())
    sd = {k: torch.zeros(v.shape, dtype=v.dtype) for k, v in sd.items()}
    missing = {k: v for k, v in sd.items() if not k.startswith("fc.")}
    path = tmp_path / "partial.safetensors"
    save_file(missing, str(path))
    with pytest.raises(KernelfiError, match=r"partial\.safetensors: .*missing keys \[fc\.weight, "
                                            r"fc\.bias\]"):
        load_model("digits-resnet", weights=str(path))
    extra = dict(sd, **{"head.weight": torch.zeros(3)})
    extra["conv1.weight"] = torch.zeros(8, 1, 3, 3)
    path2 = tmp_path / "extra.pth"
    torch.save(extra, path2)
    with pytest.raises(KernelfiError) as e:
        apply_state(DigitsResNet(), load_state(path2), path2)
    msg = str(e.value)
    assert msg.startswith("extra.pth:") and "unexpected keys [head.weight]" in msg
    assert "conv1.weight (file (8, 1, 3, 3) vs model (16, 1, 3, 3))" in msg and "\n" not in msg


def test_missing_and_bad_files(tmp_path: Path) -> None:
    with pytest.raises(KernelfiError, match="nowhere.pth: no such weights file"):
        load_model("alexnet", weights=str(tmp_path / "nowhere.pth"))
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(KernelfiError, match="junk.pth"):
        load_state(junk)
    with pytest.raises(KernelfiError, match="Darknet"):
        load_model("alexnet", weights=str(tmp_path / "x.weights"))
    with pytest.raises(KernelfiError, match="num_classes=7"):
        load_model("digits-resnet", num_classes=7)


# ------------------------------------------------------------------ shipped digits models
@pytest.mark.parametrize("name", ["digits-alexnet", "digits-resnet"])
def test_digits_models_accuracy(name: str) -> None:
    lm = load_model(name)
    assert lm.weights_source == "embedded" and lm.info.num_classes == 10
    assert (ASSETS / f"{name}.safetensors").stat().st_size < 1_000_000
    data = load_inputs(lm.info.default_data, lm.info)
    with torch.no_grad():
        acc = float((lm.module(data.x).argmax(1) == data.y).float().mean())
    assert acc >= 0.95, f"{name}: {acc:.3f}"


# ------------------------------------------------------------------ Darknet entries
def test_alexnet_darknet_and_cfg_path(tmp_path: Path) -> None:
    darknet = pytest.importorskip("kernelfi.models.darknet")
    info = get_model_info("alexnet-darknet")
    assert info.input_shape == (3, 227, 227) and info.num_classes == 1000
    cfg = tmp_path / "tiny.cfg"
    cfg.write_text("[net]\nheight=8\nwidth=8\nchannels=1\n\n[convolutional]\nfilters=4\n"
                   "size=3\nstride=1\npad=1\nactivation=relu\n\n[connected]\noutput=3\n"
                   "activation=linear\n\n[softmax]\n")
    lm = load_model(str(cfg), seed=2)
    assert lm.info.input_shape == (1, 8, 8) and lm.info.num_classes == 3
    assert lm.weights_source == "random (seed 2)"
    wpath = tmp_path / "tiny.weights"
    net = lm.module
    darknet.write_weights(wpath, net.kernelfi_layers, net.state_dict())
    lm2 = load_model(str(cfg), weights=str(wpath), seed=7)
    x = torch.rand(1, 1, 8, 8)
    with torch.no_grad():
        assert torch.allclose(lm2.module(x), net(x))
    assert lm2.weights_source == str(wpath) and lm2.weights_hash != lm.weights_hash
    with pytest.raises(KernelfiError, match="fixes 3 classes"):
        load_model(str(cfg), num_classes=7)
    with pytest.raises(KernelfiError, match="no such Darknet cfg"):
        load_model(str(tmp_path / "missing.cfg"))
