"""Darknet's one-element-per-thread kernels of blas_kernels.cu: fill, copy, add_bias,
scale_bias, normalize, shortcut with its host-side geometry (activate_array is in
activation.py).

Each thread reads one element (plus a per-channel operand), does a few FP32 operations and
stores one element, so a fault reaches at most one output element unless it corrupts an index
or an address. ``run`` reproduces Darknet's float32 arithmetic operation by operation (same
operations, same order, IEEE rounding): e.g. normalize is ``(x - mean)/sqrtf(var + eps)``, not
a fused ``x*scale + shift``, so golden values are bitwise what the GPU computes.
"""
from __future__ import annotations

from typing import Any, Callable, ClassVar, Mapping

import torch

from kernelfi._utils import KernelfiError
from kernelfi.types import AddressHalf, Launch

from ._base import BLOCK, f32, get_buf, lane_flat, p_int, put, ptxas_registers, register_kernel, weight_flat
from ._sass import Stream, StreamKernel, addr, epilogue, fdiv, fsqrt, idiv, prologue_1d

Mem = dict[str, torch.Tensor]


def lanes_for_new(mem: Mem, out: str, kernel: str) -> tuple[int, torch.device]:
    """Lane count and device for a buffer a kernel creates: from the buffer itself if it
    exists, else from the network input (the engine seeds memory with ``input`` + weights)."""
    for name in (out, "input"):
        t = mem.get(name)
        if t is not None and t.dim() >= 1:
            return int(t.shape[0]), t.device
    raise KernelfiError(f"kernel '{kernel}': cannot tell the lane count: neither '{out}' nor 'input' is in memory")


def update_head(mem: Mem, name: str, n: int, kernel: str,
                 fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
    """out[:n] = fn(out[:n]) per lane, elements past n untouched (Darknet updates n in place)."""
    flat = lane_flat(mem, name, n, kernel)
    head = fn(flat[:, :n])
    new = head if flat.shape[1] == n else torch.cat([head, flat[:, n:]], dim=1)
    put(mem, name, new)


# --------------------------------------------------------------------------------------------
@register_kernel
class FillKernel(StreamKernel):
    """``fill_kernel``: X[i*INCX] = ALPHA, one thread per element (output <- 0 before GEMM)."""

    name: ClassVar[str] = "fill"
    regs_allocated: ClassVar[int] = ptxas_registers("fill")
    example_params = ({"n": 1, "value": 0.0},)

    def run(self, mem: Mem, launch: Launch) -> None:
        n = p_int(launch.params, "n", self.name)
        value = float(launch.params.get("value", 0.0))
        out = launch.writes[0]
        lanes, device = lanes_for_new(mem, out, self.name)
        old = mem.get(out)
        per = n
        if old is not None and old.shape[0] == lanes:
            per = max(n, old.numel() // lanes)
        flat = torch.full((lanes, per), value, dtype=torch.float32, device=device)
        if per > n and old is not None:
            flat[:, n:] = old.reshape(lanes, -1)[:, n:]
        put(mem, out, flat)

    def _threads(self, params: Mapping[str, Any]) -> int:
        return p_int(params, "n", self.name)

    def _stream(self, params: Mapping[str, Any]) -> Stream:
        s = Stream()
        prologue_1d(s, "element i")
        s.add("GPR", "XMAD", "imad:offset", 3, "index", "element offset i*INCX (INCX = 1 at runtime)")
        addr(s, "out", "X[i*INCX]")
        s.add("GPR", "MOV", "mov:value", 1, "value",
              "ALPHA moved from the constant bank: one wrong fill value, which the GEMM then accumulates onto")
        s.add("NODEST", "STG", "st:out", 1, "store", "stores ALPHA to X[i*INCX]")
        epilogue(s)
        s.reg("r_tid", "index", "s2r:index", "s2r:index", "imad:index")
        s.reg("r_id", "index", "imad:index", "imad:index", "imad:offset")
        s.reg("r_off", "index", "imad:offset", "imad:offset", "lea:addr_out")
        s.reg("r_out_lo", "address", "lea:addr_out", "lea:addr_out", "st:out")
        s.reg("r_out_hi", "address", "lea:addr_out", "lea:addr_out", "st:out", half=AddressHalf.HIGH)
        s.reg("r_value", "data", "mov:value", "mov:value", "st:out")
        s.reg("p_bounds", "predicate", "setp:bounds", "setp:bounds", "bra:exit")
        return s


# --------------------------------------------------------------------------------------------
@register_kernel
class CopyKernel(StreamKernel):
    """``copy_kernel``: Y[i*INCY + OFFY] = X[i*INCX + OFFX] (route/shortcut copies).

    ``out_offset`` is Darknet's host-side pointer offset (route layers copy each input to
    ``l.output_gpu + offset``), so it costs no device instruction; so is ``in_offset`` (AlexeyAB's
    route with ``groups``/``group_id`` copies from ``input + part_input_size*group_id``: a
    channel slice or chunk).
    """

    name: ClassVar[str] = "copy"
    regs_allocated: ClassVar[int] = ptxas_registers("copy")
    example_params = ({"n": 1, "out_offset": 0},)

    def run(self, mem: Mem, launch: Launch) -> None:
        n = p_int(launch.params, "n", self.name)
        off = int(launch.params.get("out_offset", 0))
        off_in = int(launch.params.get("in_offset", 0))
        src = lane_flat(mem, launch.reads[0], off_in + n, self.name)[:, off_in:]
        lanes = src.shape[0]
        out = launch.writes[0]
        old = mem.get(out)
        per = off + n
        if old is not None and old.dim() >= 1 and old.shape[0] == lanes:
            per = max(per, old.numel() // lanes)
        new = torch.zeros((lanes, per), dtype=src.dtype, device=src.device)
        if old is not None and old.dim() >= 1 and old.shape[0] == lanes:
            o = old.reshape(lanes, -1)
            new[:, :o.shape[1]] = o
        new[:, off:off + n] = src[:, :n]
        put(mem, out, new)

    def _threads(self, params: Mapping[str, Any]) -> int:
        return p_int(params, "n", self.name)

    def _stream(self, params: Mapping[str, Any]) -> Stream:
        s = Stream()
        prologue_1d(s, "element i")
        s.add("GPR", "XMAD", "imad:offset_in", 3, "index", "source offset i*INCX + OFFX")
        s.add("GPR", "XMAD", "imad:offset_out", 3, "index", "destination offset i*INCY + OFFY")
        addr(s, "in", "X[i*INCX + OFFX]")
        s.add("LD", "LDG", "ld:in", 1, "value", "the copied element")
        addr(s, "out", "Y[i*INCY + OFFY]")
        s.add("NODEST", "STG", "st:out", 1, "store", "stores the element to Y")
        epilogue(s)
        # ptxas (7 registers): each offset is computed into the low half of the address it forms
        s.reg("r_id", "index", "imad:index", "imad:index", "imad:offset_out")
        s.reg("r_in_lo", "address", "lea:addr_in", "imad:offset_in", "ld:in")
        s.reg("r_in_hi", "address", "lea:addr_in", "lea:addr_in", "ld:in", half=AddressHalf.HIGH)
        s.reg("r_out_lo", "address", "lea:addr_out", "imad:offset_out", "st:out")
        s.reg("r_out_hi", "address", "lea:addr_out", "lea:addr_out", "st:out", half=AddressHalf.HIGH)
        s.reg("r_x", "data", "ld:in", "ld:in", "st:out")
        s.reg("p_bounds", "predicate", "setp:bounds", "setp:bounds", "bra:exit")
        return s


# --------------------------------------------------------------------------------------------
class _ChannelKernel(StreamKernel):
    """``add_bias_kernel`` / ``scale_bias_kernel``: out[(b*n + f)*size + o] op= w[f].

    Launched on a 3-D grid ((size-1)/BLOCK + 1, n, batch): blockIdx.y is the channel, so the
    per-channel operand needs no division.
    """

    operand: ClassVar[str] = ""   # "bias" / "scale"
    fop: ClassVar[str] = ""       # "fadd" / "fmul"
    opcode: ClassVar[str] = ""

    def _apply(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def run(self, mem: Mem, launch: Launch) -> None:
        c = p_int(launch.params, "channels", self.name)
        sp = p_int(launch.params, "spatial", self.name)
        out = launch.reads[0]
        lanes = get_buf(mem, out, self.name).shape[0]
        w = weight_flat(mem, launch.reads[1], 1, lanes, c, self.name)[:, :c]

        def fn(x: torch.Tensor) -> torch.Tensor:
            return self._apply(x.reshape(lanes, c, sp), w.reshape(w.shape[0], c, 1)).reshape(lanes, c * sp)

        update_head(mem, out, c * sp, self.name, fn)
        if launch.writes and launch.writes[0] != out:
            put(mem, launch.writes[0], mem[out].reshape(lanes, -1).clone())

    def _threads(self, params: Mapping[str, Any]) -> int:
        return p_int(params, "channels", self.name) * p_int(params, "spatial", self.name)

    def grid(self, params: Mapping[str, Any]) -> tuple[int, int, int]:
        sp = p_int(params, "spatial", self.name)
        return ((sp - 1) // BLOCK + 1, p_int(params, "channels", self.name), 1)

    def _stream(self, params: Mapping[str, Any]) -> Stream:
        w, fop = self.operand, self.fop
        s = Stream()
        s.add("GPR", "S2R", "s2r:index", 4, "index",
              "reads threadIdx.x, blockIdx.x, blockIdx.y (= channel), blockIdx.z (= batch)")
        s.add("GPR", "XMAD", "imad:index", 1, "index", "spatial offset blockIdx.x*blockDim.x + threadIdx.x")
        s.add("PR", "ISETP", "setp:bounds", 1, "predicate",
              "offset < size: a flip makes a working thread exit, leaving its element without the " + w)
        s.add("NODEST", "EXIT", "bra:exit", 1, "control", "predicated early exit (not taken by working threads)")
        s.add("GPR", "XMAD", "imad:offset", 4, "index", "element index (batch*n + filter)*size + offset")
        addr(s, "out", "output[(batch*n + filter)*size + offset]")
        addr(s, w, f"{w}es[filter]" if w == "bias" else f"{w}s[filter]")
        s.add("LD", "LDG", "ld:out", 1, "value", "the output element before the update")
        s.add("LD", "LDG", f"ld:{w}", 1, "value", f"the channel's {w} (corrupts this element only)")
        s.add("FP32", self.opcode, f"{fop}:out", 1, "value", f"the updated element ({'x + bias' if w == 'bias' else 'x * scale'})")
        s.add("NODEST", "STG", "st:out", 1, "store", "stores the updated element in place")
        epilogue(s)
        # ptxas (6 registers): the offset and the channel are computed into the low halves of
        # the addresses they form
        s.reg("r_out_lo", "address", "lea:addr_out", "imad:index", "st:out")
        s.reg("r_out_hi", "address", "lea:addr_out", "lea:addr_out", "st:out", half=AddressHalf.HIGH)
        s.reg(f"r_{w}_lo", "address", f"lea:addr_{w}", "s2r:index", f"ld:{w}")
        s.reg(f"r_{w}_hi", "address", f"lea:addr_{w}", f"lea:addr_{w}", f"ld:{w}", half=AddressHalf.HIGH)
        s.reg("r_x", "data", "ld:out", "ld:out", "st:out")
        s.reg(f"r_{w}", "data", f"ld:{w}", f"ld:{w}", f"{fop}:out")
        s.reg("p_bounds", "predicate", "setp:bounds", "setp:bounds", "bra:exit")
        return s


@register_kernel
class AddBiasKernel(_ChannelKernel):
    """``add_bias_kernel``: x += biases[c]."""

    name: ClassVar[str] = "add_bias"
    regs_allocated: ClassVar[int] = ptxas_registers("add_bias")
    operand = "bias"
    fop = "fadd"
    opcode = "FADD"
    example_params = ({"channels": 1, "spatial": 1},)

    def _apply(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return x + w


@register_kernel
class ScaleBiasKernel(_ChannelKernel):
    """``scale_bias_kernel``: x *= scales[c] (batch-norm gamma)."""

    name: ClassVar[str] = "scale_bias"
    regs_allocated: ClassVar[int] = ptxas_registers("scale_bias")
    operand = "scale"
    fop = "fmul"
    opcode = "FMUL"
    example_params = ({"channels": 1, "spatial": 1},)

    def _apply(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return x * w


# --------------------------------------------------------------------------------------------
@register_kernel
class NormalizeKernel(StreamKernel):
    """``normalize_kernel``: x = (x - mean[f]) / sqrtf(var[f] + eps), f = (i/spatial) % filters.

    Darknet's eps is ``.00001f`` (the default when the launch gives none).
    """

    name: ClassVar[str] = "normalize"
    regs_allocated: ClassVar[int] = ptxas_registers("normalize")
    example_params = ({"channels": 1, "spatial": 1, "eps": 1e-5},)

    def run(self, mem: Mem, launch: Launch) -> None:
        c = p_int(launch.params, "channels", self.name)
        sp = p_int(launch.params, "spatial", self.name)
        out = launch.reads[0]
        lanes = get_buf(mem, out, self.name).shape[0]
        mean = weight_flat(mem, launch.reads[1], 1, lanes, c, self.name)[:, :c]
        var = weight_flat(mem, launch.reads[2], 1, lanes, c, self.name)[:, :c]
        eps = float(launch.params.get("eps", 1e-5))

        def fn(x: torch.Tensor) -> torch.Tensor:
            m = mean.reshape(mean.shape[0], c, 1)
            v = var.reshape(var.shape[0], c, 1)
            y = (x.reshape(lanes, c, sp) - m) / torch.sqrt(v + f32(eps, v))
            return y.reshape(lanes, c * sp)

        update_head(mem, out, c * sp, self.name, fn)
        if launch.writes and launch.writes[0] != out:
            put(mem, launch.writes[0], mem[out].reshape(lanes, -1).clone())

    def _threads(self, params: Mapping[str, Any]) -> int:
        return p_int(params, "channels", self.name) * p_int(params, "spatial", self.name)

    def _stream(self, params: Mapping[str, Any]) -> Stream:
        s = Stream()
        prologue_1d(s, "element i")
        idiv(s, "spatial", "i / spatial")
        idiv(s, "channel", "(i/spatial) / filters", mod="f = (i/spatial) % filters (the channel)")
        addr(s, "x", "x[i]")
        s.add("LD", "LDG", "ld:x", 1, "value", "the element before normalisation")
        addr(s, "mean", "mean[f]")
        s.add("LD", "LDG", "ld:mean", 1, "value", "the channel's rolling mean (this element only)")
        addr(s, "var", "variance[f]")
        s.add("LD", "LDG", "ld:var", 1, "value", "the channel's rolling variance (this element only)")
        s.add("FP32", "FADD", "fadd:var_eps", 1, "value", "variance[f] + eps")
        fsqrt(s, "std", "variance[f] + eps")
        s.add("FP32", "FADD", "fadd:centered", 1, "value", "x - mean[f]")
        fdiv(s, "out", "(x - mean) / std")
        s.add("NODEST", "STG", "st:x", 1, "store", "stores the normalised element in place")
        epilogue(s)
        s.reg("r_id", "index", "imad:index", "imad:index", "lea:addr_x")
        s.reg("r_f", "index", "imod:channel", "imod:channel", "lea:addr_var")
        s.reg("r_x_lo", "address", "lea:addr_x", "lea:addr_x", "st:x")
        s.reg("r_x_hi", "address", "lea:addr_x", "lea:addr_x", "st:x", half=AddressHalf.HIGH)
        s.reg("r_stat_lo", "address", "lea:addr_mean", "lea:addr_mean", "ld:var")
        s.reg("r_stat_hi", "address", "lea:addr_mean", "lea:addr_mean", "ld:var", half=AddressHalf.HIGH)
        s.reg("r_x", "data", "ld:x", "ld:x", "fadd:centered")
        s.reg("r_mean", "data", "ld:mean", "ld:mean", "fadd:centered")
        s.reg("r_var", "data", "ld:var", "ld:var", "ffma:sqrt_std")
        s.reg("r_centered", "data", "fadd:centered", "fadd:centered", "ffma:fdiv_out")
        s.reg("r_std", "data", "ffma:sqrt_std", "ffma:sqrt_std", "ffma:fdiv_out")
        s.reg("r_out", "data", "ffma:fdiv_out", "ffma:fdiv_out", "st:x")
        s.reg("p_bounds", "predicate", "setp:bounds", "setp:bounds", "bra:exit")
        s.reg("p_fdiv", "predicate", "setp:fdiv_out", "setp:fdiv_out", "bra:fdiv_out")
        return s


# --------------------------------------------------------------------------------------------
SHAPE_KEYS: tuple[str, ...] = ("w1", "h1", "c1", "w2", "h2", "c2")


def shortcut_geometry(add_chw: tuple[int, int, int], out_chw: tuple[int, int, int]) -> dict[str, int] | None:
    """Darknet's ``shortcut_gpu`` host arithmetic for adding a (C, H, W) map onto another.

    ``w1, h1, c1`` are the added (``from``) layer's sizes, ``w2, h2, c2`` the output's (the
    layer before the shortcut). One thread per element of the smaller extent in each dimension
    (``minw x minh x minc``); a larger added map is read every ``stride``-th pixel (``stride =
    w1/w2``), a larger output written every ``sample``-th (``sample = w2/w1``), both at least 1;
    only the first ``minc`` channels are added, the others keep the copied input. None where
    Darknet's asserts (``stride == h1/h2``, ``sample == h2/h1``) would abort the run.
    """
    c1, h1, w1 = (int(d) for d in add_chw)
    c2, h2, w2 = (int(d) for d in out_chw)
    if min(c1, h1, w1, c2, h2, w2) < 1:
        return None
    stride, sample = w1 // w2, w2 // w1
    if stride != h1 // h2 or sample != h2 // h1:
        return None
    return {"w1": w1, "h1": h1, "c1": c1, "w2": w2, "h2": h2, "c2": c2,
            "minw": min(w1, w2), "minh": min(h1, h2), "minc": min(c1, c2),
            "stride": max(stride, 1), "sample": max(sample, 1)}


def _geometry(params: Mapping[str, Any], kernel: str) -> dict[str, int]:
    g = shortcut_geometry((p_int(params, "c1", kernel), p_int(params, "h1", kernel), p_int(params, "w1", kernel)),
                          (p_int(params, "c2", kernel), p_int(params, "h2", kernel), p_int(params, "w2", kernel)))
    if g is None:
        raise KernelfiError(f"kernel '{kernel}': add {params['c1']}x{params['h1']}x{params['w1']} onto "
                            f"{params['c2']}x{params['h2']}x{params['w2']}: Darknet's shortcut_gpu asserts "
                            "equal width and height ratios")
    return g


_INDEX_CACHE: dict[tuple[int, ...], tuple[torch.Tensor, torch.Tensor]] = {}


def shortcut_indexes(params: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """(out_index, add_index) per working thread id, as ``shortcut_kernel`` computes them."""
    g = _geometry(params, "shortcut")
    key = tuple(g[k] for k in SHAPE_KEYS)
    hit = _INDEX_CACHE.get(key)
    if hit is not None:
        return hit
    tid = torch.arange(g["minw"] * g["minh"] * g["minc"], dtype=torch.int64)
    i = tid % g["minw"]
    j = (tid // g["minw"]) % g["minh"]
    k = tid // (g["minw"] * g["minh"])           # b = 0: one inference per lane
    out_index = i * g["sample"] + g["w2"] * (j * g["sample"] + g["h2"] * k)
    add_index = i * g["stride"] + g["w1"] * (j * g["stride"] + g["h1"] * k)
    _INDEX_CACHE[key] = (out_index, add_index)
    return out_index, add_index


@register_kernel
class ShortcutKernel(StreamKernel):
    """``shortcut_kernel``: out[out_index] = s1*out[out_index] + s2*add[add_index], s1 = s2 = 1.

    Darknet (``forward_shortcut_layer_gpu``) first copies the previous layer's output into the
    shortcut's, then this kernel adds the ``from`` layer over the smaller extent of the two
    shapes (:func:`shortcut_geometry`: strided reads of a larger added map, strided writes into
    a larger output, the first min(c1, c2) channels). Launch params: ``w1, h1, c1`` (added
    layer) and ``w2, h2, c2`` (output). Each thread splits its id into (i, j, k, b) by four
    divisions with remainders. FMUL by 1 is exact and the FFMA rounds once, so the result is
    ``out + add`` bitwise.
    """

    name: ClassVar[str] = "shortcut"
    regs_allocated: ClassVar[int] = ptxas_registers("shortcut")
    example_params = ({"w1": 1, "h1": 1, "c1": 1, "w2": 1, "h2": 1, "c2": 1},)

    def run(self, mem: Mem, launch: Launch) -> None:
        p = launch.params
        g = _geometry(p, self.name)
        out = launch.reads[0]
        lanes = get_buf(mem, out, self.name).shape[0]
        add = lane_flat(mem, launch.reads[1], g["c1"] * g["h1"] * g["w1"], self.name)
        if add.shape[0] != lanes:
            raise KernelfiError(f"kernel 'shortcut': '{launch.reads[1]}' has {add.shape[0]} lanes, expected {lanes}")
        oi, ai = shortcut_indexes(p)
        oi, ai = oi.to(add.device), ai.to(add.device)

        def fn(x: torch.Tensor) -> torch.Tensor:
            y = x.clone()
            y[:, oi] = x[:, oi] + add[:, ai]
            return y

        update_head(mem, out, g["c2"] * g["h2"] * g["w2"], self.name, fn)
        if launch.writes and launch.writes[0] != out:
            put(mem, launch.writes[0], mem[out].reshape(lanes, -1).clone())

    def _threads(self, params: Mapping[str, Any]) -> int:
        g = _geometry(params, self.name)
        return g["minw"] * g["minh"] * g["minc"]

    def _stream(self, params: Mapping[str, Any]) -> Stream:
        s = Stream()
        prologue_1d(s, "element id")
        idiv(s, "w", "id / minw", mod="i = id % minw (column)")
        idiv(s, "h", "(id/minw) / minh", mod="j = (id/minw) % minh (row)")
        idiv(s, "c", "(id/minw/minh) / minc", mod="k = ... % minc (channel)")
        idiv(s, "batch", "(id/minw/minh/minc) / batch", mod="b = ... % batch")
        s.add("GPR", "XMAD", "imad:out_index", 15, "index", "out_index = i*sample + w2*(j*sample + h2*(k + c2*b))")
        s.add("GPR", "XMAD", "imad:add_index", 15, "index", "add_index = i*stride + w1*(j*stride + h1*(k + c1*b))")
        addr(s, "out", "out[out_index]")
        addr(s, "add", "add[add_index]")
        s.add("LD", "LDG", "ld:out", 1, "value", "the element of out before the add")
        s.add("LD", "LDG", "ld:add", 1, "value", "the element of the added layer")
        s.add("FP32", "FMUL", "fmul:out_scaled", 1, "value", "s1 * out (= out)")
        s.add("FP32", "FFMA", "ffma:out", 1, "value", "s2*add + s1*out, the output")
        s.add("NODEST", "STG", "st:out", 1, "store", "stores the sum in place")
        epilogue(s)
        s.reg("r_id", "index", "imad:index", "imad:index", "idiv:w")
        s.reg("r_q", "index", "idiv:w", "idiv:w", "imod:batch")
        s.reg("r_i", "index", "imod:w", "imod:w", "imad:add_index")
        s.reg("r_j", "index", "imod:h", "imod:h", "imad:add_index")
        s.reg("r_k", "index", "imod:c", "imod:c", "imad:add_index")
        s.reg("r_b", "index", "imod:batch", "imod:batch", "imad:add_index")
        # ptxas (15 registers): out_index and add_index are computed into the low halves of
        # the addresses they form
        s.reg("r_out_lo", "address", "lea:addr_out", "imad:out_index", "st:out")
        s.reg("r_out_hi", "address", "lea:addr_out", "lea:addr_out", "st:out", half=AddressHalf.HIGH)
        s.reg("r_add_lo", "address", "lea:addr_add", "imad:add_index", "ld:add")
        s.reg("r_add_hi", "address", "lea:addr_add", "lea:addr_add", "ld:add", half=AddressHalf.HIGH)
        s.reg("r_x", "data", "ld:out", "ld:out", "fmul:out_scaled")
        s.reg("r_add", "data", "ld:add", "ld:add", "ffma:out")
        s.reg("r_scaled", "data", "fmul:out_scaled", "fmul:out_scaled", "ffma:out")
        s.reg("r_sum", "data", "ffma:out", "ffma:out", "st:out")
        s.reg("p_bounds", "predicate", "setp:bounds", "setp:bounds", "bra:exit")
        return s
