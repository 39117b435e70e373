"""PyTorch's CUDA GroupNorm forward (aten/src/ATen/native/cuda/group_norm_kernel.cu), as two
launches: ``group_norm_moments`` and ``group_norm_apply``.

Unlike BatchNorm at inference, GroupNorm computes its statistics from the input, so one fault
in the statistics pass reaches every output of its group.

``group_norm_moments`` is ``RowwiseMomentsCUDAKernel``: one block per (n, group) row of
``row = (C/G)*H*W`` elements; PyTorch launches 32 threads (one warp) per block when the row is
shorter than 512 (``kCUDABlockReduceNumThreads``), 512 otherwise. Thread j runs Welford's update
over elements j, j+T, ... (``WelfordOps::reduce``: delta = x - mean, mean += delta / n, m2 =
fma(delta, x - mean, m2)), then ``cuda_utils::WarpReduce`` (``WelfordOps::combine`` over
``__shfl_down`` at offsets 16, 8, 4, 2, 1) and, for 512 threads, ``BlockReduce``'s second stage
(lane 0 of each warp to shared memory, warp 0 reads the 16 results, the identity above them,
and reduces again) leave the row's (mean, m2, n) in thread 0, which stores mean and rstd =
rsqrt(max(m2/n, 0) + eps) to ``stats[2*row]``, ``stats[2*row + 1]``. ``run`` computes exactly
that order step by step in float32 for all lanes at once (torch tensors of shape (lanes, rows,
T): ceil(row/T) Welford steps, 5 or 10 shuffle levels), the FFMAs nvcc contracts rounded once
(``fma_f32``); rsqrt is modelled as ``torch.rsqrt`` (within an ulp of 1/sqrt), not MUFU.RSQ's
bits. (Newer PyTorch drops the max(., 0); it only differs for a NaN variance.)

``group_norm_apply`` is the elementwise pass: y = (x - mean)*rstd without affine, and with
affine PyTorch's ``ComputeFusedParamsCUDAKernel`` values a = rstd*gamma[c], b = fma(-a, mean,
beta[c]) then y = fma(a, x, b). PyTorch computes a and b in a separate launch over N*C (a, b
depend only on the channel); kernelfi folds that small launch into the element thread (same
values bit for bit, one launch fewer).
"""
from __future__ import annotations

from typing import Any, ClassVar, Mapping

import torch

from kernelfi._utils import KernelfiError
from kernelfi.types import AddressHalf, Launch, ThreadTemplate

from ._base import fma_f32, lane_flat, operand_flat, p_int, ptxas_registers, put, register_kernel
from ._sass import Stream, StreamKernel, addr, epilogue, fdiv, idiv, loop, prologue_1d

Mem = dict[str, torch.Tensor]

#: threads per moments block: one warp for rows shorter than ROW_LIMIT, else BLOCK_THREADS
WARP = 32
ROW_LIMIT = 512
BLOCK_THREADS = 512
#: shuffle-down offsets of a warp reduction (cuda_utils::WarpReduce), in order
OFFSETS = (16, 8, 4, 2, 1)


def threads_per_row(row: int) -> int:
    """PyTorch's block size for a row: 32 below 512 elements, else 512 (kCUDABlockReduceNumThreads)."""
    if row < 1:
        raise KernelfiError("group_norm_moments: empty row")
    return WARP if row < ROW_LIMIT else BLOCK_THREADS


def welford_combine(am: torch.Tensor, a2: torch.Tensor, an: torch.Tensor,
                    bm: torch.Tensor, b2: torch.Tensor, bn: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``WelfordOps::combine`` in float32 (counts as floats, as ``nf``): an empty side returns the
    other; delta = b.mean - a.mean, nb/n = b.nf/(a.nf + b.nf), mean = fma(delta, nb/n, a.mean),
    m2 = fma(delta*delta*a.nf, nb/n, a.m2 + b.m2)."""
    delta = bm - am
    count = an + bn
    nb = bn / count
    mean = fma_f32(delta, nb, am)
    m2 = fma_f32(delta * delta * an, nb, a2 + b2)
    a_empty, b_empty = an == 0, bn == 0
    mean = torch.where(a_empty, bm, torch.where(b_empty, am, mean))
    m2 = torch.where(a_empty, b2, torch.where(b_empty, a2, m2))
    count = torch.where(a_empty, bn, torch.where(b_empty, an, count))
    return mean, m2, count


State = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def lane_states(x: torch.Tensor, threads: int) -> State:
    """Each lane's Welford state (mean, m2, nf) after its pass over elements j, j+threads, ... of
    each row of ``x`` (..., row): shape (..., threads)."""
    row = x.shape[-1]
    trips = -(-row // threads)
    pad = torch.zeros(*x.shape[:-1], trips * threads, dtype=torch.float32)
    pad[..., :row] = x
    xs = pad.reshape(*x.shape[:-1], trips, threads)
    mean = torch.zeros(*x.shape[:-1], threads, dtype=torch.float32)
    m2 = torch.zeros_like(mean)
    n = torch.zeros_like(mean)
    lanes = torch.arange(threads)
    for k in range(trips):
        live = (lanes + k * threads) < row
        v = xs[..., k, :]
        nf = torch.full_like(mean, float(k + 1))
        delta = v - mean
        new_mean = mean + delta / nf
        new_m2 = fma_f32(delta, v - new_mean, m2)
        mean = torch.where(live, new_mean, mean)
        m2 = torch.where(live, new_m2, m2)
        n = torch.where(live, nf, n)
    return mean, m2, n


def shuffle_partner(lanes: torch.Tensor, o: int) -> torch.Tensor:
    """The lane whose state ``__shfl_down(v, o)`` hands each lane: lane + o within its warp, the
    lane itself past the warp's end."""
    return torch.where(lanes % WARP + o < WARP, lanes + o, lanes)


def warp_level(st: State, o: int) -> State:
    """One shuffle-down level of every warp of the last dimension."""
    src = shuffle_partner(torch.arange(st[0].shape[-1]), o)
    return welford_combine(*st, *(t[..., src] for t in st))


def warp_0_inputs(st: State) -> State:
    """BlockReduce's second stage: lane 0 of each warp to shared, warp 0's lanes below the warp
    count read it, the others the identity (0, 0, 0)."""
    warps = st[0].shape[-1] // WARP
    out = []
    for t in st:
        v = torch.zeros(*t.shape[:-1], WARP, dtype=torch.float32)
        v[..., :warps] = t[..., ::WARP]
        out.append(v)
    return out[0], out[1], out[2]


def row_moments(x: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, rstd) of each row of ``x`` (..., row) as ``RowwiseMomentsCUDAKernel`` computes them
    (module docstring): lane passes, WarpReduce, and for 512-thread blocks BlockReduce's second
    WarpReduce over the warps' results."""
    threads = threads_per_row(x.shape[-1])
    with torch.no_grad():
        st = lane_states(x, threads)
        for o in OFFSETS:
            st = warp_level(st, o)
        if threads > WARP:
            st = warp_0_inputs(st)
            for o in OFFSETS:
                st = warp_level(st, o)
        m, q, c = (t[..., 0] for t in st)
        rstd = torch.rsqrt(torch.clamp(q / c, min=0.0) + torch.tensor(eps, dtype=torch.float32))
    return m, rstd


@register_kernel
class GroupNormMomentsKernel(StreamKernel):
    """``RowwiseMomentsCUDAKernel``: one warp per (n, group) row writes the row's mean and rstd.
    Params: ``rows`` (G), ``row`` (C/G*H*W), ``eps``."""

    name: ClassVar[str] = "group_norm_moments"
    regs_allocated: ClassVar[int] = ptxas_registers("group_norm_moments")
    block: ClassVar[int] = WARP
    example_params = ({"rows": 1, "row": 40, "eps": 1e-5}, {"rows": 1, "row": 600, "eps": 1e-5})

    def run(self, mem: Mem, launch: Launch) -> None:
        rows, row = p_int(launch.params, "rows", self.name), p_int(launch.params, "row", self.name)
        x = lane_flat(mem, launch.reads[0], rows * row, self.name)[:, :rows * row].reshape(-1, rows, row)
        m, r = row_moments(x.float(), float(launch.params.get("eps", 1e-5)))
        put(mem, launch.writes[0], torch.stack((m, r), dim=-1).reshape(x.shape[0], -1).contiguous(), (rows, 2))

    def _threads(self, params: Mapping[str, Any]) -> int:
        return p_int(params, "rows", self.name) * threads_per_row(p_int(params, "row", self.name))

    def template(self, params: Mapping[str, Any]) -> ThreadTemplate:
        # a block per row: 32 or 512 threads, as PyTorch picks
        return self._stream(params).template(self._threads(params), threads_per_row(p_int(params, "row", self.name)))

    def grid(self, params: Mapping[str, Any]) -> tuple[int, int, int]:
        return (p_int(params, "rows", self.name), 1, 1)

    def _stream(self, params: Mapping[str, Any]) -> Stream:
        row = p_int(params, "row", self.name)
        trips = -(-row // threads_per_row(row))
        s = Stream()
        s.add("GPR", "S2R", "s2r:tid", 2, "index", "reads threadIdx.x and blockIdx.x: the lane and the row")
        s.add("GPR", "XMAD", "imad:base", 3, "index", "row*row_len: where the row starts")
        addr(s, "x", "X + row start")
        s.add("GPR", "MOV", "mov:init", 3, "value", "Welford state (mean, m2, n) = 0")
        s.begin_loop(trips)
        s.add("LD", "LDG", "ld:x", trips, "value", "X[j]: one element of the row (a flip moves the row's mean)")
        s.add("OTHERS", "I2F", "i2f:nf", trips, "value", "nf = (float)(n + 1)")
        s.add("FP32", "FADD", "fadd:delta", trips, "value", "delta = x - mean")
        fdiv(s, "mean", "delta / nf", count=trips)
        s.add("FP32", "FADD", "fadd:mean", trips, "value", "mean += delta/nf: the thread's running mean")
        s.add("FP32", "FADD", "fadd:delta2", trips, "value", "x - new mean")
        s.add("FP32", "FFMA", "ffma:m2", trips, "value", "m2 = fma(delta, x - mean, m2): the running sum of squares")
        loop(s, "welford", "j += 32 over the row", trips)
        s.end_loop()
        n = len(OFFSETS)
        s.add("GPR", "SHFL", "shfl:state", 3 * n, "value", "__shfl_down of (mean, m2, nf): the partner's state")
        s.add("PR", "FSETP", "setp:empty", 2 * n, "predicate", "a.nf == 0 / b.nf == 0: a flip takes one side alone")
        s.add("FP32", "FADD", "fadd:cdelta", n, "value", "delta = b.mean - a.mean")
        s.add("FP32", "FADD", "fadd:count", n, "value", "nf = a.nf + b.nf")
        fdiv(s, "nb", "b.nf / nf", count=n)
        s.add("FP32", "FFMA", "ffma:cmean", n, "value", "mean = fma(delta, nb/n, a.mean): the combined mean")
        s.add("FP32", "FADD", "fadd:m2sum", n, "value", "a.m2 + b.m2")
        s.add("FP32", "FMUL", "fmul:dd", 2 * n, "value", "delta*delta*a.nf")
        s.add("FP32", "FFMA", "ffma:cm2", n, "value", "m2 = fma(delta*delta*a.nf, nb/n, a.m2 + b.m2)")
        s.add("PR", "ISETP", "setp:lane0", 1, "predicate", "threadIdx.x == 0: only lane 0 stores")
        fdiv(s, "var", "m2 / n (lane 0)")
        s.add("FP32", "FMNMX", "fmnmx:var", 1, "value", "max(var, 0)")
        s.add("FP32", "FADD", "fadd:eps", 1, "value", "var + eps")
        s.add("OTHERS", "MUFU.RSQ", "mufu:rsq", 1, "value", "rstd = rsqrt(var + eps): the row's scale")
        addr(s, "stats", "stats + 2*row")
        s.add("NODEST", "STG", "st:mean", 1, "store", "stats[2*row] = mean (lane 0)")
        s.add("NODEST", "STG", "st:rstd", 1, "store", "stats[2*row+1] = rstd (lane 0)")
        epilogue(s)
        s.reg("r_j", "index", "s2r:tid", "s2r:tid", "loop:welford")
        s.reg("r_x_lo", "address", "lea:addr_x", "lea:addr_x", "ld:x")
        s.reg("r_x_hi", "address", "lea:addr_x", "lea:addr_x", "ld:x", half=AddressHalf.HIGH)
        s.reg("r_v", "data", "ld:x", "ld:x", "ffma:m2")
        s.reg("r_delta", "data", "fadd:delta", "fadd:delta", "ffma:m2")
        s.reg("r_mean", "accumulator", "fadd:mean", "mov:init", "ffma:cmean")
        s.reg("r_m2", "accumulator", "ffma:m2", "mov:init", "ffma:cm2")
        s.reg("r_nf", "accumulator", "i2f:nf", "mov:init", "fadd:count")
        s.reg("r_bm", "data", "shfl:state", "shfl:state", "ffma:cm2")
        s.reg("r_b2", "data", "shfl:state", "shfl:state", "fadd:m2sum")
        s.reg("r_bn", "data", "shfl:state", "shfl:state", "fadd:count")
        s.reg("r_rstd", "data", "mufu:rsq", "mufu:rsq", "st:rstd")
        s.reg("p_loop", "predicate", "setp:loop_welford", "setp:loop_welford", "bra:loop_welford")
        s.reg("p_empty", "predicate", "setp:empty", "setp:empty", "ffma:cm2")
        return s


def apply_value(x: torch.Tensor, mean: torch.Tensor, rstd: torch.Tensor,
                gamma: torch.Tensor | None, beta: torch.Tensor | None) -> torch.Tensor:
    """The element pass: (x - mean)*rstd, or fma(a, x, fma(-a, mean, beta)) with a = rstd*gamma."""
    if gamma is None or beta is None:
        return (x - mean) * rstd
    a = rstd * gamma
    return fma_f32(a, x, fma_f32(-a, mean, beta))


@register_kernel
class GroupNormApplyKernel(StreamKernel):
    """The GroupNorm element pass, one thread per element. Params: ``channels``, ``groups``,
    ``spatial`` (H*W), ``affine``. Reads x, stats (mean, rstd per group) and, affine, the layer's
    ``scales`` (gamma) and ``biases`` (beta)."""

    name: ClassVar[str] = "group_norm_apply"
    regs_allocated: ClassVar[int] = ptxas_registers("group_norm_apply")
    example_params = ({"channels": 2, "groups": 1, "spatial": 2, "affine": True},
                      {"channels": 2, "groups": 1, "spatial": 2, "affine": False})

    def run(self, mem: Mem, launch: Launch) -> None:
        p = launch.params
        c, g, sp = (p_int(p, k, self.name) for k in ("channels", "groups", "spatial"))
        n = c * sp
        x = lane_flat(mem, launch.reads[0], n, self.name)[:, :n]
        lanes = x.shape[0]
        st = lane_flat(mem, launch.reads[1], 2 * g, self.name)[:, :2 * g].reshape(lanes, g, 1, 2)
        xg = x.reshape(lanes, g, c // g, sp)
        mean, rstd = st[..., 0:1], st[..., 1:2]
        gamma = beta = None
        if p.get("affine"):
            gamma = operand_flat(mem, launch.reads[2], 1, lanes, c, self.name)[:, :c].reshape(-1, g, c // g, 1)
            beta = operand_flat(mem, launch.reads[3], 1, lanes, c, self.name)[:, :c].reshape(-1, g, c // g, 1)
        y = apply_value(xg, mean, rstd, gamma, beta)
        put(mem, launch.writes[0], y.reshape(lanes, n).contiguous(), (c, sp))

    def _threads(self, params: Mapping[str, Any]) -> int:
        return p_int(params, "channels", self.name) * p_int(params, "spatial", self.name)

    def _stream(self, params: Mapping[str, Any]) -> Stream:
        affine = bool(params.get("affine"))
        s = Stream()
        prologue_1d(s, "element i")
        idiv(s, "sp", "c = i / spatial", mod=None)
        idiv(s, "d", "group = c / (C/G)", mod=None)
        addr(s, "x", "X[i]")
        addr(s, "stats", "stats + 2*group")
        s.add("LD", "LDG", "ld:x", 1, "value", "the input element")
        s.add("LD", "LDG", "ld:mean", 1, "value", "the group's mean")
        s.add("LD", "LDG", "ld:rstd", 1, "value", "the group's rstd")
        if affine:
            addr(s, "gamma", "gamma[c]")
            addr(s, "beta", "beta[c]")
            s.add("LD", "LDG", "ld:gamma", 1, "value", "gamma of the channel")
            s.add("LD", "LDG", "ld:beta", 1, "value", "beta of the channel")
            s.add("FP32", "FMUL", "fmul:a", 1, "value", "a = rstd * gamma")
            s.add("FP32", "FFMA", "ffma:b", 1, "value", "b = fma(-a, mean, beta)")
            s.add("FP32", "FFMA", "ffma:y", 1, "value", "y = fma(a, x, b), the output")
            last = "ffma:y"
        else:
            s.add("FP32", "FADD", "fadd:xm", 1, "value", "x - mean")
            s.add("FP32", "FMUL", "fmul:y", 1, "value", "(x - mean) * rstd, the output")
            last = "fmul:y"
        addr(s, "out", "Y[i]")
        s.add("NODEST", "STG", "st:out", 1, "store", "stores the output element")
        epilogue(s)
        s.reg("r_id", "index", "imad:index", "imad:index", "lea:addr_out")
        s.reg("r_c", "index", "idiv:sp", "idiv:sp", "lea:addr_gamma" if affine else "idiv:d")
        s.reg("r_g", "index", "idiv:d", "idiv:d", "lea:addr_stats")
        for b, reader in (("x", "ld:x"), ("stats", "ld:rstd"), ("out", "st:out")):
            s.reg(f"r_{b}_lo", "address", f"lea:addr_{b}", f"lea:addr_{b}", reader)
            s.reg(f"r_{b}_hi", "address", f"lea:addr_{b}", f"lea:addr_{b}", reader, half=AddressHalf.HIGH)
        s.reg("r_x", "data", "ld:x", "ld:x", last)
        s.reg("r_mean", "data", "ld:mean", "ld:mean", "ffma:b" if affine else "fadd:xm")
        s.reg("r_rstd", "data", "ld:rstd", "ld:rstd", "fmul:a" if affine else "fmul:y")
        if affine:
            s.reg("r_gamma", "data", "ld:gamma", "ld:gamma", "fmul:a")
            s.reg("r_beta", "data", "ld:beta", "ld:beta", "ffma:b")
            s.reg("r_a", "data", "fmul:a", "fmul:a", "ffma:y")
            s.reg("r_b", "data", "ffma:b", "ffma:b", "ffma:y")
        s.reg("r_y", "data", last, last, "st:out")
        s.reg("p_bounds", "predicate", "setp:bounds", "setp:bounds", "bra:exit")
        return s
