"""Issue 20 activations (relu6, tanh, swish, gelu, hardswish, hardsigmoid, leaky of any slope):
lowered models equal their native forward, and faults in activate_array's new cases corrupt
what was worked out on paper."""
from __future__ import annotations

import struct

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from kernelfi._utils import KernelfiError
from kernelfi.lowering import lower
from kernelfi.types import Fault
from tests.tiny import probs_of, run_one, site

ACTS = [nn.ReLU6(), nn.Tanh(), nn.SiLU(), nn.GELU(), nn.Hardswish(), nn.Hardsigmoid(), nn.LeakyReLU(0.2),
        nn.Hardtanh(0.0, 6.0)]


def f32(bits: int) -> float:
    return struct.unpack("<f", struct.pack("<I", bits))[0]


@pytest.mark.parametrize("act", ACTS, ids=lambda a: type(a).__name__)
def test_lowered_equals_native(act: nn.Module) -> None:
    torch.manual_seed(0)
    # fused after a conv, standalone after an Identity-passed activation, after a linear
    m = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), act, nn.Identity(), type(act)() if not isinstance(
        act, (nn.LeakyReLU, nn.Hardtanh)) else nn.ReLU6(), nn.Flatten(), nn.Linear(75, 4), act).eval()
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


def test_gelu_tanh_form_is_refused() -> None:
    with pytest.raises(KernelfiError, match="approximate"):
        lower(nn.Sequential(nn.Linear(2, 2), nn.GELU(approximate="tanh")).eval(), (2,))


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
