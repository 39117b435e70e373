"""A model of one's own on the command line and in the registry: ``PATH.py:FACTORY`` models from
any directory, a changed file refused, ``--weights`` state dicts, a registered builder's own
weights kept, a model registered inside ``main()`` through spawned workers, replay and harden."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner, Result
from safetensors.torch import save_file

from kernelfi._utils import KernelfiError
from kernelfi.campaign import open_session
from kernelfi.campaign.session import ModelSpec
from kernelfi.cli import cli
from kernelfi.models import load_model, register_model
from kernelfi.store import Store
from tests.hand_net import LOGITS, X, Y, Hand

HERE = Path(__file__).resolve().parent
FAST = ["--mode", "iov", "-n", "30", "--seed", "3", "--workers", "1", "--quiet"]


def run(*args: str) -> Result:
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def logits_of(spec: ModelSpec) -> torch.Tensor:
    program = open_session(spec).program
    return program.run(program.memory(X))[program.trace.logits].reshape(2, 2)


@pytest.fixture()
def project(tmp_path: Path) -> Path:
    """A user's project: the model file in net/, inputs in data.npz."""
    (tmp_path / "net").mkdir()
    shutil.copy(HERE / "hand_net.py", tmp_path / "net" / "hand_net.py")
    np.savez(tmp_path / "data.npz", x=X.numpy(), y=Y.numpy(), normalized=True)
    (tmp_path / "elsewhere").mkdir()
    return tmp_path


def test_a_model_file_keeps_its_factory_weights_and_takes_a_state_dict(tmp_path: Path) -> None:
    path = f"{HERE / 'hand_net.py'}:Hand"
    loaded = load_model(path)
    assert loaded.weights_source == "factory" and loaded.info.input_shape == (1, 2, 2) and loaded.info.num_classes == 2
    assert torch.equal(logits_of(ModelSpec(path)), LOGITS)
    state = {k: v.clone() for k, v in Hand().state_dict().items()}
    state["fc.weight"][0, 0] = 3.0  # logits (6, 8) and (24, 2)
    save_file(state, str(tmp_path / "w.safetensors"))
    torch.save(state, tmp_path / "w.pt")  # tensors only: read with weights_only=True
    for f in ("w.safetensors", "w.pt"):
        assert torch.equal(logits_of(ModelSpec(path, str(tmp_path / f))), torch.tensor([[6.0, 8.0], [24.0, 2.0]]))
    torch.save(Hand(), tmp_path / "whole.pt")  # a pickled module: never unpickled
    with pytest.raises(KernelfiError, match="whole.pt") as e:
        load_model(path, weights=str(tmp_path / "whole.pt"))
    assert "\n" not in str(e.value)
    res = run("profile", path, "--weights", tmp_path / "w.safetensors", "--format", "json")
    assert res.exit_code == 0, res.output
    rnd = open_session(ModelSpec(path, "random", seed_weights=1))
    assert rnd.loaded.weights_source == "random (seed 1)" and len(rnd.notes) == 1 and "random" in rnd.notes[0]
    assert not torch.equal(logits_of(ModelSpec(path, "random", seed_weights=1)), LOGITS)


def test_a_factory_leaving_pytorchs_default_init_gets_seeded_random_weights_said(tmp_path: Path) -> None:
    """nn.Linear's default weights come from the global generator: another model on every call, so a
    worker would inject into another model than the driver. They are no weights of the model's."""
    (tmp_path / "dflt.py").write_text("from torch import nn\ninput_shape = (1, 2, 2)\n"
                                      "def f():\n    return nn.Sequential(nn.Flatten(), nn.Linear(4, 2))\n"
                                      "f.input_shape = (1, 2, 2)\n")
    spec = ModelSpec(f"{tmp_path / 'dflt.py'}:f")
    a, b = open_session(spec), open_session(spec)
    assert a.loaded.weights_source == "random (seed 0)" and a.weights_hash == b.weights_hash
    assert torch.equal(a.loaded.module[1].weight, b.loaded.module[1].weight)
    (note,) = a.notes
    assert "seeded random weights" in note and "--weights" in note


def test_model_file_errors_are_one_line(tmp_path: Path) -> None:
    (tmp_path / "shapeless.py").write_text("from torch import nn\ndef f():\n    return nn.Sequential(nn.Flatten(), nn.Linear(4, 2))\n")
    cases = [(f"{tmp_path / 'missing.py'}:f", "no such model file"),
             (f"{HERE / 'hand_net.py'}:Nope", r"no top-level 'Nope'.*Hand"),
             (f"{HERE / 'hand_net.py'}:Wide", "the factory failed"),
             (f"{tmp_path / 'shapeless.py'}:f", "--input-shape")]
    for model, msg in cases:
        with pytest.raises(KernelfiError, match=msg) as e:
            load_model(model)
        assert "\n" not in str(e.value)
    assert load_model(f"{tmp_path / 'shapeless.py'}:f", input_shape=(1, 2, 2)).info.num_classes == 2


_BUILT = "hand-builder-weights"


def _builder(num_classes: int) -> torch.nn.Module:
    return Hand(num_classes)


def _default_init(num_classes: int) -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, num_classes))


register_model(_BUILT, input_shape=(1, 2, 2), num_classes=2, mean=(0.0,), std=(1.0,), description="test")(_builder)


def test_a_registered_builders_own_weights_are_kept() -> None:
    loaded = load_model(_BUILT)
    assert loaded.weights_source == "factory"
    assert torch.equal(loaded.module.fc.weight, Hand().fc.weight)  # not replaced by seeded random ones
    assert torch.equal(logits_of(ModelSpec(_BUILT)), LOGITS)
    assert open_session(ModelSpec(_BUILT)).notes == ()
    rnd = open_session(ModelSpec(_BUILT, "random"))  # only when asked, and then said
    assert rnd.loaded.weights_source == "random (seed 0)" and "seeded random" in rnd.notes[0]
    register_model(_BUILT + "-dflt", input_shape=(1, 2, 2), num_classes=2, mean=(0.0,), std=(1.0,),
                   description="test")(_default_init)
    dflt = open_session(ModelSpec(_BUILT + "-dflt"))  # PyTorch's default init: seeded random, said
    assert dflt.loaded.weights_source == "random (seed 0)" and len(dflt.notes) == 1
    # kernelfi's own architectures have no trained weights: seeded random ones, as before
    assert load_model("alexnet", num_classes=7).weights_source == "random (seed 0)"


def test_cli_model_file_from_any_directory_and_a_changed_file_refused(project: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(project)
    res = run("campaign", "net/hand_net.py:Hand", "--db", "c.db", "--data", "data.npz", *FAST)
    assert res.exit_code == 0, res.output
    res = run("profile", "net/hand_net.py:Hand", "--format", "json")
    assert res.exit_code == 0 and '"total_instructions"' in res.output
    monkeypatch.chdir(project / "elsewhere")
    with Store(project / "c.db", create=False, readonly=True) as s:
        files = s.campaign(1).meta.extra["files"]
    assert files["model source"]["path"] == str(project / "net" / "hand_net.py")
    for i in (0, 7, 29):
        res = run("replay", "--db", project / "c.db", "--id", i)
        assert res.exit_code == 0 and "matches the stored row" in res.output, res.output
    res = run("harden", "--db", project / "c.db", "--out", project / "plan.json", "--budget", "50%")
    assert res.exit_code == 0, res.output
    res = run("export", f"{project / 'net' / 'hand_net.py'}:Hand", "--hardening", project / "plan.json",
              "--out", project / "exp", "--data", project / "data.npz", "--check", "2")
    assert res.exit_code == 0 and "exported" in res.output, res.output
    res = run("overhead", "--exported", project / "exp", "--reps", "2", "--lanes", "2", "--device", "cpu")
    assert res.exit_code == 0 and "full TMR" in res.output, res.output
    res = run("overhead", f"{project / 'net' / 'hand_net.py'}:Hand", "--gpu", "gtx750ti")
    assert res.exit_code == 0 and "overhead (modelled)" in res.output, res.output
    with (project / "net" / "hand_net.py").open("a") as f:
        f.write("\n# edited\n")
    for args in (("replay", "--db", project / "c.db", "--id", 0),
                 ("harden", "--db", project / "c.db", "--out", project / "p2.json")):
        res = run(*args)
        assert res.exit_code == 2
        (line,) = res.stderr.splitlines()
        assert "model source file changed since the campaign" in line and "hand_net.py" in line
    monkeypatch.chdir(project)  # the same command again: its rows would mix two models
    res = run("campaign", "net/hand_net.py:Hand", "--db", "c.db", "--data", "data.npz", *FAST)
    assert res.exit_code == 2 and "changed since campaign 1" in res.stderr


def test_input_shape_option_and_its_help() -> None:
    for cmd in ("campaign", "profile", "overhead", "export"):
        out = " ".join(run(cmd, "--help").output.split())
        assert "--input-shape" in out and "PATH.py:FACTORY" in out, cmd
    res = run("profile", f"{HERE / 'hand_net.py'}:Hand", "--input-shape", "1,2")
    assert res.exit_code == 2 and "C,H,W" in res.output


def test_a_model_registered_in_main_runs_in_spawned_workers_and_replays_from_the_cli(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", x=X.numpy(), y=Y.numpy(), normalized=True)
    script = HERE / "main_registered.py"
    env = {"PYTHONPATH": str(HERE.parent / "src"), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, str(script), str(tmp_path / "m.db"), str(tmp_path / "d.npz")],
                         capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr
    with Store(tmp_path / "m.db", create=False, readonly=True) as s:
        row = s.campaign(1)
        assert row.n_done == 40 and row.n_tool_errors == 0
        assert row.meta.weights_source == "factory"  # the builder's own weights
        assert row.meta.extra["model_spec"]["registered"]["qualname"] == "build"
    for i in (0, 13, 39):  # this process never ran main(): the record brings the builder
        res = run("replay", "--db", tmp_path / "m.db", "--id", i)
        assert res.exit_code == 0 and "matches the stored row" in res.output, res.output
    res = run("harden", "--db", tmp_path / "m.db", "--out", tmp_path / "plan.json", "--budget", "50%")
    assert res.exit_code == 0, res.output
    nested = subprocess.run([sys.executable, str(script), str(tmp_path / "n.db"), str(tmp_path / "d.npz"), "nested"],
                            capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    assert nested.returncode != 0 and "defined inside a function (main.<locals>.<lambda>)" in nested.stderr
