"""The GPU time model (kernelfi.gputime, docs/hardening.md "GPU time model"): one launch worked
out by hand on the GTX 750 Ti's numbers, occupancy limits, DRAM footprints, the specs file, and
`kernelfi gpus` / `kernelfi overhead --gpu` through click's runner."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from kernelfi._utils import KernelfiError
from kernelfi.campaign.session import ModelSpec, open_session
from kernelfi.cli import cli
from kernelfi.gputime import dram_bytes, get_gpu, gpus, launch_time, resident_blocks, trace_time
from kernelfi.harden import Plan, Protection, modelled_overhead
from kernelfi.kernels import get_kernel
from kernelfi.lowering import Program
from kernelfi.types import Launch, ThreadTemplate
from tests.tiny import tiny_program


@pytest.fixture(scope="module")
def digits() -> Program:
    return open_session(ModelSpec("digits-alexnet")).program


def launch_of(kernel: str, block: int | None = None, **params: object) -> Launch:
    k = get_kernel(kernel)
    t = k.template(params)
    if block is not None:
        t = ThreadTemplate(t.threads, block, t.slots)
    return Launch(0, 0, "convolutional", f"l.{kernel}", kernel, (), (), params, t)


def test_add_bias_launch_time_by_hand() -> None:
    """add_bias over a 16-channel 32×32 output (channels=16, spatial=1024) on the GTX 750 Ti:
    5 SMs, 1085 MHz, 86.4 GB/s, 4 µs launch; cc 5.0: 4 schedulers, 6-cycle ALU latency, at most
    64 warps and 32 blocks per SM; per SM and clock 128 FP32/integer results, 64 compares,
    32 loads/stores, 128 branch/exit/S2R (the schedulers' issue rate)."""
    gpu = get_gpu("gtx750ti")
    launch = launch_of("add_bias", channels=16, spatial=1024)
    regs = get_kernel("add_bias").registers(launch.params).allocated
    assert 0 < regs <= 32   # with <= 32 registers the warp limit, not registers, sets occupancy below
    # grid: Darknet's add_bias_kernel runs (ceil(1024/512), 16) = 32 blocks of 512 threads = 16 warps each
    # occupancy: 64 warps / 16 = 4 blocks per SM (registers: 65536 / (ceil(regs*32/256)*256) / 16 >= 4)
    # waves: 5 SMs x 4 = 20 blocks a wave -> one full wave, then 12 blocks: ceil(12/5) = 3 on the busiest SM
    # one warp's issue cycles, 32/T per instruction:
    #   S2R x4 (128/clk) 1.0 + XMAD x5 (128) 1.25 + ISETP x1 (64) 0.5 + EXIT x2 (128) 0.5
    #   + IADD x4 (128) 1.0 + LDG x2 (32) 2.0 + FADD x1 (128) 0.25 + STG x1 (32) 1.0 = 7.5 cycles
    # latency floor: 6 cycles x 4 schedulers = 24 warps (both waves hold more: no floor)
    # issue = (4*16 warps + 3*16 warps) * 7.5 = 840 cycles / 1.085e9 Hz = 774.19 ns
    # DRAM: read 16*1024 outputs + 16 biases, write 16*1024: 32784 elements * 4 B = 131136 B
    #   / 86.4e9 B/s = 1.51778 µs  (memory-bound)
    # time = max(0.77419, 1.51778) µs + 4 µs = 5.51778 µs
    t = launch_time(launch, tiny_program().trace, gpu)
    assert (t.blocks, t.warps_per_block, t.resident_blocks, t.waves) == (32, 16, 4, 2)
    assert t.issue_s == pytest.approx(840 / 1.085e9, rel=1e-12)
    assert t.memory_s == pytest.approx(131136 / 86.4e9, rel=1e-12)
    assert t.seconds == pytest.approx(131136 / 86.4e9 + 4e-6, rel=1e-12)
    assert t.bound == "launch" and t.bytes_moved == 131136


def test_a_lone_warp_issues_at_the_latency_floor_and_conditional_launches_are_free() -> None:
    gpu = get_gpu("gtx750ti")
    # add_bias of 10 channels x 1: grid (1, 10) = 10 blocks of one active thread (1 warp each);
    # 2 blocks on the busiest SM -> 2 warps < 24: each wave costs 7.5 * 24 = 180 cycles, one wave
    t = launch_time(launch_of("add_bias", channels=10, spatial=1), tiny_program().trace, gpu)
    assert (t.blocks, t.warps_per_block, t.waves) == (10, 1, 1)
    assert t.issue_s == pytest.approx(180 / 1.085e9, rel=1e-12)
    cond = launch_of("add_bias", channels=10, spatial=1)
    cond = Launch(0, 0, "x", "l.cond", "add_bias", (), (), {**cond.params, "conditional": True}, cond.template)
    assert launch_time(cond, tiny_program().trace, gpu).seconds == 0.0


def test_registers_and_shared_memory_limit_occupancy() -> None:
    gpu = get_gpu("gtx750ti")
    launch = launch_of("add_bias", channels=16, spatial=1024)    # 512-thread blocks, 16 warps
    # 64 registers: 64*32 = 2048 per warp (a multiple of 256) -> 65536/2048 = 32 warps -> 2 blocks
    assert resident_blocks(launch, gpu, 64) == 2
    # 40 registers: ceil(40*32/256)*256 = 1280 per warp -> 51 warps -> 3 blocks
    assert resident_blocks(launch, gpu, 40) == 3
    with pytest.raises(KernelfiError, match="does not fit on an SM"):
        resident_blocks(launch, gpu, 200)   # 6400 per warp -> 10 warps < 16
    gemm = launch_of("gemm", M=64, N=64, K=64, trans_a=False, trans_b=False)   # sgemm_64: 64 threads, 8 KB
    # T4: 32 warps/SM / 2 = 16 blocks; shared 64 KB / 8 KB = 8; 16 blocks max -> 8 (shared-bound)
    assert resident_blocks(gemm, get_gpu("t4"), 16) == 8
    gemm = launch_of("gemm", M=128, N=128, K=64, trans_a=False, trans_b=False)  # sgemm_128: 256 threads, 16 KB
    # 32 warps / 8 = 4; 64 KB / 16 KB = 4 -> 4
    assert resident_blocks(gemm, get_gpu("t4"), 16) == 4


def test_dram_footprints(digits: Program) -> None:
    ls = {l.name: l for l in digits.trace.launches}
    # gemm M=48, N=64, K=432: A 48*432 + B 432*64 + C 48*64 read (beta = 1), C written
    assert dram_bytes(ls["features.8.gemm"], digits.trace) == (4 * (48 * 432 + 432 * 64 + 48 * 64), 4 * 48 * 64)
    # im2col of features.3: reads the 16x16x16 image, writes 16*3*3 x 16*16 (not the whole workspace)
    assert dram_bytes(ls["features.3.im2col"], digits.trace) == (4 * 16 * 16 * 16, 4 * 144 * 256)
    # max-pool 32x16x16 -> 32x8x8 output and its int32 indexes
    assert dram_bytes(ls["features.5.forward_maxpool"], digits.trace) == (4 * 32 * 16 * 16, 4 * 2 * 32 * 8 * 8)


def test_specs_file_names_five_gpus_with_sources() -> None:
    known = gpus()
    assert list(known) == ["gtx750ti", "t4", "orin", "a100", "h100"]
    g = known["gtx750ti"]
    assert (g.compute_capability, g.sms, g.clock_hz, g.dram_bytes_per_s) == ("5.0", 5, 1.085e9, 86.4e9)
    assert known["t4"].throughput["fp32"] == 64 and known["h100"].throughput["fp32"] == 128
    raw = json.loads(Path(__file__).resolve().parents[1].joinpath("src/kernelfi/assets/gpus.json").read_text())
    tags = set(raw["sources"])
    for spec in known.values():
        assert spec.sources and all(src.split()[0] in tags for src in spec.sources.values())
    with pytest.raises(KernelfiError, match=r"unknown GPU 'rtx9090' \(known: gtx750ti, t4, orin, a100, h100\)"):
        get_gpu("rtx9090")


def test_full_replication_costs_more_than_the_model_and_table_adds_up(digits: Program) -> None:
    gpu = get_gpu("gtx750ti")
    table = modelled_overhead(digits, None, gpu)
    whole = trace_time(digits.trace, gpu).total
    assert table.total["unhardened"] == pytest.approx(whole, rel=1e-12)
    assert sum(table.seconds["unhardened"].values()) == pytest.approx(whole, rel=1e-12)
    assert table.invocations["gemm"] == 8 and table.invocations["softmax"] == 1
    # DMR runs every unit twice plus comparators and copies, TMR three times plus voters and copies
    assert 1.0 < table.overhead("full DMR") < table.overhead("full TMR")
    assert table.to_dict() == modelled_overhead(digits, None, gpu).to_dict()   # a pure function


# ------------------------------------------------------------------------------------------- CLI
def test_gpus_cli_lists_every_gpu() -> None:
    res = CliRunner().invoke(cli, ["gpus"])
    assert res.exit_code == 0, res.output
    for key in ("gtx750ti", "t4", "orin", "a100", "h100"):
        assert re.search(rf"^{key}\s", res.output, re.M)
    assert "GeForce GTX 750 Ti" in res.output and "86.4 GB/s" in res.output


def test_overhead_gpu_cli_prints_the_modelled_table(digits: Program, tmp_path: Path) -> None:
    plan = Plan("digits-alexnet", (Protection("kernel", "add_bias", "tmr"),))
    plan.save(tmp_path / "plan.json")
    res = CliRunner().invoke(cli, ["overhead", "digits-alexnet", "--gpu", "gtx750ti",
                                   "--hardening", str(tmp_path / "plan.json")])
    assert res.exit_code == 0, res.output
    table = modelled_overhead(digits, plan, get_gpu("gtx750ti"))
    whole = re.search(r"^whole model\s+1\s+([\d.]+) ms\s+([\d.]+) ms", res.output, re.M)
    assert whole and float(whole.group(1)) == pytest.approx(1000 * table.total["unhardened"], abs=1e-4)
    assert float(whole.group(2)) == pytest.approx(1000 * table.total["plan"], abs=1e-4)
    assert re.search(r"^add_bias\s+8\s", res.output, re.M)   # eight add_bias launches in the model
    assert f"plan {100 * table.overhead('plan'):+.2f}%" in res.output


def test_overhead_gpu_cli_errors_are_one_line(tmp_path: Path) -> None:
    res = CliRunner().invoke(cli, ["overhead", "digits-alexnet", "--gpu", "voodoo5"])
    assert res.exit_code == 2
    assert res.output.strip() == ("kernelfi: error: unknown GPU 'voodoo5' (known: gtx750ti, t4, orin, a100, h100)")
    Plan("digits-resnet", (Protection("kernel", "add_bias", "tmr"),)).save(tmp_path / "other.json")
    res = CliRunner().invoke(cli, ["overhead", "digits-alexnet", "--gpu", "t4", "--hardening",
                                   str(tmp_path / "other.json")])
    assert res.exit_code == 2 and len(res.output.strip().splitlines()) == 1
    assert "the plan is for model 'digits-resnet', not 'digits-alexnet'" in res.output
