"""kernelfi: kernel-level soft-error fault injection for CNNs on GPUs.

The Python API (``docs/api.md``): ``kernelfi.Model``, ``kernelfi.Campaign``, ``kernelfi.summary``,
``kernelfi.replay``, ``kernelfi.harden_plan``, ``kernelfi.export`` (``kernelfi.api``). They load on
first use: ``import kernelfi.store`` (a report on a machine without torch) must not import
torch. See ``docs/method.md`` (method) and ``docs/`` (design).
"""
from __future__ import annotations

from typing import Any

from kernelfi.version import __version__

__all__ = ["__version__", "Model", "Campaign", "CampaignResult", "summary", "replay", "harden_plan", "export"]
_API = frozenset(__all__) - {"__version__"}


def __getattr__(name: str) -> Any:
    """The API's names, imported from ``kernelfi.api`` on first use (PEP 562)."""
    if name in _API:
        from kernelfi import api
        return getattr(api, name)
    raise AttributeError(f"module 'kernelfi' has no attribute {name!r}")
