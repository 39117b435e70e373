"""The Python API (docs/api.md) on a hand-weighted module (tests/hand_net.py): lowering, campaigns
with inputs as a tensor, a Dataset, a DataLoader or a path, resume, summary, the worker path,
training mode refused, the caller's model untouched, and the example that runs it all."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import kernelfi
from kernelfi._utils import KernelfiError
from kernelfi.campaign import run_campaign
from kernelfi.campaign.pool import execute_local
from kernelfi.lowering import lower
from kernelfi.models.user import import_file
from kernelfi.store import InjectionRecord, Store
from tests.hand_net import LOGITS, X, Y, Hand, Wide

ROOT = Path(__file__).resolve().parent.parent


def rows(db: Path, cid: int = 1) -> list[tuple]:
    with Store(db, create=False, readonly=True) as s:
        n = s.campaign(cid).n_done
        return [(r.id, r.outcome, r.launch_name, r.tag, r.element, repr(r.corrupted))  # NaN equal to NaN
                for r in (s.injection(cid, i) for i in range(n))]


def heavier() -> Hand:
    """The hand model with fc.weight[0, 0] = 3: logits (6, 8) and (24, 2); not its factory's weights."""
    net = Hand().eval()
    with torch.no_grad():
        net.fc.weight[0, 0] = 3.0
    return net


def test_lowers_the_instance_with_its_own_weights() -> None:
    for net, logits in ((Hand().eval(), LOGITS), (heavier(), torch.tensor([[6.0, 8.0], [24.0, 2.0]]))):
        model = kernelfi.Model(net, (1, 2, 2))
        program = model.lower()
        mem = program.run(program.memory(X))
        assert torch.equal(mem[program.trace.logits].reshape(2, 2), logits)
        assert model.lowering_error(X) == 0.0
        assert model.name == "hand_net:Hand"
        assert model.profile()["total_instructions"] > 0


def test_model_files_and_registered_names_are_models_too(tmp_path: Path) -> None:
    model = kernelfi.Model.file(f"{ROOT / 'tests' / 'hand_net.py'}:build")
    program = model.lower()
    assert torch.equal(program.run(program.memory(X))[program.trace.logits].reshape(2, 2), LOGITS)
    assert model.name == "hand_net:build" and model.input_shape == (1, 2, 2)
    res = kernelfi.Campaign(model, (X, Y), tmp_path / "f.db", mode="rf", n=20).run()
    assert res.complete and kernelfi.summary(tmp_path / "f.db")[0]["weights"]["source"] == "factory"
    digits = kernelfi.Model.registered("digits-alexnet")
    assert digits.input_shape == (1, 32, 32) and digits.loaded.weights_source == "embedded"


def test_training_mode_is_refused_in_one_line() -> None:
    with pytest.raises(KernelfiError, match=r"training mode .*call \.eval\(\)") as e:
        kernelfi.Model(Hand(), (1, 2, 2))  # a fresh module is in training mode
    assert "\n" not in str(e.value)
    with pytest.raises(KernelfiError, match="training mode"):
        lower(Hand(), (1, 2, 2))
    net = Hand().eval()
    net.conv.train()  # one submodule left in training mode is enough to differ
    with pytest.raises(KernelfiError, match="conv"):
        kernelfi.Model(net, (1, 2, 2))


def test_a_library_class_built_inline_needs_a_factory() -> None:
    """nn.Sequential made in a script: its class is torch's, whose file cannot be imported by
    path and whose constructor's layers are recorded nowhere, so it is refused in one line."""
    with pytest.raises(KernelfiError, match=r"Sequential belongs to an installed library.*factory="):
        kernelfi.Model(nn.Sequential(nn.Conv2d(1, 1, 1)).eval(), (1, 2, 2))


def test_a_module_whose_constructor_needs_arguments_needs_a_factory() -> None:
    with pytest.raises(KernelfiError, match=r"Wide\(width\) needs arguments.*factory="):
        kernelfi.Model(Wide(3).eval(), (1, 2, 2))
    # a factory that builds another model than the instance is caught by the output check
    with pytest.raises(KernelfiError, match="computes otherwise"):
        kernelfi.Model(Hand().eval(), (1, 2, 2), factory=f"{ROOT / 'tests' / 'hand_net.py'}:build_other")


@pytest.fixture(scope="module")
def tensor_db(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, kernelfi.CampaignResult]:
    db = tmp_path_factory.mktemp("api") / "t.db"
    net = Hand().eval()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    res = kernelfi.Campaign(kernelfi.Model(net, (1, 2, 2)), (X, Y), db, mode="iov", n=200, seed=4,
                            selection="kernel").run()  # as many per kernel: fc's last launches get their share
    after = net.state_dict()
    assert not net.training and all(torch.equal(before[k], after[k]) for k in before)  # the caller's model untouched
    assert not net._forward_hooks and not net.fc._forward_hooks
    return db, res


def test_campaign_on_a_tensor_outcomes_follow_the_hand_logits(tensor_db: tuple[Path, kernelfi.CampaignResult]) -> None:
    db, res = tensor_db
    assert (res.n_done, res.n_planned, res.tool_errors) == (200, 200, 0) and res.complete
    checked = 0
    with Store(db, create=False, readonly=True) as s:
        for i in range(200):
            r = s.injection(res.id, i)
            # a corrupted logit: fc's last two launches load each logit (the value is the register's)
            if (isinstance(r, InjectionRecord) and r.launch_name in ("fc.add_bias", "fc.activate_array")
                    and r.tag.startswith("ld:") and r.element >= 0 and r.corrupted is not None):
                assert r.original == float(LOGITS[r.input_id, r.element])
                faulty = LOGITS[r.input_id].clone()
                faulty[r.element] = r.corrupted
                if math.isfinite(r.corrupted):
                    assert r.faulty_top1 == int(faulty.argmax())
                assert r.golden_top1 == int(LOGITS[r.input_id].argmax())
                checked += 1
    assert checked >= 2


def test_summary_says_weights_data_and_golden_accuracy(tensor_db: tuple[Path, kernelfi.CampaignResult]) -> None:
    db, res = tensor_db
    (s,) = kernelfi.summary(db)
    assert s["model"] == "hand_net:Hand" and s["n"] == 200 and sum(s["outcomes"].values()) == 200
    assert s["weights"]["source"] == "factory"  # the instance holds its factory's weights: no file written
    assert s["golden_accuracy"]["correct"] == 1 and s["golden_accuracy"]["inputs"] == 2  # (2, 8) right, (8, 2) wrong
    assert s["data"]["source"].startswith(str(db) + ".files/inputs-")
    assert s["outcomes"] == res.counts


def test_dataset_dataloader_and_path_inputs_give_the_same_rows(tensor_db: tuple[Path, kernelfi.CampaignResult],
                                                               tmp_path: Path) -> None:
    db, _ = tensor_db
    model = kernelfi.Model(Hand().eval(), (1, 2, 2))
    ds = TensorDataset(X, Y)
    loader = DataLoader(ds, batch_size=1)
    np.savez(tmp_path / "hand.npz", x=X.numpy(), y=Y.numpy(), normalized=True)
    for i, inputs in enumerate((ds, loader, tmp_path / "hand.npz")):
        other = tmp_path / f"{i}.db"
        kernelfi.Campaign(model, inputs, other, mode="iov", n=200, seed=4, selection="kernel").run()
        assert rows(other) == rows(db)
        assert kernelfi.summary(other)[0]["golden_accuracy"]["correct"] == 1


def test_resume_ends_with_the_rows_of_an_uninterrupted_run(tmp_path: Path) -> None:
    model = kernelfi.Model(heavier(), (1, 2, 2))
    whole, parts = tmp_path / "whole.db", tmp_path / "parts.db"
    kernelfi.Campaign(model, X, whole, mode="rf", n=60, batch=10).run()
    c = kernelfi.Campaign(model, X, parts, mode="rf", n=60, batch=10)
    first = c.run(stop_after_batches=2)
    assert (first.n_done, first.complete) == (20, False)
    assert c.run().n_done == 60
    assert rows(parts) == rows(whole)


def test_workers_rebuild_the_model_from_its_file_and_safetensors(tmp_path: Path) -> None:
    """Every batch goes to two spawned workers; each imports tests/hand_net.py by path and loads the
    instance's weights (not the factory's) from safetensors: the rows are the single process's."""
    model = kernelfi.Model(heavier(), (1, 2, 2))
    pooled = kernelfi.Campaign(model, (X, Y), tmp_path / "pool.db", mode="iov", n=40, batch=10)
    assert pooled.config.model.weights.endswith(".safetensors")
    run_campaign(pooled.config, pooled.db, execute=lambda prep, work: execute_local(prep, work, 2, driver=False))
    kernelfi.Campaign(model, (X, Y), tmp_path / "one.db", mode="iov", n=40, batch=10).run()
    assert rows(tmp_path / "pool.db") == rows(tmp_path / "one.db")
    (s,) = kernelfi.summary(tmp_path / "pool.db")
    assert s["weights"]["source"] == pooled.config.model.weights


def test_harden_plan_and_export_of_the_instance(tmp_path: Path) -> None:
    net = heavier()
    model = kernelfi.Model(net, (1, 2, 2))
    kernelfi.Campaign(model, (X, Y), tmp_path / "h.db", mode="iov", n=80).run()
    plan = kernelfi.harden_plan(tmp_path / "h.db", budget="50%", out=tmp_path / "plan.json")
    assert plan.model == "hand_net:Hand" and (tmp_path / "plan.json").is_file()
    exp = kernelfi.export(model, tmp_path / "plan.json", tmp_path / "out", check_inputs=X)
    with torch.no_grad():
        assert torch.equal(exp.load("none")(X), net(X))


def test_the_example_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """examples/own_model.py, imported as its workers would import it, its main() run here."""
    import_file(ROOT / "examples" / "own_model.py").main(tmp_path)
    out = capsys.readouterr().out
    assert "120 injections" in out and "bit for bit: True" in out
    assert (tmp_path / "report" / "index.html").is_file()
