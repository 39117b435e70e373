"""Export of a hardened model as plain PyTorch (docs/export.md): the op mapping, fault-free
equality with the original, hand-computed outcomes of hook-injected flips on a tiny model,
loading without kernelfi, the CLI. Fault coverage per technique: tests/test_export_coverage.py.

The tiny model (values worked out by hand):
    x[r][c] = 3r + c + 1 on a 1x3x3 input                                  (1 .. 9)
    conv (2 filters 2x2): f0 = x[i][j] + 0.5, f1 = 2 x[i+1][j+1] - 1  -> [[1.5, 2.5], [4.5, 5.5]], [[9, 11], [15, 17]]
    relu (all positive), pool 2x2                                      -> [5.5, 17]
    fc: W = [[1, 1], [2, -1]], b = [0, 1]                             -> logits [22.5, -5]
"""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file
from torch import nn

from kernelfi._utils import KernelfiError
from kernelfi.campaign.session import ModelSpec, inputs_tensor, open_session, session_inputs
from kernelfi.cli import cli
from kernelfi.harden import Plan, Protection, profile_bounds
from kernelfi.harden.export import LABELS, export_model, flip_bit, load_exported, native_overhead, read_manifest
from kernelfi.harden.export.runtime import UnrecoverableFault
from tests.tiny import CFG
from tests.threads import one_thread  # noqa: F401  (autouse: one intra-op thread)

GOLDEN = [22.5, -5.0]


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 2)
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(2, 2)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.weight[0, 0, 0, 0] = 1.0
            self.conv.weight[1, 0, 1, 1] = 2.0
            self.conv.bias.copy_(torch.tensor([0.5, -1.0]))
            self.fc.weight.copy_(torch.tensor([[1.0, 1.0], [2.0, -1.0]]))
            self.fc.bias.copy_(torch.tensor([0.0, 1.0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.relu(self.conv(x))), 1))


TINY_PLAN = Plan("tiny", (
    Protection("launch", "conv.gemm", "tmr"),
    Protection("launch", "conv.activate_array", "dmr"),
    Protection("layer", "pool", "range", {"pool.output": (0.0, 17.0)}),
    Protection("launch", "fc.gemm", "abft"),
))


def tiny_x() -> torch.Tensor:
    return torch.arange(1, 10, dtype=torch.float32).reshape(1, 1, 3, 3)


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tiny") / "export"
    export_model(Tiny().eval(), TINY_PLAN, out, input_shape=(1, 3, 3), name="tiny", check_inputs=tiny_x())
    return out


def run(net: nn.Module) -> list[float]:
    with torch.no_grad():
        return net(tiny_x())[0].tolist()


# ---------------------------------------------------------------------------- mapping
def test_manifest_maps_each_plan_entry_to_the_op_that_contains_it(tiny_export: Path) -> None:
    m = read_manifest(tiny_export)
    got = [[(op["module"], op["op"], op["applied"], op["kernels"]) for op in e["ops"]] for e in m["entries"]]
    assert got == [[("conv", "Conv2d", "tmr", ["gemm", "im2col"])],      # a conv pair is one unit
                   [("relu", "ReLU", "dmr", ["activate_array"])],
                   [("pool", "MaxPool2d", "range", ["forward_maxpool"])],
                   [("fc", "Linear", "abft", ["gemm"])]]
    assert m["entries"][2]["ops"][0]["bounds"] == [0.0, 17.0]
    assert m["check"]["none"]["bitwise"] and m["check"]["plan"]["bitwise"]
    files = {k: v["name"] for k, v in m["files"].items()}
    assert files == {"source": "model.py", "weights": "weights.safetensors", "plan": "plan.json"}


def test_every_variant_computes_the_hand_worked_logits(tiny_export: Path) -> None:
    for variant in ("none", "plan", "full-dmr", "full-tmr"):
        assert run(load_exported(tiny_export, variant)) == GOLDEN, variant


# ---------------------------------------------------------------------------- injected flips (by hand)
def test_an_unprotected_replica_flip_changes_the_output_as_worked_out(tiny_export: Path) -> None:
    # Bit 30 of 17.0 (0x41880000) is the exponent's top bit: 17 * 2^-128, a tiny positive number.
    # The pool then takes 15: logits [5.5 + 15, 2*5.5 - 15 + 1] = [20.5, -3].
    net = load_exported(tiny_export, "none")
    with flip_bit(net.conv, index=7, bit=30) as calls:
        assert run(net) == [20.5, -3.0]
    assert calls == [1]


def test_tmr_outvotes_a_flip_in_any_one_replica(tiny_export: Path) -> None:
    net = load_exported(tiny_export, "plan")
    for replica in range(3):
        with flip_bit(net.conv, index=7, bit=30, call=replica) as calls:
            assert run(net) == GOLDEN
        assert calls == [3]  # three runs of the conv


def test_dmr_reruns_on_a_mismatch_and_raises_when_three_runs_disagree(tiny_export: Path) -> None:
    net = load_exported(tiny_export, "plan")
    dmr = net.hardening.relu
    with flip_bit(net.relu, index=7, bit=30, call=1) as calls:
        assert run(net) == GOLDEN
    assert calls == [3] and dmr.reexecuted == 1  # two runs, a mismatch, a third run
    with flip_bit(net.relu, index=7, bit=30, call=0), flip_bit(net.relu, index=7, bit=29, call=1), \
            flip_bit(net.relu, index=7, bit=28, call=2):
        with pytest.raises(RuntimeError, match="three runs disagree at 1 elements") as err:
            run(net)
    assert type(err.value).__name__ == UnrecoverableFault.__name__  # model.py's own copy of the class


def test_range_restriction_clamps_an_exponent_flip_to_the_bound(tiny_export: Path) -> None:
    # Bit 29 of 5.5 (exponent 129 -> 193): 5.5 * 2^64. Clamped to 17: logits [34, 2*17 - 17 + 1] = [34, 18].
    net = load_exported(tiny_export, "plan")
    with flip_bit(net.pool, index=0, bit=29):
        assert run(net) == [34.0, 18.0]
    raw = load_exported(tiny_export, "none")
    with flip_bit(raw.pool, index=0, bit=29):
        assert run(raw)[0] == 5.5 * 2.0 ** 64 + 17.0


def test_abft_locates_and_corrects_one_element_and_recomputes_two(tiny_export: Path) -> None:
    net = load_exported(tiny_export, "plan")
    abft = net.hardening.fc
    with flip_bit(net.fc, index=0, bit=30):  # 22.5 -> 22.5 * 2^-128: row 0 and column 0 flag
        assert run(net) == GOLDEN
    assert (abft.corrected, abft.recomputed) == (1, 0)
    with flip_bit(net.fc, index=0, bit=30), flip_bit(net.fc, index=1, bit=29):  # two elements: re-run
        assert run(net) == GOLDEN
    assert (abft.corrected, abft.recomputed) == (1, 1)


# ---------------------------------------------------------------------------- a real model
@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.Tensor, Plan]:
    s = open_session(ModelSpec("digits-alexnet"))
    x = inputs_tensor(session_inputs(s, None, 32))
    b = profile_bounds(s.program, x, ["features.10.output", "classifier.4.output"])
    plan = Plan("digits-alexnet", (
        Protection("layer", "features.3", "tmr"),
        Protection("kernel", "forward_maxpool", "dmr"),
        Protection("launch", "features.0.gemm", "abft"),
        Protection("launch", "classifier.1.gemm", "abft"),
        Protection("layer", "features.10", "range", {"features.10.output": b["features.10.output"]}),
        Protection("layer", "classifier.4", "range", {"classifier.4.output": b["classifier.4.output"]}),
    ))
    out = tmp_path_factory.mktemp("digits") / "export"
    export_model("digits-alexnet", plan, out, check_inputs=x)
    return out, x, plan


def test_fault_free_exports_equal_the_original_bit_for_bit(digits: tuple[Path, torch.Tensor, Plan]) -> None:
    out, x, plan = digits
    original = open_session(ModelSpec("digits-alexnet")).loaded.module
    with torch.no_grad():
        want = original(x).view(torch.int32)
        for variant in ("none", "full-dmr", "full-tmr"):
            assert torch.equal(load_exported(out, variant)(x).view(torch.int32), want), variant
        # The plan equals the original with the same clamps applied by hooks (bitwise), and the
        # original itself on every input whose clamped activations lie inside the bounds.
        bounds = {"features.11": plan.protect[4].bounds["features.10.output"],
                  "classifier.5": plan.protect[5].bounds["classifier.4.output"]}
        inside = torch.ones(x.shape[0], dtype=torch.bool)
        handles = []
        for path, (lo, hi) in bounds.items():
            def hook(mod, args, y, lo=lo, hi=hi):
                inside.mul_(((y >= lo) & (y <= hi)).reshape(y.shape[0], -1).all(1))
                return y.clamp(lo, hi)
            handles.append(original.get_submodule(path).register_forward_hook(hook))
        try:
            clamped = original(x).view(torch.int32)
        finally:
            for h in handles:
                h.remove()
        got = load_exported(out, "plan")(x).view(torch.int32)
    assert torch.equal(got, clamped)
    assert inside.sum() > 0 and torch.equal(got[inside], want[inside])


def test_the_export_runs_in_a_fresh_process_without_kernelfi(digits: tuple[Path, torch.Tensor, Plan],
                                                             tmp_path: Path) -> None:
    out, x, _ = digits
    with torch.no_grad():
        want = {v: load_exported(out, v)(x[:4]) for v in ("plan", "full-tmr")}
    save_file({"x": x[:4].contiguous(), **want}, str(tmp_path / "io.safetensors"))
    code = textwrap.dedent(f"""
        import sys, importlib.abc
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name == "kernelfi" or name.startswith("kernelfi."):
                    raise ImportError("kernelfi is blocked in this process")
        sys.meta_path.insert(0, Block())
        sys.path.insert(0, {str(out)!r})
        import torch, model
        from safetensors.torch import load_file
        io = load_file({str(tmp_path / 'io.safetensors')!r})
        for variant in ("plan", "full-tmr"):
            got = model.load(variant=variant)(io["x"])
            assert torch.equal(got.view(torch.int32), io[variant].view(torch.int32)), variant
        assert not any(m == "kernelfi" or m.startswith("kernelfi.") for m in sys.modules)
        print("ok")
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "ok"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_the_export_runs_on_cuda(digits: tuple[Path, torch.Tensor, Plan]) -> None:
    out, x, _ = digits
    original = open_session(ModelSpec("digits-alexnet")).loaded.module.to("cuda")
    xc = x.to("cuda")
    with torch.no_grad():
        want = original(xc)
        for variant in ("none", "full-dmr", "full-tmr"):
            got = load_exported(out, variant, "cuda")(xc)
            assert torch.equal(got.view(torch.int32), want.view(torch.int32)), variant
        net = load_exported(out, "plan", "cuda")
        got = net(xc)
    assert torch.equal(got.argmax(1), want.argmax(1))
    abft = [m for m in net.hardening.children() if hasattr(m, "corrected")]
    assert abft and all(m.corrected == m.recomputed == 0 for m in abft)  # no false alarm on CUDA
    with flip_bit(net.features[3], index=123, bit=30, call=1), torch.no_grad():
        assert torch.equal(net(xc).view(torch.int32), got.view(torch.int32))  # TMR on the device too


def test_a_damaged_weights_file_is_refused_with_one_line(tiny_export: Path, tmp_path: Path) -> None:
    import shutil
    copy = tmp_path / "copy"
    shutil.copytree(tiny_export, copy)
    data = bytearray((copy / "weights.safetensors").read_bytes())
    data[-1] ^= 1
    (copy / "weights.safetensors").write_bytes(bytes(data))
    with pytest.raises(KernelfiError, match="sha256 .* damaged or replaced"):
        load_exported(copy)


def test_native_overhead_times_every_variant_against_the_original(digits: tuple[Path, torch.Tensor, Plan]) -> None:
    _, x, plan = digits
    res = native_overhead("digits-alexnet", plan, x[:2], reps=1)
    assert list(res.median_s) == list(LABELS) and all(t > 0 for t in res.median_s.values())
    assert set(res.to_dict()["overhead"]) == set(LABELS) - {"original"}


# ---------------------------------------------------------------------------- CLI
def test_cli_export_and_overhead_exported(tmp_path: Path, digits: tuple[Path, torch.Tensor, Plan]) -> None:
    _, _, plan = digits
    plan.save(tmp_path / "plan.json")
    r = CliRunner().invoke(cli, ["export", "digits-alexnet", "--hardening", str(tmp_path / "plan.json"),
                                 "--out", str(tmp_path / "exp"), "--check", "4"])
    assert r.exit_code == 0, r.output
    assert "entry 0 tmr layer features.3 -> features.3 (Conv2d): tmr, features.4 (ReLU): tmr" in r.output
    assert "none bitwise" in r.output and "full-tmr bitwise" in r.output
    assert json.loads((tmp_path / "exp" / "manifest.json").read_text())["model"] == "digits-alexnet"
    r = CliRunner().invoke(cli, ["overhead", "--exported", str(tmp_path / "exp"), "--reps", "2", "--lanes", "2",
                                 "--device", "cpu", "--json", str(tmp_path / "native.json")])
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    for title in ("original model", "export, no hardening", "plan", "full DMR", "full TMR"):
        assert any(line.startswith(title) for line in lines), title
    (rec,) = json.loads((tmp_path / "native.json").read_text())   # what `report --native` reads
    assert (rec["model"], rec["device"], rec["batch"], rec["reps"]) == ("digits-alexnet", "cpu", 2, 2)
    assert list(rec["median_s"]) == list(LABELS)
    assert rec["overhead"]["plan"] == pytest.approx(rec["median_s"]["plan"] / rec["median_s"]["original"] - 1)
    r = CliRunner().invoke(cli, ["overhead", "digits-alexnet", "--gpu", "gtx750ti", "--json", str(tmp_path / "x.json")])
    assert r.exit_code == 2 and "--json writes the timings of --exported DIR" in r.output


def test_cli_export_refuses_a_plan_for_another_model_and_a_foreign_directory(tmp_path: Path) -> None:
    TINY_PLAN.save(tmp_path / "plan.json")
    r = CliRunner().invoke(cli, ["export", "digits-alexnet", "--hardening", str(tmp_path / "plan.json"),
                                 "--out", str(tmp_path / "exp")])
    assert r.exit_code == 2
    assert r.output.strip().splitlines()[-1] == \
        "kernelfi: error: hardening plan is for model 'tiny', not 'digits-alexnet'"
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(KernelfiError, match="not an export directory"):
        export_model(Tiny().eval(), TINY_PLAN, tmp_path / "busy", input_shape=(1, 3, 3), name="tiny")
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"
    (tmp_path / "tiny.cfg").write_text(CFG)  # a Darknet cfg model
    r = CliRunner().invoke(cli, ["export", str(tmp_path / "tiny.cfg"), "--hardening", str(tmp_path / "plan.json"),
                                 "--out", str(tmp_path / "dk"), "--data", "random", "--check", "1"])
    assert r.exit_code == 2 and "Darknet cfg models are not exported" in r.output
