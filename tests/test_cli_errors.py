"""Bad input: one clear line naming the problem, a non-zero exit, nothing already stored lost."""
from __future__ import annotations

import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from kernelfi.models.darknet import asset_path

SRC = str(Path(__file__).resolve().parents[1] / "src")


def kfi(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kernelfi.cli", *args], capture_output=True, text=True,
                          env={"PYTHONPATH": SRC, "PATH": "/usr/bin:/bin"}, timeout=300)


def one_error_line(p: subprocess.CompletedProcess, *needles: str) -> str:
    assert p.returncode != 0
    lines = [l for l in p.stderr.splitlines() if l.strip()]
    assert len(lines) == 1, p.stderr
    assert lines[0].startswith("kernelfi: error: ")
    for n in needles:
        assert n in lines[0], (n, lines[0])
    assert "Traceback" not in p.stderr
    return lines[0]


def test_cfg_with_unknown_section(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.cfg"
    cfg.write_text(asset_path("alexnet.cfg").read_text().replace("[maxpool]", "[maxpoool]", 1))
    one_error_line(kfi("profile", str(cfg)), "bad.cfg", "maxpoool")


def test_truncated_weights(tmp_path: Path) -> None:
    from kernelfi.models.darknet import build_layers, parse_cfg, random_state, write_weights
    cfg = tmp_path / "net.cfg"
    shutil.copy(asset_path("alexnet.cfg"), cfg)
    layers, _ = build_layers(parse_cfg(cfg))
    w = tmp_path / "net.weights"
    write_weights(w, layers, random_state(layers, 0))
    data = w.read_bytes()
    w.write_bytes(data[: len(data) // 3])
    one_error_line(kfi("profile", str(cfg), "--weights", str(w)), "net.weights", "truncated")


def test_pth_with_missing_keys(tmp_path: Path) -> None:
    from kernelfi.models import DigitsAlexNet
    state = DigitsAlexNet().state_dict()
    state.pop("classifier.1.weight")
    p = tmp_path / "partial.pth"
    torch.save(state, p)
    one_error_line(kfi("profile", "digits-alexnet", "--weights", str(p)), "partial.pth", "classifier.1.weight")


class _Evil:
    def __reduce__(self):
        return (Path.touch, (Path("/tmp/kernelfi_pwned"),))


def test_pickle_that_runs_code_is_refused(tmp_path: Path) -> None:
    marker = Path("/tmp/kernelfi_pwned")
    marker.unlink(missing_ok=True)
    p = tmp_path / "evil.pth"
    with open(p, "wb") as f:
        pickle.dump({"features.0.weight": _Evil()}, f)
    one_error_line(kfi("profile", "digits-alexnet", "--weights", str(p)), "evil.pth", "weights-only")
    assert not marker.exists()


def test_wrong_image_size_and_stored_results_survive(tmp_path: Path) -> None:
    db = tmp_path / "r.db"
    ok = kfi("campaign", "digits-alexnet", "--mode", "iov", "-n", "20", "--inputs", "10", "--db", str(db), "--quiet")
    assert ok.returncode == 0, ok.stderr
    before = db.read_bytes()
    npz = tmp_path / "small.npz"
    np.savez(npz, x=np.zeros((3, 1, 16, 16), dtype=np.float32))
    one_error_line(kfi("campaign", "digits-alexnet", "--mode", "iov", "-n", "20", "--db", str(db), "--data", str(npz),
                       "--quiet"), "small.npz")
    summary = kfi("summary", "--db", str(db), "--format", "json")
    assert summary.returncode == 0 and '"n": 20' in summary.stdout
    assert db.read_bytes()[:100] == before[:100]


def test_corrupt_and_foreign_databases(tmp_path: Path) -> None:
    bad = tmp_path / "garbage.db"
    bad.write_bytes(b"this is not sqlite at all" * 100)
    one_error_line(kfi("summary", "--db", str(bad)), "garbage.db")
    import sqlite3
    foreign = tmp_path / "foreign.db"
    with sqlite3.connect(foreign) as c:
        c.execute("create table t(x)")
    one_error_line(kfi("summary", "--db", str(foreign)), "foreign.db", "not a kernelfi")
    assert bad.read_bytes() == b"this is not sqlite at all" * 100


def test_unknown_model_and_kernel() -> None:
    one_error_line(kfi("profile", "vgg99"), "vgg99")
    from kernelfi._utils import KernelfiError
    from kernelfi.kernels import get_kernel
    with pytest.raises(KernelfiError, match="unknown kernel 'conv_fft'"):
        get_kernel("conv_fft")
