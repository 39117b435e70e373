"""Files a campaign depends on: where each one was (an absolute path) and what it held (sha256).

A campaign records every file it read — weights, a Darknet cfg, an ``.npz`` archive or an image
folder, a hardening plan; a model's Python source where a model comes from one — as a
:class:`RecordedFile`. A later command (resume, replay, harden, report) then finds the file
from any working directory, and a file that was moved or changed since gets one line naming
it, its role and both digests, instead of a wrong result or a bare "no such file".

Use::

    ref = RecordedFile.of("ck/resnet18.pth", "weights")   # absolute path + sha256, now
    extra["files"] = {"weights": ref.to_dict()}             # stored with the campaign
    ...
    path = RecordedFile.from_dict(extra["files"]["weights"], "weights").locate()

Databases written before paths were recorded hold paths as the user typed them, relative to
a working directory nobody wrote down: :meth:`RecordedFile.legacy` looks for such a path in the
current directory, then beside the database, and leaves the content check to the caller's own
hash (the weights hash every campaign stores).
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

from kernelfi._utils import KernelfiError, sha256_file

__all__ = ["RecordedFile", "TreeDigest", "sha256_tree"]


@dataclass(frozen=True)
class RecordedFile:
    """One file (or directory) a campaign read, as recorded with it.

    ``path`` is absolute. ``sha256`` is the content digest: of the file's bytes, or for a
    directory the digest its reader computed over what it read (``sha256_tree`` for a whole
    tree); empty where it is not known (``legacy``), so that only the path is checked.
    ``role`` names what the file is to the campaign ("weights", "data", "cfg", "plan",
    "model source"), for messages only.
    """

    path: str
    sha256: str = ""
    role: str = "file"

    @classmethod
    def of(cls, path: str | os.PathLike[str], role: str, sha256: str | None = None) -> "RecordedFile":
        """Record ``path`` now: its absolute path and the digest of its content (given, or computed
        for a file; a directory without a given digest records none)."""
        p = Path(path).expanduser()
        if not p.exists():
            raise KernelfiError(f"{path}: no such {role} file")
        p = p.resolve()
        digest = sha256 if sha256 is not None else (sha256_file(p) if p.is_file() else "")
        return cls(str(p), digest, role)

    @classmethod
    def legacy(cls, path: str | os.PathLike[str], role: str, bases: Iterable[str | os.PathLike[str]] = ()) -> "RecordedFile":
        """A path stored by an older database (relative to an unknown directory): the first of
        ``path`` itself (relative to the current directory), then ``path`` under each of ``bases``
        (the database's directory, typically) that exists; no digest. Raises the one-line error
        naming every place looked in when none exists."""
        p = Path(path).expanduser()
        tried = [p] if p.is_absolute() else [p, *(Path(b) / p for b in bases)]
        for t in tried:
            if t.exists():
                return cls(str(t.resolve()), "", role)
        where = ", ".join(str(t) for t in tried)
        raise KernelfiError(f"{path}: the campaign's {role} file is missing (looked for {where}); "
                            "put it back, or re-run the campaign with the file where it is now")

    def to_dict(self) -> dict[str, str]:
        return {"path": self.path, "sha256": self.sha256}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], role: str) -> "RecordedFile":
        return cls(str(d["path"]), str(d.get("sha256", "")), role)

    def problem(self) -> str | None:
        """Why the recorded file cannot be used as it is (missing, or changed since), or None."""
        p = Path(self.path)
        if not p.exists():
            return (f"{self.path}: the campaign's {self.role} file (sha256 {self.sha256[:12] or 'not recorded'}) "
                    "is missing: moved or deleted since the campaign; put it back there")
        if self.sha256 and p.is_file():
            now = sha256_file(p)
            if now != self.sha256:
                return (f"{self.path}: the campaign's {self.role} file changed since the campaign "
                        f"(sha256 {self.sha256[:12]} then, {now[:12]} now); restore it, or start a new campaign")
        return None

    def locate(self) -> Path:
        """The recorded path, checked: raises one ``KernelfiError`` line where it is missing or its
        content changed (a directory's content is checked by its reader, against ``sha256``)."""
        problem = self.problem()
        if problem is not None:
            raise KernelfiError(problem)
        return Path(self.path)

    def same_file(self, other: "RecordedFile") -> bool:
        """Same content (both digests known and equal), wherever each one lies."""
        return bool(self.sha256) and self.sha256 == other.sha256


class TreeDigest:
    """A digest of some files of a directory: each one's relative path and content digest, in
    the order added (the order a reader used them in matters). ``sha256_tree`` hashes files on
    disk; a reader that holds the bytes anyway adds their digest itself."""

    def __init__(self) -> None:
        self._h = hashlib.sha256()

    def add(self, relative: str, content_sha256: str) -> None:
        self._h.update(relative.encode() + b"\0" + content_sha256.encode() + b"\n")

    def hexdigest(self) -> str:
        return self._h.hexdigest()


def sha256_tree(root: str | os.PathLike[str], files: Iterable[str | os.PathLike[str]]) -> str:
    """``TreeDigest`` of ``files`` (absolute, or relative to ``root``) as they are on disk now."""
    tree = TreeDigest()
    base = Path(root)
    for f in files:
        p = Path(f)
        rel = p.relative_to(base).as_posix() if p.is_absolute() else p.as_posix()
        tree.add(rel, sha256_file(base / rel))
    return tree.hexdigest()
