"""The short campaign every layer's tests run: 40 single-bit injections in one mode on a small
registered model, which must all finish with no tool error (the kernels' replays, register maps
and stores hold up under real faults). Returns what was struck, for the test to check its layer
was among it."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from torch import nn

from kernelfi.campaign import CampaignConfig, ModelSpec, run_campaign
from kernelfi.models import list_models, register_model
from kernelfi.store import Store


def ensure_registered(name: str, build: Callable[[int], nn.Module], input_shape: tuple[int, int, int],
                      num_classes: int, description: str) -> str:
    """Register ``build`` (a top-level builder, so workers import it again) once per process."""
    if name not in {m.name for m in list_models()}:
        c = input_shape[0]
        register_model(name, input_shape=input_shape, num_classes=num_classes, mean=(0.5,) * c, std=(0.25,) * c,
                       description=description)(build)
    return name


def short_campaign(name: str, mode: str, tmp_path: Path, inputs: int = 2, scope: str | None = None,
                   n: int = 40) -> list:
    """``n`` injections (seed 5, random inputs) on the registered model ``name``: asserts every
    one ran and none is a tool error; returns the stored injection records."""
    db = tmp_path / f"{mode}.db"
    extra = {"scope": scope} if scope else {}
    cid = run_campaign(CampaignConfig(ModelSpec(name), mode, "single", n=n, seed=5, data="random", inputs=inputs,
                                      **extra), str(db))
    with Store(str(db), create=False, readonly=True) as store:
        counts = store.outcome_counts(cid)
        records = [store.injection(cid, i) for i in range(n)]
    assert sum(counts.values()) == n and counts.get("tool_error", 0) == 0, counts
    return records
