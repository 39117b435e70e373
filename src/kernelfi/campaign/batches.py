"""A campaign's faults in batches: how many per batch, in which order.

One batch is one run of the execution engine (``kernelfi.execution.Runner.run``): its faulty
lanes share the struck layers' golden rows, the cone steps and the whole-tensor layers after
them, so a batch holds faults of one layer or a few consecutive ones, and as many as the memory
for their lanes allows.
"""
from __future__ import annotations

from typing import Iterator

from kernelfi.execution import lane_numel, live_at_launch
from kernelfi.types import PlannedFault, Trace

#: What the lanes of one batch may hold in whole tensors (``auto_batch``)
AUTO_BUDGET = 2 ** 30
AUTO_MAX = 256


def auto_batch(trace: Trace, workspace: bool = False, budget: int = AUTO_BUDGET) -> int:
    """Faults per batch: as many lanes as fit ``budget`` bytes where the trace holds the most
    per-lane data at once (live buffers and the launch's own writes, twice over for the
    kernels' temporaries), between 16 and ``AUTO_MAX``. More lanes per run make each big
    layer's GEMM cheaper per lane (AlexNet's 9216x4096 connected layer: 0.85 ms a row in a
    call of 16 rows, 0.27 ms in one of 256). The im2col workspace counts only with
    ``workspace`` (the plain path): the fast path never materialises it after the struck
    layer, and the struck layer bounds its own lanes (``Runner.whole_chunk``)."""
    live, numel = live_at_launch(trace), lane_numel(trace)
    peak = max((sum(numel(n, l.layer) for n in live[l.index] | set(l.writes) if workspace or n != "workspace")
                for l in trace.launches), default=1)
    return max(16, min(AUTO_MAX, budget // (2 * 4 * max(peak, 1))))


def batches(planned: list[PlannedFault], trace_layers: dict[int, int], size: int) -> Iterator[list[PlannedFault]]:
    """Batches of ``size`` faults in layer order, by input within a layer: a batch spans a few
    consecutive layers when each holds few faults (their lanes share the cone steps and
    whole-tensor layers after the struck ones); same-input faults sit together (a struck layer
    needs one golden row per distinct input)."""
    items = sorted(planned, key=lambda pf: (trace_layers[pf.fault.site.launch], pf.fault.input_id, pf.id))
    for s in range(0, len(items), size):
        yield items[s:s + size]
