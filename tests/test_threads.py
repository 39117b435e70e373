"""A campaign's rows do not depend on the caller's intra-op thread count.

MKL splits its work between threads by the problem's size: 16 rows of 2048 times a 2048x1000
matrix differ in the last bits between one and two threads (checked below on the program's own
unpinned run, so the test means something on this machine). The engine runs on one thread whatever the caller set, so the
golden run and every fault's row come out the same, and the caller's count is restored.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

from kernelfi.execution.golden import Golden
from kernelfi.campaign.planner import Planner
from kernelfi.execution.runner import Runner
from kernelfi.lowering import lower


def _rows(threads: int, program, x):  # type: ignore[no-untyped-def]
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        golden = Golden.compute(program, x)
        runner = Runner(program, golden)
        planner = Planner(program.trace, "iov", "single", False, 3, x.shape[0])
        with torch.no_grad():
            rows = [(e.result.outcome, e.result.original, e.result.corrupted, e.result.propagation)
                    for e in runner.run([planner.draw(i) for i in range(48)])]
        assert torch.get_num_threads() == threads  # the caller's count is back
        return golden.probs.clone(), rows
    finally:
        torch.set_num_threads(before)


def _plain(threads: int, program, x) -> torch.Tensor:  # type: ignore[no-untyped-def]
    """The program's own forward run, not pinned: what the caller's thread count gives."""
    torch.set_num_threads(threads)
    with torch.no_grad():
        return program.run(program.memory(x), fast=True)[program.trace.output].clone()


def test_rows_do_not_depend_on_the_thread_count() -> None:
    g = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(2048, 1000)).eval()
    with torch.no_grad():
        model[1].weight.copy_(torch.randn(1000, 2048, generator=g) * 0.02)
        model[1].bias.zero_()
    program = lower(model, (2048, 1, 1), "wide-fc")
    x = torch.randn(16, 2048, 1, 1, generator=g)
    before = torch.get_num_threads()
    try:
        plain = [_plain(t, program, x) for t in (1, 2)]
    finally:
        torch.set_num_threads(before)
    if torch.equal(*plain):
        pytest.skip("this BLAS gives the same bits on one and two threads; nothing to tell apart")
    p1, rows1 = _rows(1, program, x)
    p2, rows2 = _rows(2, program, x)
    assert torch.equal(p1, p2)
    assert repr(rows1) == repr(rows2) and len(rows1) == 48  # repr: NaN corrupted values compare equal


def test_golden_chunks_fill_the_same_tensors() -> None:
    """The golden run in chunks of one input and of 64 gives the same buffers and GEMM products,
    each input's in its own row (a wrong offset or a lost chunk would show)."""
    from kernelfi.execution import golden as G
    from kernelfi.campaign.session import ModelSpec, open_session, inputs_tensor, session_inputs

    session = open_session(ModelSpec("digits-alexnet"))
    x = inputs_tensor(session_inputs(session, None, 7))
    whole = Golden.compute(session.program, x)
    per = session.program.trace
    assert G.golden_chunk(per, 64) == 64 and G.golden_chunk(per, 64, budget=1) == 1
    saved = G.GOLDEN_CHUNK_BUDGET
    G.GOLDEN_CHUNK_BUDGET = 1
    try:
        one = Golden.compute(session.program, x)
    finally:
        G.GOLDEN_CHUNK_BUDGET = saved
    assert whole.buffers.keys() == one.buffers.keys() and whole.pre.keys() == one.pre.keys() and whole.pre
    for k in whole.buffers:
        assert torch.equal(whole.buffers[k], one.buffers[k]), k
    for k in whole.pre:
        assert torch.equal(whole.pre[k], one.pre[k]), k
    assert torch.equal(one.buffers["input"], x)  # row i is input i
    with torch.no_grad():
        last = session.program.run(session.program.memory(x[6:7]))[per.output]
    assert torch.equal(one.probs[6:7], last.reshape(1, -1))


def test_shared_golden_maps_one_block() -> None:
    """Computed into shared memory, the run's tensors are views of one block that workers map
    as it is; a run computed privately is copied into one. Both give the same values, in
    another process too (a spawned worker reads them through the pickled block)."""
    import multiprocessing as mp

    from kernelfi.execution.golden import SharedGolden
    from kernelfi.campaign.session import ModelSpec, open_session, inputs_tensor, session_inputs

    session = open_session(ModelSpec("digits-alexnet"))
    x = inputs_tensor(session_inputs(session, None, 5))
    out = session.program.trace.output
    private = Golden.compute(session.program, x)
    shared = Golden.compute(session.program, x, share=True)
    assert private.block is None and shared.block is not None and shared.block.is_shared()
    a, b = SharedGolden.of(shared, out), SharedGolden.of(private, out)
    assert a.flat is shared.block and b.flat.is_shared() and b.flat.numel() == a.flat.numel()
    for g in (a.golden(), b.golden()):
        assert g.buffers.keys() == private.buffers.keys() and g.pre.keys() == private.pre.keys()
        assert all(torch.equal(g.buffers[k], private.buffers[k]) for k in g.buffers)
        assert all(torch.equal(g.pre[k], private.pre[k]) for k in g.pre)
        assert torch.equal(g.top1, private.top1)
    with mp.get_context("spawn").Pool(1) as pool:
        sums = pool.apply(_sums, (a,))
    assert sums == _sums(b)


def _sums(shared) -> list[float]:  # type: ignore[no-untyped-def]
    g = shared.golden()
    return [float(g.buffers[k].double().sum()) for k in sorted(g.buffers)]


def test_runner_takes_another_runners_checks() -> None:
    """A runner given another's one-time findings holds the same ones (and rows, in the pool
    test of test_campaign.py), without verifying again."""
    from kernelfi.execution import cone as cone_mod
    from kernelfi.campaign.session import ModelSpec, open_session, inputs_tensor, session_inputs

    session = open_session(ModelSpec("digits-resnet"))
    golden = Golden.compute(session.program, inputs_tensor(session_inputs(session, None, 4)))
    first = Runner(session.program, golden)
    found = first.checks()
    assert found.units and found.cached_golden
    calls = []
    real = cone_mod.verify
    cone_mod.verify = lambda *a, **k: calls.append(1) or real(*a, **k)  # type: ignore[assignment]
    try:
        again = Runner(session.program, golden, checks=found)
    finally:
        cone_mod.verify = real
    assert again.checks() == found and not calls
