"""Fuzzed architectures: hypothesis draws random CNNs from the layers the lowering supports
(``fuzz_nets``: orders, shapes, residuals, concatenations, SE blocks...); each lowers exactly
(logits within 1e-5 of the native forward, relative to the logit scale) and a campaign of 50
injections per mode finishes without one fault the tool fails on. Derandomized: the same
examples on every run; ``-m slow`` draws more of them."""
from __future__ import annotations

import random
import tempfile
from pathlib import Path
from typing import Any, Callable

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kernelfi.lowering import lower

import pytest

from fuzz_nets import Arch, FuzzNet, arch_name, model_file, random_net
from zoo import CLASSES, campaign, lowering_error, seeded


@st.composite
def nets(draw: Callable[[st.SearchStrategy[Any]], Any], max_ops: int = 6) -> tuple[tuple[int, int, int], Arch]:
    """An input shape and an architecture of 2 .. ``max_ops`` ops. Hypothesis draws the seed of
    the ``random.Random`` that draws the ops (``fuzz_nets.random_net``, bench/soak.py's):
    drawing every op through hypothesis made its first (derandomized) examples near copies of
    each other, a seed spreads a handful of examples over the whole vocabulary."""
    return random_net(random.Random(draw(st.integers(0, 2**32 - 1))), max_ops)


def check_net(shape: tuple[int, int, int], arch: Arch, n: int = 50) -> None:
    """The fuzzer's claim for one architecture: exact lowering, no tool error in any mode (the
    campaign on the architecture as a model file, ``PATH.py:build``, with the seeded weights)."""
    module = seeded(FuzzNet(arch, shape, CLASSES), shape)
    a = lowering_error(module, lower(module, shape, arch_name(arch, shape)), shape)
    assert a.exact, (arch, shape, a.error, a.error64, a.native64, a.scale)
    with tempfile.TemporaryDirectory() as tmp:
        for r in campaign(model_file(arch, shape, CLASSES, Path(tmp)), module, Path(tmp), n):
            assert r.tool_errors == [] and r.injections == n, (arch, shape, r.mode, r.tool_errors[:3])


_SETTINGS = dict(deadline=None, derandomize=True, database=None,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


#: found by the slow fuzz: the lowered logits were 1.0018e-5 from the native ones (9.86e-6
#: since the fc rows are multiplied 64-byte aligned, ccbc352), but the native float32 forward is
#: itself 5.9e-6 from the float64 one (x - tanh(conv x) cancels, the BN after it amplifies) and
#: the lowered one 4.0e-6: rounding on both sides, not a mismatch
ROUNDING = ((1, 8, 8), (
    ("up",), ("conv", 6, (1, 3), 1, (0, 1), 1, True, True, "relu6"), ("avgpool", 3, 2, 0, True),
    ("avgpool", 3, 2, 0, False), ("se", 2, "hardsigmoid", "functional"),
    ("conv", 5, (1, 3), 1, (0, 1), 1, False, False, "sigmoid"), ("cat", ("conv", 5, 1, 1, (0, 0), 1, True, True, "leaky0.1")),
    ("res", "sub", ("conv", 10, 1, 1, (0, 0), 1, False, False, "tanh"), "hardswish"), ("maxpool", 2, 1, 0, False),
    ("bn",), ("head", "mean", 3)))


def test_float32_rounding_of_the_native_forward_is_no_mismatch() -> None:
    shape, arch = ROUNDING
    module = seeded(FuzzNet(arch, shape, CLASSES), shape)
    a = lowering_error(module, lower(module, shape, "rounding"), shape)
    assert a.native64 > 5e-6 and a.error > a.native64  # the two float32 forwards differ by more than either errs
    assert a.error64 < a.native64 and a.exact  # the lowered one is nearer the float64 forward
    check_net(shape, arch)


#: both bilinear forms (PyTorch's upsample_bilinear2d kernel), one after a stride-2 pool
BILINEAR = ((2, 6, 6), (
    ("conv", 5, 1, 1, (0, 0), 1, True, True, "leaky0.1"), ("up", "bilinear", False), ("maxpool", 2, 2, 0, False),
    ("up", "bilinear", True), ("conv", 6, (1, 3), 1, (0, 1), 1, True, True, "relu6"), ("head", "mean", 3)))


def test_bilinear_upsamples_lower_exactly_and_campaigns_finish() -> None:
    check_net(*BILINEAR)


#: both up-convolutions of the "up" op (ConvTranspose2d k=2 s=2 with BN and an activation; k=3 s=2
#: p=1 output_padding=1 without bias), after a strided conv, into a concatenation
DECONV = ((3, 8, 8), (
    ("conv", 4, 3, 2, 1, 1, True, False, "relu"), ("up", "deconv", 5, 2, True, True, "relu"),
    ("maxpool", 2, 2, 0, False), ("up", "deconv", 3, 3, False, False, None),
    ("cat", ("conv", 3, 3, 1, (1, 1), 1, True, False, "silu")), ("head", "flatten", 4)))


#: GroupNorm affine and not (G = 1, 2, C; the first with rows of 8*16*16/2 = 1024: 512 threads)
GROUPNORM = ((3, 16, 16), (
    ("conv", 8, 3, 1, 1, 1, True, False, "relu"), ("gn", 2, True), ("maxpool", 2, 2, 0, False),
    ("gn", 8, False), ("conv", 6, 3, 1, 1, 1, False, False, "silu"), ("gn", 1, True), ("head", "mean", 3)))


def test_group_norms() -> None:
    check_net(*GROUPNORM, n=40)


def test_up_convolutions() -> None:
    check_net(*DECONV, n=40)


@settings(max_examples=12, **_SETTINGS)  # type: ignore[arg-type]
@given(nets())
def test_fuzzed_nets_lower_exactly_and_campaigns_finish(net: tuple[tuple[int, int, int], Arch]) -> None:
    check_net(*net)


@pytest.mark.slow
@settings(max_examples=80, **_SETTINGS)  # type: ignore[arg-type]
@given(nets(max_ops=10))
def test_fuzzed_nets_many(net: tuple[tuple[int, int, int], Arch]) -> None:
    check_net(*net)

