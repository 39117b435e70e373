"""A campaign's batches on this machine: the driver process and a pool of worker processes.

Every process runs the engine on one intra-op thread (``execution.threads``), so the rows do
not depend on how many there are. The driver computes the golden run once, into shared
memory that the workers map (``execution.SharedGolden``), where ``/dev/shm`` has room. Workers
take a while to start (each imports torch, loads and lowers the model), so the driver runs the
first batch itself and starts a pool only where the rest would take a few workers' starts
(``START_PAYOFF``); then it keeps running batches until the workers are up and hands them
batches as they become free. A small campaign costs what one process would.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import time
from collections import deque
from multiprocessing.pool import AsyncResult
from typing import Any, Callable, Iterator

import torch

from kernelfi._utils import KernelfiError
from kernelfi.campaign.batches import AUTO_BUDGET
from kernelfi.campaign.prepared import CampaignConfig, Prepared, prepare
from kernelfi.execution import Checks, SharedGolden, golden_numel
from kernelfi.types import PlannedFault
from kernelfi.campaign.isolate import Done, run_batch

#: What a worker holds besides the model's weights: torch itself and the runner's bookkeeping
#: (the lanes of a batch are ``AUTO_BUDGET`` at most; ResNet-152's worker peaks at 0.7 GiB)
WORKER_BASE = 512 << 20
#: A worker's start before it prepares the campaign: a Python process importing torch
WORKER_START_S = 3.0
#: A pool starts only where the batches left would take this many times a worker's start in
#: one process (estimated from the first batch, which the driver runs). Workers start while the
#: driver computes, on the same cores: ResNet-50 with 2 workers, 400 faults took 15.4 s
#: against 12.6 s in one process, 1500 faults 25.1 s against 27.1 s.
START_PAYOFF = 4.0
#: ``ready`` when a worker failed to set up: the driver stops (a pool would respawn it forever)
FAILED = -(1 << 20)


def auto_workers(per_worker: int = 0) -> int:
    """The CPUs this process may run on (its affinity mask, not the machine's count), fewer
    where ``per_worker`` bytes each would not fit the memory available now (Linux)."""
    try:
        n = max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        n = max(1, os.cpu_count() or 1)
    avail = _mem_available()
    if per_worker > 0 and avail is not None:
        n = max(1, min(n, avail // per_worker))
    return n


def _mem_available() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _shm_room(nbytes: int) -> bool:
    """Room in /dev/shm for the golden run, with a margin? (Containers often mount 64 MiB; a
    worker touching a page beyond it dies of SIGBUS. Without room, each worker computes its own.)"""
    try:
        st = os.statvfs("/dev/shm")
    except OSError:
        return False
    return st.f_bavail * st.f_frsize >= nbytes + nbytes // 4 + (64 << 20)


def execute_local(prep: Prepared, work: list[list[PlannedFault]], workers: int,
                  driver: bool = True) -> Iterator[list[Done]]:
    """Yield each batch's results as it finishes (in any order). ``workers`` 0: one per CPU,
    as many as the memory holds (weights, lanes, the rest; the golden run too where it is not
    shared); never more than there are batches. ``driver``: run batches here while the
    workers start (a test turns it off to give the workers every batch)."""
    trace = prep.session.program.trace
    golden_bytes = 4 * golden_numel(trace, prep.n_inputs, prep.config.fast)
    share = _shm_room(golden_bytes)
    if not workers:
        weights = sum(t.numel() * t.element_size() for t in prep.session.program.weights.values())
        workers = auto_workers(weights + AUTO_BUDGET + WORKER_BASE + (0 if share else golden_bytes))
    workers = min(workers, len(work))
    if workers <= 1:
        for b in work:
            yield run_batch(prep.runner, b)
        return
    shared = prep.share_golden() if share else None  # the driver keeps the shared copy only
    pending = deque(work)
    t0 = time.perf_counter()
    checks = prep.runner.checks()  # the workers take these instead of checking again
    start = WORKER_START_S + prep.setup_s + (0.0 if share else time.perf_counter() - t0)
    if driver:
        t0 = time.perf_counter()
        done = run_batch(prep.runner, pending.popleft())
        first = time.perf_counter() - t0  # early layers' faults and first-call checks: on the high side
        yield done
        if first * len(pending) < START_PAYOFF * start:
            while pending:  # over before workers would be up and paid off: no pool
                yield run_batch(prep.runner, pending.popleft())
            return
    ctx = mp.get_context("spawn")
    ready = ctx.Value("i", 0)
    running: list[AsyncResult] = []
    with ctx.Pool(workers, initializer=_worker_init, initargs=(prep.config, shared, checks, ready)) as pool:
        while pending or running:
            for r in [r for r in running if r.ready()]:
                running.remove(r)
                yield r.get()
            up = ready.value
            if up < 0:
                raise KernelfiError("a campaign worker failed to set up (its error is above); stored results stay")
            while pending and len(running) < up:  # a batch for every free worker
                running.append(pool.apply_async(_worker_run, ([pf.id for pf in pending.popleft()],)))
            if driver and pending and up < workers:  # workers still starting: the driver works meanwhile
                yield run_batch(prep.runner, pending.popleft())
            else:  # waiting for a result or for a worker to come up
                time.sleep(0.002)


_WORKER: Prepared | None = None


def set_up(ready: Any, make: Callable[[], None]) -> None:
    """A pool worker's initializer body: ``make()``, then count the worker in ``ready``; on
    failure set ``ready`` to ``FAILED`` (the driver stops waiting) and re-raise."""
    try:
        make()
    except BaseException:
        with ready.get_lock():
            ready.value = FAILED
        raise
    with ready.get_lock():
        ready.value += 1


def _worker_init(config: CampaignConfig, shared: SharedGolden | None, checks: Checks, ready: Any) -> None:
    """Each worker prepares the campaign itself (model, planner) and maps the driver's golden
    run (one copy in shared memory for all), or computes its own where there was no room; its
    runner takes the driver's one-time checks (same machine, same golden bits)."""
    def make() -> None:
        global _WORKER
        torch.set_num_threads(1)
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        _WORKER = prepare(config)
        _WORKER.use_shared(shared, checks)
    set_up(ready, make)


def _worker_run(ids: list[int]) -> list[Done]:
    assert _WORKER is not None
    return run_batch(_WORKER.runner, [_WORKER.planner.draw(i) for i in ids])
