"""The Python API (docs/api.md): one door per analysis, on the library functions the commands use.

- ``Model``: an ``nn.Module`` instance in eval mode with its own weights (``Model(net, (3, 32, 32))``),
  a model file (``Model.file("net.py:build")``) or a registered name (``Model.registered("resnet18")``);
  ``lower``, ``profile``, ``lowering_error``.
- ``Campaign``: run, resume (run again) and summarise a fault-injection campaign on a ``Model``,
  with inputs given as a tensor, ``(x, y)``, a Dataset, a DataLoader or a path.
- ``summary``, ``replay``: a results database's campaigns; one stored injection re-executed.
- ``harden_plan``: a selective-hardening plan from a database; ``export``: the hardened model as
  plain PyTorch.
"""
from __future__ import annotations

from kernelfi.api.campaign import Campaign, CampaignResult, summary
from kernelfi.api.harden import export, harden_plan
from kernelfi.api.model import Model
from kernelfi.campaign import replay

__all__ = ["Model", "Campaign", "CampaignResult", "summary", "replay", "harden_plan", "export"]
