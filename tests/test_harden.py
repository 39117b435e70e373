"""Selective hardening (docs/hardening.md): voters, TMR/DMR/ABFT/range transforms, the plan
format and the planner. Expected values are worked out by hand in the comments; the tiny
network is tests/tiny.py (golden logits [6.5, 6.0], class 0).
"""
from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from kernelfi._utils import KernelfiError
from kernelfi.campaign import CampaignConfig, ModelSpec, run_campaign
from kernelfi.campaign.session import inputs_tensor, open_session, session_inputs
from kernelfi.cli import cli
from kernelfi.faults.inject import LaneEffect, make_override
from kernelfi.faults.memmap import MemoryMap
from kernelfi.faults.replay import site_lane
from kernelfi.harden import Plan, Protection, apply_plan, full_plan, layer_outputs, profile_bounds
from kernelfi.kernels import get_kernel
from kernelfi.lowering import Program
from kernelfi.store import Store
from kernelfi.types import Fault, Launch, ThreadTemplate
from tests.tiny import run_faults, site, tiny_input, tiny_program


def bits(x: float) -> int:
    return struct.unpack("<I", struct.pack("<f", x))[0]


def f32(u: int) -> float:
    return struct.unpack("<f", struct.pack("<I", u))[0]


def named(program: Program, name: str) -> Launch:
    return next(l for l in program.trace.launches if l.name == name)


def run_kernel(kernel: str, mem: dict, reads: tuple, writes: tuple, **params) -> dict:
    get_kernel(kernel).run(mem, Launch(0, 0, "t", f"t.{kernel}", kernel, reads, writes, params, ThreadTemplate(1, 1, ())))
    return mem


@pytest.fixture(scope="module")
def tiny() -> Program:
    return tiny_program()


@pytest.fixture(scope="module")
def digits() -> tuple[Program, torch.Tensor]:
    s = open_session(ModelSpec("digits-alexnet"))
    return s.program, inputs_tensor(session_inputs(s, None, 8))


# ---------------------------------------------------------------------------- voter kernels
def test_vote_is_the_bitwise_majority_of_hand_made_patterns() -> None:
    # bit by bit: 1100, 1010, 0110 -> bit3 (1,1,0)=1, bit2 (1,0,1)=1, bit1 (0,1,1)=1, bit0 0 -> 1110 = 14;
    # -1 (all ones), 0, 0x0F0F0F0F -> each bit follows the third: 0x0F0F0F0F
    i32 = lambda *v: torch.tensor([list(v)], dtype=torch.int32)  # noqa: E731
    mem = {"a": i32(12, -1), "b": i32(10, 0), "c": i32(6, 0x0F0F0F0F)}
    out = run_kernel("tmr_vote", mem, ("a", "b", "c"), ("o",), n=2)["o"]
    assert out.dtype == torch.int32 and out.tolist() == [[14, 0x0F0F0F0F]]
    # floats vote on their bits: 1.0, 1.0, -3.0 -> 1.0; 2.0 (0x40000000), 3.0 (0x40400000), 0.5 (0x3F000000)
    # -> 0x40000000 | (0x40400000 & 0x3F000000 = 0) ... = 0x40000000 = 2.0 at bit 22: (0,1,0) -> 0
    fl = lambda *v: torch.tensor([list(v)], dtype=torch.float32)  # noqa: E731
    mem = {"a": fl(1.0, 2.0), "b": fl(1.0, 3.0), "c": fl(-3.0, 0.5)}
    assert run_kernel("tmr_vote", mem, ("a", "b", "c"), ("o",), n=2)["o"].tolist() == [[1.0, 2.0]]
    # a range vote (offset 1, n 1) leaves element 0 of the output as it was
    mem = {"a": fl(7.0, 1.0), "b": fl(8.0, 1.0), "c": fl(9.0, 5.0), "o": fl(0.0, 0.0)}
    assert run_kernel("tmr_vote", mem, ("a", "b", "c"), ("o",), n=1, offset=1)["o"].tolist() == [[0.0, 1.0]]


def test_dmr_compare_keeps_agreeing_bits_and_takes_the_reexecution_otherwise() -> None:
    # +0.0 and -0.0 are equal numbers but different bits: the comparator re-executes (takes c)
    t = lambda *v: torch.tensor([list(v)], dtype=torch.float32)  # noqa: E731
    mem = {"a": t(1.0, 0.0, 5.0), "b": t(1.0, -0.0, 4.0), "c": t(9.0, 7.0, 6.0)}
    assert run_kernel("dmr_compare", mem, ("a", "b", "c"), ("o",), n=3)["o"].tolist() == [[1.0, 7.0, 6.0]]
    # a fault-free timing run skips the re-execution: fine while the replicas agree, an error otherwise
    mem = {"a": t(1.0), "b": t(1.0)}
    assert run_kernel("dmr_compare", mem, ("a", "b", "c"), ("o",), n=1)["o"].tolist() == [[1.0]]
    with pytest.raises(KernelfiError, match="did not run"):
        run_kernel("dmr_compare", {"a": t(1.0), "b": t(2.0)}, ("a", "b", "c"), ("o",), n=1)


def test_range_clamp_bounds_nan_and_keeps_signed_zero() -> None:
    t = torch.tensor([[-0.0, 0.5, 3.0, -1.0, float("nan"), float("inf")]])
    out = run_kernel("range_clamp", {"x": t}, ("x",), ("x",), n=6, lo=0.0, hi=2.0)["x"]
    assert out.tolist() == [[0.0, 0.5, 2.0, 0.0, 0.0, 2.0]] and bits(float(out[0, 0])) == 0x80000000


# ---------------------------------------------------------------------------- plan format
def test_plan_json_round_trip(tmp_path: Path) -> None:
    plan = Plan("tiny", (Protection("kernel", "forward_maxpool", "tmr", extra={"estimate": {"cost_s": 0.1}}),
                         Protection("layer", "layers.0", "range", bounds={"layers.0.output": (1.5, 16.5)})),
                expected={"malfunction_before": 0.05, "malfunction_after": 0.004, "light_before": 0.2,
                          "light_after": 0.19, "overhead": 0.03}, budget=0.05, source_campaigns=(1, 2))
    again = Plan.from_json(plan.to_json())
    assert again == plan and again.to_dict() == json.loads(plan.to_json())
    plan.save(tmp_path / "p.json")
    assert Plan.load(tmp_path / "p.json") == plan
    d = plan.to_dict()
    assert set(d) == {"version", "model", "protect", "expected", "budget", "source_campaigns"}
    with pytest.raises(KernelfiError, match="technique 'quad'"):
        Plan.from_dict({"version": 1, "protect": [{"target": "kernel", "name": "gemm", "technique": "quad"}]})
    with pytest.raises(KernelfiError, match="lo <= hi"):
        Protection("layer", "x", "range", bounds={"b": (2.0, 1.0)})


def test_plan_targets_launch_kernel_and_layer(tiny: Program) -> None:
    by = lambda p: [l.name for l in apply_plan(tiny, p).trace.launches if l.params.get("role") == "vote"]  # noqa: E731
    assert by(Plan("tiny", (Protection("launch", "layers.0.add_bias", "tmr"),))) == ["layers.0.add_bias.vote"]
    assert by(Plan("tiny", (Protection("kernel", "add_bias", "tmr"),))) == ["layers.0.add_bias.vote",
                                                                           "layers.2.add_bias.vote"]
    # a layer: its five launches; im2col and gemm are one unit (one vote), max-pool votes indexes first
    assert len(by(Plan("tiny", (Protection("layer", "layers.0", "tmr"),)))) == 4
    assert by(Plan("tiny", (Protection("layer", "layers.1", "tmr"),))) == [
        "layers.1.forward_maxpool.vote.indexes", "layers.1.forward_maxpool.vote"]
    with pytest.raises(KernelfiError, match="matches no launch"):
        apply_plan(tiny, Plan("tiny", (Protection("launch", "nope", "tmr"),)))
    with pytest.raises(KernelfiError, match="abft protects gemm"):
        apply_plan(tiny, Plan("tiny", (Protection("kernel", "add_bias", "abft"),)))


# ---------------------------------------------------------------------------- golden equality
def test_hardened_golden_equals_the_original_bit_for_bit(tiny: Program, digits) -> None:
    prog, x = digits
    for p, xx in ((tiny, tiny_input()), (prog, x)):
        kernels = sorted({l.kernel for l in p.trace.launches})
        for fast in (True, False):
            bounds = profile_bounds(p, xx, fast=fast)
            plans = [full_plan(p.trace.model, kernels, "tmr"), full_plan(p.trace.model, kernels, "dmr"),
                     full_plan(p.trace.model, ["gemm"], "abft"),
                     Plan(p.trace.model, tuple(Protection("layer", name, "range", bounds={buf: bounds[buf]})
                                               for name, buf in layer_outputs(p.trace).items()))]
            ref = p.forward(xx, fast=fast)
            for plan in plans:
                out = apply_plan(p, plan).forward(xx, fast=fast)
                assert torch.equal(out[0], ref[0]) and torch.equal(out[1], ref[1]), (p.trace.model, fast, plan)
    # the input program is never mutated
    assert not any(l.params.get("hardening") for l in prog.trace.launches)


# ---------------------------------------------------------------------------- injections (runner)
# tests/test_faults_hand.py: output (0, 5) is SGEMM thread 2's output 1; its step-4 partial sum 6.0 -> bit 30
GEMM_ACC = dict(tag="ffma:acc", thread=2, exec_=4 * 64 + 1, calls=64 * 16)


def outcome(p: Program, name: str, tag: str, thread: int, exec_: int = 0, calls: int | None = None,
            bit: int = 30) -> str:
    return run_faults(p, [Fault("iov", site(p, name, tag, thread, exec_, calls), "single", (bit,))])[0].outcome


def test_tmr_masks_every_replica_fault_while_voter_faults_are_classified(tiny: Program) -> None:
    h = apply_plan(tiny, Plan("tiny", (Protection("launch", "layers.0.gemm", "tmr"),
                                       Protection("kernel", "forward_maxpool", "tmr"))))
    # unprotected: pixel 5's partial sum 6.0 -> 1.76e-38, its window pools 5.5 -> logits [5.5, 6.0]: class 1
    assert outcome(tiny, "layers.0.gemm", **GEMM_ACC) == "sdc_malfunction"
    for name in ("layers.0.gemm", "layers.0.gemm.tmr1", "layers.0.gemm.tmr2"):
        assert outcome(h, name, **GEMM_ACC) == "masked", name
    # the 4th compare of max-pool output 0 (6.5 > 5.5) flipped keeps 5.5: Malfunction unprotected, Masked in a replica
    mp = dict(tag="setp:gt", thread=0, exec_=3, calls=4, bit=0)
    assert outcome(tiny, "layers.1.forward_maxpool", **mp) == "sdc_malfunction"
    for name in ("layers.1.forward_maxpool", "layers.1.forward_maxpool.tmr1", "layers.1.forward_maxpool.tmr2"):
        assert outcome(h, name, **mp) == "masked", name
    # the voter is a kernel like any other: its sign flip of the voted max 6.5 -> -6.5 gives logits
    # [-6.5, 6.0] (Malfunction); a flip of a voted argmax index reaches nothing the inference reads
    assert outcome(h, "layers.1.forward_maxpool.vote", "lop3:vote", 0, bit=31) == "sdc_malfunction"
    assert outcome(h, "layers.1.forward_maxpool.vote.indexes", "lop3:vote", 0, bit=3) == "sdc_no_malfunction"
    # every launch of the protected unit is checked after its last voter
    vote = named(h, "layers.0.gemm.vote").index
    for name in ("layers.0.gemm.tmr1.copy", "layers.0.im2col", "layers.0.gemm", "layers.0.gemm.tmr2", "layers.0.gemm.vote"):
        assert named(h, name).check_after == vote and "check_after" not in named(h, name).params


def test_dmr_masks_replica_faults_through_the_reexecution(tiny: Program) -> None:
    h = apply_plan(tiny, Plan("tiny", (Protection("launch", "layers.0.gemm", "dmr"),)))
    assert outcome(h, "layers.0.gemm", **GEMM_ACC) == "masked"
    assert outcome(h, "layers.0.gemm.dmr1", **GEMM_ACC) == "masked"
    # the re-execution executes but counts no golden instructions: never injected
    assert named(h, "layers.0.gemm.dmr2").profile.total() == 0 and named(h, "layers.0.gemm.dmr2").params["conditional"]


def test_abft_corrects_a_single_error_exactly_and_recomputes_a_multiple_one(tiny: Program) -> None:
    h = apply_plan(tiny, Plan("tiny", (Protection("launch", "layers.0.gemm", "abft"),)))
    gemm = named(h, "layers.0.gemm").index
    golden = h.run(h.memory(tiny_input()))
    for corrupt, flags in (([5], (1, 0, 0, 0, 0, 0, 1)), ([5, 9], (1, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1))):
        # C = x (the centre tap): C[0][5] = 6.0, C[0][9] = 10.0; bit 30 makes them ~1e-38: row 0 and
        # columns 5 (and 9) mismatch -> one element: its dot product again; two: the whole gemm again
        def hit(launch: Launch, mem: dict, corrupt=corrupt) -> None:
            get_kernel("gemm").run(mem, launch)
            c = mem[launch.writes[0]].reshape(-1).clone()
            for i in corrupt:
                c[i] = f32(bits(float(c[i])) ^ (1 << 30))
            mem[launch.writes[0]] = c.reshape(mem[launch.writes[0]].shape)
        mem = h.run(h.memory(tiny_input()), stop=named(h, "layers.0.gemm.abft_correct").index, overrides={gemm: hit})
        f = mem["layers.0.gemm.abft_flags"].reshape(-1).tolist()
        assert [i for i, v in enumerate(f) if v] == [i for i, v in enumerate(flags) if v]
        assert float(mem["layers.0.output"].reshape(-1)[5]) == f32(bits(6.0) ^ (1 << 30))
        h.run(mem, start=named(h, "layers.0.gemm.abft_correct").index, overrides={})
        assert torch.equal(mem[h.trace.output], golden[h.trace.output])
        assert torch.equal(mem["layers.0.output"].view(torch.int32), golden["layers.0.output"].view(torch.int32))
    # through the campaign runner: the partial-sum flip is Masked; a flip of the centre weight as
    # loaded into shared memory reaches all 16 outputs: recomputed, Masked too. A[0][4] is loaded
    # by SGEMM thread 32 (the A half's t = 0: rows 0-3, line 0) as its load j = 2 of K block 0
    # (k = 0 + 2*2), execution 2 of 8; bit 31 strikes component site_lane(32, 2, (31,)) % 4 = 0,
    # row 0: the weight -1.0, conv out -x + 0.5, window 0 pools -0.5: logits [-0.5, 6.0], class 1
    assert site_lane(32, 2, (31,), None) % 4 == 0
    wload = dict(tag="ldg:tile", thread=32, exec_=2, calls=8, bit=31)
    assert outcome(h, "layers.0.gemm", **GEMM_ACC) == "masked"
    assert outcome(tiny, "layers.0.gemm", **wload) == "sdc_malfunction"
    assert outcome(h, "layers.0.gemm", **wload) == "masked"
    # faults in the checksum kernels at worst raise a false alarm, and the exact recomputation masks it
    assert outcome(h, "layers.0.gemm.abft_check", "setp:within", 3, bit=0) == "masked"


def test_range_restriction_bounds_an_exponent_flip(digits) -> None:
    prog, x = digits
    x = x[:1]
    bounds = profile_bounds(prog, x)
    buf = "features.0.output"
    lo, hi = bounds[buf]
    act = named(prog, "features.0.activate_array")
    golden = prog.run(prog.memory(x))[buf].reshape(-1)
    e = int(torch.nonzero((golden >= 0.5) & (golden < 1.0))[0])   # exponent 126: bit 30 makes it ~1e38
    v = float(golden[e])
    flipped = f32(bits(v) ^ (1 << 30))
    assert flipped > 1e37 > hi
    slot = next(i for i, s in enumerate(act.template.slots) if s.tag == "fmul:out")   # ReLU's x * (x > 0)
    fault = Fault("iov", site_of(act, slot, e), "single", (30,))
    for p, want in ((prog, flipped), (apply_plan(prog, Plan(prog.trace.model, (Protection(
            "layer", "features.0", "range", bounds={buf: (lo, hi)}),))), hi)):
        a = named(p, "features.0.activate_array")
        spec = {b.name: b for b in p.trace.buffers}
        per_lane = lambda n, t: spec[n].kind != "weight" or t.dim() == len(spec[n].shape) + 1  # noqa: E731
        over = make_override(a, [(0, fault, 0)], {0: LaneEffect(0)}, MemoryMap.from_trace(p.trace), per_lane)
        stop = next(l.index for l in p.trace.launches if l.layer != a.layer and l.index > a.index) + (p is not prog)
        mem = p.run(p.memory(x), stop=stop, overrides={a.index: over})
        assert float(mem[buf].reshape(-1)[e]) == want
    assert next(l for l in apply_plan(prog, Plan(prog.trace.model, (Protection(
        "layer", "features.0", "range", bounds={buf: (lo, hi)}),))).trace.layers if l.type == "range").name == \
        "features.0.range"


def site_of(launch: Launch, slot: int, thread: int):
    from kernelfi.types import Site
    return Site(launch.index, launch.template.slots[slot].group, thread, slot, 0)


# ---------------------------------------------------------------------------- planner + store
def test_harden_cli_plans_within_budget_and_campaigns_record_the_plan(tmp_path: Path) -> None:
    db, out = tmp_path / "h.db", tmp_path / "plan.json"
    run_campaign(CampaignConfig(ModelSpec("digits-alexnet"), "iov", "single", n=60, seed=3, inputs=12), str(db))
    res = CliRunner().invoke(cli, ["harden", "--db", str(db), "--budget", "5%", "--out", str(out), "--reps", "3",
                                   "--lanes", "8", "--cost", "measured"])
    assert res.exit_code == 0, res.output
    plan = Plan.load(out)
    e = plan.expected
    assert plan.budget == 0.05 and plan.source_campaigns == (1,) and plan.model == "digits-alexnet"
    assert 0.0 <= e["overhead"] <= 0.05 and e["overhead_measured"] <= 0.05 or not plan.protect
    assert e["malfunction_after"] <= e["malfunction_before"] and e["light_after"] <= e["light_before"] + 1e-3
    assert all(p.technique in ("tmr", "dmr", "abft", "range") for p in plan.protect)
    cid = run_campaign(CampaignConfig(ModelSpec("digits-alexnet", hardening=str(out)), "iov", "single", n=10,
                                      seed=3, inputs=12), str(db))
    with Store(db) as s:   # the plan as written, less the planner's explanation of what it left out
        assert s.campaign(cid).meta.hardening == {k: v for k, v in json.loads(out.read_text()).items() if k != "explain"}


def test_full_abft_leaves_out_the_gemm_of_a_non_square_convolution() -> None:
    """ABFT's virtual im2col reads square windows: the planner's full-ABFT program protects every
    other gemm and harden does not fail on a model with a (1, 3) kernel."""
    from torch import nn

    from kernelfi.harden import abft_checkable, abft_plan, apply_plan
    from kernelfi.lowering import lower

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 2, (1, 3), padding=(0, 1)), nn.ReLU(), nn.Conv2d(2, 2, 3, padding=1),
                        nn.ReLU(), nn.Flatten(), nn.Linear(2 * 6 * 6, 3)).eval()
    prog = lower(net, (1, 6, 6), "mixed")
    gemms = [l for l in prog.trace.launches if l.kernel == "gemm"]
    assert len(gemms) == 3
    assert [abft_checkable(prog.trace, l.index) for l in gemms] == [False, True, True]
    plan = abft_plan(prog.trace)
    assert [(p.target, p.name) for p in plan.protect] == [("launch", gemms[1].name), ("launch", gemms[2].name)]
    hardened = apply_plan(prog, plan)
    protected = {l.params.get("protects") for l in hardened.trace.launches if l.params.get("hardening") == "abft"}
    assert protected == {gemms[1].name, gemms[2].name}
