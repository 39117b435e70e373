"""Selective hardening: plans, trace transforms, range bounds, and their cost (docs/method.md §5).

>>> from kernelfi.harden import Plan, Protection, apply_plan
>>> plan = Plan("tiny", (Protection("kernel", "forward_maxpool", "tmr"),))   # doctest: +SKIP
>>> hardened = apply_plan(program, plan)                                     # doctest: +SKIP

Layering (level 2): imports gputime, lowering, kernels, types and _utils only (``kernelfi.harden.export``,
which writes a plan out as a plain PyTorch model, imports models too; docs/export.md); the planner
that reads campaign results lives in ``kernelfi.campaign.harden_planner``. docs/hardening.md
explains the techniques, the plan format and the cost model; ``pricing`` prices programs in
modelled GPU time (``kernelfi.gputime``, the planner's default) or measured time (``timing``),
``explain`` says why the planner took or left each candidate.
"""
from __future__ import annotations

from .bounds import layer_outputs, profile_bounds
from .plan import REPLICATION, TARGETS, TECHNIQUES, Plan, Protection, as_plan, full_plan, parse_budget
from .pricing import DEFAULT_COST, Cost, Pricer, modelled, modelled_programs, parse_cost
from .table import OverheadTable, modelled_overhead, overhead_table
from .timing import Timing, by_kernel, on_device, steps, time_programs
from .transform import OWN_KEYS, apply_plan, comparison_programs, harden_trace
from .units import Unit, abft_checkable, abft_plan, conv_pairs, range_sites, select, units

__all__ = [
    "DEFAULT_COST", "OWN_KEYS", "REPLICATION", "TARGETS", "TECHNIQUES", "Cost", "OverheadTable", "Plan", "Pricer",
    "Protection", "Timing", "Unit", "abft_checkable", "abft_plan", "apply_plan", "as_plan", "by_kernel", "comparison_programs", "conv_pairs", "full_plan",
    "harden_trace", "layer_outputs", "modelled", "modelled_overhead", "modelled_programs", "on_device", "overhead_table", "parse_budget", "parse_cost",
    "profile_bounds", "range_sites", "select", "steps", "time_programs", "units",
]
