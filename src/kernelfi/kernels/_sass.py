"""Building blocks of the per-thread instruction templates (SASS as nvcc emits it for sm_50).

A :class:`Stream` collects a thread's instruction slots in program order (a loop body is listed
once, each slot's ``count`` = trips × instructions per trip) together with each tag's meaning
and the registers' live intervals. The macros below are the instruction sequences that recur
across Darknet's kernels, sized once here so every kernel counts them the same way:

==================  ==========================================================  ===================
macro               what nvcc emits on sm_50 (Maxwell, no fast-math)            per use
==================  ==========================================================  ===================
``prologue_1d``     ``(blockIdx.x + blockIdx.y*gridDim.x)*blockDim.x + tid``;   GPR 6, PR 1, NODEST 1
                    ``if (i >= n) return`` (Darknet's cuda_gridsize kernels)
``addr``            64-bit address ``base + 4*i`` (low add with carry, high)    GPR 2
``idiv``            signed 32-bit division by a runtime divisor: I2F.RP,        OTHERS 3, GPR 14, PR 2
                    MUFU.RCP, F2I.TRUNC, XMAD mul-hi/lo, correction, sign fix
``imod``            remainder from that quotient: ``n - q*d`` (3 XMAD + IADD)   GPR 4
``fdiv``            IEEE ``a/b`` (``-prec-div=true``): FCHK, MUFU.RCP,          PR 1, OTHERS 1,
                    4 FFMA (refine, quotient, residual, correct), slow-path BRA  FP32 4, NODEST 1
``fsqrt``           IEEE ``sqrtf``: MUFU.RSQ, 3 FMUL/FFMA (Newton, correct)     OTHERS 1, FP32 3
``fexp``            ``expf``: 4 FFMA/FADD range reduction, RRO + MUFU.EX2       FP32 4, OTHERS 2
``ferf``            ``erff``: two minimax polynomials in |x|, select, sign copy FP32 16, OTHERS 1
``ftanh``           ``tanhf``: 1 - 2/(2^(2|u|/ln 2) + 1) for |u| >= 0.6 (RRO,     FP32 10, PR 2,
                    MUFU.EX2, MUFU.RCP, saturation, sign copy), odd polynomial  OTHERS 3, GPR 1
                    below (5 FFMA), a predicated FFMA picks
``flog1p``          ``log1pf``: FADD.RZ 1 + a, exponent split (4 integer ops),   FP32 15, GPR 4,
                    I2F, reduced argument, 8-FFMA polynomial, k*ln 2 (the  OTHERS 1, PR 1,
                    PTX of CUDA's libdevice); special operands branch off  NODEST 1
``fexpm1``         ``expm1f``: FMUL by log2 e, FRND, 2-FFMA reduction (j = 0    FP32 20, PR 5,
                    below |a| < 0.41), polynomial, RRO + MUFU.EX2 of j,        OTHERS 2
                    2^j*(p + 1) - 1, selects for j = 128, overflow, -1, a = 0
``loop``            counter increment, compare, back-edge branch per trip       GPR 1, PR 1, NODEST 1
==================  ==========================================================  ===================

These are models of nvcc's output, sized from typical Maxwell SASS, not disassembly of
Darknet's binary: docs/kernels.md states the approximations.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping

from kernelfi._utils import KernelfiError
from kernelfi.types import (
    GROUPS, REGISTER_ROLES, AddressHalf, InstrSlot, Register, RegisterMap, RegisterRole, ThreadTemplate,
)

from ._base import BLOCK, EFFECTS, KernelImpl, TagInfo, ptxas_registers


@dataclass
class Stream:
    """A thread's instruction slots in program order, with tag meanings and register lives."""

    slots: list[InstrSlot] = field(default_factory=list)
    tags: dict[str, TagInfo] = field(default_factory=dict)
    _regs: list[tuple[str, RegisterRole, str, str | None, str, AddressHalf | None]] = field(default_factory=list)
    _loops: list[list[int]] = field(default_factory=list)   # [first slot, end slot, trips]

    def begin_loop(self, trips: int) -> None:
        """Mark the start of a loop body of ``trips`` trips (nested loops: mark the outermost
        and give the innermost trip count; per-trip positions are then averages)."""
        self._loops.append([len(self.slots), -1, max(int(trips), 1)])

    def end_loop(self) -> None:
        self._loops[-1][1] = len(self.slots)

    def add(self, group: str, opcode: str, tag: str, count: int, effect: str, meaning: str,
            halves: bool = False) -> None:
        """Append one slot; a tag names exactly one slot of a thread, so it must be new.
        ``halves``: the slot computes 64-bit addresses, low word then high word
        (``InstrSlot.halves``)."""
        if group not in GROUPS:
            raise KernelfiError(f"instruction group '{group}' is not one of {GROUPS}")
        if effect not in EFFECTS:
            raise KernelfiError(f"effect '{effect}' is not one of {EFFECTS}")
        if tag in self.tags:
            raise KernelfiError(f"tag '{tag}' used twice in one template")
        if count < 0:
            raise KernelfiError(f"tag '{tag}': negative count {count}")
        self.tags[tag] = TagInfo(group, effect, meaning)
        if count > 0:
            self.slots.append(InstrSlot(group, opcode, tag, int(count), halves))

    def reg(self, name: str, role: str, tag: str, first: str | None, last: str,
            half: AddressHalf | None = None) -> None:
        """A register holding the result of ``tag``, live from the end of slot ``first`` (None:
        the thread's start) to the end of slot ``last`` (its last reader). ``half``: for an
        address register, the word of a 64-bit address it holds (default ``LOW``)."""
        if role not in REGISTER_ROLES:
            raise KernelfiError(f"register role '{role}' is not one of {REGISTER_ROLES}")
        if half is not None and role != RegisterRole.ADDRESS:
            raise KernelfiError(f"register '{name}': a {role} register holds no half of an address")
        self._regs.append((name, RegisterRole(role), tag, first, last, half))

    # ---------------------------------------------------------------------------- results
    def template(self, threads: int, block: int) -> ThreadTemplate:
        return ThreadTemplate(threads=int(threads), block=int(block), slots=tuple(self.slots))

    def _spans(self) -> dict[str, tuple[int, int, int, float]]:
        """Per tag: (start, end, loop id or -1, end of the slot within one trip as a fraction of
        the trip). A slot inside a loop body spans the whole loop, because its executions
        interleave with the rest of the body."""
        bounds = [0]
        for sl in self.slots:
            bounds.append(bounds[-1] + sl.count)
        spans: dict[str, tuple[int, int, int, float]] = {}
        for i, sl in enumerate(self.slots):
            spans[sl.tag] = (bounds[i], bounds[i + 1], -1, 1.0)
            for li, (first, end, _trips) in enumerate(self._loops):
                if first <= i < end:
                    body = max(bounds[end] - bounds[first], 1)
                    spans[sl.tag] = (bounds[first], bounds[end], li, (bounds[i + 1] - bounds[first]) / body)
        return spans

    def register_map(self, gprs: int) -> RegisterMap:
        """The register map: ``gprs`` general registers (ptxas' count) plus the predicates used.

        Live intervals are fractions of the thread's dynamic instruction stream. A value is
        live from just after its defining slot to the end of its last reading slot; a flip
        outside that interval is masked (dead or overwritten). Inside loops (whose trips
        interleave the body's slots): a value read in a loop is live to the loop's end; a value
        defined and last read within one trip (a loaded operand) is live for its share of each
        trip, given as an interval of that total length from the loop's start, so that the
        probability of a flip landing on it is right (which trip it hits is for the engine to
        draw); a value carried around the back edge is live over the whole loop.
        """
        spans = self._spans()
        total = max(sum(sl.count for sl in self.slots), 1)
        regs: list[Register] = []
        for name, role, tag, first, last, half in self._regs:
            if (first is not None and first not in spans) or last not in spans:
                continue  # slot absent for these params (e.g. a zero-trip loop): register unused
            start = 0
            if first is not None:
                lo, hi, loop_id, at = spans[first]
                start = lo if loop_id >= 0 else hi
                llo, lhi, last_loop, last_at = spans[last]
                if loop_id >= 0 and loop_id == last_loop and last_at > at:
                    # defined and consumed within one trip: live (last_at - at) of each trip
                    end = lo + max(1, round((last_at - at) * (hi - lo)))
                    regs.append(Register(name, role, tag, (start / total, end / total), half))
                    continue
            end = spans[last][1]
            if end <= start:
                continue
            regs.append(Register(name, role, tag, (start / total, end / total), half))
        preds = len({r.name for r in regs if r.role is RegisterRole.PREDICATE})
        general = len({r.name for r in regs if r.role is not RegisterRole.PREDICATE})
        if general > gprs:
            raise KernelfiError(f"{general} live registers exceed the {gprs} allocated")
        return RegisterMap(allocated=int(gprs) + preds, registers=tuple(regs))


# --------------------------------------------------------------------------------------------
# Macros
# --------------------------------------------------------------------------------------------
def prologue_1d(s: Stream, what: str) -> None:
    """Global thread id of Darknet's 1-D kernels and the early exit of surplus threads."""
    s.add("GPR", "S2R", "s2r:index", 3, "index", "reads threadIdx.x, blockIdx.x, blockIdx.y: which "
          + what + " this thread handles")
    s.add("GPR", "XMAD", "imad:index", 3, "index",
          "global thread id (blockIdx.x + blockIdx.y*gridDim.x)*blockDim.x + threadIdx.x = " + what)
    s.add("PR", "ISETP", "setp:bounds", 1, "predicate",
          "id < n: a flip makes a working thread exit, leaving its output stale")
    s.add("NODEST", "EXIT", "bra:exit", 1, "control", "predicated early exit (not taken by working threads)")


def addr(s: Stream, buf: str, what: str, count: int = 2) -> None:
    """64-bit address of a buffer element: low add with carry, high add."""
    s.add("GPR", "IADD", f"lea:addr_{buf}", count, "address", f"address of {what}", halves=True)


def idiv(s: Stream, q: str, what: str, mod: str | None = None) -> None:
    """Integer division by a runtime divisor (and optionally the remainder)."""
    s.add("OTHERS", "I2F", f"cvt:idiv_{q}", 2, "index",
          f"I2F of the divisor and F2I of its reciprocal, computing {what}")
    s.add("OTHERS", "MUFU.RCP", f"mufu:idiv_{q}", 1, "index", f"reciprocal estimate of the divisor of {what}")
    s.add("GPR", "XMAD", f"idiv:{q}", 14, "index", f"quotient {what} (mul-hi, correction, sign fix)")
    s.add("PR", "ISETP", f"setp:idiv_{q}", 2, "predicate",
          f"quotient corrections of {what}: a flip leaves it off by one")
    if mod is not None:
        s.add("GPR", "XMAD", f"imod:{q}", 4, "index", f"remainder {mod} = n - q*d")


def fdiv(s: Stream, v: str, what: str, count: int = 1) -> None:
    """IEEE float division (``count`` divisions)."""
    s.add("PR", "FCHK", f"setp:fdiv_{v}", count, "predicate",
          f"FCHK of {what}: a flip sends normal operands to the (equally exact) slow path or "
          "special operands down the fast one")
    s.add("OTHERS", "MUFU.RCP", f"mufu:fdiv_{v}", count, "value", f"reciprocal estimate of the divisor of {what}")
    s.add("FP32", "FFMA", f"ffma:fdiv_{v}", 4 * count, "value",
          f"Newton refinement and quotient of {what} (the last FFMA is the quotient)")
    s.add("NODEST", "BRA", f"bra:fdiv_{v}", count, "control", f"slow-path branch of {what} (not taken)")


def fsqrt(s: Stream, v: str, what: str) -> None:
    """IEEE single-precision square root."""
    s.add("OTHERS", "MUFU.RSQ", f"mufu:sqrt_{v}", 1, "value", f"reciprocal square root estimate of {what}")
    s.add("FP32", "FFMA", f"ffma:sqrt_{v}", 3, "value", f"Newton step and rounding correction of sqrt({what})")


def fexp(s: Stream, v: str, what: str, count: int = 1) -> None:
    """``expf`` as nvcc inlines it without fast-math."""
    s.add("FP32", "FFMA", f"ffma:exp_{v}", 4 * count, "value", f"range reduction of exp({what})")
    s.add("OTHERS", "MUFU.EX2", f"mufu:exp_{v}", 2 * count, "value", f"RRO + MUFU.EX2 producing exp({what})")


def ferf(s: Stream, v: str, what: str) -> None:
    """``erff`` as libdevice computes it without fast-math: both minimax polynomials in |x|
    (the small-argument one and the exponent of the large-argument one) evaluated and one
    selected, MUFU.EX2 for the large branch. A corruption anywhere changes erf's value."""
    s.add("FP32", "FFMA", f"ffma:erf_{v}", 16, "value",
          f"polynomials of erf({what}), the range select and the sign copy (the last is erf)")
    s.add("OTHERS", "MUFU.EX2", f"mufu:erf_{v}", 1, "value", f"EX2 of the large-argument branch of erf({what})")


def ftanh(s: Stream, v: str, what: str) -> None:
    """``tanhf`` as libdevice computes it without fast-math (the PTX nvcc emits, disassembled for
    sm_75 and given Maxwell's RRO before MUFU.EX2): both branches computed, the large-|u| one
    ``copysign(|u| >= 9.0109 ? 1 : 1 - 2/(2^(|u|*2/ln 2) + 1), u)`` and the small-|u| one
    ``u + u*p(u*u)``; an FFMA predicated on |u| < 0.6 overwrites the first with the second, so
    a corruption of the branch not taken is masked."""
    s.add("FP32", "FFMA", f"ffma:tanhl_{v}", 4, "value",
          f"large-abs branch of tanh({what}): FMUL abs({what})*2/ln2, FADD 1 + exp, FFMA 1 - 2*rcp, FSEL 1 "
          f"from abs({what}) >= 9.0109 (the value when abs({what}) >= 0.6)")
    s.add("PR", "FSETP", f"setp:tanh_{v}", 2, "predicate",
          f"abs({what}) >= 9.0109 (saturate to 1) and abs({what}) >= 0.6 (which branch): a flip takes the other")
    s.add("OTHERS", "MUFU.EX2", f"mufu:tanhl_{v}", 3, "value",
          f"RRO + MUFU.EX2 (exp(2*abs({what}))) and MUFU.RCP (1/(1 + exp(2*abs({what})))) of the large branch")
    s.add("GPR", "LOP3", f"lop3:tanh_sign_{v}", 1, "value", f"copies the sign of {what} onto the large branch")
    s.add("FP32", "FFMA", f"ffma:tanhs_{v}", 6, "value",
          f"small-abs branch: FMUL {what}*{what}, 4 FFMA of the polynomial, FFMA {what} + {what}*p "
          f"(predicated: tanh({what}) when abs({what}) < 0.6)")


def flog1p(s: Stream, v: str, what: str) -> None:
    """``log1pf`` as libdevice computes it without fast-math (the PTX nvcc emits): ``1 + a``
    rounded toward zero gives the exponent k (integer ops on its bits), the reduced argument
    ``m = (a - k') + (0.25*2^-k' - 1)``, ``log1p = k*ln 2 + (m - m^2*p(m))`` with an 8-term
    polynomial. The operand's bits are compared once (ISETP): a non-negative finite operand
    takes the main path; +inf, NaN and negative ones branch to the special cases (not modelled
    as their own slots: no operand in the activations that use it is negative)."""
    s.add("FP32", "FADD", f"fadd:log1p_{v}", 1, "value", f"1 + {what}, rounded toward zero (its exponent is k)")
    s.add("GPR", "IADD", f"iadd:log1p_{v}", 4, "value",
          f"exponent split of 1 + {what}: IADD, LOP (k), the operand's bits minus k, 4 - k")
    s.add("OTHERS", "I2F", f"i2f:log1p_{v}", 1, "value", f"k as a float, for k*ln 2 of log1p({what})")
    s.add("FP32", "FFMA", f"ffma:log1p_{v}", 14, "value",
          f"log1p({what}): FFMA and FADD of the reduced argument m, FMUL k*2^-23, 8 FFMA of the polynomial, "
          "FMUL and FFMA m - m^2*p, FFMA k*ln 2 + that (the last is the value)")
    s.add("PR", "ISETP", f"setp:log1p_{v}", 1, "predicate",
          f"the bits of {what} below +inf (main path): a flip sends a finite operand to the special cases "
          "(x*inf + inf: +inf, or -0 for 0) and +inf/NaN down the main path")
    s.add("NODEST", "BRA", f"bra:log1p_{v}", 1, "control", f"branch over the special cases of log1p({what})")


def fexpm1(s: Stream, v: str, what: str) -> None:
    """``expm1f`` as libdevice computes it without fast-math (the PTX nvcc emits, no branch):
    j = rint(a*log2 e) (0 when |a| < 0.41), r = a - j*ln 2 in two FFMA, ``expm1(r)`` by a
    polynomial, ``2^j*(expm1(r) + 1) - 1`` as one FFMA after MUFU.EX2 of j (j = 128 halved and
    the result doubled), then selects: +inf past j > 128, -1 below j < -25, ``a + a`` for a = 0."""
    s.add("FP32", "FFMA", f"ffma:expm1_{v}", 14, "value",
          f"expm1({what}): FMUL by log2 e, FRND (j), 2 FFMA (r), FADD j - 1, 4 FFMA and FMUL, FFMA of the "
          "polynomial, FADD 2^j - 1, FFMA 2^j*p + (2^j - 1), FADD doubling")
    s.add("OTHERS", "MUFU.EX2", f"mufu:expm1_{v}", 2, "value", f"RRO + MUFU.EX2: 2^j of expm1({what})")
    s.add("FP32", "FSEL", f"fsel:expm1_{v}", 6, "value",
          f"selects of expm1({what}): j = 0 for small {what}, the j = 128 halving and doubling, +inf, -1, "
          f"and FADD {what} + {what} for {what} = 0 (the last select is the value)")
    s.add("PR", "FSETP", f"setp:expm1_{v}", 5, "predicate",
          f"abs({what}) < 0.41, j = 128 (both equally exact either way), j > 128 (+inf), j < -25 (-1), "
          f"{what} = 0 ({what} + {what}): a flip of the last three takes that value")


def loop(s: Stream, v: str, what: str, trips: int) -> None:
    """Loop control: counter increment, exit compare, back-edge branch, once per trip."""
    s.add("GPR", "IADD", f"loop:{v}", trips, "loop_counter",
          f"loop counter {what}: a corruption ends the loop early (partial result) or runs past it")
    s.add("PR", "ISETP", f"setp:loop_{v}", trips, "predicate", f"loop test of {what}: a flip exits early or runs one more trip")
    s.add("NODEST", "BRA", f"bra:loop_{v}", trips, "control", f"back-edge branch of {what}")


def epilogue(s: Stream) -> None:
    s.add("NODEST", "EXIT", "exit:done", 1, "control", "thread exit")


class StreamKernel(KernelImpl):
    """A kernel whose template, register map and vocabulary all come from one :class:`Stream`.

    Subclasses implement ``_stream`` (slots + registers for given params) and ``_threads`` (how
    many threads do work), and list in ``example_params`` parameter sets that together reach
    every tag (used by ``vocabulary``).
    """

    block: ClassVar[int] = BLOCK
    example_params: ClassVar[tuple[Mapping[str, Any], ...]] = ()

    def _stream(self, params: Mapping[str, Any]) -> Stream:
        raise NotImplementedError

    def _threads(self, params: Mapping[str, Any]) -> int:
        raise NotImplementedError

    def template(self, params: Mapping[str, Any]) -> ThreadTemplate:
        return self._stream(params).template(self._threads(params), self.block)

    def rendering(self, params: Mapping[str, Any]) -> str | None:
        """The ptxas entry of the CUDA C rendering this launch runs where it is not the
        kernel's own (``regs_allocated``): a variant compiled for other params (gemm's 64 tile,
        a dilated im2col, a ceil_mode or divisor_override pool), else None."""
        return None

    def registers(self, params: Mapping[str, Any]) -> RegisterMap:
        entry = self.rendering(params)
        return self._stream(params).register_map(self.regs_allocated if entry is None else ptxas_registers(entry))

    def vocabulary(self) -> Mapping[str, TagInfo]:
        vocab: dict[str, TagInfo] = {}
        for p in self.example_params:
            vocab.update(self._stream(p).tags)
        return vocab
