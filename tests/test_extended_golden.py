"""A clamped model's golden run and runner checks taken from the unhardened model's
(execution.extended_golden, Runner.extended_checks: what the harden planner's clamp
verification uses instead of one golden run per clamp): equal, bit for bit, to computing them
for the clamped model, and refused where a clamp would change the golden values or a plan
changes the model's own launches."""
from __future__ import annotations

import pytest
import torch

from kernelfi.campaign.session import ModelSpec, inputs_tensor, open_session, session_inputs
from kernelfi.execution import Golden, Runner, extended_golden
from kernelfi.harden import Plan, Protection, apply_plan, profile_bounds
from kernelfi.lowering import Program


@pytest.fixture(scope="module")
def setup() -> tuple[Program, torch.Tensor, dict[str, tuple[float, float]], Golden, Runner]:
    s = open_session(ModelSpec("digits-alexnet"))
    x = inputs_tensor(session_inputs(s, None, 16))
    bounds = profile_bounds(s.program, x)
    golden = Golden.compute(s.program, x)
    return s.program, x, bounds, golden, Runner(s.program, golden)


def clamp(base: Program, layer: str, buf: str, bounds: tuple[float, float]) -> Program:
    return apply_plan(base, Plan(base.trace.model, (Protection("layer", layer, "range", bounds={buf: bounds}),)))


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(torch.int32)


@pytest.mark.parametrize("layer", ["features.2", "features.8", "classifier.4"])
def test_a_clamp_within_its_bounds_gets_the_golden_run_and_checks_it_would_compute(setup, layer: str) -> None:
    base, x, bounds, golden, runner = setup
    buf = f"{layer}.output"
    hard = clamp(base, layer, buf, bounds[buf])
    got, want = extended_golden(base, golden, hard), Golden.compute(hard, x)
    assert got is not None
    assert set(got.buffers) == set(want.buffers)
    assert all(torch.equal(bits(got.buffers[k]), bits(want.buffers[k])) for k in want.buffers)
    assert set(got.pre) == set(want.pre) and all(torch.equal(bits(got.pre[k]), bits(want.pre[k])) for k in want.pre)
    assert torch.equal(got.probs, want.probs) and torch.equal(got.top1, want.top1)
    # the GEMM products are keyed by the clamped model's launch indexes (shifted after the clamp)
    shifted = [g for g in want.pre if hard.trace.launches[g].name != base.trace.launches[g].name]
    assert shifted or layer == "classifier.4"
    assert runner.extended_checks(hard, got) == Runner(hard, want).checks()


def test_a_clamp_that_would_change_a_golden_value_is_refused(setup) -> None:
    base, _, bounds, golden, _ = setup
    lo, hi = bounds["features.8.output"]
    hard = clamp(base, "features.8", "features.8.output", (lo, lo + 0.5 * (hi - lo)))   # cuts the largest values
    assert extended_golden(base, golden, hard) is None


def test_a_plan_that_replicates_the_models_own_launches_is_refused(setup) -> None:
    base, _, _, golden, runner = setup
    hard = apply_plan(base, Plan(base.trace.model, (Protection("layer", "features.3", "tmr"),)))
    assert extended_golden(base, golden, hard) is None        # replicas write buffers the golden run lacks
    assert runner.extended_checks(hard, golden) is None       # and share the protected layer
