"""The one place that imports Ray, so a missing extra is one clear line, not a traceback."""
from __future__ import annotations

from types import ModuleType

from kernelfi._utils import KernelfiError

INSTALL_HINT = "pip install 'kernelfi[ray]'"


def require_ray() -> ModuleType:
    """Import Ray or raise a ``KernelfiError`` that says how to install it."""
    try:
        import ray
    except ImportError:
        raise KernelfiError(f"--executor ray needs Ray, which is not installed: {INSTALL_HINT}") from None
    return ray


def actor_errors(ray: ModuleType) -> tuple[type[BaseException], ...]:
    """Errors that mean "the worker went away", not "the injection failed": retry these.

    ``RayActorError`` covers a killed or crashed actor process and an actor that is unreachable
    for now (``ActorUnavailableError``); a dead node surfaces as one of these too, or as
    ``ObjectLostError`` when a finished batch's result lived in that node's object store.
    """
    exc = ray.exceptions
    names = ("RayActorError", "WorkerCrashedError", "NodeDiedError", "LocalRayletDiedError", "ObjectLostError")
    return tuple(getattr(exc, n) for n in names if hasattr(exc, n))
