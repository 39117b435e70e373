"""Lowering: kernel traces match the native forward; profiles have Darknet's structure."""
from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from kernelfi.cli import cli
from kernelfi.lowering import lower
from kernelfi.models import list_models, load_model
from kernelfi.types import GROUPS


#: Darknet's 256x256 ResNets: scripts/darknet_forward_check.py compares their forwards (through
#: the .weights route, both engine paths); tests/test_shortcut.py covers their kernels on tiny cfgs
DARKNET_RESNETS = ("resnet50-darknet", "resnet101-darknet", "resnet152-darknet")


@pytest.mark.parametrize("name", [m.name for m in list_models() if m.name not in DARKNET_RESNETS])
def test_engine_logits_equal_native_forward(name: str) -> None:
    lm = load_model(name)
    prog = lower(lm.module, lm.info.input_shape, name)
    x = torch.randn(1, *lm.info.input_shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = lm.module.logits(x) if hasattr(lm.module, "logits") else lm.module(x)
        # the kernel-by-kernel path materialises every im2col buffer: checked on the smaller nets
        for fast in (True, False) if lm.info.name not in ("resnet101", "resnet152", "resnet50", "resnet34") else (True,):
            logits, probs = prog.forward(x, fast=fast)
            scale = ref.abs().max().item()
            assert (logits - ref).abs().max().item() <= 1e-4 * max(scale, 1.0), (name, fast)
            assert torch.allclose(probs.sum(), torch.tensor(1.0), atol=1e-5)


@pytest.mark.parametrize("name", ["digits-alexnet", "digits-resnet"])
def test_digits_models_reach_their_accuracy_through_the_kernels(name: str) -> None:
    from kernelfi.data import load_inputs
    lm = load_model(name)
    prog = lower(lm.module, lm.info.input_shape, name)
    data = load_inputs("digits", lm.info)
    with torch.no_grad():
        _, probs = prog.forward(data.x)
    acc = (probs.argmax(1) == data.y).float().mean().item()
    assert acc >= 0.95, acc


def _profile(args: list[str]) -> dict:
    r = CliRunner().invoke(cli, ["profile", *args, "--format", "json"])
    assert r.exit_code == 0, r.output
    return json.loads(r.output)


def test_alexnet_darknet_profile_is_darknets_layers() -> None:
    d = _profile(["alexnet-darknet"])
    types = [l["type"] for l in d["layers"]]
    assert [l["index"] for l in d["layers"]] == list(range(14))
    assert types == ["convolutional", "maxpool", "convolutional", "maxpool", "convolutional", "convolutional",
                     "convolutional", "maxpool", "connected", "dropout", "connected", "dropout", "connected",
                     "softmax"]
    for l in d["layers"]:
        names = [k["name"] for k in l["kernels"]]
        if l["type"] == "convolutional":
            assert names == ["fill", "im2col", "gemm", "add_bias", "activate_array"]
        elif l["type"] == "maxpool":
            assert names == ["forward_maxpool"]
        elif l["type"] == "dropout":
            assert names == []
        elif l["type"] == "softmax":
            assert names == ["softmax"]
    fp32 = {k: v["FP32"] for k, v in d["kernels"].items()}
    assert max(fp32, key=fp32.get) == "gemm"
    assert fp32["gemm"] > 0.9 * sum(fp32.values())
    assert set(d["layers"][0]["kernels"][0]["instructions"]) == set(GROUPS)


def test_resnet50_profile_structure() -> None:
    d = _profile(["resnet50"])
    layers = d["layers"]
    convs = [l for l in layers if l["type"] == "convolutional"]
    assert len(convs) == 53
    assert sum(l["type"] == "shortcut" for l in layers) == 16
    for t in ("maxpool", "avgpool", "connected", "softmax"):
        assert sum(l["type"] == t for l in layers) == 1, t
    for c in convs:
        names = [k["name"] for k in c["kernels"]]
        one_by_one = "im2col" not in names
        assert names[-4:] == ["normalize", "scale_bias", "add_bias", "activate_array"]
        # 1x1 stride-1 convolutions skip im2col; every 3x3 and the 7x7 stem use it
        out = c["output_shape"]
        assert one_by_one == (c["instructions"]["FP32"] > 0 and names[1] == "gemm")
    n_1x1 = sum("im2col" not in [k["name"] for k in c["kernels"]] for c in convs)
    assert n_1x1 == 53 - 16 - 1 - 3  # all but the 16 3x3 convs, the stem and 3 strided 1x1 downsamples


def test_profile_table_and_csv() -> None:
    r = CliRunner().invoke(cli, ["profile", "digits-alexnet"])
    assert r.exit_code == 0 and "gemm" in r.output and "total dynamic instructions" in r.output
    r = CliRunner().invoke(cli, ["profile", "digits-alexnet", "--format", "csv"])
    assert r.exit_code == 0 and r.output.splitlines()[0].startswith("layer,type,kernel")


def test_fast_and_kernel_paths_give_the_same_campaign_outcomes(tmp_path) -> None:
    """The fused path rounds like a native framework, the kernel path like the kernels: outcomes
    agree except where a fault's whole effect is of the size of that rounding (a low mantissa
    bit, or a value near zero), which either path may then round away or not."""
    import math

    from kernelfi.campaign import CampaignConfig, ModelSpec, run_campaign
    from kernelfi.store import Store
    outs = []
    for fast in (True, False):
        db = tmp_path / f"{fast}.db"
        cid = run_campaign(CampaignConfig(ModelSpec("digits-alexnet"), "iov", "single", n=120, seed=3, inputs=20,
                                          fast=fast), str(db))
        with Store(db) as s:
            outs.append([s.injection(cid, i) for i in range(120)])

    def rounding_sized(r) -> bool:
        a, b = r.original, r.corrupted
        if a is None or b is None or not (math.isfinite(a) and math.isfinite(b)):
            return False
        return abs(a - b) <= 2.0 ** -12 * abs(a) or max(abs(a), abs(b)) < 2.0 ** -100

    differ = [(a, b) for a, b in zip(*outs) if a.outcome != b.outcome]
    assert all(rounding_sized(a) for a, _ in differ), [(a.outcome, b.outcome, a.original, a.corrupted)
                                                       for a, b in differ]
    assert len(differ) <= 6


def test_linear_fast_path_is_lane_invariant() -> None:
    """A lane's linear-layer result must not depend on the lanes beside it or its position
    (campaign batches hold at least two lanes: a faulty lane and its golden lane)."""
    from kernelfi.kernels import rows_linear
    g = torch.Generator().manual_seed(0)
    w = torch.randn(300, 700, generator=g) * 0.05
    rows = torch.randn(150, 700, generator=g)
    alone = rows_linear(rows[:2], w)[0]
    for b in (2, 3, 5, 7, 9, 11, 64, 65, 150):
        for pos in (0, b // 2, b - 1):
            batch = rows[torch.randint(0, 150, (b,), generator=g)].clone()
            batch[pos] = rows[0]
            assert torch.equal(rows_linear(batch, w)[pos], alone), (b, pos)


def test_forward_frees_dead_buffers_and_keeps_every_value() -> None:
    """``run(keep=...)`` drops each activation after its last use; the outputs are the bits a
    run that keeps everything computes, and only the kept buffers and the weights remain."""
    lm = load_model("digits-resnet")
    prog = lower(lm.module, lm.info.input_shape, "digits-resnet")
    x = torch.randn(3, *lm.info.input_shape, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        full = prog.run(prog.memory(x))
        lean = prog.run(prog.memory(x), keep=(prog.trace.logits,))
        logits, _ = prog.forward(x)
    assert set(lean) - set(prog.weights) == {prog.trace.logits, "input"}
    assert len(full) - len(prog.weights) > 12  # the shortcut model's intermediates (17)
    assert torch.equal(lean[prog.trace.logits], full[prog.trace.logits])
    assert torch.equal(logits, full[prog.trace.logits].reshape(3, -1))
    # every buffer a launch reads is still there when it runs: an explicit (unfused) pass too
    with torch.no_grad():
        slow = prog.run(prog.memory(x), fast=False, keep=(prog.trace.logits,))
        assert torch.equal(slow[prog.trace.logits], prog.run(prog.memory(x), fast=False)[prog.trace.logits])
