"""Execute a campaign's batches on Ray actors, surviving workers that die.

Design (``docs/distributed.md``):

* One actor per worker holds one prepared model (``worker.ShardWorker``); it asks for one CPU,
  and one GPU when the driver sees CUDA.
* The work is ``campaign.batches()`` — a pure function of the plan — shipped as injection ids,
  so the rows are those of a local run with the same seed, whoever computes them.
* Each live actor has at most ``depth`` batches in flight; results are yielded as they arrive
  and ``run_campaign`` stores each batch in one transaction.
* A batch whose actor dies goes back to the front of the queue and the next free actor takes
  it. The dead actor is restarted by Ray (``max_restarts``) and rejoins once a ping answers. A
  batch that has killed ``max_attempts`` workers stops the run (it would kill them all); so does
  losing every worker. Either way what was stored stays stored, and the same command resumes.
"""
from __future__ import annotations

import os
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Iterator

from kernelfi._utils import KernelfiError
from kernelfi.campaign import Prepared
from kernelfi.campaign.planner import PlannedFault
from kernelfi.campaign.isolate import Done
from kernelfi.distributed._ray import actor_errors, require_ray
from kernelfi.distributed.worker import ShardWorker


@dataclass
class ExecutorStats:
    """What happened in the last run (tests and logs read it)."""

    workers: int = 0
    batches: int = 0
    deaths: int = 0  # worker deaths observed
    retried: int = 0  # batches resubmitted because their worker died


@dataclass
class _Slot:
    """One actor and what the driver knows about it."""

    actor: Any
    state: str = "starting"  # starting -> alive -> recovering -> alive ... | dead
    gen: int = 0  # incarnation the driver believes in; bumps on each observed death
    deaths: int = 0
    inflight: int = 0
    info: dict[str, Any] = field(default_factory=dict)


class RayExecutor:
    """``execute`` callable for ``run_campaign``: runs the batches on a Ray cluster.

    ``address`` is passed to ``ray.init`` (``None``: ``RAY_ADDRESS``, a ``ray start`` cluster on
    this machine, or a new local instance; ``"auto"``; ``"ray://head:10001"``) unless Ray is
    already initialised in this process.
    ``workers`` defaults to one per CPU (per GPU when GPUs are used) of the cluster.
    """

    def __init__(self, address: str | None = None, workers: int | None = None, cpus_per_worker: int = 1,
                 gpus: bool | None = None, max_restarts: int = 3, max_attempts: int = 3, depth: int = 2) -> None:
        if workers is not None and workers < 1:
            raise KernelfiError("--workers must be at least 1")
        self.ray = require_ray()  # fail before the golden run, not after
        self.address, self.workers, self.cpus_per_worker = address, workers, max(1, cpus_per_worker)
        self.gpus, self.max_restarts, self.max_attempts, self.depth = gpus, max_restarts, max_attempts, max(1, depth)
        self.stats = ExecutorStats()
        self._slots: list[_Slot] = []  # the latest run's workers
        self._open: list[list[_Slot]] = []  # runs whose generator was not finished or closed yet
        self._owns = False
        self._errors = actor_errors(self.ray)

    # ------------------------------------------------------------------ cluster
    def connect(self) -> None:
        """Join (or start) the Ray cluster once; a second campaign reuses the connection."""
        if not self.ray.is_initialized():
            try:
                self.ray.init(address=self.address)
            except (ConnectionError, ValueError, RuntimeError) as err:
                where = self.address or os.environ.get("RAY_ADDRESS") or "a new local instance"
                raise KernelfiError(f"cannot connect to Ray at {where}: {err}") from None
            self._owns = True

    def close(self) -> None:
        """Kill the workers of unfinished runs; shut Ray down if this executor started it.

        A run abandoned by its consumer (an exception while storing) keeps its actors, and
        their CPUs, until its generator is collected; a driver that goes on calls this instead.
        """
        for slots in list(self._open):
            self._kill(slots)
        if self._owns and self.ray.is_initialized():
            self.ray.shutdown()
        self._owns = False

    def __enter__(self) -> "RayExecutor":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _use_gpu(self) -> bool:
        """Ask for GPUs when told to, or when the driver sees CUDA and the cluster has GPUs.

        Without the second condition a CUDA driver facing a CPU-only cluster would wait forever
        for actors Ray can never place.
        """
        if self.gpus is not None:
            return self.gpus
        import torch

        return bool(torch.cuda.is_available()) and self.ray.cluster_resources().get("GPU", 0) >= 1

    def _count(self, n_batches: int, gpu: bool) -> int:
        if self.workers is not None:
            n = self.workers
        else:
            res = self.ray.cluster_resources()
            n = int(res.get("GPU", 0)) if gpu else int(res.get("CPU", 1)) // self.cpus_per_worker
        return max(1, min(n, n_batches))

    def worker_pids(self) -> list[int]:
        """Process ids of the workers that answered their latest ping (a test kills one)."""
        return [s.info["pid"] for s in self._slots if s.state == "alive" and "pid" in s.info]

    # ------------------------------------------------------------------ run
    def __call__(self, prep: Prepared, work: list[list[PlannedFault]]) -> Iterator[list[Done]]:
        if not work:  # resumed campaign with nothing left: do not start Ray for nothing
            return
        ray = self.ray
        self.connect()
        gpu = self._use_gpu()
        n = self._count(len(work), gpu)
        cls = ray.remote(ShardWorker).options(num_cpus=self.cpus_per_worker, num_gpus=1 if gpu else 0,
                                              max_restarts=self.max_restarts, max_task_retries=0)
        self.stats = ExecutorStats(workers=n)
        ids = [[pf.id for pf in b] for b in work]
        expect = {"weights_hash": prep.session.weights_hash, "population": prep.planner.population,
                  "n_inputs": prep.n_inputs}
        slots = self._slots = [_Slot(cls.remote(prep.config, self.cpus_per_worker, os.getcwd())) for _ in range(n)]
        self._open.append(slots)
        queue: deque[int] = deque(range(len(ids)))
        attempts = [0] * len(ids)
        pending: dict[Any, tuple[_Slot, int | None, int]] = {}  # ref -> (slot, batch or None=ping, gen)

        def ping(slot: _Slot) -> None:
            pending[slot.actor.info.remote()] = (slot, None, slot.gen)

        def fill() -> None:
            for slot in slots:
                while slot.state == "alive" and slot.inflight < self.depth and queue:
                    b = queue.popleft()
                    attempts[b] += 1
                    slot.inflight += 1
                    pending[slot.actor.run.remote(ids[b])] = (slot, b, slot.gen)

        last_error = ""

        def lost(slot: _Slot, gen: int, err: BaseException) -> None:
            nonlocal last_error
            last_error = _summary(err)
            if gen != slot.gen:  # another in-flight call of the same dead incarnation
                return
            slot.gen += 1
            slot.deaths += 1
            slot.inflight = 0
            self.stats.deaths += 1
            if slot.deaths > self.max_restarts:
                slot.state = "dead"
                return
            slot.state = "recovering"
            ping(slot)  # queued by Ray until the restarted actor is up

        for slot in slots:
            ping(slot)
        try:
            while queue or any(b is not None for _, b, _ in pending.values()):
                if not pending:
                    raise KernelfiError(f"all {n} Ray workers died ({last_error}); {len(queue)} batches left. "
                                        "Finished injections are stored: re-run the same command to resume")
                [ref], _ = ray.wait(list(pending), num_returns=1)
                slot, b, gen = pending.pop(ref)
                try:
                    out = ray.get(ref)
                except self._errors as err:
                    if b is not None:
                        self._requeue(b, ids, attempts, queue, err)
                    lost(slot, gen, err)
                    fill()
                    continue
                if b is None:
                    self._check(out, expect)
                    slot.info, slot.state = out, "alive"
                    fill()
                    continue
                if [e.planned.id for e in out] != ids[b]:
                    raise KernelfiError(f"Ray worker {slot.info.get('pid')} returned the wrong injections")
                if gen == slot.gen:  # a late answer of a presumed-dead incarnation is still a result
                    slot.inflight -= 1
                self.stats.batches += 1
                fill()  # keep the worker busy while the driver stores this batch
                yield out
        finally:
            self._kill(slots)

    def _kill(self, slots: list[_Slot]) -> None:
        for slot in slots:
            try:
                self.ray.kill(slot.actor, no_restart=True)
            except Exception:  # already gone
                pass
            slot.state = "dead"
        self._open = [s for s in self._open if s is not slots]

    def _requeue(self, b: int, ids: list[list[int]], attempts: list[int], queue: deque[int],
                 err: BaseException) -> None:
        if attempts[b] >= self.max_attempts:
            raise KernelfiError(f"injections {ids[b][0]}..{ids[b][-1]} were lost with {attempts[b]} Ray workers "
                                f"in a row (last: {type(err).__name__}); stopping. Finished injections are stored: "
                                "re-run the same command to resume") from None
        self.stats.retried += 1
        queue.appendleft(b)  # first in line for the next free worker

    @staticmethod
    def _check(info: dict[str, Any], expect: dict[str, Any]) -> None:
        """A worker must have built the very campaign the driver planned (same files everywhere)."""
        where = f"Ray worker {info.get('pid')} on {info.get('node')}"
        if info.get("error"):
            raise KernelfiError(f"{where} could not prepare the campaign: {info['error']}")
        for k, v in expect.items():
            if info.get(k) != v:
                raise KernelfiError(f"{where} prepared a different campaign ({k} {info.get(k)} != {v}): "
                                    "are the weights, data and kernelfi version the same on every node?")


def _summary(err: BaseException) -> str:
    """The last line of a Ray error: where Ray puts the cause (e.g. "No module named 'kernelfi'")."""
    lines = [l.strip() for l in str(err).splitlines() if l.strip()]
    return f"{type(err).__name__}: {lines[-1][:200] if lines else ''}"


def ray_executor(address: str | None = None, workers: int | None = None, **options: Any) -> RayExecutor:
    """The ``execute`` argument of ``run_campaign`` for ``--executor ray [--address ADDR]``."""
    return RayExecutor(address, workers, **options)
