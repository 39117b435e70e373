"""Faults whose stores land outside the element they meant to write: the campaigns that once
ended with a traceback (and, being reproducible, ended there again on every resume).

Each case is checked against an independent path: the same fault run alone, and the struck
layer run on whole faulty lanes (``cone=False``), must give the same row.
"""
from __future__ import annotations

import dataclasses

import pytest
import torch

from kernelfi.campaign import CampaignConfig, ModelSpec
from kernelfi.campaign.campaign import to_records
from kernelfi.campaign.prepared import prepare
from kernelfi.execution.golden import Golden
from kernelfi.campaign.planner import Planner
from kernelfi.execution.runner import Runner
from kernelfi.faults.memmap import MemoryMap
from kernelfi.faults.registers import rf_registers
from kernelfi.lowering import lower


def _rows(runner: Runner, faults: list) -> list:
    with torch.no_grad():
        ex = runner.run(faults)
    return sorted(((e.planned.id, dataclasses.replace(e.result, seconds=0.0) if hasattr(e.result, "seconds")
                    else e.result) for e in ex), key=lambda t: t[0])


@pytest.fixture(scope="module")
def digits_rf3():
    return prepare(CampaignConfig(ModelSpec("digits-alexnet"), "rf", "single", n=49, seed=3))


def test_rf_address_flip_sends_the_gemm_store_into_the_workspace(digits_rf3) -> None:
    # digits-alexnet RF seed 3, injection 48 (IndexError in struck._owned_diffs): bit 19 of the
    # low half of thread 2260's C address register in features.6.gemm. The store goes 2**19
    # bytes on, into the im2col workspace (element 14484), and C[2260] keeps what it held.
    prep = digits_rf3
    pf = prep.planner.draw(48)
    trace = prep.session.program.trace
    launch = trace.launches[pf.fault.site.launch]
    assert launch.name == "features.6.gemm" and pf.fault.bits == (19,)
    assert rf_registers(launch).registers[pf.fault.site.register].name == "r_c_lo"
    mm = MemoryMap.from_trace(trace)
    assert mm.resolve(mm.address("features.6.output", 2260) + (1 << 19)) == ("workspace", 14484)
    with torch.no_grad():
        rec = to_records(prep, prep.runner.run([pf]))[0]
    assert rec.element == 2260 and rec.tag == "lea:addr_c"
    assert rec.corrupted - rec.original == 1 << 19
    assert rec.propagation[0].layer == 4 and rec.propagation[0].corrupted == 1  # C[2260] alone
    whole = Runner(prep.session.program, prep.golden, cone=False)
    with torch.no_grad():
        again = to_records(prep, whole.run([pf]))[0]
    assert dataclasses.replace(rec, seconds=0.0) == dataclasses.replace(again, seconds=0.0)


def test_iov_maxpool_window_index_campaign_fault(tmp_path) -> None:
    # digits-alexnet IOV seed 11, injection 1363 (OverflowError in inject._same): imod:ow of
    # features.2.forward_maxpool, bit 12, worked by hand in test_faults_hand; here the campaign's
    # own fault, whose -inf max lands on the argmax buffer and whose -1 argmax on a weight.
    prep = prepare(CampaignConfig(ModelSpec("digits-alexnet"), "iov", "single", n=1364, seed=11))
    pf = prep.planner.draw(1363)
    assert prep.session.program.trace.launches[pf.fault.site.launch].name == "features.2.forward_maxpool"
    with torch.no_grad():
        rec = to_records(prep, prep.runner.run([pf]))[0]
    assert rec.tag == "imod:ow" and (rec.original, rec.corrupted) == (rec.original, rec.original + 4096)
    assert rec.outcome == "sdc_malfunction" and "nonfinite" in rec.flags  # a NaN weight
    whole = Runner(prep.session.program, prep.golden, cone=False)
    with torch.no_grad():
        again = to_records(prep, whole.run([pf]))[0]
    assert dataclasses.replace(rec, seconds=0.0) == dataclasses.replace(again, seconds=0.0)


def _cbr_gap_linear():
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.BatchNorm2d(16), torch.nn.ReLU(),
                            torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(16, 4)).eval()
    with torch.no_grad():
        m[1].running_mean.uniform_(-0.5, 0.5)
        m[1].running_var.uniform_(0.5, 2)
    return lower(m, (3, 16, 16), "cbr-gap-linear")


def test_ioa_stray_stores_of_one_composite_on_a_global_pool_model() -> None:
    # conv -> BN -> ReLU -> global average pool -> Linear, IOA seed 2: faults 149 (an
    # activate_array store 2**15 bytes off, into the im2col workspace) and 269 (a lost index in
    # the same launch) share a composite lane; 331 strikes the GEMM of the same input, so the
    # batch keeps the workspace in memory. Together they raised IndexError (the composite's owned
    # indices mixed buffers). The workspace is dead after the GEMM: 149's store has no effect
    # (Masked, stray_store) whichever faults share its batch, as on whole lanes.
    prog = _cbr_gap_linear()
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    golden = Golden.compute(prog, x)
    planner = Planner(prog.trace, "ioa", "single", False, 2, 4)
    faults = [planner.draw(i) for i in (149, 269, 331)]
    assert [prog.trace.launches[pf.fault.site.launch].kernel for pf in faults] == ["activate_array"] * 2 + ["gemm"]
    runner = Runner(prog, golden)
    together = _rows(runner, faults)
    alone = [r for pf in faults for r in _rows(runner, [pf])]
    whole = [r for pf in faults for r in _rows(Runner(prog, golden, cone=False), [pf])]
    assert alone == whole
    # (the batch's GEMM fault makes its golden lanes run the explicit GEMM, whose last bits can
    # differ from the golden run's fused convolution: 269's figures may differ in the last bits)
    assert [(i, r.outcome, r.flags, r.element) for i, r in together] == [(i, r.outcome, r.flags, r.element)
                                                                         for i, r in alone]
    assert [r.outcome for _, r in together] == ["masked", "sdc_light_malfunction", "due"]
    assert together[0][1].flags == ("stray_store",)


def test_composite_owners_are_per_buffer_size() -> None:
    # lane 10 stored into out[2] (8 elements per lane) and into the workspace at 14484; lane 11
    # into out[5]: in out, lane 10 owns 2 alone; in a 20000-element buffer, only 14484 is its.
    from kernelfi.execution.struck import _owners
    cmem = {"out": torch.zeros(1, 8), "workspace": torch.zeros(1, 20000)}
    own = {"out": {2: 10, 5: 11}, "workspace": {14484: 10}}
    assert _owners(own, 8, cmem) == {2: 10, 5: 11}
    assert _owners(own, 20000, cmem) == {14484: 10}
    assert _owners(own, 16, cmem) == {}
