"""``kernelfi.files``: a file a campaign depends on, recorded (absolute path, sha256) and checked."""
from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from kernelfi._utils import KernelfiError
from kernelfi.files import RecordedFile, TreeDigest, sha256_tree


def test_recorded_absolute_with_digest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "w.bin").write_bytes(b"abc")
    monkeypatch.chdir(tmp_path)
    ref = RecordedFile.of("w.bin", "weights")
    assert ref.path == str(tmp_path / "w.bin") and ref.sha256 == hashlib.sha256(b"abc").hexdigest()
    assert RecordedFile.from_dict(ref.to_dict(), "weights") == ref
    monkeypatch.chdir("/")
    assert ref.locate() == tmp_path / "w.bin"  # from anywhere


def test_moved_and_changed_files_get_one_line(tmp_path: Path) -> None:
    f = tmp_path / "w.bin"
    f.write_bytes(b"abc")
    ref = RecordedFile.of(f, "weights")
    f.write_bytes(b"abd")
    with pytest.raises(KernelfiError, match=r"w\.bin: the campaign's weights file changed since the campaign "
                                            r"\(sha256 ba7816bf8f01 then, [0-9a-f]{12} now\)"):
        ref.locate()
    f.unlink()
    msg = ref.problem()
    assert msg is not None and "missing" in msg and "\n" not in msg
    with pytest.raises(KernelfiError, match="no such weights file"):
        RecordedFile.of(f, "weights")


def test_legacy_paths_are_found_beside_the_database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "w.pth").write_bytes(b"x")
    monkeypatch.chdir(tmp_path / "runs")
    assert RecordedFile.legacy("w.pth", "weights").path == str(tmp_path / "runs" / "w.pth")  # as before: the cwd
    monkeypatch.chdir("/")
    found = RecordedFile.legacy("w.pth", "weights", [tmp_path / "runs"])  # then beside the database
    assert found.path == str(tmp_path / "runs" / "w.pth") and found.sha256 == ""
    with pytest.raises(KernelfiError, match=r"nothere\.pth: the campaign's weights file is missing \(looked for"):
        RecordedFile.legacy("nothere.pth", "weights", [tmp_path])


def test_tree_digest_depends_on_names_contents_and_order(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "1.png").write_bytes(b"one")
    (tmp_path / "a" / "2.png").write_bytes(b"two")
    base = sha256_tree(tmp_path, ["a/1.png", "a/2.png"])
    t = TreeDigest()
    for name, data in (("a/1.png", b"one"), ("a/2.png", b"two")):
        t.add(name, hashlib.sha256(data).hexdigest())
    assert t.hexdigest() == base == sha256_tree(tmp_path, [tmp_path / "a" / "1.png", tmp_path / "a" / "2.png"])
    assert sha256_tree(tmp_path, ["a/2.png", "a/1.png"]) != base
    (tmp_path / "a" / "2.png").write_bytes(b"tw0")
    assert sha256_tree(tmp_path, ["a/1.png", "a/2.png"]) != base
