"""Faulty lanes of whole tensors against their golden rows: propagation figures and return to golden.

After each layer run on whole tensors, every faulty lane still running is compared with its
golden row (``GoldenRow``: a golden lane in the batch, or the golden cache's row of its input):
how many elements of the layer's output differ and by how much (``Propagation``), and whether
any buffer the rest of the run reads differs at all (a lane that differs nowhere is a
No-Malfunction SDC). Lanes in consecutive rows that share a golden row are compared as one
``LaneRun``: row views against one golden row, no copies.
"""
from __future__ import annotations

from typing import Callable

import torch

from kernelfi.execution import native
from kernelfi.execution.cone import REL_FLOOR, Diff, diff_rows
from kernelfi.execution.lanes import GoldenRow, GoldenSource, LaneRun


def lane_runs(rows: list[int], golden: list[GoldenRow], most: int = 8) -> list[LaneRun]:
    """The faulty lanes in rows ``rows`` (golden row ``golden[i]`` for ``rows[i]``) as runs of at
    most ``most`` consecutive rows that share a golden row."""
    out: list[LaneRun] = []
    start = 0
    while start < len(rows):
        end = start + 1
        while end < len(rows) and end - start < most and rows[end] == rows[end - 1] + 1 and golden[end] == golden[start]:
            end += 1
        out.append(LaneRun(start, rows[start], rows[start] + end - start, golden[start]))
        start = end
    return out


def scan(t: torch.Tensor, cached: torch.Tensor | None, runs: list[LaneRun], n: int, with_diff: bool,
         finite: Callable[[int], bool]) -> tuple[list[Diff], list[bool]]:
    """Per faulty lane of ``runs`` (``n`` in all) in tensor ``t``: its ``diff_rows`` against its
    golden row (``with_diff``) and whether any element differs, NaN unequal to NaN (a golden NaN
    keeps a lane running). ``cached``: the golden cache's tensor of the same buffer;
    ``finite(input)``: whether its row of that input holds only finite values."""
    diffs: list[Diff] = [(0, 0.0, 0.0)] * n
    dirty = [False] * n
    if with_diff and t.dtype == torch.float32:
        runs = _scan_native(t, cached, runs, diffs, dirty)
    for run in runs:
        source = t if run.golden.source is GoldenSource.BATCH else cached
        assert source is not None, "a lane without its golden lane compares with the golden cache"
        size = run.end - run.first
        faulty, golden = t[run.first:run.end].reshape(size, -1), source[run.golden.row].reshape(1, -1)
        fin = run.golden.source is GoldenSource.CACHE and t.dtype == torch.float32 and finite(run.golden.row)
        if with_diff:
            diffs[run.at:run.at + size] = found = diff_rows(faulty, golden, finite=fin)
            if fin:  # no golden NaN: differing elements are exactly the unequal ones
                dirty[run.at:run.at + size] = [count > 0 for count, _, _ in found]
                continue
        dirty[run.at:run.at + size] = [not torch.equal(faulty[i], golden[0]) for i in range(size)]
    return diffs, dirty


def _scan_native(t: torch.Tensor, cached: torch.Tensor | None, runs: list[LaneRun], diffs: list[Diff],
                 dirty: list[bool]) -> list[LaneRun]:
    """``scan``'s figures in one native pass per golden source (the batch's golden lanes, the
    golden cache), filled into ``diffs`` and ``dirty``; the runs it could not do (no native
    library, a NaN or inf in the golden row) are returned."""
    rest: list[LaneRun] = []
    for source, gold in ((GoldenSource.BATCH, t), (GoldenSource.CACHE, cached)):
        mine = [run for run in runs if run.golden.source is source]
        if not mine:
            continue
        found = None if gold is None else native.diff_rows(
            t.reshape(t.shape[0], -1), gold.reshape(gold.shape[0], -1), REL_FLOOR,
            [row for run in mine for row in range(run.first, run.end)],
            [run.golden.row for run in mine for _ in range(run.first, run.end)])
        if found is None:
            rest.extend(mine)
            continue
        k = 0
        for run in mine:
            size = run.end - run.first
            part = found[k:k + size]
            k += size
            if any(d is None for d in part):
                rest.append(run)
                continue
            diffs[run.at:run.at + size] = part  # type: ignore[assignment]
            # golden rows finite: a lane differs exactly where an element is unequal (NaN too)
            dirty[run.at:run.at + size] = [d[0] > 0 for d in part]  # type: ignore[index]
    return sorted(rest, key=lambda run: run.at)
