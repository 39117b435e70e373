"""The fast execution engine: a batch of faults -> one outcome each, bit for bit as a plain run.

Between ``faults``/``harden`` and ``campaign`` in the layering (docs/architecture.md): it knows
programs, faults and golden runs, never campaigns, stores or plans. What it offers:

- ``Golden`` (``golden``): the fault-free run of every input, cached at layer boundaries, and
  ``SharedGolden``, the same in one block of shared memory for worker processes;
  ``extended_golden``: a program's golden run taken from another's where it only adds launches
  that leave the golden values as they were (a range clamp), with ``Runner.extended_checks``;
- ``Runner`` (``runner``): runs a batch of planned faults and returns one ``Executed`` each,
  with ``Checks``, its one-time findings about this machine that other processes reuse;
- ``engine_threads`` / ``ENGINE_THREADS`` (``threads``): every engine computation on one
  intra-op thread, so rows do not depend on how a campaign is run.

Inside: a batch's rows and findings as named types (``lanes``: ``GoldenLane``/``FaultyLane``,
``GoldenRow``, ``LaneRun``, ``BatchState``), the trace facts every stage looks up (``layout``),
the golden state a struck layer starts from (``starts``), the struck layer without whole
faulty lanes (``struck``), the receptive-field cone after it (``cone``), whole-tensor lanes
against their golden rows (``compare``) and the C loops they use (``native``, ``native.c``).
"""
from kernelfi.execution.golden import (
    Golden, SharedGolden, extended_golden, golden_chunk, golden_numel, lane_numel, live_at_launch,
)
from kernelfi.execution.runner import Checks, Executed, Runner
from kernelfi.execution.threads import ENGINE_THREADS, engine_threads

__all__ = ["Golden", "SharedGolden", "extended_golden", "golden_chunk", "golden_numel", "lane_numel", "live_at_launch", "Checks", "Executed", "Runner",
           "ENGINE_THREADS", "engine_threads"]
