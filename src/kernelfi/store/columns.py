"""How records map to the tables' columns, and SQLite's failures to one-line errors.

Shared by ``Store`` (``db``) and its pandas frames (``frames``): the column lists of the
injection and tool-error tables, the NaN-as-text encoding of REAL columns (SQLite turns NaN
into NULL, which means "no value"), and ``guarded``, which turns SQLite's damage, disk-full and
lock reports into the file-naming ``KernelfiError`` the CLI prints.
"""
from __future__ import annotations

import functools
import json
import math
import os
import shutil
import sqlite3
from typing import Any, Callable, Iterable, TypeVar

from kernelfi._utils import KernelfiError, one_line
from kernelfi.types import GROUPS

from . import schema
from .records import InjectionRecord, ToolErrorRecord

F = TypeVar("F", bound=Callable[..., Any])
CampaignIds = int | Iterable[int] | None

INJ_COLS: tuple[str, ...] = (
    "id", "input_id", "launch", "launch_name", "kernel", "layer", "layer_type", "mode", "grp",
    "bit_model", "warp", "thread", "slot", "iteration", "register", "tag", "element", "bits",
    "value", "original", "corrupted", "outcome", "flags", "golden_top1", "faulty_top1", "weight",
    "seconds",
)
ERR_COLS: tuple[str, ...] = (
    "id", "input_id", "launch", "mode", "grp", "bit_model", "warp", "thread", "slot", "iteration",
    "register", "bits", "value", "weight", "error", "traceback", "replay", "tool_version",
)
REAL_COLS = ("original", "corrupted")
GROUP_COLS = tuple(f"n_{g.lower()}" for g in GROUPS)


def real_in(x: float | None) -> float | str | None:
    """SQLite turns NaN into NULL (= "no value"); store it as the text 'nan' to keep it."""
    if x is None:
        return None
    x = float(x)
    return "nan" if math.isnan(x) else x


def column(r: InjectionRecord | ToolErrorRecord, c: str) -> Any:
    """Field ``c`` of a record as its column holds it."""
    v = getattr(r, c)
    if c == "bits":
        return ",".join(str(b) for b in v)
    if c == "flags":
        return ",".join(v)
    if c == "warp":
        return int(v)
    if c in REAL_COLS:
        return real_in(v)
    return v


def real_out(x: Any) -> float | None:
    """A REAL column's value back: NULL is None, the text 'nan' is NaN."""
    return None if x is None else float(x)


def guarded(fn: F) -> F:
    """Turn SQLite's damage reports into the one-line, file-naming error the CLI prints
    (``fn`` is a method of an object with a ``path``: a ``Store``)."""
    @functools.wraps(fn)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(self, *args, **kwargs)
        except sqlite3.DatabaseError as err:
            if type(err) is sqlite3.DatabaseError:
                raise schema.corrupt(self.path, err) from None
            msg = str(err)
            if "full" in msg:
                raise KernelfiError(full_disk(self.path, msg)) from None
            if any(s in msg for s in ("no such table", "no such column")):
                raise KernelfiError(one_line(f"{self.path}: damaged results database: {msg}")) from None
            if any(s in msg for s in ("locked", "readonly", "read-only", "disk I/O", "unable to open")):
                raise KernelfiError(one_line(f"{self.path}: {msg}")) from None
            raise
    return wrapper  # type: ignore[return-value]


def full_disk(path: str, msg: str) -> str:
    """SQLITE_FULL, naming the disk: what is left on it (the batches committed before stay)."""
    where = os.path.dirname(os.path.abspath(path))
    try:
        free = f"{shutil.disk_usage(where).free / 2**20:.1f} MiB free"
    except OSError:
        free = "free space unknown"
    return one_line(f"{path}: {msg} (the disk holding {where}: {free}); the rows stored before are kept, "
                    "re-run the same command to resume once there is room")


def parse_json(path: str, cid: Any, field: str, text: Any) -> Any:
    """A JSON field of campaign ``cid``; invalid JSON is a damaged file (one line)."""
    try:
        return json.loads(text)
    except (TypeError, ValueError):
        raise KernelfiError(f"{path}: damaged results database: campaign {cid}'s {field} is not valid JSON") from None


def campaign_list(campaign_ids: CampaignIds) -> list[int] | None:
    """Campaign ids as a list (``None``: all campaigns)."""
    if campaign_ids is None:
        return None
    if isinstance(campaign_ids, int):
        return [campaign_ids]
    return [int(c) for c in campaign_ids]
