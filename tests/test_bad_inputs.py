"""Bad weights, bad inputs and absurd sizes: one line each, before any work, nothing written."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from kernelfi.campaign import CampaignConfig, ModelSpec, prepare, run_campaign
from kernelfi.models import load_model
from kernelfi.store import Store
from cli_util import invoke, one_line

TINY_CFG = "[net]\nwidth=4\nheight=4\nchannels=1\n[convolutional]\nfilters=2\nsize=3\nstride=1\npad=1\n" \
           "activation=relu\n[connected]\noutput=3\n[softmax]\n"


@pytest.fixture(scope="module")
def digits_state() -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in load_model("digits-alexnet").module.state_dict().items()}


@pytest.mark.parametrize("fmt", ["safetensors", "pth"])
@pytest.mark.parametrize("damage,needle", [
    ("nan", "holds 400 NaN or infinite values (first: element 0 = nan); weights must be finite"),
    ("inf", "holds 1 NaN or infinite values (first: element 7 = -inf)"),
    ("int32", "holds int32 values, not floating-point weights"),
])
def test_weights_that_are_not_finite_floats_are_one_line(digits_state, tmp_path: Path, fmt: str, damage: str,
                                                         needle: str) -> None:
    state = dict(digits_state)
    key = next(k for k, v in state.items() if v.dim() == 4)  # the first convolution's weights
    w = state[key].clone()
    if damage == "nan":
        w[:] = float("nan")
    elif damage == "inf":
        w.view(-1)[7] = -float("inf")
    else:
        w = w.to(torch.int32)
    state[key] = w
    path = tmp_path / f"w.{fmt}"
    if fmt == "safetensors":
        from safetensors.torch import save_file
        save_file(state, str(path))
    else:
        torch.save(state, str(path))
    if damage == "nan":
        assert w.numel() == 400  # 16 filters of 1x5x5
    one_line(invoke("profile", "digits-alexnet", "--weights", str(path)), f"w.{fmt}: {key} ", needle)


def test_darknet_weights_holding_nan_are_one_line(tmp_path: Path) -> None:
    from kernelfi.models.darknet import build_layers, parse_cfg_text
    from kernelfi.models.darknet_net import random_state
    from kernelfi.models.darknet_weights import write_weights

    cfg = tmp_path / "tiny.cfg"
    cfg.write_text(TINY_CFG)
    layers, _ = build_layers(parse_cfg_text(TINY_CFG))
    state = random_state(layers, 0)
    key = next(k for k in state if k.endswith("biases"))
    state[key][1] = float("nan")
    write_weights(tmp_path / "tiny.weights", layers, state)
    one_line(invoke("profile", str(cfg), "--weights", str(tmp_path / "tiny.weights")),
             "tiny.weights: layer 0 (convolutional) biases holds 1 NaN or infinite values (first: element 1 = nan)")


def test_inputs_holding_nan_or_inf_are_one_line(tmp_path: Path) -> None:
    x = np.random.default_rng(0).random((5, 1, 32, 32), dtype=np.float32)
    x[3, 0, 2, 2] = np.inf
    np.savez(tmp_path / "one.npz", x=x)
    np.savez(tmp_path / "all.npz", x=np.full((4, 1, 32, 32), np.nan, dtype=np.float32))
    one_line(invoke("campaign", "digits-alexnet", "--mode", "iov", "-n", "5", "--data", str(tmp_path / "one.npz"),
                    "--db", str(tmp_path / "r.db"), "--quiet"), "one.npz[3]: input holds 1 NaN or infinite values (1 of 5 inputs do); inputs must be finite")
    one_line(invoke("campaign", "digits-alexnet", "--mode", "iov", "-n", "5", "--data", str(tmp_path / "all.npz"),
                    "--db", str(tmp_path / "r.db"), "--quiet"), "all.npz[0]: input holds 1024 NaN", "(4 of 4 inputs do)")
    assert not (tmp_path / "r.db").exists()


def test_a_text_file_given_as_npz_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "x.npz").write_text("id,label\n1,3\n")
    line = one_line(invoke("campaign", "digits-alexnet", "--mode", "iov", "-n", "5", "--data", str(tmp_path / "x.npz"),
                           "--db", str(tmp_path / "r.db"), "--quiet"),
                    "x.npz: not an .npz archive (a zip of .npy arrays, as np.savez writes; this file starts with b'id,l')")
    assert "pickle" not in line


@pytest.mark.parametrize("args,needle", [
    (["--seed", str(2**63)], "--seed 9223372036854775808 does not fit in a signed 64-bit integer"),
    (["-n", str(2**63)], "does not fit the results database"),
    (["--data", "random", "--inputs", "100000000000"], "the golden run of 100,000,000,000 inputs through "
                                                       "digits-alexnet: "),
])
def test_absurd_sizes_are_refused_before_any_work(tmp_path: Path, args: list[str], needle: str) -> None:
    db = tmp_path / "a.db"
    base = {"-n": "10", "--seed": "0"}
    for k in ("-n", "--seed"):
        if k in args:
            base.pop(k)
    flat = [a for kv in base.items() for a in kv]
    one_line(invoke("campaign", "digits-alexnet", "--mode", "rf", *flat, *args, "--db", str(db), "--quiet"), needle)
    assert not db.exists()  # refused before the database was opened


def test_random_inputs_that_cannot_fit_are_refused_before_they_are_drawn() -> None:
    from kernelfi._utils import KernelfiError
    from kernelfi.data import load_inputs
    info = load_model("digits-alexnet").info
    with pytest.raises(KernelfiError, match=r"^random: 100,000,000,000 inputs of 1x32x32 floats: 372\.5 TiB needed"):
        load_inputs("random", info, 10**11)


def test_a_golden_run_that_cannot_fit_is_refused_before_it_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    import kernelfi._utils as u
    monkeypatch.setattr(u, "physical_memory", lambda: 64 << 20)
    from kernelfi._utils import KernelfiError
    with pytest.raises(KernelfiError, match=r"the golden run of 4,000 inputs through digits-alexnet: .* needed, "
                                            r"more than this machine's 64\.0 MiB"):
        prepare(CampaignConfig(ModelSpec("digits-alexnet"), "iov", "single", n=5, seed=0, data="random", inputs=4000))


def test_a_cfg_too_big_for_memory_is_one_line(tmp_path: Path) -> None:
    cfg = tmp_path / "big.cfg"
    cfg.write_text(TINY_CFG.replace("filters=2", "filters=1000000000"))
    one_line(invoke("profile", str(cfg)), "big.cfg: layer 0 (convolutional), 10,000,000,000 weights and "
                                          "16,000,000,000 outputs per input: 59.6 GiB needed")


def test_ids_are_drawn_lazily_and_as_a_whole_list_would_batch_them() -> None:
    from kernelfi.campaign.campaign import batches, pending_work
    cfg = CampaignConfig(ModelSpec("digits-alexnet"), "rf", "single", n=10**12, seed=4, inputs=4)
    prep = prepare(cfg)
    layer_of = {l.index: l.layer for l in prep.session.program.trace.launches}
    whole = list(batches([prep.planner.draw(i) for i in range(300)], layer_of, 64))
    assert list(pending_work(prep, iter(range(300)), 64)) == [whole]  # one chunk: a whole list's batches
    parts = list(pending_work(prep, iter(range(300)), 64, chunk=128))  # chunks of 128 ids
    assert len(parts) == 3 and [pf.id for b in parts[0] for pf in b] == \
        [pf.id for b in batches([prep.planner.draw(i) for i in range(128)], layer_of, 64) for pf in b]
    assert sorted(pf.id for p in parts for b in p for pf in b) == list(range(300))
    assert all(pf == prep.planner.draw(pf.id) for p in parts for b in p for pf in b)
    first = next(pending_work(prep, iter(range(cfg.n)), 64, chunk=256))  # 10**12 ids, drawn 256 at a time
    assert sorted(pf.id for b in first for pf in b) == list(range(256))


def test_a_campaign_of_a_trillion_injections_starts_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import kernelfi.campaign.campaign as C
    monkeypatch.setattr(C, "PLAN_CHUNK", 512)  # the default, 65536 ids, takes seconds to draw
    db = tmp_path / "t.db"
    cfg = CampaignConfig(ModelSpec("digits-alexnet"), "rf", "single", n=10**12, seed=4, inputs=4, batch=64)
    cid = run_campaign(cfg, str(db), stop_after=2)
    with Store(db, readonly=True) as s:
        assert len(s.done_ids(cid)) == 128 and s.campaign(cid).meta.n_planned == 10**12
        assert max(s.done_ids(cid)) < 512


def test_a_new_campaign_that_fails_before_its_first_row_leaves_no_campaign(tmp_path: Path) -> None:
    db = tmp_path / "f.db"

    def broken(prep, work):  # type: ignore[no-untyped-def]
        raise KeyboardInterrupt  # e.g. Ctrl-C during the golden run
        yield  # pragma: no cover
    cfg = CampaignConfig(ModelSpec("digits-alexnet"), "rf", "single", n=10, seed=4, inputs=4)
    with pytest.raises(KeyboardInterrupt):
        run_campaign(cfg, str(db), execute=broken)
    with Store(db, readonly=True) as s:
        assert s.campaigns() == []
    run_campaign(cfg, str(db))
    with Store(db, readonly=True) as s:
        assert [c.n_done for c in s.campaigns()] == [10]
