"""Issue 20 activations (relu6, tanh, swish, gelu in the erf and the tanh form, hardswish,
hardsigmoid, leaky of any slope, mish, elu/selu/celu, softplus; prelu, its own kernel): lowered models equal their native forward, and faults in
activate_array's new cases corrupt what was worked out on paper."""
from __future__ import annotations

import math
import struct
from fractions import Fraction
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from kernelfi._utils import KernelfiError
from kernelfi.kernels import activate, fma_f32
from kernelfi.lowering import lower
from kernelfi.types import Fault
from tests.tiny import probs_of, run_one, site

from layer_campaign import ensure_registered, short_campaign

ACTS = [nn.ReLU6(), nn.Tanh(), nn.SiLU(), nn.GELU(), nn.Hardswish(), nn.Hardsigmoid(), nn.LeakyReLU(0.2),
        nn.Hardtanh(0.0, 6.0), nn.GELU(approximate="tanh"), nn.Mish(),
        nn.ELU(0.7), nn.SELU(), nn.CELU(0.7), nn.Softplus(), nn.Softplus(2.0, 3.0)]


def f32(bits: int) -> float:
    return struct.unpack("<f", struct.pack("<I", bits))[0]


@pytest.mark.parametrize("act", ACTS, ids=lambda a: repr(a))
def test_lowered_equals_native(act: nn.Module) -> None:
    torch.manual_seed(0)
    # fused after a conv, standalone after an Identity-passed activation, after a linear
    second = nn.ReLU6() if isinstance(act, (nn.LeakyReLU, nn.Hardtanh)) else (
        nn.GELU(approximate="tanh") if isinstance(act, nn.GELU) and act.approximate == "tanh" else type(act)())
    m = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), act, nn.Identity(), second, nn.Flatten(), nn.Linear(75, 4),
                      act).eval()
    x = torch.randn(3, 2, 5, 5) * 4
    prog = lower(m, (2, 5, 5))
    with torch.no_grad():
        ref = m(x)
    for fast in (True, False):
        lg, _ = prog.forward(x, fast=fast)
        assert (lg - ref).abs().max().item() <= 1e-5 * max(ref.abs().max().item(), 1.0)


def test_functional_forms_and_slope() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = F.leaky_relu(self.fc(x), 0.3)
            return F.hardswish(F.silu(torch.tanh(F.gelu(F.relu6(y)))))

    torch.manual_seed(1)
    m = Net().eval()
    prog = lower(m, (4,))
    acts = [l.params.get("activation") for l in prog.trace.launches if l.kernel == "activate_array"]
    assert acts == ["leaky", "relu6", "gelu", "tanh", "swish", "hardswish"]
    assert prog.trace.launches[3].params["slope"] == pytest.approx(0.3)
    x = torch.randn(5, 4) * 3
    with torch.no_grad():
        assert torch.allclose(prog.forward(x)[0], m(x), atol=1e-6)


def test_gelu_forms_lower_to_their_case_and_an_unknown_one_is_refused() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc, self.g = nn.Linear(3, 3), nn.GELU(approximate="tanh")

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = F.gelu(self.g(self.fc(x)), approximate="tanh")     # fused into the linear, then standalone
            return F.gelu(F.gelu(y, approximate="none"))

    torch.manual_seed(2)
    m = Net().eval()
    prog = lower(m, (3,))
    acts = [l.params.get("activation") for l in prog.trace.launches if l.kernel == "activate_array"]
    assert acts == ["gelu_tanh", "gelu_tanh", "gelu", "gelu"]
    x = torch.randn(7, 3) * 3
    with torch.no_grad():
        assert torch.allclose(prog.forward(x)[0], m(x), rtol=1e-6, atol=1e-7)
    with pytest.raises(KernelfiError, match="approximate='sigmoid'"):
        lower(nn.Sequential(nn.Linear(2, 2), nn.GELU(approximate="sigmoid")).eval(), (2,))


# ------------------------------------------------------------------------------ tanh GELU values
KBETA, KKAPPA = math.sqrt(2.0 / math.pi), 0.044715


def _gelu_tanh64(x: float) -> float:
    """The tanh GELU in float64 with math.tanh: the reference float32 results are rounded from."""
    return 0.5 * x * (1.0 + math.tanh(KBETA * (x + KKAPPA * x ** 3)))


def test_gelu_tanh_values_by_hand() -> None:
    # float64 with math.tanh, rounded: x = 2: u = sqrt(2/pi)*(2 + 0.044715*8) = 1.8811884,
    # tanh(u) = 0.9545977, y = 1.9545977; x = -1: u = -0.8335620, y = -0.5*(1 - 0.6823840) = -0.1588080
    xs = [2.0, -1.0, 0.5, 0.1, -0.3, 1.5, -2.5, 4.0, 7.0, -5.0, 1e-3, -1e-3]
    got = activate(torch.tensor(xs), "gelu_tanh")
    assert got[0].item() == pytest.approx(1.9545977, rel=1e-7) and got[1].item() == pytest.approx(-0.1588080, rel=1e-6)
    for x, y in zip(xs, got.tolist()):
        want = _gelu_tanh64(np.float32(x).item())
        # float32 steps: a few ulp of the output, or of 1 + tanh where 1 + tanh cancels (x < 0)
        assert abs(y - want) <= max(4e-7 * abs(want), 0.5 * abs(x) * 2.0 ** -22), (x, y, want)


def test_gelu_tanh_specials_match_pytorch_bitwise() -> None:
    # small, subnormal, huge, signed zeros, infinities, NaN: the same bits as PyTorch's CPU
    # kernel (x^3 overflows to inf for |x| > 7e12: tanh = +-1; -inf * (1 - 1) is NaN)
    x = torch.tensor([0.0, -0.0, 1e-30, -1e-30, 1e-40, -1e-40, 1e-4, -1e-4, 11.0, -11.0, 1e20, -1e20,
                      3.4e38, -3.4e38, math.inf, -math.inf, math.nan])
    got, want = activate(x, "gelu_tanh"), F.gelu(x, approximate="tanh")
    assert torch.equal(got.isnan(), want.isnan()) and got[-2:].isnan().all()
    assert torch.equal(got[:-2].view(torch.int32), want[:-2].view(torch.int32))
    # worked out: -0 stays -0; x = -11: u = -60.3, tanh = -1 exactly in float32: -5.5 * 0 = -0; +inf stays
    for i in (1, 9, 11):
        assert got[i].item() == 0.0 and math.copysign(1.0, got[i].item()) == -1.0
    assert got[14].item() == math.inf and got[8].item() == 11.0
    # elsewhere within a last-bit difference of tanh (torch's and the CPU kernel's vectorised one)
    r = torch.randn(20000, generator=torch.Generator().manual_seed(3)) * 3
    got, want = activate(r, "gelu_tanh"), F.gelu(r, approximate="tanh")
    assert ((got - want).abs() <= 0.5 * r.abs() * 2.0 ** -23 + want.abs() * 2.0 ** -22).all()
    assert (got.view(torch.int32) == want.view(torch.int32)).float().mean().item() > 0.98


def test_gelu_tanh_inner_step_is_one_ffma() -> None:
    # x + kKappa*x^3 is one FFMA on the GPU (nvcc contracts it): rounded once, not twice.
    # Found by search: at x = 1.0000334 the two roundings give a different float than the one.
    kk = np.float32(KKAPPA)
    for x in np.linspace(1.0, 1.001, 2001, dtype=np.float32):
        cube = np.float32(np.float32(x * x) * x)
        exact = Fraction(float(cube)) * Fraction(float(kk)) + Fraction(float(x))
        two = np.float32(np.float32(cube * kk) + x)
        if abs(Fraction(float(two)) - exact) > abs(Fraction(float(np.nextafter(two, np.float32(0)))) - exact) or \
                abs(Fraction(float(two)) - exact) > abs(Fraction(float(np.nextafter(two, np.float32(9)))) - exact):
            break
    else:
        pytest.fail("no x where two roundings differ from one")
    once = fma_f32(torch.tensor(cube), torch.tensor(kk), torch.tensor(x)).item()
    assert once != float(two)
    assert abs(Fraction(once) - exact) <= abs(Fraction(float(two)) - exact)
    want = (np.float32(x) * np.float32(0.5)) * (np.float32(1.0) + np.float32(
        torch.tanh(torch.tensor(np.float32(once) * np.float32(KBETA))).item()))
    assert activate(torch.tensor([x]), "gelu_tanh").item() == float(want)


def test_fma_f32_rounds_once() -> None:
    # a*b = 2^-24 (1 - 2^-46), c = 1 + 2^-23: the exact sum lies just below the float32 tie
    # 1 + 2^-23 + 2^-24, so one rounding gives 1 + 2^-23; the float64 sum rounds onto the tie and
    # the second rounding (to even) would give 1 + 2^-22
    a, b, c = torch.tensor([2.0 ** -24 * (1 + 2.0 ** -23)]), torch.tensor([1 - 2.0 ** -23]), torch.tensor([1 + 2.0 ** -23])
    assert (a.double() * b.double() + c.double()).float().item() == 1 + 2.0 ** -22
    assert fma_f32(a, b, c).item() == 1 + 2.0 ** -23
    g = torch.Generator().manual_seed(4)
    a = torch.randn(300, generator=g) * 2.0 ** 20
    b, c = torch.randn(300, generator=g), torch.randn(300, generator=g) * 2.0 ** -10
    got = fma_f32(a, b, c)
    for i in range(300):
        exact = Fraction(a[i].item()) * Fraction(b[i].item()) + Fraction(c[i].item())
        y = np.float32(got[i].item())
        for nb in (np.nextafter(y, np.float32(-np.inf)), np.nextafter(y, np.float32(np.inf))):
            assert abs(Fraction(float(y)) - exact) <= abs(Fraction(float(nb)) - exact)


# ------------------------------------------------------------------------------ hand faults
def _linear(act: nn.Module, w: list[float], b: list[float]) -> nn.Module:
    m = nn.Sequential(nn.Linear(1, 2), act).eval()
    with torch.no_grad():
        m[0].weight.copy_(torch.tensor(w).reshape(2, 1))
        m[0].bias.copy_(torch.tensor(b))
    return m


def test_relu6_clamp_output_exponent_flip() -> None:
    # x = 1: pre-activation [1 + 7, 1] = [8, 1]; relu6 -> [6, 1]. Thread 0's clamp gives 6.0 =
    # 0x40C00000; bit 30 flipped: 0x00C00000 (1.76e-38): logits [1.76e-38, 1] -> class 1.
    prog = lower(_linear(nn.ReLU6(), [1, 1], [7, 0]), (1,))
    x = torch.tensor([[1.0]])
    assert prog.forward(x)[0][0].tolist() == [6.0, 1.0]
    r, probs = run_one(prog, Fault("iov", site(prog, "0.activate_array", "fcmp:relu6_out", 0), "single", (30,)), x)
    assert (r.original, r.corrupted) == (6.0, f32(0x00C00000))
    assert r.outcome == "sdc_malfunction" and (r.golden_top1, r.faulty_top1) == (0, 1)
    assert torch.allclose(probs, probs_of([f32(0x00C00000), 1.0]), atol=1e-7)


def test_hardswish_clamp_sign_flip() -> None:
    # thread 1: x = 1: x + 3 = 4, clamp 4, x*4 = 4, *(1/6) = 0.6666667. Sign of the clamp flipped:
    # -4 -> -0.6666667. Thread 0: x = 2*1 - 2 = 0 -> 0. Logits [0, 0.667] -> [0, -0.667]: class 0.
    prog = lower(_linear(nn.Hardswish(), [2, 1], [-2, 0]), (1,))
    x = torch.tensor([[1.0]])
    sixth = torch.tensor(4.0) * torch.tensor(1.0 / 6.0, dtype=torch.float32)
    assert prog.forward(x)[0][0].tolist() == [0.0, sixth.item()]
    r, probs = run_one(prog, Fault("iov", site(prog, "0.activate_array", "fmnmx:hard_high", 1), "single", (31,)), x)
    assert (r.original, r.corrupted) == (4.0, -4.0)
    assert (r.golden_top1, r.faulty_top1) == (1, 0) and r.outcome == "sdc_malfunction"
    assert torch.allclose(probs, probs_of([0.0, -sixth.item()]), atol=1e-7)


def test_leaky_slope_product_sign_flip() -> None:
    # slope 0.25 (not Darknet's .1): thread 0: x = -4 -> 0.25*-4 = -1; sign flipped: +1.
    # thread 1: x = 0.5 -> 0.5. Logits [-1, 0.5] -> [1, 0.5]: class 1 -> 0.
    prog = lower(_linear(nn.LeakyReLU(0.25), [-4, 0.5], [0, 0]), (1,))
    x = torch.tensor([[1.0]])
    assert prog.forward(x)[0][0].tolist() == [-1.0, 0.5]
    r, probs = run_one(prog, Fault("iov", site(prog, "0.activate_array", "fmul:leak", 0), "single", (31,)), x)
    assert (r.original, r.corrupted) == (-1.0, 1.0)
    assert (r.golden_top1, r.faulty_top1) == (1, 0)
    assert torch.allclose(probs, probs_of([1.0, 0.5]), atol=1e-7)


def test_gelu_half_mantissa_flip() -> None:
    # thread 1: x = 2: x*0.5 = 1.0 (0x3F800000); bit 22 flipped: 1.5. erf(2/sqrt 2) = erf(sqrt 2)
    # = 0.9544997; output 1.5 * 1.9544997 = 2.9317496 instead of 1.9544997. Thread 0: x = 0 -> 0.
    prog = lower(_linear(nn.GELU(), [0, 2], [0, 0]), (1,))
    x = torch.tensor([[1.0]])
    one_plus = 1.0 + 0.9544997361036416
    assert prog.forward(x)[0][0, 1].item() == pytest.approx(one_plus, rel=1e-6)
    r, probs = run_one(prog, Fault("iov", site(prog, "0.activate_array", "fmul:gelu_half", 1), "single", (22,)), x)
    assert (r.original, r.corrupted) == (1.0, 1.5)
    assert r.outcome == "sdc_light_malfunction"
    assert torch.allclose(probs, probs_of([0.0, 1.5 * one_plus]), atol=1e-6)


def test_tanh_switch_flip_takes_the_default_case() -> None:
    # the switch's range test flipped: the default case returns 0 for thread 1 (tanh(3) = 0.995)
    prog = lower(_linear(nn.Tanh(), [0, 3], [0.5, 0]), (1,))
    x = torch.tensor([[1.0]])
    golden = prog.forward(x)[0][0].tolist()
    assert golden[0] == pytest.approx(0.46211716, rel=1e-6) and golden[1] == pytest.approx(0.99505475, rel=1e-6)
    r, probs = run_one(prog, Fault("iov", site(prog, "0.activate_array", "setp:act_switch", 1), "single", (0,)), x)
    assert (r.golden_top1, r.faulty_top1) == (1, 0)
    assert torch.allclose(probs, probs_of([golden[0], 0.0]), atol=1e-6)


# ------------------------------------------------------------------------------ tanh GELU faults
def test_gelu_tanh_half_mantissa_flip() -> None:
    # thread 1: x = 2: x*0.5 = 1.0; bit 22 flipped: 1.5. 1 + tanh(1.8811884) = 1.9545977 (float64,
    # math.tanh): output 1.5 * 1.9545977 = 2.9318965 instead of 1.9545977. Thread 0: x = 0 -> 0.
    prog = lower(_linear(nn.GELU(approximate="tanh"), [0, 2], [0, 0]), (1,))
    x = torch.tensor([[1.0]])
    one_plus = 1.0 + math.tanh(KBETA * (2.0 + KKAPPA * 8.0))
    assert prog.forward(x)[0][0].tolist() == [0.0, pytest.approx(one_plus, rel=1e-6)]
    r, probs = run_one(prog, Fault("iov", site(prog, "0.activate_array", "fmul:gelut_half", 1), "single", (22,)), x)
    assert (r.original, r.corrupted) == (1.0, 1.5)
    assert r.outcome == "sdc_light_malfunction"
    assert torch.allclose(probs, probs_of([0.0, 1.5 * one_plus]), atol=1e-6)


def test_gelu_tanh_sign_copy_flip() -> None:
    # thread 0: x = -1: u = -0.8335620 (|u| >= 0.6: the exp branch), tanh = -0.6823840; the LOP3
    # copying u's sign gets bit 31 flipped: +0.6823840, output -0.5 * 1.6823840 = -0.8411920
    # instead of -0.1588080. Thread 1: x = 0.5: u = 0.4034020 (polynomial branch), 0.3457140.
    prog = lower(_linear(nn.GELU(approximate="tanh"), [-1, 0.5], [0, 0]), (1,))
    x = torch.tensor([[1.0]])
    t0, y1 = math.tanh(KBETA * (-1.0 - KKAPPA)), _gelu_tanh64(0.5)
    assert prog.forward(x)[0][0].tolist() == [pytest.approx(-0.5 * (1 + t0), rel=1e-6), pytest.approx(y1, rel=1e-6)]
    r, probs = run_one(prog, Fault("iov", site(prog, "0.activate_array", "lop3:tanh_sign_gelut", 0), "single", (31,)), x)
    assert r.original == pytest.approx(t0, rel=1e-6) and r.corrupted == -r.original
    assert (r.golden_top1, r.faulty_top1) == (1, 1)
    assert torch.allclose(probs, probs_of([-0.5 * (1 - t0), y1]), atol=1e-6)


def test_gelu_tanh_branch_and_saturation_predicate_flips() -> None:
    # thread 1: x = 2, u = 1.8811884 takes the exp branch. Its branch test (|u| >= 0.6, the 2nd
    # FSETP) flipped: the predicated FFMA writes the polynomial, out of its range there:
    # u2 = u*u, p = u2*(((c0*u2 + c1)*u2 + c2)*u2 + c3) with libdevice's c0..c3, t = u + u*p =
    # 3.0823122 (float64): output 1 * (1 + 3.0823122) = 4.0823122 instead of 1.9545977.
    # The saturation test (|u| >= 9.0109, the 1st) flipped: t = 1, output 2.0.
    prog = lower(_linear(nn.GELU(approximate="tanh"), [-1, 2], [0, 0]), (1,))
    x = torch.tensor([[1.0]])
    y0 = _gelu_tanh64(-1.0)
    c = [struct.unpack("<f", struct.pack("<I", h))[0] for h in (0x3C80F082, 0xBD563CAE, 0x3E085941, 0xBEAAA9ED)]
    u = KBETA * (2.0 + KKAPPA * 8.0)
    u2 = u * u
    t = u + u * (u2 * (((c[0] * u2 + c[1]) * u2 + c[2]) * u2 + c[3]))
    assert t == pytest.approx(3.0823122, rel=1e-7)
    branch = site(prog, "0.activate_array", "setp:tanh_gelut", 1, exec_=1, calls=2)
    r, probs = run_one(prog, Fault("iov", branch, "single", (0,)), x)
    assert (r.original, r.corrupted) == (1.0, 0.0)
    assert torch.allclose(probs, probs_of([y0, 1.0 + t]), atol=1e-6)
    sat = site(prog, "0.activate_array", "setp:tanh_gelut", 1, exec_=0, calls=2)
    r, probs = run_one(prog, Fault("iov", sat, "single", (0,)), x)
    assert (r.original, r.corrupted) == (0.0, 1.0)
    assert torch.allclose(probs, probs_of([y0, 2.0]), atol=1e-6)
    # the polynomial of thread 0 (x = -1, exp branch) is computed and dropped: a flip there is masked
    r, _ = run_one(prog, Fault("iov", site(prog, "0.activate_array", "ffma:tanhs_gelut", 0), "single", (30,)), x)
    assert r.outcome == "masked"


class TanhGelu(nn.Module):
    """A conv, a fused and a standalone tanh GELU, a linear head (3x8x8 -> n)."""

    def __init__(self, n: int = 4) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.g = nn.GELU(approximate="tanh")
        self.head = nn.Linear(4, n)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.gelu(F.max_pool2d(self.g(self.conv(x)), 2), approximate="tanh")
        return self.head(y.mean((2, 3)))


def build_tanh_gelu(num_classes: int) -> TanhGelu:
    return TanhGelu(num_classes)


@pytest.mark.parametrize("mode", ["rf", "iov", "ioa"])
def test_gelu_tanh_short_campaign_has_no_tool_error(mode: str, tmp_path: Path) -> None:
    name = ensure_registered("gelu-tanh-tiny", build_tanh_gelu, (3, 8, 8), 4, "tanh GELU")
    struck = {r.launch_name for r in short_campaign(name, mode, tmp_path)}
    assert struck & {"conv.activate_array", "gelu.act.activate_array"}, struck


# ------------------------------------------------------------------------------ mish
def _mish64(x: float) -> float:
    """Mish in float64 with the math module: x * tanh(log1p(exp(x)))."""
    return x * math.tanh(math.log1p(math.exp(x)))


def test_mish_values_by_hand() -> None:
    # float64: x = 1: softplus = log1p(e) = 1.3132617, tanh = 0.8650984; x = -1: softplus =
    # 0.3132617, tanh = 0.3034014, y = -0.3034014; x = 3: 2.9865351
    xs = [1.0, -1.0, 3.0, 0.5, -0.3, 2.5, -2.5, 5.0, -5.0, 1e-3, -1e-3, 10.0, -10.0]
    got = activate(torch.tensor(xs), "mish")
    assert got[0].item() == pytest.approx(0.8650984, rel=1e-7) and got[1].item() == pytest.approx(-0.3034014, rel=1e-6)
    assert got[2].item() == pytest.approx(2.9865351, rel=1e-7)
    for x, y in zip(xs, got.tolist()):
        want = _mish64(np.float32(x).item())
        assert abs(y - want) <= 4e-7 * abs(want), (x, y, want)


def test_mish_specials_match_pytorch() -> None:
    # signed zeros, tiny, subnormal, the exp overflow (x > 88.72: exp = inf, log1p = inf, tanh = 1:
    # y = x), large negatives (exp underflows to 0: -0), infinities (-inf * tanh(0) = NaN), NaN
    x = torch.tensor([0.0, -0.0, 1e-30, -1e-30, 1e-40, 20.0, -20.0, 88.0, 89.0, 1e20, 3.4e38, -104.0,
                      -3.4e38, math.inf, -math.inf, math.nan])
    got, want = activate(x, "mish"), F.mish(x)
    assert torch.equal(got.isnan(), want.isnan()) and got[-2:].isnan().all()
    assert torch.equal(got[:-2].view(torch.int32), want[:-2].view(torch.int32))
    assert got[1].item() == 0.0 and math.copysign(1.0, got[1].item()) == -1.0
    assert got[8].item() == 89.0 and got[13].item() == math.inf and got[11].item() == 0.0
    # elsewhere within 2e-7 relative of PyTorch's CPU kernel (its exp/log1p/tanh are vectorised)
    r = torch.randn(20000, generator=torch.Generator().manual_seed(3)) * 5
    got, want = activate(r, "mish"), F.mish(r)
    assert ((got - want).abs() <= 3e-7 * want.abs()).all()


def test_mish_lowered_tiny_module_exact() -> None:
    # x = 1, weights [1, -1, 3]: pre-activation [1, -1, 3] exactly; the lowered model's output is
    # the CUDA formula on those, bit for bit, and nn.Mish's within its last bit (the CPU kernel's
    # vectorised exp/log1p/tanh give -0.30340144 for -1, torch's scalar ones -0.30340147)
    m = nn.Sequential(nn.Linear(1, 3), nn.Mish()).eval()
    with torch.no_grad():
        m[0].weight.copy_(torch.tensor([[1.0], [-1.0], [3.0]]))
        m[0].bias.zero_()
    prog = lower(m, (1,))
    x = torch.tensor([[1.0]])
    want = torch.tensor([[_mish64(1.0), _mish64(-1.0), _mish64(3.0)]]).float()
    for fast in (True, False):
        got = prog.forward(x, fast=fast)[0]
        assert torch.equal(got, activate(torch.tensor([[1.0, -1.0, 3.0]]), "mish"))
        assert ((got - m(x).detach()).abs() <= 2.0 ** -23 * m(x).detach().abs()).all()
        assert ((got - want).abs() <= 2.0 ** -23 * want.abs()).all()


def test_mish_log1p_branch_and_value_flips() -> None:
    # thread 1: x = 1: exp = e, softplus = 1.3132617, y = 0.8650984. log1pf's ISETP (the operand
    # below +inf: the main path) flipped: the special case e*inf + inf = inf, tanh(inf) = 1, y = 1.
    # Bit 23 of the softplus (exponent 127 -> 126): 0.6566309, y = tanh(0.6566309) = 0.5763...
    prog = lower(_linear(nn.Mish(), [-1, 1], [0, 0]), (1,))
    x = torch.tensor([[1.0]])
    y0, y1 = _mish64(-1.0), _mish64(1.0)
    assert prog.forward(x)[0][0].tolist() == [pytest.approx(y0, rel=1e-6), pytest.approx(y1, rel=1e-6)]
    r, probs = run_one(prog, Fault("iov", site(prog, "0.activate_array", "setp:log1p_mish", 1), "single", (0,)), x)
    assert (r.original, r.corrupted) == (1.0, 0.0)
    assert torch.allclose(probs, probs_of([y0, 1.0]), atol=1e-6)
    r, probs = run_one(prog, Fault("iov", site(prog, "0.activate_array", "ffma:log1p_mish", 1), "single", (23,)), x)
    sp = math.log1p(math.e)
    assert r.original == pytest.approx(sp, rel=1e-7) and r.corrupted == pytest.approx(sp / 2, rel=1e-7)
    assert torch.allclose(probs, probs_of([y0, math.tanh(sp / 2)]), atol=1e-6)
    # the output FMUL's sign flipped: -0.8650984, class 0 wins
    r, probs = run_one(prog, Fault("iov", site(prog, "0.activate_array", "fmul:mish_out", 1), "single", (31,)), x)
    assert (r.golden_top1, r.faulty_top1) == (1, 0)
    assert torch.allclose(probs, probs_of([y0, -y1]), atol=1e-6)


# ------------------------------------------------------------------------------ elu, selu, celu
SELU_A, SELU_S = 1.6732632423543772848170429916717, 1.0507009873554804934193349852946


def _elu64(x: float, alpha: float, scale: float = 1.0, input_scale: float = 1.0) -> float:
    """PyTorch's elu formula in float64 with math.expm1."""
    return x * scale if x > 0 else math.expm1(x * input_scale) * alpha * scale


def test_elu_family_values_by_hand() -> None:
    # float64: ELU(0.7)(-1) = 0.7*(e^-1 - 1) = -0.4424844; SELU(-1) = 1.7580993*(-0.6321206) =
    # -1.1113307, SELU(2) = 2.1014020; CELU(0.7)(-1) = 0.7*(exp(-1/0.7) - 1) = -0.5322443
    xs = [-1.0, 2.0, -0.3, 0.5, -3.0, -1e-3, 1e-3, -10.0]
    elu, selu, celu = (activate(torch.tensor(xs), a, 0.7) for a in ("elu", "selu", "celu"))
    assert elu[0].item() == pytest.approx(-0.4424844, rel=1e-6) and selu[0].item() == pytest.approx(-1.1113307, rel=1e-6)
    assert selu[1].item() == pytest.approx(2.1014020, rel=1e-7) and celu[0].item() == pytest.approx(-0.5322443, rel=1e-6)
    for i, x in enumerate(xs):
        for got, want in ((elu, _elu64(x, 0.7)), (selu, _elu64(x, SELU_A, SELU_S)), (celu, _elu64(x, 0.7, 1.0, 1 / 0.7))):
            assert abs(got[i].item() - want) <= 3e-7 * abs(want), (x, got[i].item(), want)


def test_elu_family_specials_match_pytorch() -> None:
    # zeros keep their sign (expm1(-0) = -0), tiny and subnormal x, the -1 saturation (x < -17.3:
    # expm1 = -1 exactly, output -alpha*scale), huge x, infinities, NaN: PyTorch's CPU bits;
    # x = -17, where expm1 is within an ulp of -1, within that ulp
    x = torch.tensor([0.0, -0.0, 1e-30, -1e-30, -1e-40, 0.3, -0.3, -0.41, -20.0, -88.0, -100.0, 20.0, 3.4e38,
                      -3.4e38, math.inf, -math.inf, math.nan, -17.0])
    for act, ref in (("elu", lambda t: F.elu(t, 0.7)), ("selu", F.selu), ("celu", lambda t: F.celu(t, 0.7)),
                     ("elu", F.elu)):
        alpha = 1.0 if ref is F.elu else 0.7
        got, want = activate(x, act, alpha), ref(x)
        assert torch.equal(got[:-1].isnan(), want[:-1].isnan()) and got[16].isnan()
        assert torch.equal(got[:-2].view(torch.int32), want[:-2].view(torch.int32)), act
        assert abs(got[-1].item() - want[-1].item()) <= 2.0 ** -23 * abs(want[-1].item())  # one ulp
        assert got[1].item() == 0.0 and math.copysign(1.0, got[1].item()) == -1.0
        r = torch.randn(20000, generator=torch.Generator().manual_seed(3)) * 5
        assert torch.equal(activate(r, act, alpha).view(torch.int32), ref(r).view(torch.int32)), act
    assert activate(torch.tensor([-20.0]), "elu", 0.7).item() == -float(np.float32(0.7))  # -1 * float(0.7)


def test_elu_lowered_tiny_module_exact() -> None:
    # pre-activations [1, -1, 3] exactly; ELU(0.7), SELU, CELU(0.7) and their F. forms give PyTorch's bits
    for mod in (nn.ELU(0.7), nn.SELU(), nn.CELU(0.7)):
        m = nn.Sequential(nn.Linear(1, 3), mod).eval()
        with torch.no_grad():
            m[0].weight.copy_(torch.tensor([[1.0], [-1.0], [3.0]]))
            m[0].bias.zero_()
        prog = lower(m, (1,))
        x = torch.tensor([[1.0]])
        for fast in (True, False):
            assert torch.equal(prog.forward(x, fast=fast)[0], m(x).detach()), mod


class EluForms(nn.Module):
    """F.elu(alpha=0.5), F.selu, F.celu(0.8) on a linear layer's output."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.celu(F.selu(F.elu(self.fc(x), alpha=0.5)), 0.8)


def test_elu_functional_forms_keep_alpha() -> None:
    torch.manual_seed(0)
    m, x = EluForms().eval(), torch.randn(5, 3) * 3
    prog = lower(m, (3,))
    assert [(l.params["activation"], l.params.get("slope")) for l in prog.trace.launches
            if l.kernel == "activate_array"] == [("elu", 0.5), ("selu", None), ("celu", 0.8)]
    with torch.no_grad():
        want = m(x)
    for fast in (True, False):  # the linear layer's sums are SGEMM's order: within 1e-5, not bitwise
        assert (prog.forward(x, fast=fast)[0] - want).abs().max().item() <= 1e-5 * want.abs().max().item()


def test_elu_branch_and_saturation_flips() -> None:
    # ELU(0.7): thread 0: x = -1: expm1(-1) = -0.6321206, y = -0.4424844. The x > 0 FSETP flipped:
    # the positive path, y = x*1 = -1. expm1's 4th FSETP (j < -25) flipped: -1, y = -0.7. Bit 23
    # of expm1's value (its exponent's low bit, 126 -> 127): -1.2642411, y = -0.8849688.
    # Thread 1: x = 2 -> 2.
    prog = lower(_linear(nn.ELU(0.7), [-1, 2], [0, 0]), (1,))
    x = torch.tensor([[1.0]])
    y0 = 0.7 * math.expm1(-1.0)
    assert prog.forward(x)[0][0].tolist() == [pytest.approx(y0, rel=1e-6), 2.0]
    r, probs = run_one(prog, Fault("iov", site(prog, "0.activate_array", "setp:elu_pos", 0), "single", (0,)), x)
    assert (r.original, r.corrupted) == (0.0, 1.0)
    assert torch.allclose(probs, probs_of([-1.0, 2.0]), atol=1e-6)
    sat = site(prog, "0.activate_array", "setp:expm1_elu", 0, exec_=3, calls=5)
    r, probs = run_one(prog, Fault("iov", sat, "single", (0,)), x)
    assert (r.original, r.corrupted) == (0.0, 1.0)
    assert torch.allclose(probs, probs_of([-0.7, 2.0]), atol=1e-6)
    r, probs = run_one(prog, Fault("iov", site(prog, "0.activate_array", "ffma:expm1_elu", 0), "single", (23,)), x)
    assert r.original == pytest.approx(math.expm1(-1.0), rel=2e-7) and r.corrupted == 2 * r.original
    assert torch.allclose(probs, probs_of([2 * y0, 2.0]), atol=1e-6) and 2 * y0 == pytest.approx(-0.8849688, rel=1e-6)
    # thread 1 (x = 2) takes the positive path: a fault in its expm1 is in code it skips, masked
    r, _ = run_one(prog, Fault("iov", site(prog, "0.activate_array", "ffma:expm1_elu", 1), "single", (30,)), x)
    assert r.outcome == "masked"


# ------------------------------------------------------------------------------ softplus
def _softplus64(x: float, beta: float = 1.0, threshold: float = 20.0) -> float:
    """PyTorch's softplus formula in float64 with the math module."""
    return x if x * beta > threshold else math.log1p(math.exp(x * beta)) / beta


def test_softplus_values_by_hand() -> None:
    # float64: softplus(1) = log1p(e) = 1.3132617, softplus(-1) = 0.3132617; beta 2:
    # log1p(e^2)/2 = 1.0634640; beta 0.5, x = -3: log1p(e^-1.5)/0.5 = 0.4028266
    xs = [1.0, -1.0, 0.5, -0.3, 2.5, -2.5, 5.0, -5.0, 1e-3, -1e-3, 15.0, -15.0, -3.0]
    for beta, th in ((1.0, 20.0), (2.0, 20.0), (0.5, 5.0)):
        got = activate(torch.tensor(xs), "softplus", beta, th)
        for x, y in zip(xs, got.tolist()):
            want = _softplus64(x, beta, th)
            assert abs(y - want) <= 3e-7 * abs(want), (beta, x, y, want)
        if beta == 1.0:
            assert got[0].item() == pytest.approx(1.3132617, rel=1e-7) and got[1].item() == pytest.approx(0.3132617, rel=1e-6)
        if beta == 2.0:
            assert got[0].item() == pytest.approx(1.0634640, rel=1e-7)
        if beta == 0.5:
            assert got[-1].item() == pytest.approx(0.4028266, rel=1e-6)


def test_softplus_threshold_and_specials_match_pytorch() -> None:
    # the threshold (x*beta > threshold returns x itself: 20.001 -> 20.001, 20 -> log1p(e^20) =
    # 20.000000002 -> 20.0), zeros (softplus(-0) = ln 2), large negatives (exp underflows: +0),
    # exp overflow below the threshold (beta 1, threshold 100, x = 90: log1p(inf) = inf),
    # infinities and NaN: PyTorch's CPU bits
    x = torch.tensor([0.0, -0.0, 1e-30, -1e-30, 19.9, 20.0, 20.001, 21.0, 10.0, 10.1, -20.0, -88.0, -104.0,
                      3.4e38, -3.4e38, math.inf, -math.inf, math.nan])
    for beta, th in ((1.0, 20.0), (2.0, 20.0), (0.5, 5.0), (3.0, 1.0)):
        got, want = activate(x, "softplus", beta, th), F.softplus(x, beta, th)
        assert torch.equal(got.isnan(), want.isnan()) and got[-1].isnan()
        assert torch.equal(got[:-1].view(torch.int32), want[:-1].view(torch.int32)), (beta, th)
        r = torch.randn(20000, generator=torch.Generator().manual_seed(3)) * 8
        got, want = activate(r, "softplus", beta, th), F.softplus(r, beta, th)
        assert ((got - want).abs() <= 2.5e-7 * want.abs()).all()   # the CPU's vectorised exp/log1p
    y = activate(torch.tensor([20.001, 20.0, 0.0, 90.0]), "softplus", 1.0, 20.0).tolist()
    assert y[:3] == [float(np.float32(20.001)), 20.0, float(np.float32(math.log(2.0)))]
    assert activate(torch.tensor([90.0]), "softplus", 1.0, 100.0).item() == math.inf


def test_softplus_lowered_keeps_beta_and_threshold() -> None:
    # pre-activations [1, -1, 3] exactly; Softplus(2, 3) returns 3 itself for x = 3 (6 > 3)
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(1, 3)
            self.sp = nn.Softplus(2.0, 3.0)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.softplus(self.sp(self.fc(x)), beta=0.5, threshold=1.0)
    m = Net().eval()
    with torch.no_grad():
        m.fc.weight.copy_(torch.tensor([[1.0], [-1.0], [3.0]]))
        m.fc.bias.zero_()
    prog = lower(m, (1,))
    assert [(l.params["activation"], l.params.get("slope"), l.params.get("threshold")) for l in prog.trace.launches
            if l.kernel == "activate_array"] == [("softplus", 2.0, 3.0), ("softplus", 0.5, 1.0)]
    x = torch.tensor([[1.0]])
    s1 = [_softplus64(v, 2.0, 3.0) for v in (1.0, -1.0, 3.0)]
    want = [_softplus64(float(np.float32(v)), 0.5, 1.0) for v in s1]
    for fast in (True, False):
        got = prog.forward(x, fast=fast)[0]
        assert ((got - m(x).detach()).abs() <= 2.0 ** -22 * m(x).detach().abs()).all()
        assert got[0].tolist() == [pytest.approx(w, rel=3e-7) for w in want]


def test_softplus_threshold_and_log1p_flips() -> None:
    # Softplus(): thread 0: x = 1: y = 1.3132617; thread 1: x = 25 > 20: y = 25 (x itself).
    # Thread 0's threshold FSETP flipped: y = x = 1. Its log1p ISETP flipped: log1p -> +inf, y = inf.
    # Bit 23 of the quotient (exponent 127 -> 126): 0.6566309. Thread 1's threshold flipped: the
    # log1p path, log1p(e^25)/1 = 25.000000000014 -> 25.0 in float32: masked.
    prog = lower(_linear(nn.Softplus(), [1, 25], [0, 0]), (1,))
    x = torch.tensor([[1.0]])
    y0 = math.log1p(math.e)
    assert prog.forward(x)[0][0].tolist() == [pytest.approx(y0, rel=1e-7), 25.0]
    r, probs = run_one(prog, Fault("iov", site(prog, "0.activate_array", "setp:softplus_th", 0), "single", (0,)), x)
    assert (r.original, r.corrupted) == (0.0, 1.0)
    assert torch.allclose(probs, probs_of([1.0, 25.0]), atol=1e-6)
    r, _ = run_one(prog, Fault("iov", site(prog, "0.activate_array", "setp:log1p_softplus", 0), "single", (0,)), x)
    assert (r.original, r.corrupted) == (1.0, 0.0) and r.outcome == "sdc_malfunction" and "nonfinite" in r.flags
    assert r.propagation[0].max_abs == math.inf
    r, probs = run_one(prog, Fault("iov", site(prog, "0.activate_array", "ffma:fdiv_softplus", 0), "single", (23,)), x)
    assert r.original == pytest.approx(y0, rel=1e-7) and r.corrupted == r.original / 2
    assert torch.allclose(probs, probs_of([y0 / 2, 25.0]), atol=1e-6)
    r, _ = run_one(prog, Fault("iov", site(prog, "0.activate_array", "setp:softplus_th", 1), "single", (0,)), x)
    assert (r.original, r.corrupted) == (1.0, 0.0) and r.outcome == "masked"


# ------------------------------------------------------------------------------ prelu
@pytest.mark.parametrize("k", [1, 3])
def test_prelu_lowered_equals_native(k: int) -> None:
    # per-channel (3) or one slope, after a conv (3x5x5) and after a linear (4 features, one slope)
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.PReLU(k), nn.Flatten(), nn.Linear(75, 4), nn.PReLU()).eval()
    with torch.no_grad():
        m[1].weight.copy_(torch.tensor([0.3, -0.2, 1.5][:k]))
        m[4].weight.fill_(0.1)
    x = torch.randn(3, 2, 5, 5) * 4
    prog = lower(m, (2, 5, 5))
    assert [l.params for l in prog.trace.launches if l.kernel == "prelu"] == [
        {"out": (3, 5, 5), "w": (k, 1, 1)}, {"out": (4, 1, 1), "w": (1, 1, 1)}]
    with torch.no_grad():
        ref = m(x)
    for fast in (True, False):
        lg, _ = prog.forward(x, fast=fast)
        assert (lg - ref).abs().max().item() <= 1e-5 * max(ref.abs().max().item(), 1.0)


def test_prelu_tiny_module_and_specials_bitwise() -> None:
    # pre-activations exactly [-2, 3, 0, 0, inf, -inf, nan, 1e-40, -1e-40, -3.4e38] (a linear of 1
    # input, weights those, bias 0, x = 1: the bias turns the -0 weight's -0 into +0, in both)
    # through PReLU(10) with slopes w: x > 0 ? x : w*x, as nn.PReLU gives: -2*0.25 = -0.5, 3,
    # 0*w = 0, inf, -inf*2 = -inf, nan, 1e-40, -1e-40*0.5, -3.4e38*2 = -inf
    pre = [-2.0, 3.0, 0.0, -0.0, math.inf, -math.inf, math.nan, 1e-40, -1e-40, -3.4e38]
    w = [0.25, 0.5, 0.5, 0.5, 0.5, 2.0, 0.5, 0.5, 0.5, 2.0]
    m = nn.Sequential(nn.Linear(1, 10), nn.PReLU(10)).eval()
    with torch.no_grad():
        m[0].weight.copy_(torch.tensor(pre).reshape(10, 1))
        m[0].bias.zero_()
        m[1].weight.copy_(torch.tensor(w))
    got = lower(m, (1,)).forward(torch.tensor([[1.0]]), fast=False)[0][0]
    with torch.no_grad():
        want = m(torch.tensor([[1.0]]))[0]
    assert torch.equal(want[:2], torch.tensor([-0.5, 3.0]))
    assert torch.equal(got.isnan(), want.isnan()) and got[6].isnan()
    keep = ~want.isnan()
    assert torch.equal(got[keep].view(torch.int32), want[keep].view(torch.int32))
    assert got[:2].tolist() == [-0.5, 3.0] and got[5].item() == -math.inf and got[9].item() == -math.inf
    assert got[8].item() == float(np.float32(-1e-40) * np.float32(0.5))


def test_prelu_select_and_slope_flips() -> None:
    # Linear(1, 2) with weights [-2, 3], x = 1: [-2, 3]; PReLU(2) slopes [0.25, 0.5]: [-0.5, 3].
    # Thread 0's x > 0 FSETP flipped: the FSEL takes x, -2. Its slope load's sign bit: -0.25,
    # output 0.5. Thread 1 (x = 3 > 0): its product w*x = 1.5 is computed and not selected: masked.
    m = nn.Sequential(nn.Linear(1, 2), nn.PReLU(2)).eval()
    with torch.no_grad():
        m[0].weight.copy_(torch.tensor([[-2.0], [3.0]]))
        m[0].bias.zero_()
        m[1].weight.copy_(torch.tensor([0.25, 0.5]))
    prog = lower(m, (1,))
    x = torch.tensor([[1.0]])
    assert prog.forward(x)[0][0].tolist() == [-0.5, 3.0]
    r, probs = run_one(prog, Fault("iov", site(prog, "1.prelu", "setp:prelu", 0), "single", (0,)), x)
    assert (r.original, r.corrupted) == (0.0, 1.0)
    assert torch.allclose(probs, probs_of([-2.0, 3.0]), atol=1e-6)
    r, probs = run_one(prog, Fault("iov", site(prog, "1.prelu", "ld:w", 0), "single", (31,)), x)
    assert (r.original, r.corrupted) == (0.25, -0.25)
    assert torch.allclose(probs, probs_of([0.5, 3.0]), atol=1e-6)
    r, _ = run_one(prog, Fault("iov", site(prog, "1.prelu", "fmul:prelu", 1), "single", (30,)), x)
    assert r.original == 1.5 and r.outcome == "masked"


class ActNet(nn.Module):
    """A conv, a fused and a standalone activation (``make()`` builds each), a linear head (3x8x8 -> n)."""

    def __init__(self, make: Callable[[], nn.Module], n: int = 4) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.a1, self.a2 = make(), make()
        self.head = nn.Linear(4, n)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.a2(F.max_pool2d(self.a1(self.conv(x)), 2))
        return self.head(y.mean((2, 3)))


def build_mish(num_classes: int) -> ActNet:
    return ActNet(nn.Mish, num_classes)


def build_softplus(num_classes: int) -> ActNet:
    return ActNet(lambda: nn.Softplus(2.0, 3.0), num_classes)


def build_prelu(num_classes: int) -> ActNet:
    return ActNet(lambda: nn.PReLU(4), num_classes)


def build_elu(num_classes: int) -> ActNet:
    return ActNet(lambda: nn.ELU(0.7), num_classes)


def build_selu(num_classes: int) -> ActNet:
    return ActNet(nn.SELU, num_classes)


def build_celu(num_classes: int) -> ActNet:
    return ActNet(lambda: nn.CELU(0.7), num_classes)


#: the activations with a short campaign each: registered model name -> top-level builder
CAMPAIGN_ACTS: dict[str, Callable[[int], ActNet]] = {"mish-tiny": build_mish, "elu-tiny": build_elu,
                                                     "selu-tiny": build_selu, "celu-tiny": build_celu,
                                                     "softplus-tiny": build_softplus, "prelu-tiny": build_prelu}


@pytest.mark.parametrize("mode", ["rf", "iov", "ioa"])
@pytest.mark.parametrize("name", list(CAMPAIGN_ACTS))
def test_new_activation_short_campaign_has_no_tool_error(name: str, mode: str, tmp_path: Path) -> None:
    ensure_registered(name, CAMPAIGN_ACTS[name], (3, 8, 8), 4, name)
    struck = {r.launch_name for r in short_campaign(name, mode, tmp_path)}
    assert any(l.endswith("activate_array") or l.endswith("prelu") for l in struck), struck
