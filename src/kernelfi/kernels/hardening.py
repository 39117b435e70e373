"""Kernels that selective hardening adds to a trace (docs/method.md §5, docs/hardening.md).

They are kernels like Darknet's: a batched ``run``, a per-thread instruction ``template`` and a
register map, so a campaign on a hardened model injects into voters and checkers too.

- ``tmr_vote``: out = bitwise majority (a&b)|(a&c)|(b&c) of three replicas (int32 views, so it
  votes float32 activations and int32 maxpool indexes alike).
- ``dmr_compare``: out = a where a and b are bit-identical, else c (the re-execution, which the
  trace counts as executing only on mismatch).
- ``range_clamp``: Ranger's restriction, ``fminf(fmaxf(x, lo), hi)``: NaN becomes ``lo`` as
  CUDA's IEEE maxNum ``fmaxf`` does; -0.0 stays -0.0 (only values strictly outside move).
- ``abft_vectors``, ``abft_checksum``, ``abft_check``, ``abft_correct``: Huang & Abraham
  checksums of one gemm launch (row sums A(Be), column sums (eᵀA)B, a tolerance from the
  operand magnitudes, location of a single corrupted element and its exact recomputation).

When the gemm's B is the im2col workspace, the ABFT kernels read B *virtually* from the image
(``params["im2col"]``): the workspace is not materialised when the engine fuses im2col+gemm
into one convolution, and the checksum kernels must see the same B either way.
"""
from __future__ import annotations

from typing import Any, ClassVar, Mapping

import torch
import torch.nn.functional as F

from kernelfi._utils import KernelfiError
from kernelfi.types import AddressHalf, Launch, ThreadTemplate

from ._base import get_buf, lane_flat, operand_flat, p_int, put, ptxas_registers, register_kernel
from ._base import get_kernel, is_weight_name
from ._sass import Stream, StreamKernel, addr, epilogue, idiv, loop, prologue_1d
from .conv import fused_conv, gemm_operand, group_image, im2col_geometry, no_tf32
from .elementwise import lanes_for_new

Mem = dict[str, torch.Tensor]
#: The template of the helper launches ``recompute`` builds (never profiled).
_EMPTY = ThreadTemplate(threads=0, block=1, slots=())
#: float32 unit roundoff (2^-24): the tolerance of ABFT is a multiple of it.
UNIT_ROUNDOFF = 2.0 ** -24
#: Kernels this module registers.
HARDENING_KERNELS: tuple[str, ...] = (
    "tmr_vote", "dmr_compare", "range_clamp", "abft_vectors", "abft_checksum", "abft_check", "abft_correct",
)


def _bits(x: torch.Tensor) -> torch.Tensor:
    """The raw 32-bit patterns of a float32 or int32 tensor (voting and comparing are bitwise)."""
    if x.dtype not in (torch.float32, torch.int32):
        raise KernelfiError(f"cannot vote a {x.dtype} buffer bitwise")
    return x.contiguous().view(torch.int32)


def _store_head(mem: Mem, name: str, head: torch.Tensor, offset: int = 0) -> None:
    """out[:, offset:offset+n] = head per lane, every other element kept (buffers keep one shape)."""
    old = mem.get(name)
    n = head.shape[1]
    if old is not None and old.dim() >= 1 and old.shape[0] == head.shape[0] and old.numel() // old.shape[0] > n:
        flat = old.reshape(old.shape[0], -1).to(head.dtype).clone()
        flat[:, offset:offset + n] = head
        head = flat
    elif offset:
        raise KernelfiError(f"buffer '{name}' is not in memory for a write at offset {offset}")
    put(mem, name, head)


def _three(mem: Mem, launch: Launch, kernel: str) -> tuple[int, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(offset, a, b, c) of a voter/comparator: elements offset .. offset+n of three replicas
    (``c`` None when that buffer never ran: a skipped re-execution)."""
    n = p_int(launch.params, "n", kernel)
    off = int(launch.params.get("offset", 0))
    a = lane_flat(mem, launch.reads[0], off + n, kernel)[:, off:off + n]
    b = lane_flat(mem, launch.reads[1], off + n, kernel)[:, off:off + n]
    c = lane_flat(mem, launch.reads[2], off + n, kernel)[:, off:off + n] if launch.reads[2] in mem else None
    return off, a, b, c


# --------------------------------------------------------------------------------------------
@register_kernel
class TmrVoteKernel(StreamKernel):
    """Element-wise bitwise majority of three replicas, one thread per element."""

    name: ClassVar[str] = "tmr_vote"
    regs_allocated: ClassVar[int] = ptxas_registers("tmr_vote")
    example_params = ({"n": 1},)

    def run(self, mem: Mem, launch: Launch) -> None:
        off, a, b, c = _three(mem, launch, self.name)
        if c is None:
            raise KernelfiError(f"tmr_vote: replica '{launch.reads[2]}' is not in memory")
        ai, bi, ci = _bits(a), _bits(b), _bits(c)
        _store_head(mem, launch.writes[0], ((ai & (bi | ci)) | (bi & ci)).view(a.dtype), off)  # = majority

    def _threads(self, params: Mapping[str, Any]) -> int:
        return p_int(params, "n", self.name)

    def _stream(self, params: Mapping[str, Any]) -> Stream:
        s = Stream()
        prologue_1d(s, "element i")
        addr(s, "a", "a[i] (replica 0, the original buffer)")
        addr(s, "b", "b[i] (replica 1)")
        addr(s, "c", "c[i] (replica 2)")
        for r, k in (("a", 0), ("b", 1), ("c", 2)):
            s.add("LD", "LDG", f"ld:{r}", 1, "value",
                  f"replica {k}'s element: outvoted unless another replica has the same bit wrong")
        s.add("GPR", "LOP3", "lop3:vote", 1, "value",
              "bitwise majority (a AND b) OR (a AND c) OR (b AND c) in one LOP3.LUT 0xE8: the voted element itself")
        addr(s, "out", "out[i]")
        s.add("NODEST", "STG", "st:out", 1, "store", "stores the voted element")
        epilogue(s)
        s.reg("r_id", "index", "imad:index", "imad:index", "lea:addr_out")
        for r in ("a", "b", "c"):
            # ptxas (11 registers): each replica is loaded into the low half of its address
            # (LDG R, [R]); a flip there before the load is modelled as a wrong replica value
            s.reg(f"r_{r}_hi", "address", f"lea:addr_{r}", f"lea:addr_{r}", f"ld:{r}", half=AddressHalf.HIGH)
            s.reg(f"r_{r}", "data", f"ld:{r}", f"lea:addr_{r}", "lop3:vote")
        s.reg("r_vote", "data", "lop3:vote", "lop3:vote", "st:out")
        s.reg("r_out_lo", "address", "lea:addr_out", "lea:addr_out", "st:out")
        s.reg("r_out_hi", "address", "lea:addr_out", "lea:addr_out", "st:out", half=AddressHalf.HIGH)
        s.reg("p_bounds", "predicate", "setp:bounds", "setp:bounds", "bra:exit")
        return s


# --------------------------------------------------------------------------------------------
@register_kernel
class DmrCompareKernel(StreamKernel):
    """DMR: keep replica 0 where both replicas agree bit for bit, else the re-execution.

    The re-execution (``reads[2]``) is a third replica that the hardened trace counts only on
    mismatch (zero golden instructions). A fault-free timing run may skip it: then the kernel
    needs no ``c`` as long as nothing mismatches.
    """

    name: ClassVar[str] = "dmr_compare"
    regs_allocated: ClassVar[int] = ptxas_registers("dmr_compare")
    example_params = ({"n": 1},)

    def run(self, mem: Mem, launch: Launch) -> None:
        off, a, b, c = _three(mem, launch, self.name)
        ai, bi = _bits(a), _bits(b)
        eq = ai == bi
        if c is None:
            if not bool(eq.all()):
                raise KernelfiError(f"dmr_compare: replicas differ but the re-execution '{launch.reads[2]}' did not run")
            ci = ai
        else:
            ci = _bits(c)
        _store_head(mem, launch.writes[0], torch.where(eq, ai, ci).view(a.dtype), off)

    def _threads(self, params: Mapping[str, Any]) -> int:
        return p_int(params, "n", self.name)

    def _stream(self, params: Mapping[str, Any]) -> Stream:
        s = Stream()
        prologue_1d(s, "element i")
        addr(s, "a", "a[i] (replica 0, the original buffer)")
        addr(s, "b", "b[i] (replica 1)")
        s.add("LD", "LDG", "ld:a", 1, "value", "replica 0's element (kept when the replicas agree)")
        s.add("LD", "LDG", "ld:b", 1, "value", "replica 1's element (only compared)")
        s.add("PR", "ISETP", "setp:eq", 1, "predicate",
              "bits(a) == bits(b): a flip takes the re-executed element (identical without a fault)")
        addr(s, "c", "c[i], the re-execution (executed only on mismatch)", count=0)
        s.add("LD", "LDG", "ld:c", 0, "value", "the re-executed element (only on mismatch)")
        s.add("GPR", "SEL", "sel:out", 1, "value", "a when the replicas agree, else c: the element stored")
        addr(s, "out", "out[i]")
        s.add("NODEST", "STG", "st:out", 1, "store", "stores the checked element")
        epilogue(s)
        s.reg("r_id", "index", "imad:index", "imad:index", "lea:addr_out")
        for r in ("a", "b"):
            s.reg(f"r_{r}_lo", "address", f"lea:addr_{r}", f"lea:addr_{r}", f"ld:{r}")
            s.reg(f"r_{r}_hi", "address", f"lea:addr_{r}", f"lea:addr_{r}", f"ld:{r}", half=AddressHalf.HIGH)
        s.reg("r_a", "data", "ld:a", "ld:a", "sel:out")
        s.reg("r_b", "data", "ld:b", "ld:b", "setp:eq")
        s.reg("r_out", "data", "sel:out", "sel:out", "st:out")
        s.reg("r_out_lo", "address", "lea:addr_out", "lea:addr_out", "st:out")
        s.reg("r_out_hi", "address", "lea:addr_out", "lea:addr_out", "st:out", half=AddressHalf.HIGH)
        s.reg("p_bounds", "predicate", "setp:bounds", "setp:bounds", "bra:exit")
        s.reg("p_eq", "predicate", "setp:eq", "setp:eq", "sel:out")
        return s


# --------------------------------------------------------------------------------------------
def clamp(x: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """``fminf(fmaxf(x, lo), hi)`` in float32 with NaN -> lo (CUDA's fmaxf returns the non-NaN
    operand). Values inside stay bit-identical, a -0.0 at a 0.0 bound too (tests check it)."""
    y = torch.clamp(x, lo, hi)
    if bool(torch.isnan(y.sum())):   # rare (a fault): the cheap test first
        y = torch.where(torch.isnan(y), lo, y)
    return y


@register_kernel
class RangeClampKernel(StreamKernel):
    """Ranger's range restriction of an activation buffer, in place: x = min(max(x, lo), hi)."""

    name: ClassVar[str] = "range_clamp"
    regs_allocated: ClassVar[int] = ptxas_registers("range_clamp")
    example_params = ({"n": 1, "lo": 0.0, "hi": 1.0},)

    def run(self, mem: Mem, launch: Launch) -> None:
        n = p_int(launch.params, "n", self.name)
        lo, hi = float(launch.params["lo"]), float(launch.params["hi"])
        x = lane_flat(mem, launch.reads[0], n, self.name)[:, :n]
        _store_head(mem, launch.writes[0], clamp(x, lo, hi))

    def _threads(self, params: Mapping[str, Any]) -> int:
        return p_int(params, "n", self.name)

    def _stream(self, params: Mapping[str, Any]) -> Stream:
        s = Stream()
        prologue_1d(s, "element i")
        addr(s, "x", "x[i]")
        s.add("LD", "LDG", "ld:x", 1, "value", "the activation before restriction")
        s.add("FP32", "FMNMX", "fmnmx:lo", 1, "value", "fmaxf(x, lo): values below the bound and NaN become lo")
        s.add("FP32", "FMNMX", "fmnmx:hi", 1, "value", "fminf(., hi): the restricted activation")
        s.add("NODEST", "STG", "st:x", 1, "store", "stores the restricted activation in place")
        epilogue(s)
        s.reg("r_id", "index", "imad:index", "imad:index", "lea:addr_x")
        s.reg("r_x_lo", "address", "lea:addr_x", "lea:addr_x", "st:x")
        s.reg("r_x_hi", "address", "lea:addr_x", "lea:addr_x", "st:x", half=AddressHalf.HIGH)
        s.reg("r_x", "data", "ld:x", "ld:x", "fmnmx:lo")
        s.reg("r_low", "data", "fmnmx:lo", "fmnmx:lo", "fmnmx:hi")
        s.reg("r_out", "data", "fmnmx:hi", "fmnmx:hi", "st:x")
        s.reg("p_bounds", "predicate", "setp:bounds", "setp:bounds", "bra:exit")
        return s


# --------------------------------------------------------------------------------------------
# ABFT helpers: the gemm's operands as matrices
# --------------------------------------------------------------------------------------------
def gemm_dims(params: Mapping[str, Any], kernel: str) -> tuple[int, int, int]:
    return tuple(p_int(params, k, kernel) for k in ("M", "N", "K"))  # type: ignore[return-value]


def row_gamma(params: Mapping[str, Any], kernel: str) -> float:
    """Tolerance factor of a row sum: 2u(K + 2N + 2) (docs/hardening.md derives it)."""
    m, n, k = gemm_dims(params, kernel)
    return 2.0 * UNIT_ROUNDOFF * (k + 2 * n + 2)


def col_gamma(params: Mapping[str, Any], kernel: str) -> float:
    """Tolerance factor of a column sum: 2u(K + 2M + 2)."""
    m, n, k = gemm_dims(params, kernel)
    return 2.0 * UNIT_ROUNDOFF * (k + 2 * m + 2)


def _lanes(mem: Mem, launch: Launch, kernel: str) -> int:
    for name in launch.reads:
        t = mem.get(name)
        if t is not None and not is_weight_name(name):
            return int(t.shape[0])
    return lanes_for_new(mem, launch.writes[0], kernel)[0]


def a_matrix(mem: Mem, launch: Launch, lanes: int, kernel: str) -> torch.Tensor:
    """op(A) as (1 or lanes, M, K)."""
    p = launch.params
    m, _, k = gemm_dims(p, kernel)
    off = int(p.get("a_offset", 0))
    return gemm_operand(operand_flat(mem, launch.reads[0], 2, lanes, off + m * k, kernel), off, m, k, bool(p.get("trans_a")))


def b_matrix(mem: Mem, launch: Launch, lanes: int, kernel: str) -> torch.Tensor:
    """op(B) as (1 or lanes, K, N); with ``params["im2col"]`` the columns of the image read
    virtually (exactly what im2col would write into the workspace)."""
    p = launch.params
    _, n, k = gemm_dims(p, kernel)
    geo = p.get("im2col")
    if geo:
        g = im2col_geometry(geo, kernel)
        img = group_image(get_buf(mem, launch.reads[1], kernel), g, kernel)
        cols = F.unfold(img, kernel_size=g["ksize"], dilation=g["dilation"], padding=g["pad"], stride=g["stride"])
        if tuple(cols.shape[1:]) != (k, n):
            raise KernelfiError(f"{kernel}: im2col of the image gives {tuple(cols.shape[1:])}, the gemm needs {(k, n)}")
        return cols
    off = int(p.get("b_offset", 0))
    return gemm_operand(operand_flat(mem, launch.reads[1], 2, lanes, off + k * n, kernel), off, k, n, bool(p.get("trans_b")))


def c_block(mem: Mem, name: str, params: Mapping[str, Any], kernel: str) -> torch.Tensor:
    """C's M×N block (at ``c_offset``) as (lanes, M, N)."""
    m, n, _ = gemm_dims(params, kernel)
    off = int(params.get("c_offset", 0))
    flat = lane_flat(mem, name, off + m * n, kernel)
    return flat[:, off:off + m * n].reshape(flat.shape[0], m, n)


def _virtual_image(mem: Mem, launch: Launch, kernel: str) -> tuple[torch.Tensor, dict[str, int]]:
    g = im2col_geometry(launch.params["im2col"], kernel)
    return group_image(get_buf(mem, launch.reads[1], kernel), g, kernel), g


def virtual_row_sums(img: torch.Tensor, g: Mapping[str, int]) -> torch.Tensor:
    """(Be)[k] of B = im2col(img) without materialising B: for tap (c, kh, kw) the sum of the
    padded image over the output positions, i.e. a correlation of each channel with an
    OH×OW block of ones at dilation = stride and stride = dilation. Returns (lanes, K)."""
    lanes, ch, h, w = img.shape
    p = g["pad"]
    xp = F.pad(img, (p, p, p, p)).reshape(lanes * ch, 1, h + 2 * p, w + 2 * p)
    ones = torch.ones(1, 1, g["out_h"], g["out_w"], dtype=img.dtype, device=img.device)
    with no_tf32(img.device):
        s = F.conv2d(xp, ones, stride=g["dilation"], dilation=g["stride"])
    ks = g["ksize"]
    return s[:, :, :ks, :ks].reshape(lanes, ch * ks * ks)


def _shared(v: torch.Tensor) -> torch.Tensor:
    """(1, K) when every lane holds the same vector (no faulty lane changed it), else as is."""
    return v[:1] if bool((v == v[:1]).all()) else v


def virtual_col_sums(img: torch.Tensor, vec: torch.Tensor, g: Mapping[str, int]) -> torch.Tensor:
    """(vᵀB)[n] for B = im2col(img) and per-lane vectors v (lanes or 1, K): one single-filter
    convolution per lane (a grouped convolution). Returns (lanes, N)."""
    lanes, ch, h, w = img.shape
    ks = g["ksize"]
    geo = {"stride": g["stride"], "padding": g["pad"], "dilation": g["dilation"]}
    with no_tf32(img.device):
        if vec.shape[0] == 1:   # shared weights (the usual case): one single-filter convolution
            return F.conv2d(img, vec.reshape(1, ch, ks, ks), **geo).reshape(lanes, -1)
        wts = vec.reshape(lanes, ch, ks, ks)
        y = F.conv2d(img.reshape(1, lanes * ch, h, w), wts, groups=lanes, **geo)
    return y.reshape(lanes, -1)


# --------------------------------------------------------------------------------------------
class _AbftKernel(StreamKernel):
    """Shared geometry of the ABFT kernels: the gemm's params plus an optional ``im2col``."""

    example_params = ({"M": 2, "N": 2, "K": 2, "trans_a": False, "trans_b": False},
                      {"M": 2, "N": 1, "K": 4, "im2col": {"channels": 1, "height": 2, "width": 2, "ksize": 2,
                                                         "stride": 1, "pad": 0, "out_h": 1, "out_w": 1}})

    @staticmethod
    def _virtual(params: Mapping[str, Any]) -> bool:
        return bool(params.get("im2col"))

    def _b_access(self, s: Stream, params: Mapping[str, Any], tag: str, trips: int, what: str) -> None:
        """Index arithmetic of one B element (virtual: image row/column and a padding test)."""
        v = self._virtual(params)
        s.add("GPR", "XMAD", f"imad:{tag}_index", (3 if v else 1) * trips, "index",
              f"{what}'s element index" + (" (image channel, row and column of the tap)" if v else ""))
        if v:
            s.add("PR", "ISETP", f"setp:{tag}_pad", 2 * trips, "predicate",
                  "the tap lies inside the image (else the column entry is 0): a flip drops a pixel or reads padding")


@register_kernel
class AbftVectorsKernel(_AbftKernel):
    """Checksum vectors of one gemm, one thread per k: (Be)[k], (|B|e)[k], (eᵀA)[k], (eᵀ|A|)[k].

    Writes them as 4K floats per lane (``writes[0]``): the first half feeds the expected row
    sums, the second the expected column sums; the magnitudes feed the tolerances.
    """

    name: ClassVar[str] = "abft_vectors"
    regs_allocated: ClassVar[int] = ptxas_registers("abft_vectors")

    def run(self, mem: Mem, launch: Launch) -> None:
        lanes = _lanes(mem, launch, self.name)
        a = a_matrix(mem, launch, lanes, self.name)
        k = a.shape[2]
        if launch.params.get("im2col"):
            img, g = _virtual_image(mem, launch, self.name)
            be, be_abs = virtual_row_sums(img, g), virtual_row_sums(img.abs(), g)
        else:
            b = b_matrix(mem, launch, lanes, self.name)
            be, be_abs = b.sum(2), b.abs().sum(2)
        vec = torch.cat([be.expand(lanes, k), be_abs.expand(lanes, k),
                         a.sum(1).expand(lanes, k), a.abs().sum(1).expand(lanes, k)], dim=1)
        put(mem, launch.writes[0], vec.contiguous())

    def _threads(self, params: Mapping[str, Any]) -> int:
        return p_int(params, "K", self.name)

    def _stream(self, params: Mapping[str, Any]) -> Stream:
        m, n, _ = gemm_dims(params, self.name)
        s = Stream()
        prologue_1d(s, "K index k")
        if self._virtual(params):
            idiv(s, "k", "c = k / (ksize*ksize), the tap's channel", mod="r = k % (ksize*ksize)")
            idiv(s, "kw", "kh = r / ksize", mod="kw = r % ksize")
        s.add("GPR", "MOV", "mov:acc_init", 4, "value", "the four running sums = 0")
        s.begin_loop(n)
        self._b_access(s, params, "b", n, "B[k][n]")
        s.add("GPR", "IADD", "lea:addr_b", 2 * n, "address", "address of B[k][n]", halves=True)
        s.add("LD", "LDG", "ld:b", n, "value", "B[k][n]: one term of (Be)[k] and of (|B|e)[k]")
        s.add("FP32", "FADD", "fadd:be", n, "value", "(Be)[k] += B[k][n]: one partial sum of the row checksum vector")
        s.add("FP32", "FADD", "fadd:be_abs", n, "value", "(|B|e)[k] += |B[k][n]|: a tolerance term")
        loop(s, "n", "n along B's row k", n)
        s.end_loop()
        s.begin_loop(m)
        s.add("GPR", "XMAD", "imad:a_index", m, "index", "A[m][k]'s element index")
        s.add("GPR", "IADD", "lea:addr_a", 2 * m, "address", "address of A[m][k]", halves=True)
        s.add("LD", "LDG", "ld:a", m, "value", "A[m][k]: one term of (eᵀA)[k] and of (eᵀ|A|)[k]")
        s.add("FP32", "FADD", "fadd:ea", m, "value", "(eᵀA)[k] += A[m][k]: one partial sum of the column checksum vector")
        s.add("FP32", "FADD", "fadd:ea_abs", m, "value", "(eᵀ|A|)[k] += |A[m][k]|: a tolerance term")
        loop(s, "m", "m down A's column k", m)
        s.end_loop()
        addr(s, "vec", "the four vector entries of k")
        s.add("NODEST", "STG", "st:vec", 4, "store", "stores (Be)[k], (|B|e)[k], (eᵀA)[k], (eᵀ|A|)[k]")
        epilogue(s)
        s.reg("r_k", "index", "imad:index", "imad:index", "imad:a_index")
        s.reg("r_b_index", "index", "imad:b_index", "imad:b_index", "lea:addr_b")
        s.reg("r_b_lo", "address", "lea:addr_b", "lea:addr_b", "ld:b")
        s.reg("r_b_hi", "address", "lea:addr_b", "lea:addr_b", "ld:b", half=AddressHalf.HIGH)
        s.reg("r_b", "data", "ld:b", "ld:b", "fadd:be_abs")
        s.reg("r_be", "accumulator", "fadd:be", "mov:acc_init", "st:vec")
        s.reg("r_be_abs", "accumulator", "fadd:be_abs", "mov:acc_init", "st:vec")
        s.reg("r_a_index", "index", "imad:a_index", "imad:a_index", "lea:addr_a")
        s.reg("r_a_lo", "address", "lea:addr_a", "lea:addr_a", "ld:a")
        s.reg("r_a_hi", "address", "lea:addr_a", "lea:addr_a", "ld:a", half=AddressHalf.HIGH)
        s.reg("r_a", "data", "ld:a", "ld:a", "fadd:ea_abs")
        s.reg("r_ea", "accumulator", "fadd:ea", "fadd:ea", "st:vec")
        s.reg("r_ea_abs", "accumulator", "fadd:ea_abs", "fadd:ea_abs", "st:vec")
        s.reg("r_n", "loop_counter", "loop:n", "mov:acc_init", "setp:loop_n")
        s.reg("r_m", "loop_counter", "loop:m", "loop:m", "setp:loop_m")
        s.reg("r_vec_lo", "address", "lea:addr_vec", "lea:addr_vec", "st:vec")
        s.reg("r_vec_hi", "address", "lea:addr_vec", "lea:addr_vec", "st:vec", half=AddressHalf.HIGH)
        s.reg("p_bounds", "predicate", "setp:bounds", "setp:bounds", "bra:exit")
        s.reg("p_loop", "predicate", "setp:loop_n", "setp:loop_n", "bra:loop_n")
        return s


@register_kernel
class AbftChecksumKernel(_AbftKernel):
    """Expected sums of C and their tolerances, one thread per row t (< M) or column t - M.

    Row t: Σ_k A[t][k]·(Be)[k] and γ_r·Σ_k |A[t][k]|·(|B|e)[k]; column j: Σ_k (eᵀA)[k]·B[k][j]
    and γ_c·Σ_k (eᵀ|A|)[k]·|B[k][j]|. Writes per lane [rows (M), columns (N), row tolerances (M),
    column tolerances (N)]. C starts at zero (the transform checks a zero ``fill`` precedes).
    """

    name: ClassVar[str] = "abft_checksum"
    regs_allocated: ClassVar[int] = ptxas_registers("abft_checksum")

    def run(self, mem: Mem, launch: Launch) -> None:
        p = launch.params
        lanes = _lanes(mem, launch, self.name)
        a = a_matrix(mem, launch, lanes, self.name)
        m, n, k = gemm_dims(p, self.name)
        vec = lane_flat(mem, launch.reads[2], 4 * k, self.name)
        be, be_abs, ea, ea_abs = (vec[:, i * k:(i + 1) * k] for i in range(4))
        with no_tf32(a.device):
            rows = torch.matmul(a, be.unsqueeze(2)).squeeze(2)
            rtol = torch.matmul(a.abs(), be_abs.unsqueeze(2)).squeeze(2) * row_gamma(p, self.name)
            if p.get("im2col"):
                img, g = _virtual_image(mem, launch, self.name)
                cols, ctol = virtual_col_sums(img, _shared(ea), g), virtual_col_sums(img.abs(), _shared(ea_abs), g)
            else:
                b = b_matrix(mem, launch, lanes, self.name)
                cols = torch.matmul(ea.unsqueeze(1), b).squeeze(1)
                ctol = torch.matmul(ea_abs.unsqueeze(1), b.abs()).squeeze(1)
            ctol = ctol * col_gamma(p, self.name)
        out = torch.cat([rows.expand(lanes, m), cols.expand(lanes, n), rtol.expand(lanes, m),
                         ctol.expand(lanes, n)], dim=1)
        put(mem, launch.writes[0], out.contiguous())

    def _threads(self, params: Mapping[str, Any]) -> int:
        m, n, _ = gemm_dims(params, self.name)
        return m + n

    def _stream(self, params: Mapping[str, Any]) -> Stream:
        k = gemm_dims(params, self.name)[2]
        s = Stream()
        prologue_1d(s, "row t or column t - M")
        s.add("PR", "ISETP", "setp:side", 1, "predicate",
              "t < M (a row thread): a flip computes the other side's sum for a wrong index")
        s.add("GPR", "MOV", "mov:acc_init", 2, "value", "expected sum and magnitude sum = 0")
        s.begin_loop(k)
        self._b_access(s, params, "mat", k, "A[t][k] (row thread) or B[k][j] (column thread)")
        s.add("GPR", "IADD", "lea:addr_mat", 2 * k, "address", "address of A[t][k] or B[k][j]", halves=True)
        s.add("LD", "LDG", "ld:mat", k, "value", "A[t][k] or B[k][j]: one term of the expected sum")
        s.add("GPR", "IADD", "lea:addr_vec", 2 * k, "address", "address of the checksum vector entries of k",
              halves=True)
        s.add("LD", "LDG", "ld:vec", k, "value", "(Be)[k] or (eᵀA)[k]: one term of the expected sum")
        s.add("LD", "LDG", "ld:vec_abs", k, "value", "(|B|e)[k] or (eᵀ|A|)[k]: one tolerance term")
        s.add("FP32", "FFMA", "ffma:exp", k, "value", "expected sum += mat*vec: one partial sum")
        s.add("FP32", "FFMA", "ffma:tol", k, "value", "magnitude sum += |mat|*vec_abs: one partial tolerance")
        loop(s, "k", "k along the inner dimension", k)
        s.end_loop()
        s.add("FP32", "FMUL", "fmul:tol", 1, "value", "tolerance = γ × magnitude sum")
        addr(s, "sums", "the expected sum and tolerance of t")
        s.add("NODEST", "STG", "st:sums", 2, "store", "stores the expected sum and its tolerance")
        epilogue(s)
        s.reg("r_t", "index", "imad:index", "imad:index", "lea:addr_sums")
        s.reg("r_index", "index", "imad:mat_index", "imad:mat_index", "lea:addr_mat")
        s.reg("r_mat_lo", "address", "lea:addr_mat", "lea:addr_mat", "ld:mat")
        s.reg("r_mat_hi", "address", "lea:addr_mat", "lea:addr_mat", "ld:mat", half=AddressHalf.HIGH)
        s.reg("r_vec_lo", "address", "lea:addr_vec", "lea:addr_vec", "ld:vec_abs")
        s.reg("r_vec_hi", "address", "lea:addr_vec", "lea:addr_vec", "ld:vec_abs", half=AddressHalf.HIGH)
        s.reg("r_mat", "data", "ld:mat", "ld:mat", "ffma:tol")
        s.reg("r_vec", "data", "ld:vec", "ld:vec", "ffma:exp")
        s.reg("r_vec_abs", "data", "ld:vec_abs", "ld:vec_abs", "ffma:tol")
        s.reg("r_exp", "accumulator", "ffma:exp", "mov:acc_init", "st:sums")
        s.reg("r_tol", "accumulator", "ffma:tol", "mov:acc_init", "fmul:tol")
        s.reg("r_k", "loop_counter", "loop:k", "mov:acc_init", "setp:loop_k")
        s.reg("r_sums_lo", "address", "lea:addr_sums", "lea:addr_sums", "st:sums")
        s.reg("r_sums_hi", "address", "lea:addr_sums", "lea:addr_sums", "st:sums", half=AddressHalf.HIGH)
        s.reg("p_bounds", "predicate", "setp:bounds", "setp:bounds", "bra:exit")
        s.reg("p_side", "predicate", "setp:side", "setp:side", "setp:loop_k")
        s.reg("p_loop", "predicate", "setp:loop_k", "setp:loop_k", "bra:loop_k")
        return s


def check_trips(params: Mapping[str, Any], kernel: str) -> int:
    """Elements summed by the average check thread: 2MN / (M + N) (rows sum N, columns M)."""
    m, n, _ = gemm_dims(params, kernel)
    return max(1, round(2 * m * n / (m + n)))


@register_kernel
class AbftCheckKernel(StreamKernel):
    """Actual row/column sums of C compared with the expected ones, one thread per row or
    column; writes per lane M + N int32 mismatch flags (1: |actual - expected| > tolerance or
    not finite). Rows sum N elements and columns M: the template is the average thread."""

    name: ClassVar[str] = "abft_check"
    regs_allocated: ClassVar[int] = ptxas_registers("abft_check")
    example_params = ({"M": 2, "N": 3, "K": 2},)

    def run(self, mem: Mem, launch: Launch) -> None:
        p = launch.params
        m, n, _ = gemm_dims(p, self.name)
        c = c_block(mem, launch.reads[0], p, self.name)
        sums = lane_flat(mem, launch.reads[1], 2 * (m + n), self.name)
        actual = torch.cat([c.sum(2), c.sum(1)], dim=1)
        ok = (actual - sums[:, :m + n]).abs() <= sums[:, m + n:]
        put(mem, launch.writes[0], (~ok).to(torch.int32))

    def _threads(self, params: Mapping[str, Any]) -> int:
        m, n, _ = gemm_dims(params, self.name)
        return m + n

    def _stream(self, params: Mapping[str, Any]) -> Stream:
        e = check_trips(params, self.name)
        s = Stream()
        prologue_1d(s, "row t or column t - M")
        s.add("PR", "ISETP", "setp:side", 1, "predicate",
              "t < M (a row thread): a flip sums the wrong line of C (a false alarm or a missed one)")
        s.add("GPR", "MOV", "mov:sum_init", 1, "value", "actual sum = 0")
        s.begin_loop(e)
        s.add("GPR", "XMAD", "imad:c_index", e, "index", "C element index (t*N + n or m*N + j)")
        s.add("GPR", "IADD", "lea:addr_c", 2 * e, "address", "address of the C element", halves=True)
        s.add("LD", "LDG", "ld:c", e, "value", "one C element of the row or column")
        s.add("FP32", "FADD", "fadd:sum", e, "value", "actual sum += C element: one partial sum")
        loop(s, "e", "e along the row or column", e)
        s.end_loop()
        addr(s, "sums", "the expected sum and tolerance of t")
        s.add("LD", "LDG", "ld:exp", 1, "value", "the expected sum")
        s.add("LD", "LDG", "ld:tol", 1, "value", "the tolerance")
        s.add("FP32", "FADD", "fadd:diff", 1, "value", "actual - expected")
        s.add("PR", "FSETP", "setp:within", 1, "predicate",
              "|actual - expected| <= tolerance: a flip raises a false alarm (the recomputation is exact: harmless) "
              "or hides a real mismatch")
        s.add("GPR", "SEL", "sel:flag", 1, "value", "the mismatch flag (0 or 1)")
        addr(s, "flags", "flags[t]")
        s.add("NODEST", "STG", "st:flag", 1, "store", "stores the mismatch flag")
        epilogue(s)
        s.reg("r_t", "index", "imad:index", "imad:index", "lea:addr_flags")
        s.reg("r_c_index", "index", "imad:c_index", "imad:c_index", "lea:addr_c")
        s.reg("r_c_lo", "address", "lea:addr_c", "lea:addr_c", "ld:c")
        s.reg("r_c_hi", "address", "lea:addr_c", "lea:addr_c", "ld:c", half=AddressHalf.HIGH)
        s.reg("r_x", "data", "ld:c", "ld:c", "fadd:sum")
        s.reg("r_sum", "accumulator", "fadd:sum", "mov:sum_init", "fadd:diff")
        s.reg("r_e", "loop_counter", "loop:e", "mov:sum_init", "setp:loop_e")
        s.reg("r_sums_lo", "address", "lea:addr_sums", "lea:addr_sums", "ld:tol")
        s.reg("r_sums_hi", "address", "lea:addr_sums", "lea:addr_sums", "ld:tol", half=AddressHalf.HIGH)
        s.reg("r_exp", "data", "ld:exp", "ld:exp", "fadd:diff")
        s.reg("r_tol", "data", "ld:tol", "ld:tol", "setp:within")
        s.reg("r_diff", "data", "fadd:diff", "fadd:diff", "setp:within")
        s.reg("r_flag", "data", "sel:flag", "sel:flag", "st:flag")
        s.reg("r_flags_lo", "address", "lea:addr_flags", "lea:addr_flags", "st:flag")
        s.reg("r_flags_hi", "address", "lea:addr_flags", "lea:addr_flags", "st:flag", half=AddressHalf.HIGH)
        s.reg("p_bounds", "predicate", "setp:bounds", "setp:bounds", "bra:exit")
        s.reg("p_side", "predicate", "setp:side", "setp:side", "setp:loop_e")
        s.reg("p_loop", "predicate", "setp:loop_e", "setp:loop_e", "bra:loop_e")
        s.reg("p_within", "predicate", "setp:within", "setp:within", "sel:flag")
        return s


# --------------------------------------------------------------------------------------------
def recompute(mem: Mem, launch: Launch, lanes: torch.Tensor, kernel: str) -> list[torch.Tensor]:
    """The gemm's M×N block for ``lanes`` recomputed from a zero C, every way the engine may have
    computed it: the explicit kernels (im2col, then the lane-by-lane SGEMM) and, when B is an
    im2col of the image, the fused convolution. Each is bit-identical to its own golden path."""
    p = launch.params
    m, n, k = gemm_dims(p, kernel)
    gp = {key: p[key] for key in ("M", "N", "K", "trans_a", "trans_b", "a_offset", "b_offset") if key in p}
    gp["c_offset"] = 0
    sub: Mem = {}
    for name in launch.reads[:2]:
        t = mem[name]
        sub[name] = t if is_weight_name(name) and t.dim() == 2 else t.index_select(0, lanes)
    a_name, b_name = launch.reads[0], launch.reads[1]
    geo = p.get("im2col")
    if geo:
        im = Launch(0, 0, "", "abft.im2col", "im2col", (b_name,), ("workspace",), dict(geo),
                    template=_EMPTY)
        get_kernel("im2col").run(sub, im)
        b_name = "workspace"
        gp["b_offset"] = 0
    sub["abft.C"] = torch.zeros(len(lanes), m * n, dtype=torch.float32, device=sub[a_name].device)
    gemm = Launch(0, 0, "", "abft.gemm", "gemm", (a_name, b_name, "abft.C"), ("abft.C",), gp, template=_EMPTY)
    get_kernel("gemm").run(sub, gemm)
    out = [sub["abft.C"].reshape(len(lanes), m, n)]
    if geo:
        w = mem[launch.reads[0]]
        w = w if w.dim() == 2 else w.index_select(0, lanes)
        conv = fused_conv(mem[launch.reads[1]].index_select(0, lanes), w, geo, gp)
        out.append(torch.zeros(len(lanes), m * n, dtype=conv.dtype, device=conv.device).reshape(len(lanes), m, n) + conv)
    return out


@register_kernel
class AbftCorrectKernel(_AbftKernel):
    """Correction after ``abft_check`` (it runs only on a mismatch: the hardened trace counts no
    golden instructions for it). One flagged row and one flagged column locate a single
    corrupted element, whose dot product is recomputed; any other pattern recomputes the whole
    gemm. ``run`` recomputes with the arithmetic that produced C (see :func:`recompute`), so a
    corrected element is bit-identical to golden. The template is the single-element case."""

    name: ClassVar[str] = "abft_correct"
    regs_allocated: ClassVar[int] = ptxas_registers("abft_correct")

    def run(self, mem: Mem, launch: Launch) -> None:
        p = launch.params
        m, n, _ = gemm_dims(p, self.name)
        flags = lane_flat(mem, launch.reads[3], m + n, self.name)[:, :m + n] != 0
        bad = torch.nonzero(flags.any(1)).flatten()
        if bad.numel() == 0:
            return
        c_name = launch.reads[2]
        cands = recompute(mem, launch, bad, self.name)
        cur = c_block(mem, c_name, p, self.name)
        new_c = cur.clone()
        for j, lane in enumerate(bad.tolist()):
            rows, cols = flags[lane, :m], flags[lane, m:]
            keep = ~rows.view(m, 1) & ~cols.view(1, n)
            scores = [int((_bits(cd[j]) == _bits(cur[lane]))[keep].sum()) for cd in cands]
            best = cands[max(range(len(cands)), key=lambda i: (scores[i], -i))][j]
            if int(rows.sum()) == 1 and int(cols.sum()) == 1:
                r, c = int(rows.nonzero()[0]), int(cols.nonzero()[0])
                new_c[lane, r, c] = best[r, c]
            else:
                new_c[lane] = best
        off = int(p.get("c_offset", 0))
        flat = lane_flat(mem, c_name, off + m * n, self.name).clone()
        flat[:, off:off + m * n] = new_c.reshape(flat.shape[0], m * n)
        put(mem, launch.writes[0], flat)

    def _threads(self, params: Mapping[str, Any]) -> int:
        return 1

    def _stream(self, params: Mapping[str, Any]) -> Stream:
        m, n, k = gemm_dims(params, self.name)
        s = Stream()
        prologue_1d(s, "the correcting thread")
        s.begin_loop(m + n)
        s.add("GPR", "IADD", "lea:addr_flags", 2 * (m + n), "address", "address of one mismatch flag", halves=True)
        s.add("LD", "LDG", "ld:flag", m + n, "value", "one mismatch flag (locating the row and the column)")
        s.add("GPR", "SEL", "sel:where", m + n, "index", "remembers the flagged row r / column c")
        loop(s, "f", "f over the flags", m + n)
        s.end_loop()
        s.add("GPR", "MOV", "mov:acc_init", 1, "value", "the recomputed element = 0 (C starts at zero)")
        s.begin_loop(k)
        self._b_access(s, params, "b", k, "B[k][c]")
        s.add("GPR", "XMAD", "imad:a_index", k, "index", "A[r][k]'s element index")
        s.add("GPR", "IADD", "lea:addr_ab", 4 * k, "address", "addresses of A[r][k] and B[k][c]", halves=True)
        s.add("LD", "LDG", "ld:a", k, "value", "A[r][k]: one product term of the recomputed element")
        s.add("LD", "LDG", "ld:b", k, "value", "B[k][c]: one product term of the recomputed element")
        s.add("FP32", "FFMA", "ffma:acc", k, "value", "acc += A[r][k]*B[k][c]: one partial sum of the corrected element")
        loop(s, "k", "k along the dot product", k)
        s.end_loop()
        addr(s, "c", "C[r][c]")
        s.add("NODEST", "STG", "st:c", 1, "store", "stores the corrected element")
        epilogue(s)
        s.reg("r_flags_lo", "address", "lea:addr_flags", "lea:addr_flags", "ld:flag")
        s.reg("r_flags_hi", "address", "lea:addr_flags", "lea:addr_flags", "ld:flag", half=AddressHalf.HIGH)
        s.reg("r_flag", "data", "ld:flag", "ld:flag", "sel:where")
        s.reg("r_row", "index", "sel:where", "sel:where", "imad:a_index")
        s.reg("r_col", "index", "sel:where", "sel:where", "imad:b_index")
        s.reg("r_ab_lo", "address", "lea:addr_ab", "lea:addr_ab", "ld:b")
        s.reg("r_ab_hi", "address", "lea:addr_ab", "lea:addr_ab", "ld:b", half=AddressHalf.HIGH)
        s.reg("r_a", "data", "ld:a", "ld:a", "ffma:acc")
        s.reg("r_b", "data", "ld:b", "ld:b", "ffma:acc")
        s.reg("r_acc", "accumulator", "ffma:acc", "mov:acc_init", "st:c")
        s.reg("r_k", "loop_counter", "loop:k", "mov:acc_init", "setp:loop_k")
        s.reg("r_c_lo", "address", "lea:addr_c", "lea:addr_c", "st:c")
        s.reg("r_c_hi", "address", "lea:addr_c", "lea:addr_c", "st:c", half=AddressHalf.HIGH)
        s.reg("p_bounds", "predicate", "setp:bounds", "setp:bounds", "bra:exit")
        s.reg("p_loop", "predicate", "setp:loop_k", "setp:loop_k", "bra:loop_k")
        return s


def tag_tables() -> str:
    """Markdown tag tables of the hardening kernels (docs/hardening.md §8), per-thread counts at
    the sizes named in each heading; tags a template lists with no slot run only on mismatch."""
    from ._doc import TAG_TABLE_HEAD

    sizes: dict[str, Mapping[str, Any]] = {
        "tmr_vote": {"n": 1}, "dmr_compare": {"n": 1}, "range_clamp": {"n": 1, "lo": 0.0, "hi": 1.0},
        "abft_vectors": {"M": 16, "N": 256, "K": 400, "im2col": {"channels": 16, "height": 16, "width": 16,
                         "ksize": 5, "stride": 1, "pad": 2, "out_h": 16, "out_w": 16}},
        "abft_checksum": {"M": 16, "N": 256, "K": 400, "im2col": {"channels": 16, "height": 16, "width": 16,
                          "ksize": 5, "stride": 1, "pad": 2, "out_h": 16, "out_w": 16}},
        "abft_check": {"M": 16, "N": 256, "K": 400},
        "abft_correct": {"M": 16, "N": 256, "K": 400, "im2col": {"channels": 16, "height": 16, "width": 16,
                         "ksize": 5, "stride": 1, "pad": 2, "out_h": 16, "out_w": 16}},
    }
    out = []
    for name in HARDENING_KERNELS:
        k = get_kernel(name)
        p = sizes[name]
        vocab = k.vocabulary()
        counts = {sl.tag: (sl.group, sl.opcode, sl.count) for sl in k.template(p).slots}
        dims = ", ".join(f"{key}={v}" for key, v in p.items() if key in ("M", "N", "K"))
        lines = [f"#### `{name}`" + (f" ({dims}, virtual B of a 5×5 pad-2 convolution)" if "im2col" in p else
                                     f" ({dims})" if dims else ""), "", TAG_TABLE_HEAD]
        for tag, info in vocab.items():
            g, op, c = counts.get(tag, (info.group, "–", 0))
            lines.append(f"| `{tag}` | {g} | {op} | {c if tag in counts else '0 (on mismatch / other case)'} | "
                         f"{info.effect} | {info.meaning} |")
        out.append("\n".join(lines))
    return "\n\n".join(out)
