"""Small helpers shared by every level: the error type users see, seeded RNGs, hashing.

Kept free of torch so that the store and analysis layers can import it.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np


class KernelfiError(Exception):
    """An error caused by the user's input (file, option, model).

    The CLI prints ``str(err)`` on one line and exits non-zero, so the message must name the
    offending file/option and the problem, and must not contain a traceback.
    """


class KernelfiWarning(UserWarning):
    """Something the user should know that does not stop the work (a cfg quirk Darknet
    tolerates). The CLI prints it as one line ``kernelfi: warning: ...`` on stderr."""


def rng_for(seed: int, *keys: int) -> np.random.Generator:
    """A generator that depends only on (seed, *keys).

    Every random choice of a campaign flows through this, so injection ``i`` of a campaign with
    seed ``s`` draws exactly the same site/bit/input whether it runs first, last, in another
    process or after a resume.
    """
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(seed) & 0xFFFFFFFFFFFFFFFF, *[int(k) for k in keys]])))


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex digest of a file; stored with campaigns so results name the exact weights used."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            block = f.read(chunk)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


def c_div(a: int, b: int) -> int:
    """C's (and CUDA's) integer division: it truncates toward zero, where Python's ``//``
    floors (-1 / 2 is 0 in C, -1 in Python). Darknet's shape formulas and a GPU thread's
    index arithmetic both divide so."""
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b > 0) else -q


def one_line(msg: str) -> str:
    """Collapse whitespace so an error message stays on one terminal line."""
    return " ".join(str(msg).split())


def physical_memory() -> int | None:
    """This machine's physical memory in bytes (None where the OS does not say)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, OSError, ValueError):
        return None


def check_fits(nbytes: int, what: str) -> None:
    """Refuse, before allocating, what could never fit this machine's memory (``what`` names
    it: "random: 100000000000 inputs of 3x227x227 floats"): one line, not an allocator's
    traceback minutes later."""
    mem = physical_memory()
    if mem is not None and nbytes > mem:
        raise KernelfiError(f"{what}: {_size(nbytes)} needed, more than this machine's {_size(mem)} of memory")


def _size(n: int) -> str:
    for unit, k in (("TiB", 40), ("GiB", 30), ("MiB", 20)):
        if n >= 1 << k:
            return f"{n / (1 << k):,.1f} {unit}"
    return f"{n:,} bytes"
