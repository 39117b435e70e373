"""The batch-1 shortcuts of the engine: connected-layer rows as K-blocked FMA chains in C
(``kernels.rows``) and lone-lane convolutions run once where they agree with the doubled call
(``kernels.conv.lone_agrees``). Both must give exactly the values of the calls they replace."""
from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kernelfi.kernels import conv, rows


def _f32(q: Fraction) -> np.float32:
    """``q`` rounded once to the nearest float32 (ties to even), exactly."""
    f = np.float32(float(q))
    best = f
    for n in (np.nextafter(f, np.float32(-np.inf)), np.nextafter(f, np.float32(np.inf))):
        d, db = abs(Fraction(float(n)) - q), abs(Fraction(float(best)) - q)
        if d < db or (d == db and int(n.view(np.uint32)) % 2 == 0):
            best = n
    return best


def _chain(x: list[float], wr: list[float], kc: int) -> np.float32:
    """The order of operations worked out from rows.c's rule, with exact rational arithmetic:
    each block an FMA chain from zero (one rounding per step), block sums added in order."""
    total = None
    for k0 in range(0, len(x), kc):
        acc = np.float32(0.0)
        for a, b in zip(x[k0:k0 + kc], wr[k0:k0 + kc]):
            acc = _f32(Fraction(float(a)) * Fraction(float(b)) + Fraction(float(acc)))
        total = acc if total is None else _f32(Fraction(float(total)) + Fraction(float(acc)))
    assert total is not None
    return total


def test_block_length_by_hand() -> None:
    assert [rows.block_length(k, 192) for k in (1, 100, 192, 193, 300, 383, 384, 400, 9216)] == \
        [1, 100, 192, 96, 150, 191, 192, 192, 192]


@pytest.fixture(params=["default", "generic"])
def library(request: pytest.FixtureRequest):
    """rows.c as built for this machine (AVX-512 transposes where the CPU has them) and its
    generic loops; skipped without a C compiler."""
    with pytest.MonkeyPatch.context() as mp:
        if request.param == "generic":
            mp.setenv("KERNELFI_NATIVE_GENERIC", "1")
        mp.setattr(rows, "_tried", False)
        mp.setattr(rows, "_lib", None)
        lib = rows._library()
        if lib is None:
            pytest.skip("no C compiler: the padded SGEMM only")
        yield lib


def test_chains_equal_the_exact_order_of_operations(library) -> None:
    """21 output rows (one 16-row tile and a tail of 5), K = 50 (one short block) and 200 with
    blocks of 96 (96, 96, 8: a masked tail), and 3 input rows: every value equals the chain
    computed exactly by hand."""
    g = torch.Generator().manual_seed(3)
    for k, kc in ((50, 192), (200, 96)):
        w = torch.randn(21, k, generator=g)
        x = torch.randn(3, k, generator=g)
        y = rows._call(library, x, w, kc)
        want = [[_chain(x[b].tolist(), w[n].tolist(), kc) for n in range(21)] for b in range(3)]
        assert y.numpy().tolist() == np.array(want, dtype=np.float32).tolist()


def test_chained_rows_refuses_what_its_check_does_not_confirm(monkeypatch: pytest.MonkeyPatch) -> None:
    """The C path is used only where it reproduces the call it replaces: against a reference
    that sums in float64 (another rounding) the self-check fails and the caller keeps its call."""
    monkeypatch.setattr(rows, "_checked", {})
    if rows._library() is None:
        pytest.skip("no C compiler")
    g = torch.Generator().manual_seed(4)
    w = torch.randn(40, 777, generator=g)
    x = torch.randn(2, 777, generator=g)
    assert rows.chained_rows(x, w, lambda r: (r.double() @ w.double().t()).float()) is None
    assert rows.chained_rows(x.t().contiguous().t(), w, lambda r: F.linear(r, w)) is None  # not contiguous
    assert rows.chained_rows(torch.randn(rows.MAX_ROWS + 1, 777), w, lambda r: F.linear(r, w)) is None


def test_rows_linear_values_unchanged_by_the_chains(monkeypatch: pytest.MonkeyPatch) -> None:
    """rows_linear of 1..8 rows gives the padded SGEMM's rows whether or not the C path runs."""
    g = torch.Generator().manual_seed(5)
    for n, k in ((64, 4096), (100, 300), (33, 2048)):
        w = torch.randn(n, k, generator=g)
        x = torch.randn(8, k, generator=g)
        with monkeypatch.context() as mp:
            mp.setattr(rows, "chained_rows", lambda *a: None)
            mp.setattr(conv, "chained_rows", lambda *a: None)
            ref = [conv.rows_linear(x[:b], w) for b in range(1, 9)]
        for b in range(1, 9):
            assert torch.equal(conv.rows_linear(x[:b], w), ref[b - 1]), (n, k, b)


@pytest.mark.parametrize("k", [98, 99, 50, 200])
@pytest.mark.parametrize("n", [3, 10])
def test_rows_linear_row_independent_of_position_and_batch(monkeypatch: pytest.MonkeyPatch, k: int, n: int) -> None:
    """A lane's row is bit for bit the row it gets alone, at any position of batches of 2..300
    rows taken as slices of a bigger tensor (so at every 64-byte alignment: with K = 98 rows
    sit 392 bytes apart), with and without the C chains; and within float32 rounding of the
    product in float64."""
    monkeypatch.setattr(conv, "_checked", {})
    g = torch.Generator().manual_seed(7 + k + n)
    w = torch.randn(n, k, generator=g)
    big = torch.randn(320, k, generator=g)
    mine = big[17].clone()
    alone = conv.rows_linear(mine[None].clone(), w)[0]
    want = (mine.double() @ w.double().t()).float()
    assert torch.allclose(alone, want, rtol=1e-5, atol=1e-5)
    for chains in (True, False):
        with monkeypatch.context() as mp:
            if not chains:
                mp.setattr(conv, "chained_rows", lambda *a: None)
            for b in (1, 2, 3, 5, 8, 9, 17, 64, 81, 300):
                for start in (0, 1, 3):
                    for pos in {0, b // 2, b - 1}:
                        batch = big[start:start + b].clone() if start == 0 else big[start:start + b]
                        batch[pos] = mine
                        got = conv.rows_linear(batch, w)[pos]
                        assert torch.equal(got, alone), (chains, b, start, pos)
                        big[start + pos] = torch.randn(k, generator=g)  # undo, new values


def test_lone_lane_convolution_once_gives_the_doubled_calls_values() -> None:
    """A lone lane convolved once (where the self-check allows) equals the doubled call, on
    small and larger maps, strided and padded; a shape's answer is cached."""
    g = torch.Generator().manual_seed(6)
    for c, h, m, ks, st, pad in ((3, 31, 8, 5, 2, 2), (16, 13, 24, 3, 1, 1), (8, 5, 8, 3, 1, 0), (4, 7, 4, 1, 1, 0)):
        x = torch.randn(1, c, h, h, generator=g)
        w = torch.randn(m, c, ks, ks, generator=g)
        kw = dict(stride=st, padding=pad, dilation=1)
        doubled = F.conv2d(torch.cat([x, x]), w, **kw)[:1]
        assert torch.equal(conv.lane_conv2d(x, w, check_lone=True, **kw), doubled)
        assert torch.equal(conv.lane_conv2d(x, w, **kw), doubled)
        assert isinstance(conv.lone_agrees(x, w, kw), bool)
