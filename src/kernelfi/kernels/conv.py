"""The convolution path: ``im2col`` (Darknet's im2col_gpu_kernel), ``gemm`` (cuBLAS's Maxwell
SGEMM, its thread program in ``sgemm.py``) and ``fused_conv`` (golden-run shortcut).

Lane determinism matters more than speed here: a fault campaign compares each faulty lane with
a golden lane that may have been computed in another call with another lane count, so a lane's
GEMM result must not depend on the other lanes. ``gemm`` therefore multiplies lane by lane with
identically shaped, 64-byte aligned operands (the same BLAS code path for every lane).
"""
from __future__ import annotations

import contextlib
from typing import Any, ClassVar, Iterator, Mapping

import torch
import torch.nn.functional as F

from kernelfi._utils import KernelfiError, c_div
from kernelfi.types import AddressHalf, Launch, ThreadTemplate

from ._base import BLOCK, get_buf, is_weight_name, lane_flat, operand_flat, p_int, put, ptxas_registers, register_kernel
from ._sass import Stream, StreamKernel, addr, epilogue, idiv, loop
from .rows import chained_rows
from .sgemm import SGEMM_TILES, sgemm_shape, sgemm_stream

Mem = dict[str, torch.Tensor]

#: The width-axis parameters of a non-square im2col (Darknet's ksize/stride/pad/dilation are
#: the height axis, and both axes when these are absent).
W_AXIS: dict[str, str] = {"ksize": "ksize_w", "stride": "stride_w", "pad": "pad_w", "dilation": "dilation_w"}

#: The padding after the input (bottom, right) where it differs from the padding before it
#: (``pad`` top, ``pad_w`` left): PyTorch's ``padding='same'`` of an even kernel pads
#: ``(k-1)//2`` before and the rest after. Present only when asymmetric, so every symmetric
#: launch keeps its params; absent, each axis pads the same on both sides.
PAD_AFTER: dict[str, str] = {"pad": "pad_h_after", "pad_w": "pad_w_after"}

#: Every im2col param that makes its geometry other than Darknet's square, symmetric one:
#: consumers that read square windows (crop cones, ABFT's virtual im2col) refuse these.
NON_SQUARE: tuple[str, ...] = (*W_AXIS.values(), *PAD_AFTER.values())


def square_im2col(params: Mapping[str, Any]) -> bool:
    """Whether an im2col launch has Darknet's square, symmetrically padded geometry (none of
    ``NON_SQUARE`` among its params): what the crop cones and ABFT's virtual im2col can read."""
    return not any(key in params for key in NON_SQUARE)


def dilated_im2col(params: Mapping[str, Any]) -> bool:
    """Whether an im2col launch is dilated (``dilation`` or ``dilation_w`` other than 1): such
    launches run PyTorch's/Caffe's dilated im2col (``im2col_dilated`` in cuda/conv.cu, its own
    template and register count); every other launch keeps Darknet's undilated kernel."""
    dh = int(params.get("dilation", 1))
    return dh != 1 or int(params.get("dilation_w", dh)) != 1


def im2col_geometry(params: Mapping[str, Any], kernel: str) -> dict[str, int]:
    """An im2col launch's geometry from its params, checked (one line naming ``kernel``).

    Non-square kernels, strides, paddings and dilations (PyTorch's (1, 3) kernels, ``padding=
    'same'`` of them) carry the width axis as ``ksize_w``, ``stride_w``, ``pad_w``,
    ``dilation_w``; the square keys are the height axis (and both when those are absent).
    ``pad_h_after``/``pad_w_after`` (``PAD_AFTER``) pad the bottom/right edge where that differs
    from the top/left; only the output extent reads them (the kernel offsets by the top/left)."""
    g = {k: p_int(params, k, kernel) for k in ("channels", "height", "width", "ksize", "stride", "pad",
                                                "out_h", "out_w")}
    g["dilation"] = int(params.get("dilation", 1))
    for k, kw in W_AXIS.items():
        g[kw] = int(params.get(kw, g[k]))
    for k, ka in PAD_AFTER.items():
        g[ka] = int(params.get(ka, g[k]))
    g["channel_offset"] = int(params.get("channel_offset", 0))
    g["group_channels"] = int(params.get("group_channels", g["channels"]))
    for axis, size, sfx in (("out_h", g["height"], ""), ("out_w", g["width"], "_w")):
        k, st, pad, dil = (g[n + sfx if sfx and n + sfx in g else n] for n in ("ksize", "stride", "pad", "dilation"))
        after = g["pad_h_after" if not sfx else "pad_w_after"]
        want = c_div(size + pad + after - dil * (k - 1) - 1, st) + 1
        if g[axis] != want:
            raise KernelfiError(f"kernel '{kernel}': {axis}={g[axis]} but the geometry gives {want}")
    if g["channel_offset"] + g["group_channels"] > g["channels"]:
        raise KernelfiError(f"kernel '{kernel}': channels {g['channel_offset']}+{g['group_channels']} "
                            f"exceed the {g['channels']} of the input")
    return g


def im2col_axes(g: Mapping[str, int]) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int], tuple[int, int]]:
    """(kernel, stride, pad, dilation) of a geometry, each as (height, width)."""
    return tuple((g[k], g[kw]) for k, kw in W_AXIS.items())  # type: ignore[return-value]


def _beyond(g: Mapping[str, int]) -> tuple[int, int]:
    """Rows and columns a window reads past the padded input's bottom and right edge: only
    where the kernel is wider than the padded input and Darknet's C division still gives an
    output (its im2col reads zeros there; ``F.unfold`` and ``F.conv2d`` would refuse)."""
    ks, st, pad, dil = im2col_axes(g)
    after = (g["pad_h_after"], g["pad_w_after"])
    return tuple(max(0, (g[o] - 1) * st[a] + dil[a] * (ks[a] - 1) + 1 - (g[d] + pad[a] + after[a]))  # type: ignore[return-value]
                 for a, (o, d) in enumerate((("out_h", "height"), ("out_w", "width"))))


def edge_padded(img: torch.Tensor, g: Mapping[str, int]) -> tuple[torch.Tensor, tuple[int, int]]:
    """(image, padding) for ``F.unfold``/``F.conv2d``: the image itself where every window fits
    the padded input and the padding is symmetric (the usual case, unchanged), else zero-padded
    on every side (bottom/right by ``PAD_AFTER``) and past the bottom/right edge as Darknet's
    im2col reads it, with padding 0. Public: the grouped fast path (``lowering.groups``) pads
    a grouped convolution's whole input the way each group's ``fused_conv`` pads its own."""
    bh, bw = _beyond(g)
    ph, pw, ah, aw = g["pad"], g["pad_w"], g["pad_h_after"], g["pad_w_after"]
    if not (bh or bw) and (ah, aw) == (ph, pw):
        return img, (ph, pw)
    return F.pad(img, (pw, aw + bw, ph, ah + bh)), (0, 0)


def group_image(x: torch.Tensor, g: Mapping[str, int], kernel: str) -> torch.Tensor:
    """The group's input channels as (B, group_channels, H, W) from any lane-shaped buffer."""
    per = g["channels"] * g["height"] * g["width"]
    flat = x.reshape(x.shape[0], -1)
    if flat.shape[1] < per:
        raise KernelfiError(f"kernel '{kernel}': input holds {flat.shape[1]} elements per lane, needs {per}")
    img = flat[:, :per].reshape(x.shape[0], g["channels"], g["height"], g["width"])
    return img[:, g["channel_offset"]:g["channel_offset"] + g["group_channels"]]


# --------------------------------------------------------------------------------------------
@register_kernel
class Im2colKernel(StreamKernel):
    """``im2col_gpu_kernel``: one thread per (channel, out row, out col) writes ksize² column
    entries, K index c*ks*ks + kh*ks + kw, N index oh*out_w + ow, zero where the window is in
    the padding (``F.unfold`` builds exactly this matrix; the tests check it by hand). A
    non-square geometry (``W_AXIS`` params) writes ksize × ksize_w entries, K index
    c*kh*kw + i*kw + j: Caffe's/PyTorch's im2col with separate kernel_h/kernel_w. Asymmetric
    padding (``PAD_AFTER`` params) changes only out_h/out_w: the thread still offsets its window
    by the top/left pad and bounds-checks against the unpadded height/width, so the template,
    the register map and the CUDA C are the symmetric kernel's. A dilated launch
    (``dilated_im2col``) is PyTorch's im2col_kernel with dilation: tap (i, j) reads pixel
    (h_in + i*dilation_h, w_in + j*dilation_w), which costs a multiply per coordinate and one
    for the tap's offset in the image (``imad:hw``, ``imad:im_elem``), and ptxas allocates its
    rendering ``im2col_dilated`` more registers; undilated launches keep Darknet's template."""

    name: ClassVar[str] = "im2col"
    regs_allocated: ClassVar[int] = ptxas_registers("im2col")
    example_params = ({"channels": 1, "height": 3, "width": 3, "ksize": 2, "stride": 1, "pad": 0,
                       "dilation": 1, "out_h": 2, "out_w": 2, "channel_offset": 0, "group_channels": 1},
                      {"channels": 1, "height": 3, "width": 3, "ksize": 1, "stride": 1, "pad": 0,
                       "dilation": 1, "out_h": 3, "out_w": 3, "channel_offset": 0, "group_channels": 1,
                       "ksize_w": 3, "pad_w": 1},
                      {"channels": 1, "height": 3, "width": 3, "ksize": 2, "stride": 1, "pad": 0,
                       "dilation": 1, "out_h": 3, "out_w": 3, "channel_offset": 0, "group_channels": 1,
                       "pad_h_after": 1, "pad_w_after": 1},   # padding='same' of a 2x2 kernel
                      {"channels": 1, "height": 5, "width": 5, "ksize": 2, "stride": 1, "pad": 1,
                       "dilation": 2, "out_h": 5, "out_w": 5, "channel_offset": 0, "group_channels": 1})

    def run(self, mem: Mem, launch: Launch) -> None:
        g = im2col_geometry(launch.params, self.name)
        img, pad = edge_padded(group_image(get_buf(mem, launch.reads[0], self.name), g, self.name), g)
        ks, st, _, dil = im2col_axes(g)
        cols = F.unfold(img, kernel_size=ks, dilation=dil, padding=pad, stride=st)
        put(mem, launch.writes[0], cols.reshape(cols.shape[0], -1), natural=tuple(cols.shape[1:]))

    def _threads(self, params: Mapping[str, Any]) -> int:
        group = int(params.get("group_channels", p_int(params, "channels", self.name)))
        return group * p_int(params, "out_h", self.name) * p_int(params, "out_w", self.name)

    def grid(self, params: Mapping[str, Any]) -> tuple[int, int, int]:
        n = self._threads(params)
        return ((n + BLOCK - 1) // BLOCK, 1, 1)   # (num_kernels + BLOCK - 1) / BLOCK, no y folding

    def rendering(self, params: Mapping[str, Any]) -> str | None:
        """``im2col`` or, dilated, ``im2col_dilated``."""
        return "im2col_dilated" if dilated_im2col(params) else None

    def _stream(self, params: Mapping[str, Any]) -> Stream:
        k = p_int(params, "ksize", self.name)
        k2 = k * int(params.get("ksize_w", k))
        dilated = dilated_im2col(params)
        hw_tag = "imad:hw" if dilated else "iadd:hw"
        s = Stream()
        s.add("GPR", "S2R", "s2r:index", 2, "index", "reads threadIdx.x, blockIdx.x: which column position")
        s.add("GPR", "XMAD", "imad:index", 1, "index", "index = blockIdx.x*blockDim.x + threadIdx.x")
        s.add("PR", "ISETP", "setp:bounds", 2, "predicate",
              "index < n at entry and after the grid stride: a flip skips the position (stale columns) "
              "or runs a second one out of range")
        s.add("NODEST", "EXIT", "bra:exit", 1, "control", "predicated early exit (not taken by working threads)")
        idiv(s, "ow", "index / width_col", mod="w_out = index % width_col")
        idiv(s, "oh", "channel_in = (index/width_col) / height_col", mod="h_out = (index/width_col) % height_col")
        s.add("GPR", "XMAD", "imad:hw_in", 4, "index", "h_in = h_out*stride - pad, w_in = w_out*stride - pad")
        s.add("GPR", "XMAD", "imad:col_offset", 7, "index",
              "column offset (channel_in*ksize*ksize*height_col + h_out)*width_col + w_out")
        s.add("GPR", "XMAD", "imad:im_offset", 7, "index", "image offset (channel_in*height + h_in)*width + w_in")
        addr(s, "col", "data_col_ptr (this thread's first column entry)")
        addr(s, "im", "data_im_ptr (top-left of the window)")
        s.begin_loop(k2)
        if dilated:
            s.add("GPR", "XMAD", "imad:hw", 2 * k2, "index",
                  "h = h_in + i*dilation_h, w = w_in + j*dilation_w (padding test inputs of a dilated window)")
        else:
            s.add("GPR", "IADD", "iadd:hw", 2 * k2, "index", "h = h_in + i, w = w_in + j (padding test inputs)")
        s.add("PR", "ISETP", "setp:pad", 4 * k2, "predicate",
              "h >= 0, w >= 0, h < height, w < width: a flip stores 0 for a real pixel or loads at a padding position")
        if dilated:
            s.add("GPR", "XMAD", "imad:im_elem", k2, "index",
                  "a dilated tap's offset in the image, i*dilation_h*width + j*dilation_w (lea:addr_im_elem "
                  "adds it to data_im_ptr): a corruption loads another pixel, or out of bounds")
        s.add("GPR", "IADD", "lea:addr_im_elem", 2 * k2, "address", "address of data_im_ptr[i*width + j]", halves=True)
        s.add("LD", "LDG", "ld:im", k2, "value",
              "one image pixel (issued at padding positions too, predicated off): one column-buffer entry, "
              "which the GEMM spreads over every output channel at that position")
        s.add("GPR", "SEL", "sel:value", k2, "value", "pixel or 0 (padding): the column entry stored")
        s.add("NODEST", "STG", "st:col", k2, "store", "stores the column entry")
        s.add("GPR", "IADD", "iadd:addr_col", 2 * k2, "address", "data_col_ptr += height_col*width_col (next K row)",
              halves=True)
        loop(s, "kw", "j over the kernel width", k2)
        loop(s, "kh", "i over the kernel height", k)
        s.end_loop()
        s.add("GPR", "XMAD", "imad:grid_stride", 2, "index", "index += blockDim.x*gridDim.x")
        s.add("NODEST", "BRA", "bra:grid_loop", 1, "control", "grid-stride loop branch (not taken)")
        epilogue(s)
        s.reg("r_index", "index", "imad:index", "imad:index", "imad:grid_stride")
        s.reg("r_w_out", "index", "imod:ow", "imod:ow", "imad:col_offset")
        s.reg("r_h_out", "index", "imod:oh", "imod:oh", "imad:col_offset")
        s.reg("r_channel", "index", "idiv:oh", "idiv:oh", "imad:im_offset")
        s.reg("r_h_in", "index", "imad:hw_in", "imad:hw_in", "setp:loop_kh")
        s.reg("r_w_in", "index", "imad:hw_in", "imad:hw_in", "setp:loop_kh")
        s.reg("r_col_off", "index", "imad:col_offset", "imad:col_offset", "lea:addr_col")
        s.reg("r_im_off", "index", "imad:im_offset", "imad:im_offset", "lea:addr_im")
        s.reg("r_col_lo", "address", "lea:addr_col", "lea:addr_col", "iadd:addr_col")
        s.reg("r_col_hi", "address", "lea:addr_col", "lea:addr_col", "iadd:addr_col", half=AddressHalf.HIGH)
        s.reg("r_im_lo", "address", "lea:addr_im", "lea:addr_im", "lea:addr_im_elem")
        s.reg("r_im_hi", "address", "lea:addr_im", "lea:addr_im", "lea:addr_im_elem", half=AddressHalf.HIGH)
        s.reg("r_elem_lo", "address", "lea:addr_im_elem", "lea:addr_im_elem", "ld:im")
        s.reg("r_elem_hi", "address", "lea:addr_im_elem", "lea:addr_im_elem", "ld:im", half=AddressHalf.HIGH)
        s.reg("r_hw", "index", hw_tag, hw_tag, "setp:pad")
        if dilated:
            s.reg("r_tap", "index", "imad:im_elem", "imad:im_elem", "lea:addr_im_elem")
        s.reg("r_value", "data", "ld:im", "ld:im", "st:col")
        s.reg("r_i", "loop_counter", "loop:kh", "lea:addr_im", "setp:loop_kh")
        s.reg("r_j", "loop_counter", "loop:kw", "lea:addr_im", "setp:loop_kw")
        s.reg("r_plane", "constant", "imad:col_offset", "imad:col_offset", "iadd:addr_col")
        s.reg("p_bounds", "predicate", "setp:bounds", "setp:bounds", "bra:exit")
        s.reg("p_pad", "predicate", "setp:pad", "setp:pad", "sel:value")
        s.reg("p_loop", "predicate", "setp:loop_kw", "setp:loop_kw", "bra:loop_kh")
        return s


# --------------------------------------------------------------------------------------------
@contextlib.contextmanager
def no_tf32(device: torch.device) -> Iterator[None]:
    """Full float32 on CUDA: TF32 tensor cores would round the operands to 10-bit mantissas."""
    if device.type != "cuda":
        yield
        return
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with torch.backends.cudnn.flags(enabled=True, benchmark=False, deterministic=True, allow_tf32=False):
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old


#: A campaign runs its faulty lanes and their golden lanes through one linear-layer GEMM, and a
#: lane's result must not depend on which other lanes share its batch (resume, sharding, lanes
#: retiring early). CPU SGEMM rounding depends on the row count, differently per machine: on an
#: AVX2 AMD EPYC (oneDNN/MKL) rows come in groups of 4 and a row's result is the same in every
#: call whose row count is a multiple of 4; on an AVX-512 Xeon every call of 16 rows or more
#: agrees (6 or more for small K) while smaller calls (and a 1-row GEMV) round differently. So a
#: batch is zero-padded by a *row policy* (at least ``min_rows`` rows, a multiple of ``group``),
#: the cheapest of ``ROW_POLICIES`` that a one-time self-check per weight shape and thread count
#: (``_row_policy``) confirms on this machine; where none holds, every lane runs as its own GEMV
#: (exact by construction, about 10x slower per lane at 64 lanes). A lone row is padded like any
#: other, so plain inference of one image, a golden run of one input and a campaign batch agree.
#: Calls of ``_CHECK_MAX`` rows or more are padded to a multiple of 64 and hold at most
#: ``ROWS_CAP`` rows (a bigger batch runs in several calls): the self-check also runs those
#: sizes, and lowers the cap (to 128, then 64) where one disagrees (on the AVX-512 Xeon,
#: ResNet-50's 2048x1000 layer rounded a call of 300 rows differently from one of 8).
#: SGEMM rounding also depends on where a row sits in memory: with K = 98 (rows 392 bytes
#: apart) a row's result changed with its 64-byte alignment, so the same row came out
#: differently at different positions (and the self-check, finding that, fell back to
#: per-lane GEMVs on slices at arbitrary offsets, which differed too). So every call, and the
#: self-check, multiplies rows copied 64-byte aligned and 64-byte strided (``_aligned_rows``).
ROW_POLICIES: tuple[tuple[int, int], ...] = ((4, 4), (8, 4), (8, 8), (16, 4), (16, 8), (16, 16), (32, 16), (64, 16))
_CHECK_MAX = 80
ROWS_CAP = 256
_checked: dict[tuple[int, int, int, str], tuple[int, int, int] | None] = {}


def _aligned_rows(x: torch.Tensor, rows: int) -> torch.Tensor:
    """``x`` (b, K) in the first b rows of a zeroed (rows, K) view whose every row starts on a
    64-byte boundary (row stride K rounded up to 64 bytes): BLAS then treats every row alike,
    wherever it sat in the caller's batch."""
    per = max(1, 64 // x.element_size())
    k = x.shape[1]
    ld = k + (-k % per)
    buf = x.new_zeros(rows * ld + per)
    off = ((-buf.data_ptr()) % 64) // x.element_size()
    out = buf[off:off + rows * ld].view(rows, ld)[:, :k]
    out[:x.shape[0]] = x
    return out


def _padded(b: int, policy: tuple[int, ...]) -> int:
    least, group = policy[:2]
    n = max(least, b + (-b % group))
    return n if n < _CHECK_MAX else n + (-n % 64)


def _row_policy(w: torch.Tensor) -> tuple[int, int, int] | None:
    """The cheapest row policy (least rows, group, most rows a call) under which each row's
    result is the same in every padded call (and at every position within a call), or None."""
    key = (w.shape[0], w.shape[1], torch.get_num_threads(), str(w.device))
    if key not in _checked:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(ROWS_CAP, w.shape[1], generator=g).to(device=w.device, dtype=w.dtype)
        x = _aligned_rows(x, ROWS_CAP)  # laid out as rows_linear lays out every call
        ref = F.linear(x[:_CHECK_MAX], w)
        found = None
        if torch.equal(F.linear(_aligned_rows(x[:_CHECK_MAX].flip(0), _CHECK_MAX), w), ref.flip(0)):
            for pol in ROW_POLICIES:
                sizes = sorted({_padded(m, pol) for m in range(1, _CHECK_MAX - 3)})
                if all(torch.equal(F.linear(x[:m], w), ref[:m]) for m in sizes if m < _CHECK_MAX):
                    found = (*pol, _rows_cap(w, x, pol))
                    break
        _checked[key] = found
    return _checked[key]


def _rows_cap(w: torch.Tensor, x: torch.Tensor, pol: tuple[int, int]) -> int:
    """The most rows a call may hold: every padded size from ``_CHECK_MAX`` up to it gives
    the rows of calls of 64 (a size the policy's check covered)."""
    ref = torch.cat([F.linear(x[s:s + 64], w) for s in range(0, x.shape[0], 64)])
    cap = 64
    for size in range(128, ROWS_CAP + 1, 64):
        if not torch.equal(F.linear(x[:size], w), ref[:size]):
            break
        cap = size
    return cap


def rows_linear(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """x (lanes, K) times w (N, K) transposed, each lane's row independent of its batch (above):
    the rows copied 64-byte aligned, padded to the row policy."""
    b = x.shape[0]
    pol = _row_policy(w)
    if pol is None:
        return torch.cat([F.linear(_aligned_rows(x[i:i + 1], 1), w) for i in range(b)])
    cap = pol[2]
    if b > cap:  # calls of at most the cap, spread evenly
        step = -(-b // -(-b // cap))
        return torch.cat([rows_linear(x[s:s + step], w) for s in range(0, b, step)])

    def padded(rows: torch.Tensor) -> torch.Tensor:
        n = rows.shape[0]
        return F.linear(_aligned_rows(rows, _padded(n, pol)), w)[:n]

    chained = chained_rows(x, w, padded)  # a few rows: the same values at a GEMV's cost
    return chained if chained is not None else padded(x)


#: A 1x1 convolution is, per lane, the GEMM W (M x K) times X (K x H*W), one output column per
#: pixel: ``conv1x1`` makes one ``torch.mm`` per lane (identical shapes, so a lane's result does
#: not depend on its batch), on NCHW data 1.4x faster than oneDNN's 1x1 convolution here and
#: the explicit gemm kernel's own computation. The receptive-field cone multiplies a window of
#: the pixels; SGEMM rounding depends on the column count (on an AVX-512 Xeon, calls of 1 column
#: differ from wider ones, and with K >= 1024 every call under 129 columns differs from the
#: whole map's). So windows are zero-padded to a *column policy*: the fewest columns from
#: which every call gives the whole map's columns, by a one-time self-check per weight shape,
#: map size and thread count (``_col_policy``); where none of ``COL_POLICIES`` holds, windows
#: are padded to the whole map. The sum over K runs in chunks of ``K_CHUNK`` (one GEMM, then
#: accumulating ones): with K = 1024 or 2048 a whole-K call rounds differently below ~129
#: columns, chunked calls agree from 2 columns on, at the same speed.
COL_POLICIES: tuple[int, ...] = (2, 4, 8, 16, 32, 64, 128, 256, 512)
K_CHUNK = 512
_col_checked: dict[tuple[int, int, int, int, str], int] = {}


def _col_sizes(least: int, n: int) -> list[int]:
    """Column counts a policy of ``least`` columns is checked on: all near the bottom, then
    spread up to the whole map."""
    dense = list(range(least, min(n, least + 32) + 1))
    step = max(1, (n - least) // 32)
    return sorted({m for m in (*dense, *range(least, n + 1, step), n - 1, n) if least <= m <= n})


def _col_policy(w: torch.Tensor, n: int, also: int | None = None) -> int:
    """Columns a window of a map of ``n`` pixels is padded to (``n``: the whole map). With
    ``also``: calls of up to ``n`` columns checked against calls of ``also`` (a smaller whole
    map's) too; ``n`` when no policy of at most ``also`` columns holds."""
    key = (w.shape[0], w.shape[1], n, also, torch.get_num_threads(), str(w.device))
    if key not in _col_checked:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(w.shape[1], n, generator=g).to(device=w.device, dtype=w.dtype)
        ref = _mm_chunked(w, x)
        found = n
        for least in COL_POLICIES:
            if least >= min(n, also or n):
                break
            sizes = {*_col_sizes(least, n), *((also,) if also else ())}
            if all(torch.equal(_mm_chunked(w, x[:, off:off + m].contiguous()), ref[:, off:off + m])
                   for m in sizes for off in {0, n - m}):
                found = least
                break
        _col_checked[key] = found
    return _col_checked[key]


def _mm_chunked(w: torch.Tensor, x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """w (M, K) times x (K, N), summed over K in chunks of ``K_CHUNK``."""
    k = w.shape[1]
    out = torch.mm(w[:, :K_CHUNK], x[:K_CHUNK], out=out)
    for s in range(K_CHUNK, k, K_CHUNK):
        out.addmm_(w[:, s:s + K_CHUNK], x[s:s + K_CHUNK])
    return out


#: Maps of fewer pixels than this run the lanes side by side as the columns of one GEMM (a
#: 7x7 map's GEMM per lane streams the whole weight matrix for 49 columns: half the speed of
#: one call for all lanes on ResNet-50's layer4), in calls of at most ``CONCAT_COLS`` columns;
#: their column policy is checked up to that many columns.
CONCAT_BELOW = 128
CONCAT_COLS = 512


def conv1x1(x: torch.Tensor, w: torch.Tensor, n_map: int | None = None) -> torch.Tensor:
    """Lanes ``x`` (B, K, N) times ``w`` (M, K): (B, M, N). ``n_map``: the whole map's pixel
    count when ``x`` holds a window of it. One GEMM per lane, a window padded to the column
    policy (so each column equals the whole map's); below ``CONCAT_BELOW`` pixels, all lanes'
    columns side by side. (Windows of bigger maps side by side were no faster here.)"""
    b, k, n = x.shape
    n_map = n if n_map is None else max(n, n_map)
    if n_map < CONCAT_BELOW:
        return _side_by_side(x, w, n_map)
    pad = max(n, min(_col_policy(w, n_map), n_map)) - n if n < n_map else 0
    if pad:
        x = torch.cat([x, x.new_zeros(b, k, pad)], dim=2)
    out = x.new_empty(b, w.shape[0], n + pad)
    with no_tf32(x.device):
        for i in range(b):
            _mm_chunked(w, _aligned(x[i]), out=out[i])
    return out[:, :, :n] if pad else out


def _side_by_side(x: torch.Tensor, w: torch.Tensor, n_map: int) -> torch.Tensor:
    """``conv1x1`` of a small map: lane i's columns at i*N..(i+1)*N of calls of whole lanes, at
    most ``CONCAT_COLS`` columns and at least the column policy's (zero-padded)."""
    b, k, n = x.shape
    least = min(_col_policy(w, CONCAT_COLS), CONCAT_COLS)
    per = max(1, CONCAT_COLS // n)
    per = -(-b // -(-b // per))  # as many calls, lanes spread evenly over them
    m = w.shape[0]
    out = x.new_empty(b, m, n)
    with no_tf32(x.device):
        for s in range(0, b, per):
            e = min(b, s + per)
            cols = x[s:e].permute(1, 0, 2).reshape(k, (e - s) * n)  # lane i's pixels at columns i*n..
            used = cols.shape[1]
            if used < least:
                cols = torch.cat([cols, cols.new_zeros(k, least - used)], dim=1)
            y = _mm_chunked(w, cols.contiguous())[:, :used]
            out[s:e].copy_(y.view(m, e - s, n).permute(1, 0, 2))
    return out


def conv1x1_cols(x: torch.Tensor, w: torch.Tensor, n_map: int) -> torch.Tensor:
    """``conv1x1`` of windows of several lanes side by side: x (K, P) holds every lane's window
    pixels as columns, w (M, K); (M, P). The columns run in calls that each column's whole-map
    call agrees with: at most the map's pixel count (``CONCAT_COLS`` below ``CONCAT_BELOW``
    pixels, where whole maps run side by side too, and below ``CONCAT_COLS`` pixels where calls
    of up to that many columns check out against the whole map's call as well: ResNet-50's
    14x14 maps, 196 columns a call before), at least the column policy's (zero-padded)."""
    k, p = x.shape
    if n_map < CONCAT_BELOW:
        cap, least = CONCAT_COLS, min(_col_policy(w, CONCAT_COLS), CONCAT_COLS)
    else:
        cap, least = n_map, _col_policy(w, n_map)
        if n_map < CONCAT_COLS:  # wider calls where they agree with the whole map's calls too
            wide = _col_policy(w, CONCAT_COLS, also=n_map)
            if wide < CONCAT_COLS:
                cap, least = CONCAT_COLS, wide
        least = min(least, cap)
    calls = max(1, -(-p // cap))
    size = -(-p // calls)
    out = x.new_empty(w.shape[0], p)
    with no_tf32(x.device):
        for s in range(0, p, size):
            cols = x[:, s:s + size]
            used = cols.shape[1]
            if used < least:
                cols = torch.cat([cols, cols.new_zeros(k, least - used)], dim=1)
            out[:, s:s + used] = _mm_chunked(w, cols.contiguous())[:, :used]
    return out


def _aligned(t: torch.Tensor) -> torch.Tensor:
    """The operand itself, or a copy when its data is not 64-byte aligned: BLAS kernels may
    round differently on differently aligned data, and lane slices sit at arbitrary offsets."""
    return t if t.data_ptr() % 64 == 0 else t.clone()


def gemm_operand(flat: torch.Tensor, offset: int, rows: int, cols: int, trans: bool) -> torch.Tensor:
    """op(X) as (L, rows, cols) viewed from element ``offset`` (X stored row-major)."""
    block = flat[:, offset:offset + rows * cols]
    if trans:
        return block.reshape(flat.shape[0], cols, rows).transpose(1, 2)
    return block.reshape(flat.shape[0], rows, cols)


@register_kernel
class GemmKernel(StreamKernel):
    """C[M×N] (at c_offset) += op(A)·op(B): Darknet's ``gemm_gpu`` → ``cublasSgemm`` (alpha =
    beta = 1).

    The template is cuBLAS's Maxwell SGEMM as maxas reconstructed it (``kernels/sgemm.py``,
    docs/kernels.md §6): a T×T tile per block of T²/64 threads, 8×8 outputs per thread, 64
    accumulators from zero, two shared buffers, ``alpha·acc + beta·C`` at the end. ``run``
    computes the product from zero and adds C, as that epilogue does (alpha = beta = 1).
    """

    name: ClassVar[str] = "gemm"
    regs_allocated: ClassVar[int] = ptxas_registers("gemm")
    block: ClassVar[int] = 256
    example_params = ({"M": 1, "N": 1, "K": 1, "trans_a": False, "trans_b": False,
                       "a_offset": 0, "b_offset": 0, "c_offset": 0},
                      {"M": 130, "N": 200, "K": 9, "trans_a": False, "trans_b": False,
                       "a_offset": 0, "b_offset": 0, "c_offset": 0})

    def run(self, mem: Mem, launch: Launch) -> None:
        p = launch.params
        m, n, k = (p_int(p, key, self.name) for key in ("M", "N", "K"))
        ta, tb = bool(p.get("trans_a", False)), bool(p.get("trans_b", False))
        a_off, b_off, c_off = (int(p.get(key, 0)) for key in ("a_offset", "b_offset", "c_offset"))
        a_name, b_name, c_name = launch.reads[:3]
        c_flat = lane_flat(mem, c_name, c_off + m * n, self.name)
        lanes = c_flat.shape[0]
        a = gemm_operand(operand_flat(mem, a_name, 2, lanes, a_off + m * k, self.name), a_off, m, k, ta)
        b = gemm_operand(operand_flat(mem, b_name, 2, lanes, b_off + k * n, self.name), b_off, k, n, tb)
        c = c_flat[:, c_off:c_off + m * n].reshape(lanes, m, n)
        with no_tf32(c.device):
            shared_a = _aligned(a[0]) if a.shape[0] == 1 else None
            shared_b = _aligned(b[0]) if b.shape[0] == 1 else None
            if m == 1 and shared_b is not None and not is_weight_name(a_name) and is_weight_name(b_name):
                # a connected layer: one row per lane against shared weights, as the fused
                # path computes it (rows_linear), so both paths agree bit for bit
                prod = rows_linear(a[:, 0, :].contiguous(), shared_b.t()).reshape(lanes, 1, n)
            else:
                prod = torch.stack([torch.mm(shared_a if shared_a is not None else _aligned(a[i]),
                                             shared_b if shared_b is not None else _aligned(b[i]))
                                    for i in range(lanes)])
        block = c + prod
        if c_off == 0 and m * n == c_flat.shape[1]:
            new = block.reshape(lanes, m * n)
        else:
            new = c_flat.clone()
            new[:, c_off:c_off + m * n] = block.reshape(lanes, m * n)
        put(mem, launch.writes[0], new)

    def _threads(self, params: Mapping[str, Any]) -> int:
        return sgemm_shape(params, self.name).threads

    def grid(self, params: Mapping[str, Any]) -> tuple[int, int, int]:
        return (*sgemm_shape(params, self.name).grid, 1)

    def template(self, params: Mapping[str, Any]) -> ThreadTemplate:
        g = sgemm_shape(params, self.name)
        return self._stream(params).template(g.threads, g.threads_per_block)

    def rendering(self, params: Mapping[str, Any]) -> str | None:
        """The rendering of the launch's tile: ``gemm`` (128) or ``gemm_64``."""
        return None if sgemm_shape(params, self.name).tile == SGEMM_TILES[1] else "gemm_64"

    def _stream(self, params: Mapping[str, Any]) -> Stream:
        return sgemm_stream(params)


# --------------------------------------------------------------------------------------------
def fused_conv(x: torch.Tensor, weights: torch.Tensor, im2col_params: Mapping[str, Any],
               gemm_params: Mapping[str, Any]) -> torch.Tensor:
    """op(A)·op(B) of an im2col+gemm pair computed as one ``F.conv2d``, shaped (B, M, N).

    Golden runs use it to skip materialising the workspace. It equals the pair's product up to
    float rounding, not bitwise (the convolution sums in another order), so lanes compared with
    each other must all come from this path or all from the explicit kernels; it does not add C
    (the caller accumulates into C at ``c_offset``). ``weights`` is the layer's (filters, K)
    matrix, or (B, filters, K) when lanes carry their own copies.
    """
    g = im2col_geometry(im2col_params, "im2col")
    m, n, k = (p_int(gemm_params, key, "gemm") for key in ("M", "N", "K"))
    if bool(gemm_params.get("trans_a", False)) or bool(gemm_params.get("trans_b", False)):
        raise KernelfiError("fused_conv: transposed operands are not a convolution")
    (kh, kw), stride, _, dil = im2col_axes(g)
    cg = g["group_channels"]
    if k != cg * kh * kw or n != g["out_h"] * g["out_w"]:
        raise KernelfiError(f"fused_conv: gemm K={k}, N={n} do not match the im2col geometry "
                            f"({cg}*{kh}*{kw}, {g['out_h']}*{g['out_w']})")
    img = group_image(x, g, "im2col")
    lanes = img.shape[0]
    a_off = int(gemm_params.get("a_offset", 0))
    w = weights.reshape(1, -1) if weights.dim() == 2 else weights.reshape(weights.shape[0], -1)
    if w.shape[1] < a_off + m * k:
        raise KernelfiError(f"fused_conv: weights hold {w.shape[1]} values, need {a_off + m * k}")
    kern = w[:, a_off:a_off + m * k].reshape(w.shape[0], m, cg, kh, kw)
    if kern.shape[0] not in (1, lanes):
        raise KernelfiError(f"fused_conv: per-lane weights have {kern.shape[0]} lanes, the input {lanes}")
    img, pad = edge_padded(img, g)
    st = stride if stride[0] != stride[1] else stride[0]
    if (kh, kw) == (1, 1) and pad == (0, 0) and kern.shape[0] == 1:
        # a 1x1 convolution (ResNet's strided shortcut): im2col picks every st-th pixel, then
        # the GEMM per lane, as for the stride-1 ones
        cols = img[:, :, ::stride[0], ::stride[1]] if stride != (1, 1) else img
        return conv1x1(cols.reshape(lanes, cg, n), kern[0].reshape(m, cg))
    pad = pad if pad[0] != pad[1] else pad[0]  # type: ignore[assignment]
    dil = dil if dil[0] != dil[1] else dil[0]  # type: ignore[assignment]
    with no_tf32(img.device):
        if kern.shape[0] == 1:
            y = lane_conv2d(img, kern[0], check_lone=True, stride=st, padding=pad, dilation=dil)
        else:  # per-lane weights: one convolution per lane
            y = torch.cat([lane_conv2d(img[i:i + 1], kern[i], check_lone=True, stride=st, padding=pad, dilation=dil)
                           for i in range(lanes)])
    return y.reshape(lanes, m, n)


def lane_conv2d(x: torch.Tensor, w: torch.Tensor, check_lone: bool = False, **kw: Any) -> torch.Tensor:
    """``F.conv2d`` whose lanes do not depend on how many share the call.

    oneDNN convolves a batch of one with another algorithm on small feature maps (measured:
    last-bit differences), while every batch of two or more gives each lane the same result;
    so a lone lane is convolved twice in one call. Every convolution of the engine (golden
    runs, the fused path, the cone's windows) goes through here. With ``check_lone`` (the
    fused path, whose shapes are the layers' own: few, and convolved at batch 1 by every plain
    forward) a lone lane is convolved once where ``lone_agrees`` found that it gives the
    doubled call's values: the same values, at half the cost."""
    if x.shape[0] == 1 and not (check_lone and lone_agrees(x, w, kw)):
        return F.conv2d(torch.cat([x, x]), w, **kw)[:1]
    return F.conv2d(x, w, **kw)


#: Whether a lone lane's ``F.conv2d`` equals its result in a batch of two, per (input and
#: weight shape, stride/padding/dilation, thread count, device, dtype): oneDNN chooses its
#: algorithm from these, never from the values.
_lone_checked: dict[tuple[Any, ...], bool] = {}


def lone_agrees(x: torch.Tensor, w: torch.Tensor, kw: Mapping[str, Any]) -> bool:
    """True where convolving one lane alone gives, bit for bit, what the lane gets in a batch
    of two, for this shape on this machine: a one-time self-check per key (two seeded random
    lanes, each convolved alone and both together), as the row and column policies are."""
    key = (tuple(x.shape[1:]), tuple(w.shape), tuple(sorted((k, str(v)) for k, v in kw.items())),
           torch.get_num_threads(), str(x.device), x.dtype, w.dtype)
    if key not in _lone_checked:
        g = torch.Generator().manual_seed(0)
        probe = torch.randn((2, *x.shape[1:]), generator=g).to(device=x.device, dtype=x.dtype)
        pair = F.conv2d(probe, w, **kw)
        _lone_checked[key] = all(torch.equal(F.conv2d(probe[i:i + 1], w, **kw), pair[i:i + 1]) for i in range(2))
    return _lone_checked[key]
