"""Fault coverage of an exported model, per technique (docs/export.md §4): seeded single-bit flips
injected through hooks into one replica (TMR, DMR), the ABFT-protected product, or the value a
clamp receives, on digits-alexnet with a plan using every technique; and the ABFT checks of a
strided, dilated, grouped convolution against an independent float64 im2col computation.
"""
from __future__ import annotations


import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kernelfi.campaign.session import ModelSpec, inputs_tensor, open_session, session_inputs
from kernelfi.harden import Plan, Protection, profile_bounds
from kernelfi.harden.export import export_model, flip_bit, load_exported, measure_coverage
from kernelfi.harden.export.runtime import ABFTConv2d, ABFTLinear, same, vote
from tests.threads import one_thread  # noqa: F401  (autouse: one intra-op thread)

U = 2.0 ** -24


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[nn.Module, torch.Tensor]:
    s = open_session(ModelSpec("digits-alexnet"))
    x = inputs_tensor(session_inputs(s, None, 16))
    b = profile_bounds(s.program, x, ["features.10.output", "classifier.4.output"])
    plan = Plan("digits-alexnet", (
        Protection("layer", "features.3", "tmr"), Protection("kernel", "forward_maxpool", "dmr"),
        Protection("launch", "features.0.gemm", "abft"), Protection("launch", "classifier.1.gemm", "abft"),
        Protection("layer", "features.10", "range", {"features.10.output": b["features.10.output"]}),
        Protection("layer", "classifier.4", "range", {"classifier.4.output": b["classifier.4.output"]})))
    out = tmp_path_factory.mktemp("cov") / "export"
    export_model("digits-alexnet", plan, out, check_inputs=x)
    return load_exported(out), x[:1]


def abft_tolerances(op: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per output element, in float64: the smaller of its row and column checksum tolerances as
    docs/export.md §2 states them, and the bound of its own float32 rounding, gamma_K times
    sum |w||x| through an explicit im2col (what a float64 recomputation may differ from it by)."""
    w, b = op.weight.double(), op.bias.double()
    x = x.double()
    if isinstance(op, nn.Linear):
        terms = x.abs() @ w.abs().t() + b.abs()                                    # (N, Co)
        n, co, k = terms.shape[0], terms.shape[1], w.shape[1]
        row = 2 * U * (k + 2 * co + 2) * terms.sum(1, keepdim=True)                # per sample
        col = 2 * U * (k + 2 * n + 2) * terms.sum(0, keepdim=True)                 # per output
        return torch.minimum(row.expand_as(terms), col.expand_as(terms)), k * U * terms
    g, (kh, kw) = op.groups, op.kernel_size
    n, c, co = x.shape[0], x.shape[1], w.shape[0]
    cols = F.unfold(x, op.kernel_size, op.dilation, op.padding, op.stride)           # (N, K*g, P)
    p = cols.shape[2]
    k = cols.shape[1] // g
    wg = w.reshape(g, co // g, -1).abs()                                            # (g, Mg, K)
    terms = torch.einsum("gok,ngkp->ngop", wg, cols.reshape(n, g, k, p).abs()) + b.abs().reshape(g, -1)[None, :, :, None]
    own = (k * U * terms).reshape(n, -1)
    # Row: sum_c (sum_ij |W[o,c,i,j]|) * sum_hw |x[c]|; column: the per-tap maximum over a group's
    # channels of the summed |filter|, times the channel sum of |x| under the tap.
    l1 = x.abs().sum((2, 3)).reshape(n, g, -1)                                       # (N, g, Cg)
    s_row = torch.einsum("goc,ngc->ngo", w.abs().sum((2, 3)).reshape(g, co // g, -1), l1) + p * b.abs().reshape(g, -1)
    wmax = w.abs().reshape(g, co // g, -1, kh, kw).sum(1).amax(1, keepdim=True)       # (g, 1, kh, kw)
    chan = x.abs().reshape(n, g, -1, *x.shape[2:]).sum(2)                              # (N, g, H, W)
    s_col = F.conv2d(chan, wmax, None, op.stride, op.padding, op.dilation, g).flatten(2) \
        + b.abs().reshape(g, -1).sum(1)[None, :, None]                               # (N, g, P)
    row = 2 * U * (k + 2 * p + 2) * s_row[..., None]                                  # (N, g, Mg, 1)
    col = 2 * U * (k + 2 * (co // g) + 2) * s_col[:, :, None, :]                      # (N, g, 1, P)
    return torch.minimum(row, col).reshape(n, -1), own


def test_coverage_per_technique_of_200_seeded_single_bit_flips(exported: tuple[nn.Module, torch.Tensor]) -> None:
    net, x = exported
    cov = measure_coverage(net, x, n=200, seed=1)
    assert sorted(cov) == ["abft", "dmr", "range", "tmr"]
    # TMR: a flip confined to one of three runs is out-voted bit for bit (single-fault model).
    assert cov["tmr"].share("exact") == 1.0
    # DMR: any flip makes the two runs differ bitwise -> always detected; the third run restores it.
    assert cov["dmr"].share("detected") == 1.0 and cov["dmr"].share("exact") == 1.0
    # Range: whatever the flip, the clamped value lies in the bounds (NaN -> lo).
    assert cov["range"].share("in_bounds") == 1.0
    assert 0 < cov["range"].share("detected") < 1  # exponent flips are clamped, small ones pass
    # ABFT: flips above the checksum tolerance are detected and corrected to within the
    # element's own float32 rounding; flips below it pass and leave an error below it.
    inputs: dict[str, torch.Tensor] = {}
    hooks = [net.get_submodule(p).register_forward_hook(lambda m, a, y, p=p: inputs.__setitem__(p, a[0]))
             for p in ("features.0", "classifier.1")]
    with torch.no_grad():
        net(x)
    for h in hooks:
        h.remove()
    tol = {p: abft_tolerances(net.get_submodule(p), inputs[p]) for p in inputs}
    detected = 0
    for f in cov["abft"].flips:
        path = f.op.split(".")[-1].replace("_", ".")
        tmin, own = (t.reshape(-1)[f.index].item() for t in tol[path])
        if f.detected:
            detected += 1
            assert f.error <= own + 1e-30, f
        else:
            assert f.injected <= 2 * tmin and f.error == f.injected, f
        if f.injected > 2 * tmin:
            assert f.detected, f
    assert 0.3 < detected / 200 < 0.8  # exponent and high mantissa bits: about half the flips


@pytest.mark.parametrize("channels, stride", [(4, 2), (20, 1)])  # a one-filter conv / 1x1 per tap + shifts
def test_abft_of_a_dilated_grouped_convolution(channels: int, stride: int) -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(channels, 6, 3, stride=stride, padding=2, dilation=2, groups=2).eval()
    x = torch.randn(3, channels, 11, 9)
    abft = ABFTConv2d("conv")
    abft.refresh(conv)
    with torch.no_grad():
        y = conv(x)
        assert torch.equal(abft(conv, x), y) and abft.corrected == abft.recomputed == 0  # no false alarm
        _, own = abft_tolerances(conv, x)
        for index, bit in ((5, 30), (y.numel() - 1, 29), (97, 26)):
            with flip_bit(conv, index, bit):
                got = abft(conv, x)
            assert (got - y).abs().reshape(-1)[index] <= own.reshape(-1)[index] + 1e-30
            assert torch.equal(got.reshape(-1)[torch.arange(y.numel()) != index],
                               y.reshape(-1)[torch.arange(y.numel()) != index])
        assert (abft.corrected, abft.recomputed) == (3, 0)
        with flip_bit(conv, 0, 30), flip_bit(conv, 7, 30):  # two elements of one sample: re-run
            assert torch.equal(abft(conv, x), y)
        assert abft.recomputed == 1


def test_abft_of_a_linear_layer_without_false_alarms_over_batches() -> None:
    torch.manual_seed(1)
    lin = nn.Linear(300, 40).eval()
    abft = ABFTLinear("lin")
    abft.refresh(lin)
    with torch.no_grad():
        for n in (1, 5, 64):
            x = torch.randn(n, 300) * 10
            assert torch.equal(abft(lin, x), lin(x))
        assert abft.corrected == abft.recomputed == 0
        x = torch.randn(8, 300)
        with flip_bit(lin, 3 * 40 + 7, 30):
            got = abft(lin, x)
        assert abft.corrected == 1 and torch.allclose(got, lin(x), rtol=1e-6, atol=1e-6)


def test_vote_is_the_bitwise_majority_of_random_patterns() -> None:
    g = torch.Generator().manual_seed(2)
    a, b, c = (torch.randint(-2 ** 31, 2 ** 31 - 1, (4096,), generator=g, dtype=torch.int32) for _ in range(3))
    f = [t.view(torch.float32) for t in (a, b, c)]
    assert torch.equal(vote(*f).view(torch.int32), (a & b) | (a & c) | (b & c))
    assert torch.equal(vote(f[0], f[0], f[2]).view(torch.int32), a)   # two equal runs are the majority
    assert torch.equal(vote(f[0], f[1], f[0]).view(torch.int32), a)
    assert torch.equal(vote(f[1], f[0], f[0]).view(torch.int32), a)


def test_same_sees_every_bit_whatever_the_layout() -> None:
    x = torch.arange(1, 12, dtype=torch.float32)
    for view in (x, x[1:], x[1:9], x[:10]):  # odd and even lengths, odd and even offsets
        assert same(view, view.clone())
        for i in (0, view.numel() - 1):
            flipped = view.clone()
            flipped.view(torch.int32)[i] ^= 1  # the lowest mantissa bit
            assert not same(view, flipped)
    assert not same(torch.tensor([0.0, 1.0]), torch.tensor([-0.0, 1.0]))  # signed zeros differ in bits
