"""The CUDA C renderings (``kernels/cuda/*.cu``, compiled by ptxas for the register counts)
compute what the Python kernels compute: each is compiled as host C++ (a shim defines the
thread indices; each thread of the launch grid runs in turn) and run on small random operands
against ``get_kernel(name).run``. Skipped without a C++ compiler."""
from __future__ import annotations

import ctypes
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from kernelfi.kernels import ACTIVATIONS, BLOCK, cuda_gridsize, get_kernel, pixel_dims, shortcut_geometry
from kernelfi.types import Launch, ThreadTemplate

CUDA = Path(__file__).resolve().parents[1] / "src" / "kernelfi" / "kernels" / "cuda"
CXX = shutil.which("g++") or shutil.which("c++")

SHIM = """
#define KERNELFI_HOST_SHIM
#include <math.h>
struct dim3_ { unsigned x, y, z; };
static dim3_ threadIdx, blockIdx, blockDim, gridDim;
#define __global__
#define __device__
#define __forceinline__ inline
template <typename F> static void launch(unsigned gx, unsigned gy, unsigned gz, unsigned bx, F f) {
    gridDim = {gx, gy, gz}; blockDim = {bx, 1, 1};
    for (unsigned z = 0; z < gz; ++z) for (unsigned y = 0; y < gy; ++y) for (unsigned x = 0; x < gx; ++x)
        for (unsigned t = 0; t < bx; ++t) { blockIdx = {x, y, z}; threadIdx = {t, 0, 0}; f(); }
}
#define G unsigned gx, unsigned gy, unsigned gz, unsigned bx
#define L(call) launch(gx, gy, gz, bx, [&] { call; })
"""
WRAPPERS = """
extern "C" {
void run_fill(G, int n, float v, float *x) { L(fill(n, v, x, 1)); }
void run_copy(G, int n, const float *x, float *y, int off) { L(copy(n, x, 0, 1, y, off, 1)); }
void run_add_bias(G, float *o, const float *b, int c, int s) { L(add_bias(o, b, c, s)); }
void run_scale_bias(G, float *o, const float *b, int c, int s) { L(scale_bias(o, b, c, s)); }
void run_normalize(G, int n, float *x, const float *m, const float *v, int c, int s, float eps) {
    L(normalize(n, x, m, v, c, s, eps)); }
void run_activate_array(G, float *x, int n, int a, float slope, float threshold) { L(activate_array(x, n, a, slope, threshold)); }
void run_shortcut(G, int size, int minw, int minh, int minc, int stride, int sample, int w1, int h1, int c1,
                  const float *add, int w2, int h2, int c2, float *out) {
    L(shortcut(size, minw, minh, minc, stride, sample, 1, w1, h1, c1, add, w2, h2, c2, 1.f, 1.f, out)); }
void run_im2col(G, int n, const float *im, int h, int w, int kh, int kw, int ph, int pw, int sh, int sw, int oh, int ow,
                float *col) { L(im2col(n, im, h, w, kh, kw, ph, pw, sh, sw, oh, ow, col)); }
void run_im2col_dilated(G, int n, const float *im, int h, int w, int kh, int kw, int ph, int pw, int sh, int sw, int dh,
                        int dw, int oh, int ow, float *col) {
    L(im2col_dilated(n, im, h, w, kh, kw, ph, pw, sh, sw, dh, dw, oh, ow, col)); }
void run_forward_maxpool(G, int n, int h, int w, int c, int stride, int size, int pad, const float *in,
                         float *out, int *idx) { L(forward_maxpool(n, h, w, c, stride, size, pad, in, out, idx)); }
void run_forward_avgpool(G, int n, int w, int h, int c, const float *in, float *out) {
    L(forward_avgpool(n, w, h, c, in, out)); }
void run_softmax(G, int n, const float *in, float temp, float *out) { L(softmax(n, 0, 1, in, temp, out)); }
void run_tmr_vote(G, int n, const unsigned *a, const unsigned *b, const unsigned *c, unsigned *o) {
    L(tmr_vote(n, a, b, c, o)); }
void run_dmr_compare(G, int n, const unsigned *a, const unsigned *b, const unsigned *c, unsigned *o) {
    L(dmr_compare(n, a, b, c, o)); }
void run_range_clamp(G, int n, float *x, float lo, float hi) { L(range_clamp(n, x, lo, hi)); }
void run_forward_local_avgpool(G, int n, int h, int w, int c, int stride, int size, int pad, int cip,
                               const float *in, float *out) { L(forward_local_avgpool(n, h, w, c, stride, size, pad, cip, in, out)); }
void run_forward_maxpool_ceil(G, int n, int h, int w, int c, int stride, int size, int pad, int eh, int ew,
                              const float *in, float *out, int *idx) {
    L(forward_maxpool_ceil(n, h, w, c, stride, size, pad, eh, ew, in, out, idx)); }
void run_forward_local_avgpool_ceil(G, int n, int h, int w, int c, int stride, int size, int pad, int eh, int ew,
                                    int cip, const float *in, float *out) {
    L(forward_local_avgpool_ceil(n, h, w, c, stride, size, pad, eh, ew, cip, in, out)); }
void run_forward_local_avgpool_divisor(G, int n, int h, int w, int c, int stride, int size, int pad, int eh, int ew,
                                       int div, const float *in, float *out) {
    L(forward_local_avgpool_divisor(n, h, w, c, stride, size, pad, eh, ew, div, in, out)); }
void run_upsample(G, int n, const float *x, int w, int h, int c, int stride, float *out) {
    L(upsample(n, x, w, h, c, 1, stride, 1.f, out)); }
void run_adaptive_avgpool(G, int n, const float *in, float *out, int h, int w, int oh, int ow) {
    L(adaptive_avgpool(n, in, out, h, w, oh, ow)); }
void run_max_pool_nchw(G, int n, const float *in, int c, int h, int w, int oh, int ow, int k, int s, int p, int d,
                       float *out, int *idx) { L(max_pool_nchw(n, in, c, h, w, oh, ow, k, s, p, d, out, idx)); }
void run_adaptive_maxpool(G, int n, const float *in, float *out, int *idx, int h, int w, int oh, int ow) {
    L(adaptive_maxpool(n, in, out, idx, h, w, oh, ow)); }
void run_upsample_bilinear(G, int n, float rh, float rw, int ac, const float *in, float *out, int c, int h, int w,
                           int oh, int ow) { L(upsample_bilinear(n, rh, rw, ac, in, out, c, h, w, oh, ow)); }
void run_col2im(G, int n, const float *col, int h, int w, int k, int pad, int stride, int hc, int wc, float *im) {
    L(col2im(n, col, h, w, k, pad, stride, hc, wc, im)); }
void run_scale_channels(G, const float *x, int size, int cs, const float *s, float *o) {
    L(scale_channels(x, size, cs, s, o)); }
void run_binary_op(G, int n, int op, int oh, int ow, const float *a, int ac, int ay, int ax, const float *b,
                   int bc, int by, int bxs, float *o) { L(binary_op(n, op, oh, ow, a, ac, ay, ax, b, bc, by, bxs, o)); }
void run_scalar_op(G, int n, int op, float s, const float *x, float *o) { L(scalar_op(n, op, s, x, o)); }
void run_clamp(G, int n, float lo, float hi, const float *x, float *o) { L(clamp(n, lo, hi, x, o)); }
void run_constant_pad(G, int n, int h, int w, int top, int left, int oh, int ow, float v, const float *x, float *o) {
    L(constant_pad(n, h, w, top, left, oh, ow, v, x, o)); }
void run_group_norm_apply(G, int n, int sp, int per, int affine, const float *x, const float *st, const float *g,
                          const float *b, float *o) { L(group_norm_apply(n, sp, per, affine, x, st, g, b, o)); }
void run_channel_shuffle(G, int n, int hw, int g, int sg, const float *x, float *o) {
    L(channel_shuffle(n, hw, g, sg, x, o)); }
void run_pixel_shuffle(G, int n, int d0, int d1, int d2, int d3, int s0, int s1, int s2, int s3, int s4,
                       const float *x, float *o) { L(pixel_shuffle(n, d0, d1, d2, d3, s0, s1, s2, s3, s4, x, o)); }
void run_reflection_pad2d(G, int h, int w, int t, int l, int oh, int ow, const float *x, float *o) {
    L(reflection_pad2d(h, w, t, l, oh, ow, x, o)); }
void run_replication_pad2d(G, int h, int w, int t, int l, int oh, int ow, const float *x, float *o) {
    L(replication_pad2d(h, w, t, l, oh, ow, x, o)); }
void run_prelu(G, int n, int oh, int ow, const float *x, int xc, int xy, int xx, const float *w,
               int wc, int wy, int wx, float *o) { L(prelu(n, oh, ow, x, xc, xy, xx, w, wc, wy, wx, o)); }
}
"""


@pytest.fixture(scope="module")
def lib(tmp_path_factory: pytest.TempPathFactory) -> ctypes.CDLL:
    if CXX is None:
        pytest.skip("needs a C++ compiler")
    d = tmp_path_factory.mktemp("cuda")
    (d / "math_constants.h").write_text("#define CUDART_INF_F INFINITY\n")
    src = d / "all.cpp"
    src.write_text(SHIM + "".join(f'#include "{p}"\n' for p in sorted(CUDA.glob("*.cu"))) + WRAPPERS)
    so = d / "cuda.so"
    subprocess.run([CXX, "-O1", "-std=c++17", "-shared", "-fPIC", "-x", "c++", f"-I{d}", str(src), "-o", str(so)],
                   check=True, capture_output=True, text=True)
    return ctypes.CDLL(str(so))


def _ptr(a: np.ndarray) -> ctypes.c_void_p:
    return ctypes.c_void_p(a.ctypes.data)


def _grid(n: int) -> tuple[int, int, int, int]:
    gx, gy, gz = cuda_gridsize(n)
    return gx, gy, gz, BLOCK


def _py(name: str, mem: dict[str, torch.Tensor], reads: tuple[str, ...], writes: tuple[str, ...],
        **params: Any) -> dict[str, torch.Tensor]:
    get_kernel(name).run(mem, Launch(0, 0, "t", "t", name, reads, writes, params,
                                     template=ThreadTemplate(threads=0, block=1, slots=())))
    return mem


RNG = np.random.default_rng(7)


def _rand(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


def _lane(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(a.copy()).reshape(1, -1)


def test_elementwise(lib: ctypes.CDLL) -> None:
    x = _rand(37)
    out = np.zeros(37, np.float32)
    lib.run_fill(*_grid(37), 37, ctypes.c_float(2.5), _ptr(out))
    assert (out == 2.5).all()
    y = np.zeros(40, np.float32)
    lib.run_copy(*_grid(37), 37, _ptr(x), _ptr(y), 3)
    want = _py("copy", {"x": _lane(x), "y": torch.zeros(1, 40)}, ("x",), ("y",), n=37, out_offset=3)["y"]
    assert np.array_equal(y, want.numpy().ravel())
    c, s = 3, 600   # two blocks per channel
    o, b = _rand(c * s), _rand(c)
    for name in ("add_bias", "scale_bias"):
        got = o.copy()
        getattr(lib, f"run_{name}")((s - 1) // BLOCK + 1, c, 1, BLOCK, _ptr(got), _ptr(b), c, s)
        want = _py(name, {"o": _lane(o), "l.biases": torch.from_numpy(b)}, ("o", "l.biases"), ("o",),
                   channels=c, spatial=s)["o"]
        assert np.array_equal(got, want.numpy().ravel()), name
    m, v = _rand(c), np.abs(_rand(c)) + 0.5
    got = o.copy()
    lib.run_normalize(*_grid(c * s), c * s, _ptr(got), _ptr(m), _ptr(v), c, s, ctypes.c_float(1e-5))
    want = _py("normalize", {"o": _lane(o), "l.rolling_mean": torch.from_numpy(m),
                             "l.rolling_variance": torch.from_numpy(v)},
               ("o", "l.rolling_mean", "l.rolling_variance"), ("o",), channels=c, spatial=s, eps=1e-5)["o"]
    assert np.array_equal(got, want.numpy().ravel())


@pytest.mark.parametrize("act, slope", [(a, 0.1) for a in ACTIVATIONS] + [("leaky", 0.2)])
def test_activate_array(lib: ctypes.CDLL, act: str, slope: float) -> None:
    x = np.concatenate([_rand(50) * 4, np.array([0.0, -0.0, -3.0, 3.0, 6.0, np.inf, -np.inf, np.nan], np.float32)])
    got = x.copy()
    lib.run_activate_array(*_grid(x.size), _ptr(got), x.size, ACTIVATIONS.index(act), ctypes.c_float(slope),
                           ctypes.c_float(20.0))
    params = {"slope": slope} if slope != 0.1 else {}
    want = _py("activate_array", {"x": _lane(x)}, ("x",), ("x",), n=x.size, activation=act,
               **params)["x"].numpy().ravel()
    if act in ("logistic", "tanh", "swish", "gelu", "gelu_tanh", "mish", "elu", "selu", "celu", "softplus"):   # expf/erff/tanhf and torch's may differ in the last bit
        # (1 + erf), (1 + tanh) cancel for x << 0: the host's erff/tanhf and torch's differ there by 1e-7
        # absolute; the host compiler may not fuse gelu_tanh's x + k*x^3 into one FMA as nvcc does
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6 if act.startswith("gelu") else 0, equal_nan=True)
    else:
        assert np.array_equal(got.view(np.int32), want.view(np.int32)) or np.array_equal(got, want, equal_nan=True)


@pytest.mark.parametrize("size, stride, pad, cip", [(2, 2, 0, False), (3, 2, 2, True), (3, 1, 2, False), (3, 2, 3, True)])
def test_local_avgpool(lib: ctypes.CDLL, size: int, stride: int, pad: int, cip: bool) -> None:
    c, h, w = 3, 7, 6
    oh, ow = (h + pad - size) // stride + 1, (w + pad - size) // stride + 1
    x = _rand(c * h * w)
    got = np.zeros(c * oh * ow, np.float32)
    lib.run_forward_local_avgpool(*_grid(got.size), got.size, h, w, c, stride, size, pad, int(cip), _ptr(x), _ptr(got))
    params = dict(channels=c, height=h, width=w, size=size, stride=stride, pad=pad, out_h=oh, out_w=ow)
    if cip:
        params["count_include_pad"] = True
    want = _py("forward_local_avgpool", {"x": _lane(x)}, ("x",), ("o",), **params)["o"]
    assert np.array_equal(got, want.numpy().ravel())


@pytest.mark.parametrize("size, stride, pad, eh, div", [(2, 2, 0, 0, 3), (3, 2, 2, 0, 5), (3, 4, 2, 1, 2)])
def test_local_avgpool_divisor(lib: ctypes.CDLL, size: int, stride: int, pad: int, eh: int, div: int) -> None:
    c, h, w = 3, 8, 8
    oh, ow = ((n + pad + eh - size) // stride + 1 for n in (h, w))
    x = _rand(c * h * w)
    got = np.zeros(c * oh * ow, np.float32)
    lib.run_forward_local_avgpool_divisor(*_grid(got.size), got.size, h, w, c, stride, size, pad, eh, eh, div, _ptr(x),
                                          _ptr(got))
    params = dict(channels=c, height=h, width=w, size=size, stride=stride, pad=pad, out_h=oh, out_w=ow, divisor=div)
    if eh:
        params.update(ceil_pad_h=eh, ceil_pad_w=eh)
    want = _py("forward_local_avgpool", {"x": _lane(x)}, ("x",), ("o",), **params)["o"]
    assert np.array_equal(got, want.numpy().ravel())


@pytest.mark.parametrize("h, w, oh, ow", [(7, 7, 3, 3), (1, 1, 7, 7), (8, 6, 2, 5)])
def test_adaptive_avgpool(lib: ctypes.CDLL, h: int, w: int, oh: int, ow: int) -> None:
    c = 3
    x = _rand(c * h * w)
    got = np.zeros(c * oh * ow, np.float32)
    lib.run_adaptive_avgpool(*_grid(got.size), got.size, _ptr(x), _ptr(got), h, w, oh, ow)
    want = _py("adaptive_avgpool", {"x": _lane(x)}, ("x",), ("o",), channels=c, height=h, width=w, out_h=oh,
               out_w=ow)["o"]
    assert np.array_equal(got, want.numpy().ravel())


@pytest.mark.parametrize("h, k, stride, pad", [(4, 2, 2, 0), (6, 3, 2, 1), (5, 3, 1, 1), (7, 5, 2, 2)])
def test_col2im(lib: ctypes.CDLL, h: int, k: int, stride: int, pad: int) -> None:
    """The transposed convolution's scatter: same values bit for bit (the same summation order)."""
    c, w = 2, h + 1
    hc, wc = ((n + 2 * pad - k) // stride + 1 for n in (h, w))
    col = _rand(c * k * k * hc * wc)
    got = np.full(c * h * w, 7.0, np.float32)
    lib.run_col2im(*_grid(got.size), got.size, _ptr(col), h, w, k, pad, stride, hc, wc, _ptr(got))
    want = _py("col2im", {"col": _lane(col)}, ("col",), ("im",), channels=c, height=h, width=w, ksize=k,
               stride=stride, pad=pad, height_col=hc, width_col=wc)["im"]
    assert np.array_equal(got, want.numpy().ravel())


@pytest.mark.parametrize("h, w, oh, ow", [(7, 7, 3, 3), (1, 1, 7, 7), (8, 6, 2, 5)])
def test_adaptive_maxpool(lib: ctypes.CDLL, h: int, w: int, oh: int, ow: int) -> None:
    c = 3
    x = _rand(c * h * w)
    x[min(4, x.size - 1)] = np.nan   # PyTorch's isnan rule: the NaN wins its windows
    got = np.zeros(c * oh * ow, np.float32)
    idx = np.zeros(c * oh * ow, np.int32)
    lib.run_adaptive_maxpool(*_grid(got.size), got.size, _ptr(x), _ptr(got), _ptr(idx), h, w, oh, ow)
    want = _py("adaptive_maxpool", {"x": _lane(x)}, ("x",), ("o", "i"), channels=c, height=h, width=w, out_h=oh,
               out_w=ow)
    assert np.array_equal(got, want["o"].numpy().ravel(), equal_nan=True)
    assert np.array_equal(idx, want["i"].numpy().ravel())


@pytest.mark.parametrize("h, w, k, st, pad, d", [(9, 9, 3, 2, 1, 2), (8, 7, 2, 1, 1, 3), (6, 6, 2, 2, 0, 2)])
def test_max_pool_nchw(lib: ctypes.CDLL, h: int, w: int, k: int, st: int, pad: int, d: int) -> None:
    c = 2
    oh, ow = ((n + 2 * pad - d * (k - 1) - 1) // st + 1 for n in (h, w))
    x = _rand(c * h * w)
    x[5] = np.nan
    got = np.zeros(c * oh * ow, np.float32)
    idx = np.zeros(c * oh * ow, np.int32)
    lib.run_max_pool_nchw(*_grid(got.size), got.size, _ptr(x), c, h, w, oh, ow, k, st, pad, d, _ptr(got), _ptr(idx))
    want = _py("max_pool_nchw", {"x": _lane(x)}, ("x",), ("o", "i"), channels=c, height=h, width=w, size=k, stride=st,
               pad=pad, dilation=d, out_h=oh, out_w=ow)
    assert np.array_equal(got, want["o"].numpy().ravel(), equal_nan=True)
    assert np.array_equal(idx, want["i"].numpy().ravel())


def test_upsample(lib: ctypes.CDLL) -> None:
    c, h, w, st = 3, 4, 5, 2
    x = _rand(c * h * w)
    n = c * h * w * st * st
    got = np.zeros(n, np.float32)
    lib.run_upsample(*_grid(n), n, _ptr(x), w, h, c, st, _ptr(got))
    want = _py("upsample", {"x": _lane(x), "o": torch.zeros(1, n)}, ("x", "o"), ("o",), channels=c, height=h,
               width=w, stride=st, scale=1.0)["o"]
    assert np.array_equal(got, want.numpy().ravel())


@pytest.mark.parametrize("h, w, oh, ow, factor", [(4, 5, 8, 10, 2.0), (3, 4, 5, 7, None), (2, 6, 6, 18, 3.0)])
@pytest.mark.parametrize("align", [False, True])
def test_upsample_bilinear(lib: ctypes.CDLL, h: int, w: int, oh: int, ow: int, factor: float | None,
                           align: bool) -> None:
    from kernelfi.kernels import bilinear_scale
    c = 3
    x = _rand(c * h * w)
    rh, rw = bilinear_scale(h, oh, align, factor), bilinear_scale(w, ow, align, factor)
    got = np.zeros(c * oh * ow, np.float32)
    lib.run_upsample_bilinear(*_grid(oh * ow), oh * ow, ctypes.c_float(rh), ctypes.c_float(rw), int(align), _ptr(x),
                              _ptr(got), c, h, w, oh, ow)
    want = _py("upsample_bilinear", {"x": _lane(x)}, ("x",), ("o",), channels=c, height=h, width=w, out_h=oh,
               out_w=ow, align_corners=align, rheight=rh, rwidth=rw)["o"]
    assert np.array_equal(got, want.numpy().ravel())


def test_scale_channels(lib: ctypes.CDLL) -> None:
    c, sp = 3, 200
    x, sc = _rand(c * sp), _rand(c)
    got = np.zeros(c * sp, np.float32)
    lib.run_scale_channels(*_grid(c * sp), _ptr(x), c * sp, sp, _ptr(sc), _ptr(got))
    want = _py("scale_channels", {"x": _lane(x), "s": _lane(sc)}, ("x", "s"), ("o",), channels=c, spatial=sp)["o"]
    assert np.array_equal(got, want.numpy().ravel())


@pytest.mark.parametrize("op", ["add", "sub", "mul"])
@pytest.mark.parametrize("sa, sb", [((3, 4, 5), (3, 4, 5)), ((3, 4, 5), (1, 4, 1)), ((1, 1, 5), (3, 4, 1))])
def test_binary_op(lib: ctypes.CDLL, op: str, sa: tuple[int, int, int], sb: tuple[int, int, int]) -> None:
    from kernelfi.kernels import broadcast_strides
    out = tuple(max(p, q) for p, q in zip(sa, sb))
    a, b = _rand(*sa).ravel(), _rand(*sb).ravel()
    n = out[0] * out[1] * out[2]
    got = np.zeros(n, np.float32)
    lib.run_binary_op(*_grid(n), n, ["add", "sub", "mul"].index(op), out[1], out[2], _ptr(a),
                      *broadcast_strides(sa, out), _ptr(b), *broadcast_strides(sb, out), _ptr(got))
    want = _py("binary_op", {"a": _lane(a), "b": _lane(b)}, ("a", "b"), ("o",), op=op, out=out, a=sa, b=sb)["o"]
    assert np.array_equal(got, want.numpy().ravel())


@pytest.mark.parametrize("k", [1, 3])
def test_prelu(lib: ctypes.CDLL, k: int) -> None:
    from kernelfi.kernels import broadcast_strides
    out = (3, 4, 5)
    x = np.concatenate([_rand(*out).ravel()[:-4], np.array([0.0, -0.0, -np.inf, np.nan], np.float32)])
    w = _rand(k)
    got = np.zeros(x.size, np.float32)
    lib.run_prelu(*_grid(x.size), x.size, out[1], out[2], _ptr(x), *broadcast_strides(out, out), _ptr(w),
                  *broadcast_strides((k, 1, 1), out), _ptr(got))
    want = _py("prelu", {"x": _lane(x), "l.weights": torch.from_numpy(w)}, ("x", "l.weights"), ("o",),
               out=out, w=(k, 1, 1))["o"].numpy().ravel()
    assert np.array_equal(got.view(np.int32)[:-1], want.view(np.int32)[:-1]) and np.isnan(got[-1]) and np.isnan(want[-1])


@pytest.mark.parametrize("add, out", [((4, 8, 8), (8, 4, 4)), ((8, 2, 2), (4, 4, 4)), ((3, 5, 5), (3, 5, 5))])
def test_shortcut(lib: ctypes.CDLL, add: tuple[int, int, int], out: tuple[int, int, int]) -> None:
    g = shortcut_geometry(add, out)
    assert g is not None
    a, o = _rand(int(np.prod(add))), _rand(int(np.prod(out)))
    size = g["minw"] * g["minh"] * g["minc"]
    got = o.copy()
    lib.run_shortcut(*_grid(size), size, g["minw"], g["minh"], g["minc"], g["stride"], g["sample"],
                     g["w1"], g["h1"], g["c1"], _ptr(a), g["w2"], g["h2"], g["c2"], _ptr(got))
    p = {k: g[k] for k in ("w1", "h1", "c1", "w2", "h2", "c2")}
    want = _py("shortcut", {"o": _lane(o), "a": _lane(a)}, ("o", "a"), ("o",), **p)["o"]
    assert np.array_equal(got, want.numpy().ravel())


@pytest.mark.parametrize("k, stride, pad", [(3, 1, 1), (2, 2, 0), (3, 2, 1)])
def test_im2col(lib: ctypes.CDLL, k: int, stride: int, pad: int) -> None:
    _check_im2col(lib, (k, k), (stride, stride), (pad, pad))


@pytest.mark.parametrize("k, stride, pad", [((1, 3), (1, 1), (0, 1)), ((3, 1), (2, 1), (1, 0)), ((2, 3), (1, 2), (1, 1))])
def test_im2col_non_square(lib: ctypes.CDLL, k: tuple[int, int], stride: tuple[int, int], pad: tuple[int, int]) -> None:
    _check_im2col(lib, k, stride, pad)


def _check_im2col(lib: ctypes.CDLL, k: tuple[int, int], stride: tuple[int, int], pad: tuple[int, int]) -> None:
    c, h, w = 2, 6, 5
    oh, ow = (h + 2 * pad[0] - k[0]) // stride[0] + 1, (w + 2 * pad[1] - k[1]) // stride[1] + 1
    im = _rand(c * h * w)
    col = np.full(c * k[0] * k[1] * oh * ow, 7.0, np.float32)
    n = c * oh * ow
    lib.run_im2col((n + BLOCK - 1) // BLOCK, 1, 1, BLOCK, n, _ptr(im), h, w, *k, *pad, *stride, oh, ow, _ptr(col))
    extra = {"ksize_w": k[1], "stride_w": stride[1], "pad_w": pad[1]} if (k[0], stride[0], pad[0]) != (k[1], stride[1], pad[1]) else {}
    want = _py("im2col", {"im": _lane(im)}, ("im",), ("col",), channels=c, height=h, width=w, ksize=k[0],
               stride=stride[0], pad=pad[0], dilation=1, out_h=oh, out_w=ow, **extra)["col"]
    assert np.array_equal(col, want.numpy().ravel())


@pytest.mark.parametrize("k, stride, pad, dil", [((2, 2), (1, 1), (1, 1), (2, 2)), ((3, 2), (1, 2), (2, 1), (2, 3)),
                                                ((2, 3), (2, 1), (0, 2), (1, 2))])
def test_im2col_dilated(lib: ctypes.CDLL, k: tuple[int, int], stride: tuple[int, int], pad: tuple[int, int],
                        dil: tuple[int, int]) -> None:
    """PyTorch's dilated im2col_kernel (the rendering of dilated launches) against ``run``
    (F.unfold with dilation)."""
    c, h, w = 2, 7, 6
    oh, ow = ((n + 2 * p - d * (kk - 1) - 1) // s + 1 for n, kk, s, p, d in zip((h, w), k, stride, pad, dil))
    im = _rand(c * h * w)
    col = np.full(c * k[0] * k[1] * oh * ow, 7.0, np.float32)
    n = c * oh * ow
    lib.run_im2col_dilated((n + BLOCK - 1) // BLOCK, 1, 1, BLOCK, n, _ptr(im), h, w, *k, *pad, *stride, *dil, oh, ow,
                           _ptr(col))
    extra = {"ksize_w": k[1], "stride_w": stride[1], "pad_w": pad[1], "dilation_w": dil[1]} \
        if (k[0], stride[0], pad[0], dil[0]) != (k[1], stride[1], pad[1], dil[1]) else {}
    want = _py("im2col", {"im": _lane(im)}, ("im",), ("col",), channels=c, height=h, width=w, ksize=k[0],
               stride=stride[0], pad=pad[0], dilation=dil[0], out_h=oh, out_w=ow, **extra)["col"]
    assert np.array_equal(col, want.numpy().ravel())


@pytest.mark.parametrize("size, stride, pad", [(2, 2, 0), (3, 2, 2), (3, 1, 2)])
def test_pools(lib: ctypes.CDLL, size: int, stride: int, pad: int) -> None:
    c, h, w = 3, 7, 6
    x = np.round(_rand(c * h * w), 0)   # ties: the first of equal maxima is the argmax
    x[5] = np.nan
    oh, ow = (h + pad - size) // stride + 1, (w + pad - size) // stride + 1
    out, idx = np.zeros(c * oh * ow, np.float32), np.zeros(c * oh * ow, np.int32)
    lib.run_forward_maxpool(*_grid(out.size), out.size, h, w, c, stride, size, pad, _ptr(x), _ptr(out), _ptr(idx))
    mem = _py("forward_maxpool", {"x": _lane(x)}, ("x",), ("o", "i"), channels=c, height=h, width=w, size=size,
              stride=stride, pad=pad, out_h=oh, out_w=ow)
    assert np.array_equal(out, mem["o"].numpy().ravel()) and np.array_equal(idx, mem["i"].numpy().ravel())
    avg = np.zeros(c, np.float32)
    lib.run_forward_avgpool(*_grid(c), c, w, h, c, _ptr(x), _ptr(avg))
    want = _py("forward_avgpool", {"x": _lane(x)}, ("x",), ("o",), channels=c, height=h, width=w)["o"]
    assert np.array_equal(avg, want.numpy().ravel(), equal_nan=True)


@pytest.mark.parametrize("size, stride, pad, eh, ew", [(3, 3, 0, 2, 1), (3, 4, 2, 1, 3), (2, 5, 0, 3, 0)])
def test_ceil_pools(lib: ctypes.CDLL, size: int, stride: int, pad: int, eh: int, ew: int) -> None:
    # the *_ceil renderings (ceil_mode's far-side rows/columns as two more arguments)
    c, h, w = 3, 7, 6
    x = np.round(_rand(c * h * w), 0)
    oh, ow = (h + pad + eh - size) // stride + 1, (w + pad + ew - size) // stride + 1
    geo = dict(channels=c, height=h, width=w, size=size, stride=stride, pad=pad, out_h=oh, out_w=ow,
               ceil_pad_h=eh, ceil_pad_w=ew)
    out, idx = np.zeros(c * oh * ow, np.float32), np.zeros(c * oh * ow, np.int32)
    lib.run_forward_maxpool_ceil(*_grid(out.size), out.size, h, w, c, stride, size, pad, eh, ew, _ptr(x), _ptr(out), _ptr(idx))
    mem = _py("forward_maxpool", {"x": _lane(x)}, ("x",), ("o", "i"), **geo)
    assert np.array_equal(out, mem["o"].numpy().ravel()) and np.array_equal(idx, mem["i"].numpy().ravel())
    for cip in (False, True):
        got = np.zeros(c * oh * ow, np.float32)
        lib.run_forward_local_avgpool_ceil(*_grid(got.size), got.size, h, w, c, stride, size, pad, eh, ew, int(cip),
                                           _ptr(x), _ptr(got))
        want = _py("forward_local_avgpool", {"x": _lane(x)}, ("x",), ("o",), **geo, count_include_pad=cip)["o"]
        assert np.array_equal(got, want.numpy().ravel(), equal_nan=True)  # a window all past the input: 0/0


def test_softmax(lib: ctypes.CDLL) -> None:
    x = _rand(10) * 4
    x[3] = 7.9   # the running largest is int(7.9) = 7
    out = np.zeros(10, np.float32)
    lib.run_softmax(1, 1, 1, BLOCK, 10, _ptr(x), ctypes.c_float(2.0), _ptr(out))
    want = _py("softmax", {"x": _lane(x)}, ("x",), ("o",), n=10, temperature=2.0)["o"]
    np.testing.assert_allclose(out, want.numpy().ravel(), rtol=2e-6)


def test_hardening_elementwise(lib: ctypes.CDLL) -> None:
    a, b, c = (RNG.integers(0, 2**31, 33, dtype=np.int64).astype(np.uint32) for _ in range(3))
    b[:10] = a[:10]
    got = np.zeros(33, np.uint32)
    for name in ("tmr_vote", "dmr_compare"):
        getattr(lib, f"run_{name}")(*_grid(33), 33, _ptr(a), _ptr(b), _ptr(c), _ptr(got))
        t = {k: torch.from_numpy(v.view(np.int32).copy()).reshape(1, -1) for k, v in zip("abc", (a, b, c))}
        want = _py(name, t, ("a", "b", "c"), ("o",), n=33)["o"]
        assert np.array_equal(got.view(np.int32), want.numpy().ravel()), name
    x = np.concatenate([_rand(20), np.array([np.nan, -0.0, 5.0], np.float32)])
    got = x.copy()
    lib.run_range_clamp(*_grid(x.size), x.size, _ptr(got), ctypes.c_float(-0.5), ctypes.c_float(1.0))
    want = _py("range_clamp", {"x": _lane(x)}, ("x",), ("x",), n=x.size, lo=-0.5, hi=1.0)["x"]
    assert np.array_equal(got.view(np.int32), want.numpy().ravel().view(np.int32))


@pytest.mark.parametrize("op, c", [("add", 0.1), ("sub", 1.3), ("rsub", 2.0), ("mul", -0.7), ("div", 3.0), ("div", 0.1)])
def test_scalar_op(lib: ctypes.CDLL, op: str, c: float) -> None:
    from kernelfi.kernels import scalar_operand
    n = 700
    x = _rand(n)
    got = np.zeros(n, np.float32)
    code = {"add": 0, "sub": 1, "rsub": 2}.get(op, 3)   # div: the host's reciprocal, then the multiply
    lib.run_scalar_op(*_grid(n), n, code, ctypes.c_float(scalar_operand(op, c)), _ptr(x), _ptr(got))
    want = _py("scalar_op", {"x": _lane(x)}, ("x",), ("o",), n=n, op=op, scalar=c)["o"]
    assert np.array_equal(got, want.numpy().ravel())


@pytest.mark.parametrize("lo, hi", [(-0.5, 0.75), (0.0, None), (None, 0.2)])
def test_clamp(lib: ctypes.CDLL, lo: float | None, hi: float | None) -> None:
    n = 600
    x = _rand(n)
    x[::7] = np.nan
    got = np.zeros(n, np.float32)
    lib.run_clamp(*_grid(n), n, ctypes.c_float(-np.inf if lo is None else lo), ctypes.c_float(np.inf if hi is None else hi),
                  _ptr(x), _ptr(got))
    bounds = {k: v for k, v in (("min", lo), ("max", hi)) if v is not None}
    want = _py("clamp", {"x": _lane(x)}, ("x",), ("o",), n=n, **bounds)["o"].numpy().ravel()
    assert np.array_equal(np.isnan(got), np.isnan(x)) and np.array_equal(got[~np.isnan(x)], want[~np.isnan(x)])


def test_constant_pad_and_copy_from_an_offset(lib: ctypes.CDLL) -> None:
    c, h, w, top, left, oh, ow = 3, 4, 5, 1, 2, 7, 8
    x = _rand(c * h * w)
    n = c * oh * ow
    got = np.zeros(n, np.float32)
    lib.run_constant_pad(*_grid(n), n, h, w, top, left, oh, ow, ctypes.c_float(-0.5), _ptr(x), _ptr(got))
    want = _py("constant_pad", {"x": _lane(x)}, ("x",), ("o",), channels=c, height=h, width=w, top=top, left=left,
               out_h=oh, out_w=ow, value=-0.5)["o"]
    assert np.array_equal(got, want.numpy().ravel())
    # a channel slice: copy_kernel from input + in_offset (a host-side pointer offset)
    part = np.ascontiguousarray(x[h * w:])
    got = np.zeros(2 * h * w, np.float32)
    lib.run_copy(*_grid(2 * h * w), 2 * h * w, _ptr(part), _ptr(got), 0)
    want = _py("copy", {"x": _lane(x)}, ("x",), ("o",), n=2 * h * w, out_offset=0, in_offset=h * w)["o"]
    assert np.array_equal(got, want.numpy().ravel())


@pytest.mark.parametrize("affine", [True, False])
def test_group_norm_apply(lib: ctypes.CDLL, affine: bool) -> None:
    c, g, sp = 6, 3, 7
    x, st, gm, bt = _rand(c * sp), _rand(2 * g), _rand(c), _rand(c)
    st[1::2] = np.abs(st[1::2]) + 0.5  # rstd > 0
    got = np.zeros(c * sp, np.float32)
    lib.run_group_norm_apply(*_grid(c * sp), c * sp, sp, c // g, int(affine), _ptr(x), _ptr(st), _ptr(gm), _ptr(bt),
                             _ptr(got))
    mem = {"x": _lane(x), "st": _lane(st), "l.scales": torch.from_numpy(gm), "l.biases": torch.from_numpy(bt)}
    want = _py("group_norm_apply", mem, ("x", "st", "l.scales", "l.biases"), ("o",),
               channels=c, groups=g, spatial=sp, affine=affine)["o"].numpy().ravel()
    assert np.array_equal(got.view(np.int32), want.view(np.int32))


def test_channel_shuffle(lib: ctypes.CDLL) -> None:
    c, g, hw = 12, 3, 5
    x = _rand(c * hw)
    got = np.zeros(c * hw, np.float32)
    lib.run_channel_shuffle(*_grid(c * hw), c * hw, hw, g, (c // g) * hw, _ptr(x), _ptr(got))
    want = _py("channel_shuffle", {"x": _lane(x)}, ("x",), ("o",), channels=c, groups=g, spatial=hw)["o"]
    assert np.array_equal(got, want.numpy().ravel())
    # and against PyTorch's own shuffle
    assert np.array_equal(got, torch.nn.functional.channel_shuffle(torch.from_numpy(x).view(1, c, 1, hw), g)
                          .numpy().ravel())


@pytest.mark.parametrize("inverse", [False, True])
def test_pixel_shuffle(lib: ctypes.CDLL, inverse: bool) -> None:
    c, h, w, r = (2, 6, 4, 2) if inverse else (18, 2, 3, 3)
    p = {"channels": c, "height": h, "width": w, "factor": r, "inverse": inverse}
    x = _rand(c * h * w)
    got = np.zeros(c * h * w, np.float32)
    sizes, strides = pixel_dims(p)
    lib.run_pixel_shuffle(*_grid(c * h * w), c * h * w, *sizes, *strides, _ptr(x), _ptr(got))
    want = _py("pixel_shuffle", {"x": _lane(x)}, ("x",), ("o",), **p)["o"]
    assert np.array_equal(got, want.numpy().ravel())
    fn = torch.nn.functional.pixel_unshuffle if inverse else torch.nn.functional.pixel_shuffle
    assert np.array_equal(got, fn(torch.from_numpy(x).view(1, c, h, w), r).numpy().ravel())


@pytest.mark.parametrize("mode", ["reflect", "replicate"])
def test_reflect_and_replicate_pads(lib: ctypes.CDLL, mode: str) -> None:
    # PyTorch's grid: blocks over the output plane in x, the plane in blockIdx.y
    c, h, w, (left, right, top, bottom) = 3, 4, 5, (2, 1, 3, 0)
    oh, ow = h + top + bottom, w + left + right
    x = _rand(c * h * w)
    got = np.zeros(c * oh * ow, np.float32)
    run = lib.run_reflection_pad2d if mode == "reflect" else lib.run_replication_pad2d
    run(-(-oh * ow // BLOCK), c, 1, BLOCK, h, w, top, left, oh, ow, _ptr(x), _ptr(got))
    kernel = "reflection_pad2d" if mode == "reflect" else "replication_pad2d"
    want = _py(kernel, {"x": _lane(x)}, ("x",), ("o",), channels=c, height=h, width=w, top=top, left=left,
               out_h=oh, out_w=ow)["o"]
    assert np.array_equal(got, want.numpy().ravel())
    ref = torch.nn.functional.pad(torch.from_numpy(x).view(1, c, h, w), (left, right, top, bottom), mode=mode)
    assert np.array_equal(got, ref.numpy().ravel())
