"""Campaign arithmetic on one intra-op thread, whoever calls it.

oneDNN and MKL choose their blocking, and with it the order of a sum, by the number of threads:
ResNet-50's golden run on two threads differs from the one-thread run in the last bits of some
activations (24 of 512 struck values on the throughput bench). A campaign's rows must not
depend on how it is executed (one process, a pool of ``--workers``, Ray actors) nor on how many
cores the machine has, so the golden run, the runner's one-time checks and every batch run
with one intra-op thread; parallelism comes from worker processes, which on a CPU is also
faster (each process keeps its core busy through the engine's Python and small calls).
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch

#: intra-op threads of every campaign computation (see the module docstring)
ENGINE_THREADS = 1


@contextmanager
def engine_threads() -> Iterator[None]:
    """Run the body with ``ENGINE_THREADS`` intra-op threads; the caller's count comes back
    after, whatever happens (usable as a decorator)."""
    before = torch.get_num_threads()
    if before == ENGINE_THREADS:
        yield
        return
    torch.set_num_threads(ENGINE_THREADS)
    try:
        yield
    finally:
        torch.set_num_threads(before)
