"""Registers per thread of kernelfi's kernels on sm_50 (Maxwell), as ``ptxas -v`` reports them.

The CUDA C renderings in ``src/kernelfi/kernels/cuda/*.cu`` (every kernel but gemm) are
compiled to PTX by the machine's ``nvcc`` (CUDA 12/13 only emit PTX for sm_75 and later, which
these kernels do not need: their PTX uses nothing Maxwell lacks), the PTX's ``.version`` and
``.target`` lines are set to what an sm_50-capable ``ptxas`` reads (CUDA 11.8's, the last
release that targets Maxwell: ``pip install nvidia-cuda-nvcc-cu11``), and that ``ptxas -v
-arch=sm_50`` assembles it and prints "Used N registers" per entry function. The counts go to
``src/kernelfi/assets/registers_sm50.json``, which the kernels' register maps read
(``kernelfi.kernels.ptxas_registers``).

    python scripts/ptxas_registers.py              # rewrite the data file
    python scripts/ptxas_registers.py --check      # compare only (exit 1 on a difference)
    python scripts/ptxas_registers.py --ptxas /path/to/cuda-11.8/bin/ptxas

Tools are found from ``--nvcc``/``--ptxas``, the ``KERNELFI_NVCC``/``KERNELFI_PTXAS``
environment variables, the pip package ``nvidia-cuda-nvcc-cu11`` (``nvidia/cuda_nvcc/bin``
on ``sys.path``) and ``PATH``, in that order.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ROOT / "src" / "kernelfi" / "kernels" / "cuda"
DATA = ROOT / "src" / "kernelfi" / "assets" / "registers_sm50.json"
TARGET = "sm_50"
#: PTX ISA version each ptxas release reads at most (its ``.version`` line is set to this).
PTX_ISA = {"11.8": "7.8", "11.7": "7.7", "11.6": "7.6", "11.5": "7.5", "11.4": "7.4", "11.3": "7.3",
           "11.2": "7.2", "11.1": "7.1", "11.0": "7.0", "10.2": "6.5"}
NVCC_FLAGS = ("--ptx", "-O3")


@dataclass(frozen=True)
class Tools:
    nvcc: str
    ptxas: str
    nvcc_release: str
    ptxas_release: str
    ptx_arch: str   # the lowest compute_XX this nvcc emits PTX for

    @property
    def ptx_isa(self) -> str:
        return PTX_ISA[self.ptxas_release]


def _release(exe: str) -> str:
    out = subprocess.run([exe, "--version"], capture_output=True, text=True, check=True).stdout
    m = re.search(r"release (\d+\.\d+)", out)
    if m is None:
        raise RuntimeError(f"{exe} --version: no release number in {out!r}")
    return m.group(1)


def _pip_ptxas() -> str | None:
    for entry in sys.path:
        p = Path(entry) / "nvidia" / "cuda_nvcc" / "bin" / "ptxas"
        if p.is_file():
            return str(p)
    return None


def find_tools(nvcc: str | None = None, ptxas: str | None = None) -> Tools | None:
    """The tools, or None when nvcc or an sm_50-capable ptxas is missing."""
    nvcc = nvcc or os.environ.get("KERNELFI_NVCC") or shutil.which("nvcc")
    candidates = [ptxas, os.environ.get("KERNELFI_PTXAS"), _pip_ptxas(), shutil.which("ptxas")]
    if nvcc is None:
        return None
    for cand in candidates:
        if not cand or not Path(cand).is_file():
            continue
        try:
            rel = _release(cand)
        except (OSError, subprocess.CalledProcessError, RuntimeError):
            continue
        if rel in PTX_ISA:
            try:
                nvcc_rel = _release(nvcc)
                arches = subprocess.run([nvcc, "--list-gpu-arch"], capture_output=True, text=True,
                                        check=True).stdout.split()
            except (OSError, subprocess.CalledProcessError, RuntimeError):
                return None
            lowest = min((a for a in arches if a.startswith("compute_")), key=lambda a: int(a.split("_")[1]))
            return Tools(nvcc, cand, nvcc_rel, rel, lowest)
    return None


def retarget(ptx: str, isa: str) -> str:
    """The PTX with its ``.version`` and ``.target`` lines set for ``ptxas -arch=sm_50``."""
    ptx, n_version = re.subn(r"(?m)^\.version\s+\S+", f".version {isa}", ptx)
    ptx, n_target = re.subn(r"(?m)^\.target\s+\S+", f".target {TARGET}", ptx)
    if n_version != 1 or n_target != 1:
        raise RuntimeError("PTX without exactly one .version and one .target line")
    return ptx


def registers_of(source: Path, tools: Tools) -> dict[str, int]:
    """Entry function -> registers per thread for one ``.cu`` file."""
    with tempfile.TemporaryDirectory() as tmp:
        ptx = Path(tmp) / (source.stem + ".ptx")
        subprocess.run([tools.nvcc, *NVCC_FLAGS, f"-arch={tools.ptx_arch}", str(source), "-o", str(ptx)],
                       check=True, capture_output=True, text=True)
        ptx.write_text(retarget(ptx.read_text(), tools.ptx_isa))
        out = subprocess.run([tools.ptxas, "-v", f"-arch={TARGET}", str(ptx), "-o", os.devnull],
                             check=True, capture_output=True, text=True)
    counts: dict[str, int] = {}
    entry = None
    for line in (out.stdout + out.stderr).splitlines():
        m = re.search(r"Compiling entry function '(\w+)' for '(\w+)'", line)
        if m:
            entry = m.group(1)
            continue
        m = re.search(r"Used (\d+) registers", line)
        if m and entry is not None:
            counts[entry] = int(m.group(1))
            entry = None
    return counts


def measure(tools: Tools) -> dict:
    """The data file's content: counts per kernel and what produced them."""
    registers: dict[str, int] = {}
    hashes: dict[str, str] = {}
    for src in sorted(SOURCES.glob("*.cu")):
        hashes[src.name] = hashlib.sha256(src.read_bytes()).hexdigest()
        for name, n in registers_of(src, tools).items():
            if name in registers:
                raise RuntimeError(f"kernel {name} defined twice")
            registers[name] = n
    return {
        "target": TARGET,
        "nvcc": tools.nvcc_release,
        "ptxas": tools.ptxas_release,
        "ptx": f"nvcc {' '.join(NVCC_FLAGS)} -arch={tools.ptx_arch}, then .version {tools.ptx_isa} .target {TARGET}",
        "sources": hashes,
        "registers": dict(sorted(registers.items())),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nvcc", help="nvcc executable (default: KERNELFI_NVCC or PATH)")
    ap.add_argument("--ptxas", help="sm_50-capable ptxas (CUDA <= 11.8; default: KERNELFI_PTXAS, "
                                    "pip's nvidia-cuda-nvcc-cu11, PATH)")
    ap.add_argument("--check", action="store_true", help="compare with the shipped data, write nothing")
    args = ap.parse_args(argv)
    tools = find_tools(args.nvcc, args.ptxas)
    if tools is None:
        print("ptxas_registers: needs nvcc and an sm_50-capable ptxas (pip install nvidia-cuda-nvcc-cu11)",
              file=sys.stderr)
        return 2
    data = measure(tools)
    for name, n in data["registers"].items():
        print(f"{name:16s} {n:3d}")
    if args.check:
        shipped = json.loads(DATA.read_text())
        if shipped["registers"] != data["registers"]:
            print(f"differs from {DATA.relative_to(ROOT)}", file=sys.stderr)
            return 1
        return 0
    DATA.write_text(json.dumps(data, indent=1) + "\n")
    print(f"wrote {DATA.relative_to(ROOT)} (nvcc {tools.nvcc_release}, ptxas {tools.ptxas_release})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
