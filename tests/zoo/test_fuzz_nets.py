"""Fuzzed architectures: hypothesis draws random CNNs from the layers the lowering supports
(``fuzz_nets``: orders, shapes, residuals, concatenations, SE blocks...); each lowers exactly
(logits within 1e-5 of the native forward, relative to the logit scale) and a campaign of 50
injections per mode finishes without one fault the tool fails on. Derandomized: the same
examples on every run; ``-m slow`` draws more of them."""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Callable, Sequence

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kernelfi.lowering import lower

import pytest

from fuzz_nets import Arch, FuzzNet, arch_name, draw_arch
from zoo import CLASSES, MODES, campaign, lowering_error, register, seeded


class _HypothesisDraw:
    def __init__(self, draw: Callable[[st.SearchStrategy[Any]], Any]) -> None:
        self.draw = draw

    def int(self, lo: int, hi: int) -> int:
        return int(self.draw(st.integers(lo, hi)))

    def choice(self, options: Sequence[Any]) -> Any:
        return self.draw(st.sampled_from(list(options)))


@st.composite
def nets(draw: Callable[[st.SearchStrategy[Any]], Any], max_ops: int = 6) -> tuple[tuple[int, int, int], Arch]:
    shape = (draw(st.sampled_from([1, 3])), draw(st.integers(4, 12)), draw(st.integers(4, 12)))
    return shape, draw_arch(_HypothesisDraw(draw), shape, draw(st.integers(1, max_ops)))


def check_net(shape: tuple[int, int, int], arch: Arch, n: int = 50) -> None:
    """The fuzzer's claim for one architecture: exact lowering, no tool error in any mode."""
    name = arch_name(arch, shape)
    module = seeded(FuzzNet(arch, shape, CLASSES), shape)
    err, scale = lowering_error(module, lower(module, shape, name), shape)
    assert err <= 1e-5, (arch, shape, err, scale)
    register(name, lambda classes: FuzzNet(arch, shape, classes), shape)
    with tempfile.TemporaryDirectory() as tmp:
        for r in campaign(name, module, Path(tmp), n, inputs=2):
            assert r.tool_errors == [] and r.injections == n, (arch, shape, r.mode, r.tool_errors[:3])


_SETTINGS = dict(deadline=None, derandomize=True, database=None,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@settings(max_examples=8, **_SETTINGS)  # type: ignore[arg-type]
@given(nets())
def test_fuzzed_nets_lower_exactly_and_campaigns_finish(net: tuple[tuple[int, int, int], Arch]) -> None:
    check_net(*net)


@pytest.mark.slow
@settings(max_examples=80, **_SETTINGS)  # type: ignore[arg-type]
@given(nets(max_ops=10))
def test_fuzzed_nets_many(net: tuple[tuple[int, int, int], Arch]) -> None:
    check_net(*net)

