"""Register counts from ptxas: the shipped data matches the CUDA C renderings it was measured
on, every kernel reads its count from it, and (where nvcc and an sm_50-capable ptxas
are installed) recompiling gives the same counts."""
from __future__ import annotations

import hashlib
import importlib.util
import json
import sys
from pathlib import Path

import pytest

from kernelfi.kernels import all_kernels, ceil_pads, dilated_im2col, ptxas_registers
from kernelfi.kernels._base import REGISTERS_FILE

ROOT = Path(__file__).resolve().parents[1]
CUDA = ROOT / "src" / "kernelfi" / "kernels" / "cuda"
DATA = json.loads(REGISTERS_FILE.read_text())


def _script():
    spec = importlib.util.spec_from_file_location("ptxas_registers", ROOT / "scripts" / "ptxas_registers.py")
    mod = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    sys.modules["ptxas_registers"] = mod  # its dataclass looks its module up
    spec.loader.exec_module(mod)
    return mod


def test_every_kernel_has_a_measured_count() -> None:
    kernels = all_kernels()
    # gemm has two renderings, one per tile of the shape rule: gemm (128) and gemm_64; im2col
    # two, Darknet's (undilated) and PyTorch's dilated im2col_dilated; the windowed pools a
    # second one taking ceil_mode's far-side rows/columns (CEIL_PAD launches), the local avgpool
    # a third taking PyTorch's divisor_override (launches with a ``divisor`` param)
    assert set(DATA["registers"]) == set(kernels) | {"gemm_64", "im2col_dilated", "forward_maxpool_ceil",
                                                     "forward_local_avgpool_ceil", "forward_local_avgpool_divisor"}
    for name, k in kernels.items():
        assert k.regs_allocated == ptxas_registers(name) == DATA["registers"][name], name
        for p in k.example_params:  # type: ignore[attr-defined]
            rm = k.registers(p)
            entry = "gemm_64" if name == "gemm" and min(int(p["M"]), int(p["N"])) <= 64 else name
            if name == "im2col" and dilated_im2col(p):
                entry = "im2col_dilated"
            entry = f"{name}_ceil" if ceil_pads(p) is not None else entry
            entry = f"{name}_divisor" if "divisor" in p else entry
            assert rm.allocated == DATA["registers"][entry] + len({r.name for r in rm.registers
                                                                  if r.role == "predicate"})


def test_counts_were_measured_on_these_sources() -> None:
    """Editing a .cu file without rerunning scripts/ptxas_registers.py fails here (no tools needed)."""
    assert DATA["sources"] == {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(CUDA.glob("*.cu"))}
    assert DATA["target"] == "sm_50"


def test_retarget_sets_version_and_target() -> None:
    mod = _script()
    ptx = "//\n.version 9.0\n.target sm_75\n.address_size 64\n"
    assert mod.retarget(ptx, "7.8") == "//\n.version 7.8\n.target sm_50\n.address_size 64\n"
    with pytest.raises(RuntimeError):
        mod.retarget(".version 9.0\n", "7.8")


def test_recompiled_counts_equal_the_shipped_ones() -> None:
    mod = _script()
    tools = mod.find_tools()
    if tools is None:
        pytest.skip("needs nvcc and an sm_50-capable ptxas (pip install nvidia-cuda-nvcc-cu11)")
    if (tools.nvcc_release, tools.ptxas_release) != (DATA["nvcc"], DATA["ptxas"]):
        pytest.skip(f"nvcc {tools.nvcc_release} / ptxas {tools.ptxas_release}: the data was measured with "
                    f"nvcc {DATA['nvcc']} / ptxas {DATA['ptxas']}")
    assert mod.measure(tools)["registers"] == DATA["registers"]
