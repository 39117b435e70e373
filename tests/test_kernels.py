"""Hand-checkable tests of the kernel catalogue (kernelfi.kernels).

Expected outputs are worked out on paper in the comments next to them, not recomputed with the
code under test. Instruction counts follow the per-thread templates documented in
docs/kernels.md; each test spells out the sum.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch

from kernelfi._utils import KernelfiError
from kernelfi.kernels import (
    EFFECTS, KernelImpl, all_kernels, cuda_gridsize, darknet_largest, dilated_im2col, fused_conv, get_kernel,
    register_kernel, unregister_kernel,
)
from kernelfi.types import GROUPS, KERNEL_NAMES, REGISTER_ROLES, Launch, ThreadTemplate

NAN, INF = float("nan"), float("inf")
DOCS = Path(__file__).resolve().parents[1] / "docs" / "kernels.md"


def launch(kernel: str, reads: tuple[str, ...], writes: tuple[str, ...], **params: Any) -> Launch:
    return Launch(index=0, layer=0, layer_type="test", name=f"t.{kernel}", kernel=kernel, reads=reads,
                  writes=writes, params=params, template=ThreadTemplate(1, 1, ()))


def run(kernel: str, mem: dict[str, torch.Tensor], reads: tuple[str, ...], writes: tuple[str, ...],
        **params: Any) -> dict[str, torch.Tensor]:
    get_kernel(kernel).run(mem, launch(kernel, reads, writes, **params))
    return mem


def t(*rows: Any) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


def counts(kernel: str, **params: Any) -> dict[str, int]:
    return dict(get_kernel(kernel).template(params).profile().counts)


# ------------------------------------------------------------------------------------ registry
def test_registry_has_the_twelve_kernels() -> None:
    assert set(KERNEL_NAMES) <= set(all_kernels())  # hardening adds its own kernels
    for name in KERNEL_NAMES:
        assert get_kernel(name).name == name


def test_unknown_kernel_names_the_kernel_and_the_known_ones() -> None:
    with pytest.raises(KernelfiError) as err:
        get_kernel("xyz")
    assert "'xyz'" in str(err.value) and "known:" in str(err.value) and "im2col" in str(err.value)


def test_duplicate_registration_raises() -> None:
    with pytest.raises(KernelfiError, match="already registered"):
        @register_kernel
        class Again(KernelImpl):
            name = "fill"

    @register_kernel
    class Throwaway(KernelImpl):
        name = "throwaway_test_kernel"

    try:
        with pytest.raises(KernelfiError):
            register_kernel(Throwaway)
    finally:
        unregister_kernel("throwaway_test_kernel")


# ------------------------------------------------------------------------------ elementwise run
def test_fill_creates_lanes_from_input_and_overwrites() -> None:
    mem = {"input": torch.ones(2, 1, 2, 2)}
    run("fill", mem, (), ("o",), n=3, value=0.0)
    assert mem["o"].shape == (2, 3) and torch.equal(mem["o"], torch.zeros(2, 3))
    mem["o"] = torch.full((2, 3), 7.0)
    run("fill", mem, (), ("o",), n=3, value=1.5)
    assert torch.equal(mem["o"], torch.full((2, 3), 1.5))


def test_copy_with_offset_grows_and_keeps_earlier_copies() -> None:
    mem = {"a": t([1, 2, 3], [4, 5, 6]), "b": t([7, 8], [9, 10])}
    run("copy", mem, ("a",), ("o",), n=3, out_offset=2)
    # nothing at 0..1 yet (zeros), a at 2..4
    assert torch.equal(mem["o"], t([0, 0, 1, 2, 3], [0, 0, 4, 5, 6]))
    run("copy", mem, ("b",), ("o",), n=2, out_offset=0)
    assert torch.equal(mem["o"], t([7, 8, 1, 2, 3], [9, 10, 4, 5, 6]))


def test_add_bias_two_lanes_shared_and_per_lane_bias() -> None:
    x = t([[1, 2, 3], [4, 5, 6]], [[-1, -2, -3], [0, 0, 0]])      # (B=2, C=2, spatial=3)
    mem = {"l.output": x.clone(), "l.biases": t(10, 20)}
    run("add_bias", mem, ("l.output", "l.biases"), ("l.output",), channels=2, spatial=3)
    assert torch.equal(mem["l.output"], t([[11, 12, 13], [24, 25, 26]], [[9, 8, 7], [20, 20, 20]]))
    # a faulty lane's private copy: lane 0 biases (10, 20), lane 1 biases (100, -1)
    mem = {"l.output": x.clone(), "l.biases": t([10, 20], [100, -1])}
    run("add_bias", mem, ("l.output", "l.biases"), ("l.output",), channels=2, spatial=3)
    assert torch.equal(mem["l.output"], t([[11, 12, 13], [24, 25, 26]], [[99, 98, 97], [-1, -1, -1]]))


def test_scale_bias_per_channel() -> None:
    mem = {"l.output": t([[1, 2], [3, 4]]), "l.scales": t(2, -1)}
    run("scale_bias", mem, ("l.output", "l.scales"), ("l.output",), channels=2, spatial=2)
    assert torch.equal(mem["l.output"], t([[2, 4], [-3, -4]]))


def test_normalize_uses_sqrt_of_var_plus_eps() -> None:
    mem = {"l.output": t([[1, 3], [5, 9]]), "l.rolling_mean": t(2, 7), "l.rolling_variance": t(4, 1)}
    run("normalize", mem, ("l.output", "l.rolling_mean", "l.rolling_variance"), ("l.output",),
        channels=2, spatial=2, eps=0.0)
    # (1-2)/2, (3-2)/2 ; (5-7)/1, (9-7)/1
    assert torch.equal(mem["l.output"], t([[-0.5, 0.5], [-2, 2]]))
    mem = {"l.output": t([[6.0]]), "l.rolling_mean": t(2.0), "l.rolling_variance": t(4.0)}
    run("normalize", mem, ("l.output", "l.rolling_mean", "l.rolling_variance"), ("l.output",),
        channels=1, spatial=1, eps=1e-5)
    assert mem["l.output"].item() == pytest.approx(4 / math.sqrt(4.00001), rel=1e-6)


def test_activations_follow_darknet_float_semantics() -> None:
    x = t([-2.0, 0.0, 3.0, NAN, -INF])
    mem = run("activate_array", {"o": x.clone()}, ("o",), ("o",), n=5, activation="relu")
    y = mem["o"][0]
    # x*(x>0): -2*0 = -0.0 (sign kept), 0, 3, NaN*0 = NaN, -inf*0 = NaN
    assert y[0].item() == 0.0 and math.copysign(1, y[0].item()) == -1
    assert y[1].item() == 0.0 and y[2].item() == 3.0 and math.isnan(y[3]) and math.isnan(y[4])
    mem = run("activate_array", {"o": t([-2.0, 5.0, NAN])}, ("o",), ("o",), n=3, activation="leaky")
    y = mem["o"][0]
    # .1f*-2 in float32 = -0.2 rounded to float32
    assert y[0].item() == torch.tensor(0.1, dtype=torch.float32).item() * -2 and y[1].item() == 5.0
    assert math.isnan(y[2])
    mem = run("activate_array", {"o": t([0.0, 100.0])}, ("o",), ("o",), n=2, activation="logistic")
    assert mem["o"][0, 0].item() == 0.5 and mem["o"][0, 1].item() == 1.0   # 1/(1+0) = 1
    x = t([1.0, -1.0])
    mem = {"o": x}
    run("activate_array", mem, ("o",), ("o",), n=2, activation="linear")
    assert torch.equal(mem["o"], x) and mem["o"].data_ptr() != x.data_ptr()


def test_unknown_activation_raises() -> None:
    with pytest.raises(KernelfiError, match="hardshrink"):
        run("activate_array", {"o": t([1.0])}, ("o",), ("o",), n=1, activation="hardshrink")
    with pytest.raises(KernelfiError, match="hardshrink"):
        get_kernel("activate_array").template({"n": 1, "activation": "hardshrink"})


SAME2 = dict(w1=2, h1=1, c1=1, w2=2, h2=1, c2=1)


def test_shortcut_adds_in_place_semantics() -> None:
    mem = {"s.output": t([1, 2], [3, 4]), "x.output": t([10, 20], [30, 40])}
    run("shortcut", mem, ("s.output", "x.output"), ("s.output",), **SAME2)
    assert torch.equal(mem["s.output"], t([11, 22], [33, 44]))


def test_shortcut_mismatched_shapes_by_hand() -> None:
    # add: 1 channel 4x4 (values 0..15) onto out: 2 channels 2x2 (all 100): stride 4/2 = 2,
    # minc 1: out channel 0 gets add[0, 2j, 2i] = 0, 2, 8, 10; channel 1 keeps 100
    mem = {"o": torch.full((1, 8), 100.0), "a": torch.arange(16.0).reshape(1, 16)}
    run("shortcut", mem, ("o", "a"), ("o",), w1=4, h1=4, c1=1, w2=2, h2=2, c2=2)
    assert mem["o"][0].tolist() == [100, 102, 108, 110, 100, 100, 100, 100]
    # the reverse: add 2 channels 2x2 (1..8) onto 1 channel 4x4 (zeros): sample 2, minc 1:
    # out[0, 2j, 2i] = add[0, j, i] = 1, 2, 3, 4; the rest stays 0; add's channel 1 unused
    mem = {"o": torch.zeros(1, 16), "a": torch.arange(1.0, 9.0).reshape(1, 8)}
    run("shortcut", mem, ("o", "a"), ("o",), w1=2, h1=2, c1=2, w2=4, h2=4, c2=1)
    assert mem["o"][0].tolist() == [1, 0, 2, 0, 0, 0, 0, 0, 3, 0, 4, 0, 0, 0, 0, 0]
    assert get_kernel("shortcut").template(dict(w1=2, h1=2, c1=2, w2=4, h2=4, c2=1)).threads == 4
    with pytest.raises(KernelfiError, match="width and height ratios"):
        get_kernel("shortcut").template(dict(w1=4, h1=3, c1=1, w2=2, h2=1, c2=1))


# ------------------------------------------------------------------------------------ conv path
IMAGE = t([[[1, 2, 3], [4, 5, 6], [7, 8, 9]]])       # 1 channel, 3×3 (without lane dim)


def im2col_params(**kw: Any) -> dict[str, Any]:
    p = dict(channels=1, height=3, width=3, ksize=2, stride=1, pad=0, dilation=1, out_h=2, out_w=2,
             channel_offset=0, group_channels=1)
    p.update(kw)
    return p


def test_im2col_1x3x3_ksize2() -> None:
    mem = run("im2col", {"input": IMAGE.unsqueeze(0)}, ("input",), ("workspace",), **im2col_params())
    # K row kh*2+kw, N column oh*2+ow: the window at (oh, ow) shifted by (kh, kw)
    assert torch.equal(mem["workspace"], t([[1, 2, 4, 5],     # (kh,kw)=(0,0)
                                             [2, 3, 5, 6],     # (0,1)
                                             [4, 5, 7, 8],     # (1,0)
                                             [5, 6, 8, 9]]))   # (1,1)


def test_im2col_padding_is_zero_and_groups_pick_channels() -> None:
    # pad 1, stride 2: out (3+2-2)/2+1 = 2, windows start at rows/cols -1 and 1
    x = torch.stack([IMAGE[0] * 0 - 1, IMAGE[0]]).unsqueeze(0)     # channel 0 all -1, channel 1 = IMAGE
    mem = run("im2col", {"input": x}, ("input",), ("workspace",),
              **im2col_params(channels=2, pad=1, stride=2, channel_offset=1, group_channels=1))
    assert torch.equal(mem["workspace"], t([[0, 0, 0, 5],
                                             [0, 0, 4, 6],
                                             [0, 2, 0, 8],
                                             [1, 3, 7, 9]]))


def test_gemm_accumulates_into_c_two_lanes() -> None:
    a = t([1, 2, 3], [4, 5, 6])                                   # weights 2×3
    b = torch.stack([t([1, 0], [0, 1], [1, 1]), t([0, 0], [0, 0], [1, 0])])   # workspace per lane 3×2
    mem = {"l.weights": a, "workspace": b, "l.output": torch.ones(2, 2, 2)}
    run("gemm", mem, ("l.weights", "workspace", "l.output"), ("l.output",), M=2, N=2, K=3,
        trans_a=False, trans_b=False, a_offset=0, b_offset=0, c_offset=0)
    # lane 0: A·B = [[1+3, 2+3], [4+6, 5+6]] = [[4,5],[10,11]], + 1
    # lane 1: A·B = [[3, 0], [6, 0]], + 1
    assert torch.equal(mem["l.output"], torch.stack([t([5, 6], [11, 12]), t([4, 1], [7, 1])]))


def test_gemm_connected_trans_b_and_per_lane_weights() -> None:
    x = t([1, 2, 3], [0, 0, 1])                                   # inputs (B=2, K=3)
    w = t([1, 0, 1], [0, 1, 1])                                   # weights (N=2 outputs, K=3)
    mem = {"input": x, "fc.weights": w, "fc.output": torch.zeros(2, 2)}
    p = dict(M=1, N=2, K=3, trans_a=False, trans_b=True, a_offset=0, b_offset=0, c_offset=0)
    run("gemm", mem, ("input", "fc.weights", "fc.output"), ("fc.output",), **p)
    # lane 0: [1+3, 2+3]; lane 1: [1, 1]
    assert torch.equal(mem["fc.output"], t([4, 5], [1, 1]))
    # lane 1 owns a corrupted copy of the weights (first weight 1 -> 100): its output 0 is unchanged
    # (x[0] = 0) but lane 0 keeps the shared values
    w2 = torch.stack([w, t([100, 0, 1], [0, 1, 5])])
    mem = {"input": x, "fc.weights": w2, "fc.output": torch.zeros(2, 2)}
    run("gemm", mem, ("input", "fc.weights", "fc.output"), ("fc.output",), **p)
    assert torch.equal(mem["fc.output"], t([4, 5], [1, 5]))


def test_gemm_offsets_for_groups() -> None:
    # two groups of 1 filter each, K = 2: weights rows g0 = [1, 1], g1 = [2, -1]
    w = t([1, 1], [2, -1])
    bmat = t([[1, 2, 3], [10, 20, 30]])                          # B (K=2 × N=3) for one lane
    mem = {"l.weights": w, "input": torch.cat([torch.zeros(1, 6), bmat.reshape(1, 6)], 1),
           "l.output": torch.zeros(1, 6)}
    run("gemm", mem, ("l.weights", "input", "l.output"), ("l.output",), M=1, N=3, K=2,
        trans_a=False, trans_b=False, a_offset=2, b_offset=6, c_offset=3)
    # group 1: [2,-1]·B = [2-10, 4-20, 6-30] written at C[3:6]
    assert torch.equal(mem["l.output"], t([0, 0, 0, -8, -16, -24]))


def test_gemm_lane_result_does_not_depend_on_other_lanes() -> None:
    g = torch.Generator().manual_seed(1)
    w = torch.randn(32, 75, generator=g)
    ws = torch.randn(3, 75, 64, generator=g)
    p = dict(M=32, N=64, K=75, trans_a=False, trans_b=False, a_offset=0, b_offset=0, c_offset=0)
    many = run("gemm", {"l.weights": w, "workspace": ws, "o": torch.zeros(3, 32 * 64)},
               ("l.weights", "workspace", "o"), ("o",), **p)["o"]
    one = run("gemm", {"l.weights": w, "workspace": ws[2:].clone(), "o": torch.zeros(1, 32 * 64)},
              ("l.weights", "workspace", "o"), ("o",), **p)["o"]
    assert torch.equal(many[2], one[0])


def test_fused_conv_matches_im2col_gemm_up_to_rounding() -> None:
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 4, 6, 5, generator=g)
    w = torch.randn(6, 2 * 9, generator=g)                      # 2 groups: 3 filters × (2 ch × 3×3)
    ip = dict(channels=4, height=6, width=5, ksize=3, stride=2, pad=1, dilation=1, out_h=3, out_w=3,
              channel_offset=2, group_channels=2)
    gp = dict(M=3, N=9, K=18, trans_a=False, trans_b=False, a_offset=3 * 18, b_offset=0, c_offset=0)
    mem = run("im2col", {"input": x}, ("input",), ("workspace",), **ip)
    mem["o"] = torch.zeros(2, 27)
    mem["l.weights"] = w
    run("gemm", mem, ("l.weights", "workspace", "o"), ("o",), **gp)
    fused = fused_conv(x, w, ip, gp)
    assert fused.shape == (2, 3, 9)
    assert torch.allclose(fused.reshape(2, 27), mem["o"], atol=1e-5)


# ----------------------------------------------------------------------------------------- pool
def maxpool(x: torch.Tensor, size: int, stride: int, pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    b, c, h, w = x.shape
    oh, ow = (h + pad - size) // stride + 1, (w + pad - size) // stride + 1
    mem = run("forward_maxpool", {"in": x}, ("in",), ("o", "i"), channels=c, height=h, width=w,
              size=size, stride=stride, pad=pad, out_h=oh, out_w=ow)
    return mem["o"], mem["i"]


def test_maxpool_ties_first_wins_and_indexes_are_flat_input_indexes() -> None:
    x = t([[[1, 3], [3, 2]], [[0, 0], [0, 0]]])                # (1, C=2, 2, 2)
    out, idx = maxpool(x, 2, 2, 0)
    # channel 0: 3 at (0,1) (index 1) beats the later 3 at (1,0); channel 1: first 0 at index 4
    assert torch.equal(out, t([[[3.0]], [[0.0]]]))
    assert idx.dtype == torch.int32 and idx.tolist() == [[[[1]], [[4]]]]


def test_maxpool_nan_never_wins() -> None:
    x = torch.stack([t([[NAN, 1], [0, -1]]), t([[NAN, NAN], [NAN, NAN]])])   # (B=2, C=1, 2, 2)
    out, idx = maxpool(x, 2, 2, 0)
    # lane 0: NaN > -inf is false, 1 wins (index 1); lane 1: nothing beats -inf -> -inf, index -1
    assert out.reshape(2).tolist() == [1.0, -INF] and idx.reshape(2).tolist() == [1, -1]


def test_maxpool_pad_uses_c_division_and_minus_inf_padding() -> None:
    # size 2, stride 1, pad 1: offset -1/2 = 0 in C (not -1), out (2+1-2)/1+1 = 2;
    # windows hang over the bottom/right edge, where taps are -inf (so all-negative inputs stay negative)
    x = t([[-5, -4], [-3, -2]]).reshape(1, 1, 2, 2)
    out, idx = maxpool(x, 2, 1, 1)
    # (0,0): max(-5,-4,-3,-2) = -2 @3; (0,1): max(-4,-2) = -2 @3; (1,0): max(-3,-2) = -2 @3; (1,1): -2 @3
    assert out.reshape(4).tolist() == [-2, -2, -2, -2] and idx.reshape(4).tolist() == [3, 3, 3, 3]
    x = t([[1, 4], [3, 2]]).reshape(1, 1, 2, 2)
    out, idx = maxpool(x, 2, 1, 1)
    # (0,0): 4 @1; (0,1): max(4, 2) = 4 @1; (1,0): max(3, 2) = 3 @2; (1,1): 2 @3
    assert out.reshape(4).tolist() == [4, 4, 3, 2] and idx.reshape(4).tolist() == [1, 1, 2, 3]


def test_maxpool_rejects_inconsistent_out_shape() -> None:
    with pytest.raises(KernelfiError, match="out_h"):
        run("forward_maxpool", {"in": torch.zeros(1, 1, 4, 4)}, ("in",), ("o", "i"), channels=1,
            height=4, width=4, size=2, stride=2, pad=0, out_h=3, out_w=2)


def test_avgpool_sums_left_to_right_in_float32() -> None:
    x = t([[1, 2], [3, 4]], [[1e8, 1], [-1e8, 1]]).unsqueeze(0)  # (1, C=2, 2, 2)
    mem = run("forward_avgpool", {"in": x}, ("in",), ("o",), channels=2, height=2, width=2)
    # channel 0: 10/4 = 2.5; channel 1: 1e8+1 rounds to 1e8 in float32, -1e8 -> 0, +1 -> 1, /4 = 0.25
    assert mem["o"].reshape(2).tolist() == [2.5, 0.25]


# -------------------------------------------------------------------------------------- softmax
def softmax(x: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    return run("softmax", {"in": x}, ("in",), ("o",), n=x.shape[1], temperature=temperature)["o"]


def test_softmax_values() -> None:
    out = softmax(t([1, 1, 1, 1], [0, 0, 5, 5]))
    # lane 0: all equal -> 1/4 each (exact); lane 1: largest 5, e = (e^-5, e^-5, 1, 1), sum = 2 + 2e^-5
    assert out[0].tolist() == [0.25] * 4
    s = 2 + 2 * math.exp(-5)
    assert out[1].tolist() == pytest.approx([math.exp(-5) / s] * 2 + [1 / s] * 2, rel=1e-6)
    out = softmax(t([2.0, 0.0]), temperature=2.0)
    # exp(2/2 - 2/2) = 1, exp(0 - 1) = e^-1
    assert out[0].tolist() == pytest.approx([1 / (1 + math.exp(-1)), math.exp(-1) / (1 + math.exp(-1))])


def test_softmax_largest_goes_through_int() -> None:
    # trunc: 0.5 -> 0, 0.7 -> 0; -0.5 -> -0, -1.7 -> -1; 1e30 saturates at INT_MAX -> 2^31; NaN -> 0
    assert darknet_largest(t([0.5, 0.7], [-0.5, -1.7], [1e30, 0], [NAN, -3])).tolist() == [0, 0, 2.0 ** 31, 0]
    out = softmax(t([1e30, 0.0]))
    # e0 = exp(1e30 - 2^31) = inf, e1 = exp(-2^31) = 0, sum = inf: inf/inf = NaN, 0/inf = 0
    assert math.isnan(out[0, 0]) and out[0, 1].item() == 0.0
    out = softmax(t([NAN, 1.0]))
    assert math.isnan(out[0, 0]) and math.isnan(out[0, 1])


# ------------------------------------------------------------------------ no in-place mutation
@pytest.mark.parametrize("name", ["add_bias", "activate_array", "shortcut", "gemm", "normalize"])
def test_kernels_never_mutate_their_inputs(name: str) -> None:
    mem = {"l.output": t([1, -2], [3, 4]), "l.biases": t(1, 2), "l.rolling_mean": t(0, 0),
           "l.rolling_variance": t(1, 1), "x": t([5, 6], [7, 8]), "l.weights": t([1, 2], [3, 4])}
    before = {k: v.clone() for k, v in mem.items()}
    orig = dict(mem)
    cases: dict[str, tuple[tuple[str, ...], dict[str, Any]]] = {
        "add_bias": (("l.output", "l.biases"), dict(channels=2, spatial=1)),
        "activate_array": (("l.output",), dict(n=2, activation="relu")),
        "shortcut": (("l.output", "x"), SAME2),
        "gemm": (("l.weights", "x", "l.output"), dict(M=1, N=2, K=1, trans_a=False, trans_b=False,
                                                     a_offset=0, b_offset=0, c_offset=0)),
        "normalize": (("l.output", "l.rolling_mean", "l.rolling_variance"), dict(channels=2, spatial=1)),
    }
    reads, params = cases[name]
    run(name, mem, reads, ("l.output",), **params)
    for k, v in orig.items():
        assert torch.equal(v, before[k]), k
    assert not any(mem["l.output"].data_ptr() == v.data_ptr() for k, v in mem.items() if k != "l.output")


# ----------------------------------------------------------------------------- instruction counts
def test_add_bias_counts_channels2_spatial3() -> None:
    tpl = get_kernel("add_bias").template({"channels": 2, "spatial": 3})
    assert (tpl.threads, tpl.block) == (6, 512)       # 2 channels × 3 positions
    # per thread: s2r 4 + imad:index 1 + imad:offset 4 + 2 addresses × 2 = 13 GPR;
    # ld:out + ld:bias = 2 LD; fadd 1; setp 1; bra:exit + st + exit = 3 NODEST
    assert counts("add_bias", channels=2, spatial=3) == {
        "FP32": 6, "LD": 12, "GPR": 78, "PR": 6, "NODEST": 18, "OTHERS": 0}
    assert get_kernel("add_bias").grid({"channels": 2, "spatial": 3}) == (1, 2, 1)


def test_scale_bias_and_fill_and_copy_counts() -> None:
    assert counts("scale_bias", channels=1, spatial=4) == {
        "FP32": 4, "LD": 8, "GPR": 52, "PR": 4, "NODEST": 12, "OTHERS": 0}
    # fill: 6 prologue + 3 offset + 2 address + 1 mov = 12 GPR; setp 1; bra:exit, st, exit
    assert counts("fill", n=5, value=0.0) == {"FP32": 0, "LD": 0, "GPR": 60, "PR": 5, "NODEST": 15, "OTHERS": 0}
    # copy: 6 + 3 + 3 + 2 + 2 = 16 GPR; 1 LD
    assert counts("copy", n=2, out_offset=0) == {"FP32": 0, "LD": 2, "GPR": 32, "PR": 2, "NODEST": 6, "OTHERS": 0}


def test_normalize_counts() -> None:
    # GPR: prologue 6 + idiv 14 + idiv 14 + imod 4 + 3 addresses × 2 = 44
    # OTHERS: 2 divisions × (I2F, F2I, RCP) + MUFU.RSQ + MUFU.RCP = 8
    # PR: bounds 1 + 2 × 2 division fixups + FCHK 1 = 6;  LD: x, mean, var = 3
    # FP32: var+eps 1 + sqrt 3 + x-mean 1 + division 4 = 9;  NODEST: bra:exit, bra:fdiv, st, exit = 4
    assert counts("normalize", channels=2, spatial=1, eps=1e-5) == {
        "FP32": 18, "LD": 6, "GPR": 88, "PR": 12, "NODEST": 8, "OTHERS": 16}


def test_activate_counts_per_activation() -> None:
    # common: GPR 6 + 2 = 8, LD 1, PR bounds + switch = 2, NODEST bra:exit + 2 switch + st + exit = 5
    assert counts("activate_array", n=1, activation="linear") == {
        "FP32": 0, "LD": 1, "GPR": 8, "PR": 2, "NODEST": 5, "OTHERS": 0}
    assert counts("activate_array", n=3, activation="relu")["FP32"] == 3 * 2     # FSET + FMUL
    assert counts("activate_array", n=3, activation="leaky")["FP32"] == 3 * 2    # FMUL + FCMP
    # logistic: exp 4 FP32 + 2 OTHERS, 1+e 1 FP32, 1/x: FCHK (PR), RCP (OTHERS), 4 FFMA, BRA
    assert counts("activate_array", n=1, activation="logistic") == {
        "FP32": 9, "LD": 1, "GPR": 8, "PR": 3, "NODEST": 6, "OTHERS": 3}


def test_shortcut_counts() -> None:
    # GPR: 6 + 4 divisions × (14 + 4) + 15 + 15 + 2 × 2 addresses = 112; OTHERS 4 × 3; PR 1 + 4 × 2
    assert counts("shortcut", **SAME2) == {"FP32": 4, "LD": 4, "GPR": 224, "PR": 18, "NODEST": 6, "OTHERS": 24}


def test_im2col_counts_ksize2() -> None:
    tpl = get_kernel("im2col").template(im2col_params())
    assert tpl.threads == 4                  # 1 channel × 2 × 2 output positions
    # k = 2, k² = 4. GPR: s2r 2 + imad 1 + 2 × (idiv 14 + imod 4) + hw_in 4 + col 7 + im 7 + 2 × 2 addr
    #   + per tap (hw 2 + elem addr 2 + sel 1 + col ptr 2 + loop 1) × 4 + loop:kh 2 + grid stride 2 = 97
    # PR: bounds 2 + 2 × 2 + per tap (4 pad + 1 loop) × 4 + 2 = 28; LD 4; NODEST: exit, 4 st,
    #   4 loop branches, 2 outer, grid branch, exit = 13; OTHERS 2 × 3 = 6
    assert counts("im2col", **im2col_params()) == {
        "FP32": 0, "LD": 16, "GPR": 4 * 97, "PR": 4 * 28, "NODEST": 4 * 13, "OTHERS": 4 * 6}


def test_gemm_counts_and_ffma_total() -> None:
    p = dict(M=2, N=3, K=20, trans_a=False, trans_b=False, a_offset=0, b_offset=0, c_offset=0)
    tpl = get_kernel("gemm").template(p)
    # min(M, N) <= 64: the 64x64 tile, one block of 64 threads; K blocks ceil(20/8) = 3, 24 steps,
    # 256/64 = 4 LDG.128 per thread per block. Per thread:
    # FP32 = 64 x 24 FFMA + 64 FMUL + 64 FFMA = 1664 (zero-padded steps included, as the GPU runs them);
    # LD = 16 zeroing LDS + 4 LDS.128 x 24 + 4 x 3 LDG + 64 C loads = 188;
    # GPR = s2r 3 + sel 2 + ptr 2 + track 5+4 + end 5 + smem 12 + per block (8 lea + 3 lop + 4 iadd) x 3
    #   + c_index 10 + 16 C addresses = 104; PR = half 1 + loop 3 + store 64 = 68;
    # NODEST = zero STS 1 + per block (4 STS + BAR + BRA) x 3 + 64 STG + exit = 84
    assert (tpl.threads, tpl.block) == (64, 64)
    assert counts("gemm", **p) == {"FP32": 64 * 1664, "LD": 64 * 188, "GPR": 64 * 104, "PR": 64 * 68,
                                   "NODEST": 64 * 84, "OTHERS": 0}
    slots = {s.tag: s for s in tpl.slots}
    assert slots["ffma:acc"].count == 64 * 24 and slots["ldg:tile"].count == 12 and slots["lds:b_hi"].count == 24
    big = get_kernel("gemm").template(dict(p, M=130, N=200, K=9))  # the 128 tile: 2x2 blocks of 256
    assert (big.threads, big.block) == (4 * 256, 256)


def test_pool_and_softmax_counts() -> None:
    mp = dict(channels=1, height=2, width=2, size=2, stride=2, pad=0, out_h=1, out_w=1)
    # s = 2: GPR 6 + 2 × 14 + 4 + 3 × 18 + 2 + 9 + 6 + 2 + per tap (2 + 4 + 2 + 1 + 1 + 1 + 1) × 4 + 2 + 4 = 165
    # PR 1 + 5 × 2 + per tap (4 + 1 + 1) × 4 + 2 = 37; LD 4; NODEST 1 + 4 + 2 + 2 + 1 = 10; OTHERS 5 × 3
    assert counts("forward_maxpool", **mp) == {"FP32": 0, "LD": 4, "GPR": 165, "PR": 37, "NODEST": 10, "OTHERS": 15}
    # avgpool plane S = 4, 3 channels: GPR 6 + 18 + 3 + 2 + 3 + 2 + (2 + 1) × 4 = 46; FP32 4 + 4;
    # PR 1 + 2 + 4 + 1 = 8; NODEST 1 + 1 + 4 + 4 + 1 + 1 + 1 = 13; OTHERS 3 + 1 + 1 = 5
    assert counts("forward_avgpool", channels=3, height=2, width=2) == {
        "FP32": 24, "LD": 12, "GPR": 138, "PR": 24, "NODEST": 39, "OTHERS": 15}
    # softmax, n = 2, one thread: GPR 15 + 12n = 39, FP32 4 + 14n = 32, LD 3n = 6,
    # PR 2 + 6n = 14, NODEST 3 + 7n = 17, OTHERS 1 + 6n = 13
    assert counts("softmax", n=2, temperature=1.0) == {"FP32": 32, "LD": 6, "GPR": 39, "PR": 14, "NODEST": 17, "OTHERS": 13}


def test_cuda_gridsize_folds_large_grids() -> None:
    assert cuda_gridsize(1) == (1, 1, 1) and cuda_gridsize(513) == (2, 1, 1)
    # 70000 blocks > 65535: x = ceil(sqrt(70000)) = 265, y = ceil(70000/265) = 265
    assert cuda_gridsize(70000 * 512) == (265, 265, 1)


# ------------------------------------------------------------------- tags, registers, and docs
def test_tags_are_declared_unique_and_documented() -> None:
    docs = DOCS.read_text() + (DOCS.parent / "hardening.md").read_text()  # hardening kernels live there
    for name, k in all_kernels().items():
        vocab = k.vocabulary()
        assert vocab, name
        for tag, info in vocab.items():
            assert info.group in GROUPS and info.effect in EFFECTS, (name, tag)
            assert f"`{tag}`" in docs, f"{name}: tag {tag} missing from docs/kernels.md"
        for p in k.example_params:  # type: ignore[attr-defined]
            tpl = k.template(p)
            tags = [s.tag for s in tpl.slots]
            assert len(tags) == len(set(tags)), name
            for s in tpl.slots:
                assert vocab[s.tag].group == s.group, (name, s.tag)
        assert f"`{name}`" in docs


def test_the_doc_tables_render_for_every_kernel(capsys: pytest.CaptureFixture[str]) -> None:
    """``python -m kernelfi.kernels._doc`` (how the docs' tag tables are made) covers every
    registered kernel: it failed with a KeyError on the hardening kernels, which have no sweep."""
    from kernelfi.kernels import _doc
    _doc.main()
    out = capsys.readouterr().out
    assert {line[4:] for line in out.splitlines() if line.startswith("### ")} == set(all_kernels())
    add_bias = out[out.index("### add_bias"):].split("\n\n")[1]
    assert "| `fadd:out` | FP32 | FADD | 1 |" in add_bias  # one bias add per thread


def test_register_maps_are_consistent() -> None:
    for name, k in all_kernels().items():
        for p in k.example_params:  # type: ignore[attr-defined]
            rm = k.registers(p)
            tpl_tags = {s.tag for s in k.template(p).slots}
            preds = {r.name for r in rm.registers if r.role == "predicate"}
            general = {r.name for r in rm.registers if r.role != "predicate"}
            gprs = rm.allocated - len(preds)  # gemm's 64 tile, dilated im2col, a divisor_override
            assert len(general) <= gprs and (gprs == k.regs_allocated or name == "gemm"  # avgpool: own renderings
                                             or (name == "im2col" and dilated_im2col(p))
                                             or (name == "forward_local_avgpool" and "divisor" in p))
            for r in rm.registers:
                assert r.role in REGISTER_ROLES and r.tag in tpl_tags, (name, r)
                assert 0.0 <= r.live[0] < r.live[1] <= 1.0, (name, r)
            assert any(r.role == "address" for r in rm.registers), name


def test_address_halves_are_data_on_the_register_map() -> None:
    """A 64-bit pointer is a pair: every register holding a high word has a low-word partner
    fed by the same tag, or the low word lives in the register its load writes (``LDG R, [R]``,
    as ptxas allocates tmr_vote's replicas: a data register live from the same instruction as
    the high word, its load's tag), and every slot that computes 64-bit addresses (``halves``) has an even
    number of instructions (low words, then high words). A register
    of another role holds no half; an address register holds the low word unless it says so."""
    from kernelfi.types import AddressHalf, Register

    for name, k in all_kernels().items():
        for p in k.example_params:  # type: ignore[attr-defined]
            regs = k.registers(p).registers
            for r in regs:
                assert (r.half is not None) == (r.role == "address"), (name, r)
                if r.half == AddressHalf.HIGH:
                    load = [s for s in regs if s.role == "data" and s.live[0] == r.live[0]]
                    assert any(o.half == AddressHalf.LOW and o.tag == r.tag for o in regs) or load, (name, r)
                # a map entry named as a high word that does not say so would be read as a low one
                assert r.name.endswith("_hi") == (r.half == AddressHalf.HIGH), (name, r)
            for slot in k.template(p).slots:
                assert not slot.halves or slot.count % 2 == 0, (name, slot)
    assert Register("r_x", "address", "lea:addr_x").half == AddressHalf.LOW
    with pytest.raises(ValueError):
        Register("r_x", "data", "ld:x", half=AddressHalf.HIGH)


def test_gemm_has_64_accumulators_live_over_the_k_loop() -> None:
    rm = get_kernel("gemm").registers(dict(M=256, N=256, K=64))
    acc = [r for r in rm.registers if r.role == "accumulator"]
    assert len(acc) == 64 and {r.tag for r in acc} == {"ffma:acc"}
    assert all(r.live[1] - r.live[0] > 0.8 for r in acc)
    # sgemm_128: 64 accumulators + 32 operands + 8 load registers + 14 state = 118 = ptxas' count
    assert len({r.name for r in rm.registers if r.role != "predicate"}) == 118 == rm.allocated - 3


def test_row_policy_pads_and_each_row_is_independent_of_its_batch() -> None:
    """A lane's linear-layer row must not depend on how many lanes share the call (machines
    differ in how SGEMM rounding depends on the row count: ``_row_policy`` finds the padding
    that holds here, or none)."""
    from kernelfi.kernels.conv import ROW_POLICIES, _padded, _row_policy, rows_linear

    assert [_padded(b, (4, 4)) for b in (1, 4, 5, 9)] == [4, 4, 8, 12]
    assert [_padded(b, (16, 4)) for b in (1, 15, 16, 17, 79, 80, 129)] == [16, 16, 16, 20, 128, 128, 192]
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(96, 700, generator=gen)
    x = torch.randn(300, 700, generator=gen)  # more lanes than a call holds (ROWS_CAP)
    full = rows_linear(x, w)
    for m in (1, 2, 3, 7, 16, 33, 65, 200, 257, 299):
        assert torch.equal(rows_linear(x[:m], w), full[:m])
        assert torch.equal(rows_linear(x[m - 1:m], w), full[m - 1:m])
    pol = _row_policy(w)
    assert pol is None or (pol[:2] in ROW_POLICIES and pol[2] in (64, 128, 256))


def test_conv1x1_by_hand_and_windows_equal_the_whole_map() -> None:
    """A 1x1 convolution is W (M x K) times each lane's (K x N) pixels; a window of the pixels,
    padded to the column policy, gives the whole map's columns bit for bit, whatever the K
    (K = 1024 needs about 129 columns on an AVX-512 Xeon: ``_col_policy`` finds that)."""
    from kernelfi.kernels import conv1x1
    from kernelfi.kernels.conv import COL_POLICIES, _col_policy

    w = torch.tensor([[1.0, 2.0], [0.5, -1.0], [0.0, 3.0]])
    x = torch.tensor([[[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], [[0.0, 1.0, 0.0], [1.0, 0.0, -2.0]]])
    want = torch.tensor([[[9.0, 12.0, 15.0], [-3.5, -4.0, -4.5], [12.0, 15.0, 18.0]],
                         [[2.0, 1.0, -4.0], [-1.0, 0.5, 2.0], [3.0, 0.0, -6.0]]])
    assert torch.equal(conv1x1(x, w), want)
    assert torch.equal(conv1x1(x[:, :, 1:2], w, n_map=3), want[:, :, 1:2])
    gen = torch.Generator().manual_seed(4)
    for k, m, n in ((64, 32, 3136), (1024, 64, 196), (300, 40, 49)):
        w = torch.randn(m, k, generator=gen)
        x = torch.randn(2, k, n, generator=gen)
        full = conv1x1(x, w)
        assert torch.equal(conv1x1(x[1:], w), full[1:])  # a lane alone: the same
        for a, b in ((0, 1), (5, 9), (n - 40, n), (n // 3, n // 3 + 130), (0, n - 1)):
            assert torch.equal(conv1x1(x[:, :, a:b].contiguous(), w, n_map=n), full[:, :, a:b])
        assert _col_policy(w, n) in (*COL_POLICIES, n)
    # a small map: lanes side by side, several calls for 25 lanes of 49 pixels; each lane as alone
    w, x = torch.randn(48, 700, generator=gen), torch.randn(25, 700, 49, generator=gen)
    full = conv1x1(x, w)
    for i in (0, 10, 24):
        assert torch.equal(conv1x1(x[i:i + 1], w), full[i:i + 1])
        assert torch.equal(conv1x1(x[i:i + 1, :, 3:17].contiguous(), w, n_map=49), full[i:i + 1, :, 3:17])
    assert torch.allclose(full[3], w @ x[3], rtol=1e-5, atol=1e-3)


def test_conv1x1_columns_of_several_lanes_equal_their_whole_maps() -> None:
    """Windows of several lanes side by side (``conv1x1_cols``) give each pixel the value of its
    lane's whole-map ``conv1x1``: by hand, then on random data with more columns than the map
    holds and than ``CONCAT_COLS`` (several calls, wider than the 14x14 map where the wide
    policy holds), a big map and a small one (whole maps side by side)."""
    from kernelfi.kernels import conv1x1, conv1x1_cols
    from kernelfi.kernels.conv import CONCAT_COLS, _col_policy

    w = torch.tensor([[1.0, -1.0], [2.0, 0.5]])
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, -2.0]])  # three pixels (of two lanes' windows)
    assert torch.equal(conv1x1_cols(x, w, 196), torch.tensor([[-3.0, 2.0, 5.0], [4.0, 4.0, 5.0]]))
    gen = torch.Generator().manual_seed(6)
    for k, m, h in ((600, 40, 14), (96, 24, 6)):
        n = h * h
        w = torch.randn(m, k, generator=gen)
        lanes = torch.randn(5, k, n, generator=gen)
        full = conv1x1(lanes, w).view(5, m, h, h)
        boxes = [(0, h, 0, h), (2, 5, 1, 6), (0, h, 0, h), (h - 1, h, 0, h), (0, h, 0, h)]
        cols = torch.cat([lanes[j].view(k, h, h)[:, b[0]:b[1], b[2]:b[3]].reshape(k, -1)
                          for j, b in enumerate(boxes)], dim=1)
        got = conv1x1_cols(cols, w, n)
        want = torch.cat([full[j][:, b[0]:b[1], b[2]:b[3]].reshape(m, -1) for j, b in enumerate(boxes)], dim=1)
        assert got.shape[1] > (CONCAT_COLS if n > 128 else n) and torch.equal(got, want)
    assert _col_policy(torch.randn(40, 600, generator=gen), CONCAT_COLS, also=196) in (2, 4, 8, 16, 32, 64, 128,
                                                                                       CONCAT_COLS)


def test_fused_strided_1x1_is_im2col_then_gemm() -> None:
    """ResNet's strided 1x1 shortcut: im2col keeps every second pixel, the GEMM mixes channels;
    the fused path computes exactly that (worked out by hand on a 2x4x4 input)."""
    from kernelfi.kernels import fused_conv

    x = torch.arange(32, dtype=torch.float32).reshape(1, 2, 4, 4)
    w = torch.tensor([[1.0, 0.0], [1.0, -2.0], [0.25, 0.5]])
    im2col = {"channels": 2, "height": 4, "width": 4, "ksize": 1, "stride": 2, "pad": 0, "dilation": 1,
              "out_h": 2, "out_w": 2, "channel_offset": 0, "group_channels": 2}
    gemm = {"M": 3, "N": 4, "K": 2, "trans_a": False, "trans_b": False}
    got = fused_conv(x, w, im2col, gemm)
    picked = torch.tensor([[0.0, 2.0, 8.0, 10.0], [16.0, 18.0, 24.0, 26.0]])  # pixels (0,0) (0,2) (2,0) (2,2)
    want = torch.stack([picked[0], picked[0] - 2 * picked[1], 0.25 * picked[0] + 0.5 * picked[1]])
    assert torch.equal(got, want.unsqueeze(0))


def test_put_never_stores_an_alias_of_another_buffer() -> None:
    """A kernel result that is a view of a buffer (or weight) already in the memory is stored
    as a copy, so corrupting one in place cannot reach the other; a fresh result is stored as
    it is (no copy), and a result whose storage a third tensor shares outside the memory is
    still checked and kept."""
    from kernelfi.kernels._base import put

    a, w = torch.randn(2, 6), torch.randn(3)
    mem = {"a": a, "conv.weight": w}
    put(mem, "b", a.reshape(2, 6))
    put(mem, "c", a[:, :3])
    put(mem, "d", w.view(1, 3))
    for name, src in (("b", a), ("c", a), ("d", w)):
        assert mem[name].untyped_storage().data_ptr() != src.untyped_storage().data_ptr()
    mem["b"][0, 0] += 1.0
    assert not torch.equal(mem["b"], a)
    fresh = torch.randn(2, 6)
    put(mem, "e", fresh)
    assert mem["e"].data_ptr() == fresh.data_ptr()
    view = (a + 1.0).reshape(12).reshape(2, 6)  # a view of a temporary: fresh too
    put(mem, "g", view)
    assert mem["g"].data_ptr() == view.data_ptr()
    other = torch.randn(2, 6)
    keep = other[:, 1:]  # shares the storage, but is in no buffer of the memory
    put(mem, "f", other)
    assert mem["f"].untyped_storage().data_ptr() == keep.untyped_storage().data_ptr()
