"""The command line as a newcomer meets it: help, notes for defaults, input preparation, labels,
recorded files, outcome names (click's CliRunner, in process)."""
from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import click
import numpy as np
import pytest
import torch
from click.testing import CliRunner, Result
from PIL import Image

from kernelfi.cli import cli
from kernelfi.models.registry import ASSETS
from kernelfi.store import Store
from kernelfi.types import OUTCOME_LABELS
from tests.tiny import CFG

FAST = ["--mode", "iov", "-n", "24", "--seed", "3", "--workers", "1", "--quiet"]


def run(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def extra_of(db: Path, cid: int = 1) -> dict:
    with Store(db, create=False) as s:
        return dict(s.campaign(cid).meta.extra)


# --------------------------------------------------------------------------------- help (item 6)
def test_every_command_and_option_has_help() -> None:
    """Walks the group as it is: commands other modules register are checked too."""
    missing = [f"kernelfi {o.name}" for o in cli.params if isinstance(o, click.Option) and not o.help]
    assert cli.commands, "no commands registered"
    for name, cmd in cli.commands.items():
        if not (cmd.help or "").strip():
            missing.append(f"kernelfi {name} (the command)")
        ctx = click.Context(cmd, info_name=name)
        for p in cmd.get_params(ctx):
            if isinstance(p, click.Option) and not (p.help or "").strip():
                missing.append(f"kernelfi {name} {'/'.join(p.opts)}")
        args = [p.name.upper() for p in cmd.params if isinstance(p, click.Argument)]
        for a in args:  # arguments have no help of their own: the command's text names them
            assert a in (cmd.help or ""), f"kernelfi {name}: its help does not say what {a} is"
    assert missing == []


def test_campaign_help_explains_preparation_and_data() -> None:
    out = " ".join(run("campaign", "--help").output.split())
    for word in ("--mode", "--weights", "--num-classes", "--seed-weights", "--scope", "--select", "--seed",
                 "--quiet", "--fit", "--resize", "--crop", "--mean", "--std", "--no-normalize", "--select-inputs",
                 "letterbox", "centre crop", "ImageFolder", "Required for models without embedded data"):
        assert word in out, word


# ------------------------------------------------------------------ defaults said (item 1)
def tiny_cfg(tmp_path: Path) -> Path:
    p = tmp_path / "tiny.cfg"
    p.write_text(CFG)
    return p


def test_random_weights_and_inputs_are_said_in_one_line_each(tmp_path: Path) -> None:
    db = tmp_path / "r.db"
    res = run("campaign", str(tiny_cfg(tmp_path)), *FAST, "--data", "random", "--inputs", "3", "--db", str(db))
    assert res.exit_code == 0, res.output
    notes = [l for l in res.stderr.splitlines() if l.startswith("note: ")]
    assert len(notes) == 2, res.stderr
    assert "seeded random weights" in notes[0] and "give --weights" in notes[0]
    assert "--data random: 3 seeded uniform [0, 1] images" in notes[1] and "no labels" in notes[1]


def test_data_is_required_without_embedded_data_and_errors_come_before_any_bar(tmp_path: Path) -> None:
    res = CliRunner().invoke(cli, ["campaign", "resnet18", "--mode", "iov", "-n", "5", "--db", str(tmp_path / "x.db")])
    assert res.exit_code == 2
    assert "kernelfi: error: --data is required for resnet18, which has no embedded data" in res.output
    assert "--data random" in res.output and "inj" not in res.output
    assert not (tmp_path / "x.db").exists()
    for bad, said in ((["--crop", "2x"], "expected N or HxW"), (["--mean", "0.1,0.2"], "--mean: 2 values for a "
                                                                                      "1-channel model")):
        res = CliRunner().invoke(cli, ["campaign", "digits-alexnet", "--mode", "iov", "-n", "5",
                                       "--db", str(tmp_path / "y.db"), *bad])
        assert res.exit_code == 2 and said in res.output and "inj" not in res.output, res.output


def image_folder(root: Path, size: tuple[int, int] = (30, 20), mode: str = "RGB") -> Path:
    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        arr = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        Image.fromarray(arr, "RGB").convert(mode).save(root / cls / "0.png")
    return root


def test_colour_images_for_a_grey_model_are_said(tmp_path: Path) -> None:
    db = tmp_path / "r.db"
    res = run("campaign", "digits-alexnet", *FAST, "--data", str(image_folder(tmp_path / "img")), "--db", str(db))
    assert res.exit_code == 0, res.output
    (note,) = [l for l in res.stderr.splitlines() if l.startswith("note: inputs:")]
    assert "2 of the 2 images" in note and "2 RGB" in note and "30x20" in note
    assert "2 converted to grey for the 1-channel model" in note and "stretched to 32x32" in note


# ----------------------------------------------- preparation recorded and replayed (item 2)
def test_cfg_models_letterbox_and_replay_prepares_the_same_from_elsewhere(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(tiny_cfg(tmp_path), work / "tiny.cfg")
    image_folder(work / "img", (6, 4), "L")
    monkeypatch.chdir(work)
    res = run("campaign", "tiny.cfg", *FAST, "--data", "img", "--db", "r.db")
    assert res.exit_code == 0, res.output
    extra = extra_of(work / "r.db")
    assert extra["prep"]["fit"] is None and extra["files"]["data"]["path"] == str(work / "img")
    with Store(work / "r.db", create=False) as s:
        source = s.campaign(1).meta.input_source
    assert source.startswith("images sha256 ") and "letterboxed into 4x4 (Darknet" in source and str(work) not in source
    monkeypatch.chdir(tmp_path)
    again = run("replay", "--db", str(work / "r.db"), "--id", "5")
    assert again.exit_code == 0 and "matches the stored row" in again.output, again.output
    summary = run("summary", "--db", str(work / "r.db")).output
    assert f"data: {work / 'img'}: 2 inputs, images sha256" in summary
    assert "golden accuracy" in summary  # labelled by the class folders


# ---------------------------------------------------------------------------- labels (item 3)
def digits_npz(path: Path, wrong: tuple[int, ...] = ()) -> tuple[np.ndarray, np.ndarray]:
    from kernelfi.data import digits_split, upsample
    s = digits_split()
    x = upsample(s.x_test[:10], (32, 32)).numpy()
    y = s.y_test[:10].copy()
    for i in wrong:
        y[i] = (y[i] + 1) % 10
    np.savez(path, x=x, y=y)
    return x, y


def torch_top1(x: np.ndarray) -> list[int]:
    """What the model predicts, computed with PyTorch itself (not the kernel engine)."""
    from kernelfi.data import load_inputs
    from kernelfi.models import load_model
    lm = load_model("digits-alexnet")
    with torch.no_grad():
        xs = load_inputs("random", lm.info).x  # only for its normalisation below
        del xs
        mean, std = lm.info.mean[0], lm.info.std[0]
        return lm.module((torch.from_numpy(x) - mean) / std).argmax(1).tolist()


def test_select_correct_keeps_only_correctly_classified_inputs(tmp_path: Path) -> None:
    npz = tmp_path / "d.npz"
    x, y = digits_npz(npz, wrong=(2, 5))  # labels made wrong at positions 2 and 5
    pred = torch_top1(x)
    assert [p == t for p, t in zip(pred, y)] == [i not in (2, 5) for i in range(10)]  # the test's premise
    db = tmp_path / "r.db"
    res = run("campaign", "digits-alexnet", *FAST, "-n", "60", "--data", str(npz), "--inputs", "6",
              "--select-inputs", "correct", "--db", str(db))
    assert res.exit_code == 0, res.output
    assert "note: inputs: the 6 classified correctly among the first 8 kept" in res.stderr
    extra = extra_of(db)
    assert extra["chosen"] == {"rule": "correct", "positions": [0, 1, 3, 4, 6, 7], "read": 8}
    assert extra["labels"] == [int(y[p]) for p in (0, 1, 3, 4, 6, 7)] and extra["select_inputs"] == "correct"
    with sqlite3.connect(db) as con:
        rows = con.execute("SELECT DISTINCT input_id, golden_top1 FROM injections").fetchall()
    assert rows and all(g == extra["labels"][i] for i, g in rows)
    s = json.loads(run("summary", "--db", str(db), "--format", "json").output)["campaigns"][0]
    assert s["golden_accuracy"]["rule"] == "correct" and s["golden_accuracy"]["read"] == 8
    assert "100% by selection: the 6 inputs classified correctly among the first 8 (75.0%)" in \
        run("summary", "--db", str(db)).output
    assert "matches the stored row" in run("replay", "--db", str(db), "--id", "7").output


def test_golden_accuracy_in_summary_and_report(tmp_path: Path) -> None:
    npz = tmp_path / "d.npz"
    x, y = digits_npz(npz, wrong=(4,))
    pred = torch_top1(x)
    db = tmp_path / "r.db"
    assert run("campaign", "digits-alexnet", *FAST, "-n", "80", "--data", str(npz), "--db", str(db)).exit_code == 0
    with sqlite3.connect(db) as con:
        used = sorted(i for (i,) in con.execute("SELECT DISTINCT input_id FROM injections"))
    want = sum(pred[i] == y[i] for i in used)
    s = json.loads(run("summary", "--db", str(db), "--format", "json").output)["campaigns"][0]
    assert s["golden_accuracy"]["correct"] == want and s["golden_accuracy"]["inputs"] == len(used)
    assert s["golden_accuracy"]["correct"] < len(used)  # position 4 is labelled wrong
    assert s["data"]["source"] == str(npz) and s["weights"]["source"] == "embedded"
    text = run("summary", "--db", str(db)).output
    assert f"golden accuracy {100 * want / len(used):.1f}% ({want} of {len(used)} inputs" in text
    assert run("report", "--db", str(db), "--out", str(tmp_path / "rep")).exit_code == 0
    html = (tmp_path / "rep" / "index.html").read_text()
    assert f"golden accuracy {100 * want / len(used):.1f}%" in html


# ------------------------------------------------------------------ recorded files (item 4)
def test_files_recorded_absolute_and_moved_or_changed_ones_said(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    shutil.copy(ASSETS / "digits-alexnet.safetensors", a / "w.safetensors")
    monkeypatch.chdir(a)
    args = ["campaign", "digits-alexnet", *FAST, "--inputs", "5", "--weights", "w.safetensors", "--db", str(b / "r.db")]
    assert run(*args).exit_code == 0
    rec = extra_of(b / "r.db")["files"]["weights"]
    assert rec["path"] == str(a / "w.safetensors") and len(rec["sha256"]) == 64
    assert extra_of(b / "r.db")["model_spec"]["weights"] == str(a / "w.safetensors")
    monkeypatch.chdir(b)  # the case: another directory
    assert "matches the stored row" in run("replay", "--db", "r.db", "--id", "3").output
    shutil.move(a / "w.safetensors", b / "w.safetensors")
    gone = CliRunner().invoke(cli, ["replay", "--db", "r.db", "--id", "3"])
    assert gone.exit_code == 2 and len(gone.output.strip().splitlines()) == 1
    assert f"{a / 'w.safetensors'}: the campaign's weights file" in gone.output and "missing" in gone.output
    moved = run("campaign", "digits-alexnet", *FAST, "--inputs", "5", "--weights", "w.safetensors", "--db", "r.db")
    assert f"note: the weights file moved from {a / 'w.safetensors'} to {b / 'w.safetensors'}" in moved.stderr
    assert extra_of(b / "r.db")["files"]["weights"]["path"] == str(b / "w.safetensors")
    assert "matches the stored row" in run("replay", "--db", "r.db", "--id", "3").output
    data = (b / "w.safetensors").read_bytes()
    (b / "w.safetensors").write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # a changed last weight bit
    changed = CliRunner().invoke(cli, ["replay", "--db", "r.db", "--id", "3"])
    assert changed.exit_code == 2 and "changed since the campaign" in changed.output
    again = run("campaign", "digits-alexnet", *FAST, "--inputs", "5", "--weights", "w.safetensors", "--db", "r.db")
    assert "the weights file changed since campaign 1" in again.stderr and "new campaign, 2" in again.stderr


def test_databases_with_relative_paths_still_replay(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An older database: paths as typed, no recorded files or preparation (read-time fallback)."""
    runs = tmp_path / "runs"
    runs.mkdir()
    shutil.copy(ASSETS / "digits-alexnet.safetensors", runs / "w.safetensors")
    image_folder(runs / "img", (40, 40), "L")
    monkeypatch.chdir(runs)
    assert run("campaign", "digits-alexnet", *FAST, "--weights", "w.safetensors", "--data", "img",
               "--db", "r.db").exit_code == 0
    with sqlite3.connect(runs / "r.db") as con:
        extra = json.loads(con.execute("SELECT extra FROM campaigns").fetchone()[0])
        for k in ("files", "prep", "chosen", "labels", "select_inputs", "input_shape", "num_classes"):
            extra.pop(k)
        extra["model_spec"]["weights"], extra["data"] = "w.safetensors", "img"
        con.execute("UPDATE campaigns SET extra=?", (json.dumps(extra),))
    monkeypatch.chdir(tmp_path)  # neither path exists from here: found beside the database
    res = run("replay", "--db", str(runs / "r.db"), "--id", "2")
    assert "matches the stored row" in res.output, res.output
    assert "golden accuracy: the inputs carry no labels" in run("summary", "--db", str(runs / "r.db")).output


# -------------------------------------------------------------- one name per outcome (item 6)
def test_outcomes_have_one_name_in_the_cli(tmp_path: Path) -> None:
    db = tmp_path / "r.db"
    res = run("campaign", "digits-alexnet", *FAST, "--inputs", "4", "--db", str(db))
    summary = run("summary", "--db", str(db)).output
    for text in (res.stdout, summary):
        assert all(label in text for label in OUTCOME_LABELS.values()), text
        for other in ("Light=", "NoMal", "masked=", "Light-Malfunction SDC", "No-Malfunction SDC"):
            assert other not in text
    keys = json.loads(run("summary", "--db", str(db), "--format", "json").output)["campaigns"][0]["outcomes"]
    assert list(keys) == list(OUTCOME_LABELS)  # JSON keeps the keys


def test_models_and_weights_advice_speak_to_a_user(tmp_path: Path) -> None:
    listing = run("models").output
    assert "Cholec80" not in listing and "seed" not in listing.replace("seeded", "")
    assert "published AlexNet study" in listing and "needs --data" in listing
    from kernelfi.models import DigitsAlexNet
    torch.save(DigitsAlexNet(), tmp_path / "whole.pth")
    res = CliRunner().invoke(cli, ["profile", "digits-alexnet", "--weights", str(tmp_path / "whole.pth")])
    assert res.exit_code == 2 and len(res.output.strip().splitlines()) == 1
    assert "save its state dict" in res.output and "python -c" in res.output and ".state_dict()" in res.output
    assert "add_safe_globals" not in res.output


def test_the_comparison_describes_the_model_compared(tmp_path: Path) -> None:
    """A resnet18 database: no word of a 32x32 digits model or a 10-value softmax."""
    from kernelfi.report.studies import studies_table
    from kernelfi.report.tables import collect
    from kernelfi.store import CampaignMeta, InjectionRecord, LaunchRow, LayerRow

    layers = [LayerRow(0, "convolutional", "conv1", 802816), LayerRow(1, "connected", "fc", 1000),
              LayerRow(2, "softmax", "softmax", 1000)]
    trace = [LaunchRow(0, "conv1.gemm", "gemm", 0, "convolutional", {"FP32": 900}, 64),
             LaunchRow(1, "fc.gemm", "gemm", 1, "connected", {"FP32": 90}, 8),
             LaunchRow(2, "softmax.softmax", "softmax", 2, "softmax", {"FP32": 9}, 1)]
    db = tmp_path / "r18.db"
    with Store(db) as s:
        for mode in ("rf", "iov", "ioa"):
            cid = s.get_or_create_campaign(CampaignMeta(
                model="resnet18", mode=mode, bit_model="single", seed=1, n_planned=30, weights_hash="c" * 64,
                weights_source="/ck/resnet18.pth", input_source="images", n_inputs=4,
                extra={"input_shape": [3, 224, 224], "num_classes": 1000}), trace, layers)
            s.add_results(cid, [InjectionRecord(id=i, input_id=i % 4, launch=i % 3, launch_name=trace[i % 3].name,
                                                kernel=trace[i % 3].kernel, layer=i % 3,
                                                layer_type=trace[i % 3].layer_type, mode=mode, grp="FP32",
                                                bit_model="single", outcome="masked" if i % 2 else "sdc_malfunction",
                                                golden_top1=1, faulty_top1=1 if i % 2 else 2) for i in range(30)])
        table = studies_table(collect(s))
    why = " ".join(table["why_it_may_differ"])
    assert "resnet18 (3×224×224 input, 1000 classes, weights resnet18.pth)" in why
    assert "32×32" not in why and "10-value" not in why and "digits" not in why
    assert "seed" not in " ".join(table.columns) + why
