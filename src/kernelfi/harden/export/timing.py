"""Native run time of an exported model against the original (docs/export.md §5).

What is timed is plain PyTorch on the machine at hand (CPU, or CUDA), one forward of the whole
batch per sample: the original registry model (with the export's weights), the export without
protection, the plan, full DMR and full TMR. They run in one interleaved loop, the order rotated
every repetition, so drifts of a shared machine hit them alike; medians and minima are kept.
``clock="cpu"`` measures the calling thread's CPU time with one intra-op thread (steadier on an
oversubscribed machine, CPU only); CUDA is wall-clock between synchronisations.
"""
from __future__ import annotations

import copy
import os
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from safetensors.torch import load_file
from torch import nn

from kernelfi._utils import KernelfiError
from kernelfi.models import load_model

from ..plan import Plan
from .export import FILES, VARIANTS, export_model, load_exported, read_manifest

#: Timed labels, in report order: the original, then the exported variants.
LABELS: tuple[str, ...] = ("original",) + VARIANTS


@dataclass(frozen=True)
class NativeOverhead:
    """Median and fastest seconds per forward of each label, and the overheads they give."""

    model: str
    device: str
    clock: str
    batch: int
    reps: int
    median_s: Mapping[str, float] = field(default_factory=dict)
    min_s: Mapping[str, float] = field(default_factory=dict)

    def overhead(self, label: str, fastest: bool = False) -> float:
        """Extra time of ``label`` over the original, as a share (0.97 = +97%)."""
        t = self.min_s if fastest else self.median_s
        return t[label] / t["original"] - 1.0

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "device": self.device, "clock": self.clock, "batch": self.batch,
                "reps": self.reps, "median_s": dict(self.median_s), "min_s": dict(self.min_s),
                "overhead": {k: self.overhead(k) for k in self.median_s if k != "original"},
                "overhead_fastest": {k: self.overhead(k, True) for k in self.min_s if k != "original"}}


def original_module(directory: str | os.PathLike[str]) -> nn.Module:
    """The original registry model (or model file) of an export, with the export's weights (same keys)."""
    manifest = read_manifest(directory)
    name = manifest.get("registry") or manifest.get("model_file")
    if not name:
        raise KernelfiError(f"{directory}: exported from a module, not a registry model or a model file: pass the "
                            "original")
    module = load_model(name, weights="random", num_classes=manifest.get("num_classes"),
                        input_shape=tuple(manifest["input_shape"])).module
    state = load_file(str(Path(directory) / FILES["weights"]))
    result = module.load_state_dict(state, strict=False)
    if result.unexpected_keys:
        raise KernelfiError(f"{directory}: weights do not fit {name} ({', '.join(result.unexpected_keys[:3])})")
    return module


def time_exported(directory: str | os.PathLike[str], x: torch.Tensor, *, reps: int = 20, warmup: int = 2,
                  device: str = "cpu", clock: str = "wall", original: nn.Module | None = None) -> NativeOverhead:
    """Time an export's variants against the original on the batch ``x``.

    Args:
        directory: an export directory.
        x: the inputs of one forward (N, C, H, W).
        reps, warmup: timed and untimed interleaved repetitions.
        device: ``cpu`` or ``cuda``.
        clock: ``wall`` or ``cpu`` (thread CPU time, one intra-op thread; CPU only).
        original: the original module (default: rebuilt from the registry, see ``original_module``).

    Returns:
        A ``NativeOverhead``: medians and minima per label (``LABELS``), ``overhead(label)``.
    """
    if clock not in ("wall", "cpu"):
        raise KernelfiError(f"clock must be wall or cpu, not {clock!r}")
    if clock == "cpu" and device != "cpu":
        raise KernelfiError("--clock cpu times CPU threads: use it with --device cpu")
    manifest = read_manifest(directory)
    dev = torch.device(device)
    base = original_module(directory) if original is None else copy.deepcopy(original)  # the caller's stays put
    fns: dict[str, Callable[[torch.Tensor], Any]] = {"original": base.to(dev)}
    fns.update({v: load_exported(directory, v, dev) for v in VARIANTS})
    xd = x.to(dev)
    threads = torch.get_num_threads()
    if clock == "cpu":
        torch.set_num_threads(1)
    try:
        samples = _interleaved(fns, xd, reps, warmup, time.thread_time if clock == "cpu" else time.perf_counter)
    finally:
        torch.set_num_threads(threads)
    return NativeOverhead(manifest["model"], str(dev), clock, int(x.shape[0]), reps,
                          {k: statistics.median(v) for k, v in samples.items()}, {k: min(v) for k, v in samples.items()})


def _interleaved(fns: dict[str, Callable[[torch.Tensor], Any]], x: torch.Tensor, reps: int, warmup: int,
                 now: Callable[[], float]) -> dict[str, list[float]]:
    labels = list(fns)
    samples: dict[str, list[float]] = {k: [] for k in labels}
    cuda = x.is_cuda
    with torch.no_grad():
        for rep in range(warmup + reps):
            for label in labels[rep % len(labels):] + labels[:rep % len(labels)]:
                if cuda:
                    torch.cuda.synchronize(x.device)
                t0 = now()
                fns[label](x)
                if cuda:
                    torch.cuda.synchronize(x.device)
                if rep >= warmup:
                    samples[label].append(now() - t0)
    return samples


def native_overhead(model: str, plan: Plan | Mapping[str, Any] | str | os.PathLike[str], x: torch.Tensor, *,
                    weights: str | None = None, num_classes: int | None = None, seed: int = 0, reps: int = 20,
                    device: str = "cpu", clock: str = "wall") -> NativeOverhead:
    """Export ``model`` with ``plan`` to a temporary directory and time it (``time_exported``):
    the exported model's native overhead, for reports that start from a plan."""
    with tempfile.TemporaryDirectory(prefix="kernelfi-export-") as tmp:
        export_model(model, plan, Path(tmp) / "export", weights=weights, num_classes=num_classes, seed=seed,
                     check_inputs=x[:4])
        return time_exported(Path(tmp) / "export", x, reps=reps, device=device, clock=clock)
