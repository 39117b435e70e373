"""Small helpers shared by every level: the error type users see, seeded RNGs, hashing, and
the one builder of the package's optional C libraries.

Kept free of torch so that the store and analysis layers can import it.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
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


def cache_dir() -> Path:
    """Where built C libraries are kept: ``$KERNELFI_CACHE``, default ``~/.cache/kernelfi``."""
    base = os.environ.get("KERNELFI_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "kernelfi")
    return Path(base)


def _cpu_key() -> str:
    """The CPU's identity: libraries are built with -march=native for this machine only."""
    flags = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "model name", "Features")):
                    flags += line
                    if line.startswith(("flags", "Features")):
                        break
    except OSError:
        pass
    return platform.machine() + flags


def build_c_library(stem: str, source: str) -> ctypes.CDLL | None:
    """``source`` compiled with the machine's C compiler (``$CC``, ``cc`` or ``gcc``) into
    ``cache_dir()``, keyed by the source and the CPU (built once per machine), and loaded; None
    with ``KERNELFI_NATIVE=0``, no compiler or a failed build (callers then keep their torch
    path, with the same results). ``KERNELFI_NATIVE_GENERIC=1`` defines ``KF_GENERIC``: the
    generic C loops even where AVX-512 is (the tests build both).

    Flags: -ffp-contract=off -fno-fast-math (no fused multiply-add but an explicit ``fmaf``, no
    rewriting of the float32 operations), -fopenmp (parallel loops run on torch's own OpenMP
    pool: torch ships libgomp.so.1 and has loaded it; a second pool would fight its spinning
    workers for the cores)."""
    if os.environ.get("KERNELFI_NATIVE", "1") == "0":
        return None
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        return None
    defines = ["-DKF_GENERIC"] if os.environ.get("KERNELFI_NATIVE_GENERIC", "0") == "1" else []
    key = hashlib.sha256((source + _cpu_key() + cc + " ".join(defines)).encode()).hexdigest()[:16]
    out = cache_dir() / f"{stem}-{key}.so"
    try:
        if not out.exists():
            out.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
                src, so = Path(tmp) / f"{stem}.c", Path(tmp) / f"{stem}.so"
                src.write_text(source)
                flags = ["-O3", "-march=native"] if platform.machine() in ("x86_64", "AMD64") else ["-O3"]
                subprocess.run([cc, *flags, *defines, "-ffp-contract=off", "-fno-fast-math", "-fopenmp", "-shared",
                                "-fPIC", "-o", str(so), str(src)],
                               check=True, capture_output=True, timeout=120)
                os.replace(so, out)  # atomic: concurrent builders leave one complete library
        return ctypes.CDLL(str(out))
    except (OSError, subprocess.SubprocessError):
        return None
