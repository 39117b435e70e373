"""Run campaigns on a Ray cluster (``kernelfi campaign ... --executor ray``).

Ray is an optional extra (``pip install 'kernelfi[ray]'``): nothing here imports it until an
executor is built, so the rest of kernelfi works without it. The campaign layer knows nothing
of Ray either: :func:`ray_executor` returns an ``execute`` callable that ``run_campaign`` calls
in place of its local process pool, and the driver keeps storing results as they arrive.
Guide: ``docs/distributed.md``.
"""
from __future__ import annotations

from kernelfi.distributed._ray import INSTALL_HINT, require_ray
from kernelfi.distributed.executor import ExecutorStats, RayExecutor, ray_executor

__all__ = ["INSTALL_HINT", "ExecutorStats", "RayExecutor", "ray_executor", "require_ray"]
