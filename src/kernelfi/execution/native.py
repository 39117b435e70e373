"""One-pass propagation figures in C, compiled on first use (optional, exact).

After every layer a campaign measures, per faulty lane, how many elements differ from golden
and the largest absolute and relative error (docs/method.md §3). In torch that is seven or more float32
passes over every element (subtract, abs, max, sign, sum, divide, max); on ResNet-50 those
passes cost a third of a campaign. This C loop reads each element once and does the *same*
IEEE float32 operations per element (``|f - g|``, ``max(|g|, floor)``, one division: no
contraction, no fast-math), so its figures equal the torch path's bit for bit (a test compares
them). Maxima are taken on the bit patterns of non-negative floats, which order like the
floats and put NaN above inf above every finite value, so a NaN error comes out infinite as
in the torch path; a row whose golden values are not all finite (where NaN must equal NaN) is
left to the torch path.

The cone's gathers and window figures (``gather``, ``diff_boxes``) are C too. The source is
``native.c`` beside this file; it is built with the machine's C compiler (``cc``, or ``$CC``) into
``$KERNELFI_CACHE`` (default ``~/.cache/kernelfi``), keyed by the source and the CPU, once per
machine. No compiler, a failed build or ``KERNELFI_NATIVE=0``: ``diff_rows`` returns None and
campaigns take the torch path, with the same results.
"""
from __future__ import annotations

import ctypes
import threading
from pathlib import Path

import torch

from kernelfi._utils import build_c_library

#: The C source (``native.c`` beside this file).
_SOURCE = (Path(__file__).parent / "native.c").read_text()

_lock = threading.Lock()
#: Fewer elements than this per thread run on one thread.
MIN_ELEMS_PER_THREAD = 1 << 15
_lib: ctypes.CDLL | None = None
_tried = False


def _build() -> ctypes.CDLL | None:
    lib = build_c_library("diff_rows", _SOURCE)
    if lib is None:
        return None
    fn = lib.kf_diff_rows
    i64, ptr = ctypes.c_int64, ctypes.c_void_p
    fn.argtypes = [ptr, ptr, i64, ptr, ptr, i64, i64, i64, i64, ctypes.c_float, ptr, ptr, ptr, ctypes.c_int]
    fn.restype = None
    fb = lib.kf_diff_window
    fb.argtypes = [ptr, ptr, i64, i64, i64, i64, i64, ctypes.c_float, ptr, ptr, ptr, ptr, ctypes.c_int]
    fb.restype = None
    fg = lib.kf_gather
    fg.argtypes = [ptr, i64, i64, i64, i64, i64, ctypes.c_float, ptr, ptr, ptr, ctypes.c_int]
    fg.restype = None
    return lib


def available() -> bool:
    global _lib, _tried
    if not _tried:
        with _lock:
            if not _tried:
                _lib = _build()
                _tried = True
    return _lib is not None


def _cpu_f32(t: torch.Tensor, contiguous: bool = True) -> bool:
    return t.dtype == torch.float32 and t.device.type == "cpu" and (t.is_contiguous() or not contiguous)


def _planes_fit(planes: list[torch.Tensor]) -> bool:
    """Golden planes the C code can read: float32, contiguous, on the CPU, all of one shape."""
    return all(t.shape == planes[0].shape and _cpu_f32(t) for t in planes)


def _threads(elems: int, most: int | None = None) -> int:
    """torch's thread count, but none with fewer than ``MIN_ELEMS_PER_THREAD`` elements."""
    n = min(torch.get_num_threads(), elems // MIN_ELEMS_PER_THREAD)
    return max(1, n if most is None else min(n, most))


def _maxima(top: torch.Tensor) -> list[list[float]]:
    """The largest errors from their bit patterns: a NaN error counts as infinite (NaN bit
    patterns lie above inf's)."""
    return top.clamp_max_(0x7F800000).view(torch.float32).tolist()


def diff_rows(a: torch.Tensor, g: torch.Tensor, floor: float, a_rows: list[int] | None = None,
              g_rows: list[int] | None = None) -> list[tuple[int, float, float] | None] | None:
    """Per row ``a_rows[r]`` of ``a`` (L, N) against row ``g_rows[r]`` of ``g`` (G, N), float32
    CPU tensors with unit element stride: (elements differing, largest ``|a - g|``, largest
    ``|a - g| / max(|g|, floor)``). By default every row of ``a``, against ``g``'s only row or
    its row of the same index. A NaN error counts as infinite; differing elements are those
    unequal to golden. None for a row whose golden row holds a NaN or inf (the NaN-equal-NaN
    cases), and None for all when the library is not available or the layout does not fit:
    the caller takes the torch path for those."""
    if not _cpu_f32(a, False) or not _cpu_f32(g, False) or a.dim() != 2 or g.dim() != 2 or g.shape[1] != a.shape[1]:
        return None
    n = a.shape[1]
    if n > 1 and (a.stride(1) != 1 or g.stride(1) != 1):
        return None
    ai = list(range(a.shape[0])) if a_rows is None else a_rows
    gi = ([0] * len(ai) if g.shape[0] == 1 else list(ai)) if g_rows is None else g_rows
    rows = len(ai)
    if len(gi) != rows or not rows or not available():
        return None
    assert _lib is not None
    idx = torch.tensor([ai, gi], dtype=torch.int64)
    if bool((idx[0] >= a.shape[0]).any() or (idx[1] >= g.shape[0]).any() or (idx < 0).any()):
        raise IndexError("native.diff_rows: row index out of range")
    threads = _threads(rows * n)
    nseg = -(-threads // rows)  # every thread gets work: rows split into segments
    seg = max(1, -(-n // nseg))
    nseg = max(1, -(-n // seg))
    count = torch.empty(rows * nseg, dtype=torch.int64)
    top = torch.empty(2, rows * nseg, dtype=torch.int32)
    _lib.kf_diff_rows(a.data_ptr(), idx[0].data_ptr(), a.stride(0), g.data_ptr(), idx[1].data_ptr(), g.stride(0),
                      rows, n, seg, floor, count.data_ptr(), top[0].data_ptr(), top[1].data_ptr(), threads)
    bad = count < 0
    if nseg > 1:  # a row's segments
        bad = bad.view(rows, nseg).any(dim=1)
        count = count.view(rows, nseg).sum(dim=1)
        top = top.view(2, rows, nseg).amax(dim=2)  # non-negative float bit patterns order as ints
    ma, mr = _maxima(top)
    return [None if b else (int(k), x, y) if k else (0, 0.0, 0.0)
            for b, k, x, y in zip(bad.tolist(), count.tolist(), ma, mr)]


Box = tuple[int, int, int, int]


def diff_boxes(a: torch.Tensor, planes: list[torch.Tensor], corners: list[tuple[int, int]],
               floor: float) -> list[tuple[tuple[int, float, float], Box | None]] | None:
    """Per lane l of ``a`` (L, C, h, w) against the h x w window of golden plane ``planes[l]``
    (C, H, W) at ``corners[l]`` (inside the plane): ``diff_rows``' figures and the smallest
    window of ``a`` holding every element that differs (None: none), in one pass, without
    copying the golden windows. None when the library is not available, a tensor does not fit
    or a golden value is not finite."""
    if a.dim() != 4 or len(corners) != a.shape[0]:
        return None
    nl, c, h, w = a.shape
    return _diff_windows(a, c, h * w, planes, [(y, x, h, w, l * c * h * w) for l, (y, x) in enumerate(corners)], floor)


def diff_boxes_cols(a: torch.Tensor, planes: list[torch.Tensor], boxes: list[Box], offsets: list[int],
                    floor: float) -> list[tuple[tuple[int, float, float], Box | None]] | None:
    """``diff_boxes`` for lanes side by side as the columns of ``a`` (C, P): lane l's window
    ``boxes[l]`` of its plane, row by row, in columns ``offsets[l]`` on."""
    if a.dim() != 2 or not _cols_fit(a.shape[1], boxes, offsets):
        return None
    return _diff_windows(a, a.shape[0], a.shape[1], planes,
                         [(b[0], b[2], b[1] - b[0], b[3] - b[2], o) for b, o in zip(boxes, offsets)], floor)


def _cols_fit(p: int, boxes: list[Box], offsets: list[int]) -> bool:
    return len(boxes) == len(offsets) and all(0 <= o and o + (b[1] - b[0]) * (b[3] - b[2]) <= p
                                              for b, o in zip(boxes, offsets))


Geo = tuple[int, int, int, int, int]  # a lane's window: corner y, x, size h, w, offset of its channel 0


def _geo(planes: list[torch.Tensor], geo: list[Geo], inside: bool) -> torch.Tensor | None:
    """The C functions' per-lane window table, or None when the lanes do not fit it."""
    if not planes or len(planes) != len(geo) or not _planes_fit(planes):
        return None
    _, hh, ww = planes[0].shape
    if inside and any(y < 0 or x < 0 or y + h > hh or x + w > ww for y, x, h, w, _ in geo):
        return None
    return torch.tensor([(t.data_ptr(), *g) for t, g in zip(planes, geo)], dtype=torch.int64)


def _diff_windows(a: torch.Tensor, c: int, sc: int, planes: list[torch.Tensor], geo: list[Geo],
                  floor: float) -> list[tuple[tuple[int, float, float], Box | None]] | None:
    if not _cpu_f32(a) or not planes or planes[0].shape[0] != c:
        return None
    table = _geo(planes, geo, inside=True)
    if table is None or not available():
        return None
    assert _lib is not None
    nl = len(geo)
    _, hh, ww = planes[0].shape
    count = torch.empty(nl, dtype=torch.int64)
    top = torch.empty(2, nl, dtype=torch.int32)
    box = torch.empty(nl, 4, dtype=torch.int64)
    threads = _threads(c * sum(g[2] * g[3] for g in geo), nl)
    _lib.kf_diff_window(a.data_ptr(), table.data_ptr(), nl, c, hh, ww, sc, floor, count.data_ptr(),
                        top[0].data_ptr(), top[1].data_ptr(), box.data_ptr(), threads)
    counts = count.tolist()
    if min(counts) < 0:
        return None
    ma, mr = _maxima(top)
    out: list[tuple[tuple[int, float, float], Box | None]] = []
    for k, x, y, b in zip(counts, ma, mr, box.tolist()):
        out.append(((k, x, y), tuple(b)) if k else ((0, 0.0, 0.0), None))  # type: ignore[arg-type]
    return out


def gather(planes: list[torch.Tensor], corners: list[tuple[int, int]], fill: float,
           patches: list[tuple[Box, torch.Tensor] | None], out: torch.Tensor) -> bool:
    """``lowering.crop.gather`` for every lane of a cone step in one call: into ``out`` (L, C,
    h, w) the window of lane l's (C, H, W) plane whose top-left corner is ``corners[l]``
    (``fill`` outside the plane), with its patch pasted over it. False (nothing written) when
    the library is not available or a tensor does not fit."""
    if out.dim() != 4 or out.shape[0] != len(corners):
        return False
    nl, c, h, w = out.shape
    return _gather(planes, [(y, x, h, w, l * c * h * w) for l, (y, x) in enumerate(corners)], h * w, fill,
                   patches, out)


def gather_cols(planes: list[torch.Tensor], boxes: list[Box], offsets: list[int],
                patches: list[tuple[Box, torch.Tensor] | None], out: torch.Tensor) -> bool:
    """``gather`` for lanes side by side as the columns of ``out`` (C, P): lane l's window
    ``boxes[l]`` (inside its plane), row by row, in columns ``offsets[l]`` on."""
    if out.dim() != 2 or not _cols_fit(out.shape[1], boxes, offsets):
        return False
    return _gather(planes, [(b[0], b[2], b[1] - b[0], b[3] - b[2], o) for b, o in zip(boxes, offsets)],
                   out.shape[1], 0.0, patches, out)


def _gather(planes: list[torch.Tensor], geo: list[Geo], sc: int, fill: float,
            patches: list[tuple[Box, torch.Tensor] | None], out: torch.Tensor) -> bool:
    nl = len(geo)
    if not _cpu_f32(out) or not planes or out.shape[0 if out.dim() == 2 else 1] != planes[0].shape[0]:
        return False
    c = planes[0].shape[0]
    pbox = [0] * (6 * nl)
    pptr = [0] * nl
    for l, patch in enumerate(patches):
        if patch is None:
            continue
        box, vals = patch
        if not _cpu_f32(vals, False) or tuple(vals.shape) != (c, box[1] - box[0], box[3] - box[2]) \
                or (vals.shape[2] > 1 and vals.stride(2) != 1):
            return False
        pbox[6 * l:6 * l + 6] = (*box, vals.stride(0), vals.stride(1))
        pptr[l] = vals.data_ptr()
    table = _geo(planes, geo, inside=False)
    if table is None or not available():
        return False
    assert _lib is not None
    _, hh, ww = planes[0].shape
    ptrs = torch.tensor(pptr, dtype=torch.int64)
    boxes = torch.tensor(pbox, dtype=torch.int64)
    _lib.kf_gather(table.data_ptr(), nl, c, hh, ww, sc, fill, ptrs.data_ptr(), boxes.data_ptr(), out.data_ptr(),
                   _threads(out.numel()))
    return True
