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
from kernelfi.execution.runner import Runner
from kernelfi.types import AddressHalf, Fault, PlannedFault, Site
from tests.tiny import rf_site_of
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
    # First found as digits-alexnet RF seed 3, injection 48 (IndexError in struck._owned_diffs):
    # bit 19 of the low half of a C address register in features.6.gemm. With the SGEMM model
    # the fault is built directly: thread 0's row pointer (lea:addr_c, held in r_ptr_lo after
    # the loop), struck early in its life: row slot 0, C's row 0, the thread's columns 0-3 and
    # 32-35. Each store goes 2**19 bytes on, into the im2col workspace, and C keeps what it held.
    prep = digits_rf3
    program = prep.session.program
    trace = program.trace
    launch = next(l for l in trace.launches if l.name == "features.6.gemm")
    regs = rf_registers(launch).registers
    r = next(i for i, reg in enumerate(regs) if reg.tag == "lea:addr_c" and reg.half is AddressHalf.LOW)
    pf = PlannedFault(48, Fault("rf", rf_site_of(program, launch.name, r, 0), "single", (19,), input_id=0), 1.0)
    mm = MemoryMap.from_trace(trace)
    cols = [0, 1, 2, 3, 32, 33, 34, 35]
    assert all(mm.resolve(mm.address("features.6.output", c) + (1 << 19))[0] == "workspace" for c in cols)
    with torch.no_grad():
        rec = to_records(prep, prep.runner.run([pf]))[0]
    assert rec.element == 0 and rec.tag == "lea:addr_c"
    assert rec.corrupted - rec.original == 1 << 19
    assert rec.propagation[0].layer == 4 and rec.propagation[0].corrupted == 8  # the row's 8 outputs
    whole = Runner(program, prep.golden, cone=False)
    with torch.no_grad():
        again = to_records(prep, whole.run([pf]))[0]
    assert dataclasses.replace(rec, seconds=0.0) == dataclasses.replace(again, seconds=0.0)


def test_iov_maxpool_window_index_campaign_fault(tmp_path) -> None:
    # digits-alexnet IOV seed 11, injection 1363 (OverflowError in inject._same): imod:ow of
    # features.2.forward_maxpool, bit 12, worked by hand in test_faults_hand; here the campaign's
    # own fault, whose -inf max lands on the argmax buffer and whose -1 argmax on a weight.
    # (the draw under the textbook gemm template; other templates move the planner's draws)
    prep = prepare(CampaignConfig(ModelSpec("digits-alexnet"), "iov", "single", n=1364, seed=11))
    pf = PlannedFault(1363, Fault("iov", Site(launch=5, group="GPR", thread=2576, slot=17, iteration=1),
                                  "single", (12,), input_id=144), 1.0)
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
    # 149 and 269 as the planner drew them under the textbook gemm template; 331 was an IOA of a
    # gemm load of input 2 that crashed: here the SGEMM's x-operand LDS.128 of thread 0 at step
    # 26, its shared offset + 2**19: far outside the 8 KB of shared memory, a crash (DUE)
    gemm = next(l for l in prog.trace.launches if l.kernel == "gemm")
    slot = next(i for i, sl in enumerate(gemm.template.slots) if sl.tag == "lds:a_lo")
    faults = [PlannedFault(149, Fault("ioa", Site(6, "NODEST", 1322, 10, 0), "single", (15,), input_id=2), 1.0),
              PlannedFault(269, Fault("ioa", Site(6, "GPR", 2250, 0, 2), "single", (0,), input_id=2), 1.0),
              PlannedFault(331, Fault("ioa", Site(gemm.index, "LD", 0, slot, 26), "single", (19,), input_id=2), 1.0)]
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
