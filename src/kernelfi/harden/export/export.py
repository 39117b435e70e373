"""``export_model``: a model and a hardening plan -> a directory that runs without kernelfi.

The directory (docs/export.md §1) holds ``model.py`` (generated source: runtime, modules, one
forward per variant), ``weights.safetensors`` (the original state dict's keys, no pickle),
``plan.json`` and ``manifest.json`` (plan entry -> launches -> ops -> technique, file hashes,
the fault-free check). Before the directory is put in place, every variant is loaded back from
the files and run against the original model on the check inputs: the unhardened, full-DMR and
full-TMR variants, and a plan without clamps, must match it bit for bit, or nothing is written.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors.torch import save_file
from torch import nn

from kernelfi.version import __version__
from kernelfi._utils import KernelfiError
from kernelfi.lowering import FxLowered, build_trace, lower_fx
from kernelfi.models import is_model_file, load_model
from kernelfi.models.user import parse_model_file
from kernelfi.types import Trace

from ..plan import Plan, as_plan, full_plan
from ..transform import harden_trace
from .codegen import VARIANT_CLASSES, generate
from .mapping import OpHardening, map_plan

FORMAT = "kernelfi-export"
VERSION = 1
VARIANTS: tuple[str, ...] = tuple(VARIANT_CLASSES)
FILES = {"source": "model.py", "weights": "weights.safetensors", "plan": "plan.json", "manifest": "manifest.json"}


@dataclass(frozen=True)
class Export:
    """An exported model directory and its manifest (``manifest.json``)."""

    directory: Path
    manifest: dict[str, Any]

    def load(self, variant: str = "plan", device: str | torch.device = "cpu") -> nn.Module:
        """The exported model (see ``load_exported``)."""
        return load_exported(self.directory, variant, device)


@dataclass(frozen=True)
class _Source:
    module: nn.Module
    name: str
    input_shape: tuple[int, int, int]
    info: dict[str, Any]


def _resolve(model: str | nn.Module, weights: str | None, num_classes: int | None, seed: int,
             input_shape: tuple[int, ...] | None, name: str | None) -> _Source:
    if isinstance(model, nn.Module):
        if input_shape is None or name is None:
            raise KernelfiError("export of an nn.Module needs its input_shape (C, H, W) and a name")
        if model.training:
            raise KernelfiError(f"export: {name} is in training mode (call .eval() on it first)")
        c, h, w = (int(d) for d in input_shape)
        return _Source(model, name, (c, h, w), {"registry": None, "weights_source": "module"})
    loaded = load_model(model, weights=weights, num_classes=num_classes, seed=seed, input_shape=input_shape)
    if getattr(loaded.module, "kernelfi_layers", None) is not None:
        raise KernelfiError(f"{model}: Darknet cfg models are not exported: their module interprets Darknet's "
                            "layers (NaN and padding semantics) rather than composing standard torch.nn ops")
    info = loaded.info
    if is_model_file(model):  # rebuilt from its file (``original_module``), not by a registry name
        path, factory = parse_model_file(model)
        return _Source(loaded.module, info.name, info.input_shape,
                       {"registry": None, "model_file": f"{path}:{factory}", "weights_source": loaded.weights_source,
                        "weights_hash": loaded.weights_hash})
    return _Source(loaded.module, info.name, info.input_shape,
                   {"registry": info.name, "num_classes": info.num_classes, "weights_source": loaded.weights_source,
                    "weights_hash": loaded.weights_hash})


def _plan(plan: Plan | Mapping[str, Any] | str | os.PathLike[str]) -> Plan:
    if isinstance(plan, (str, os.PathLike)):
        return Plan.load(plan)
    return as_plan(plan)


def _variants(trace: Trace, lowered: FxLowered, plan: Plan) -> dict[str, OpHardening | None]:
    kernels = sorted({l.kernel for l in trace.launches})
    return {"none": None, "plan": map_plan(trace, lowered, plan),
            "full-dmr": map_plan(trace, lowered, full_plan(trace.model, kernels, "dmr")),
            "full-tmr": map_plan(trace, lowered, full_plan(trace.model, kernels, "tmr"))}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def export_model(model: str | nn.Module, plan: Plan | Mapping[str, Any] | str | os.PathLike[str],
                 out: str | os.PathLike[str], *, weights: str | None = None, num_classes: int | None = None,
                 seed: int = 0, input_shape: tuple[int, ...] | None = None, name: str | None = None,
                 check_inputs: torch.Tensor | None = None) -> Export:
    """Export ``model`` hardened by ``plan`` as plain PyTorch into the directory ``out``.

    Args:
        model: a registry name (``digits-alexnet``, ``resnet50``, ...) or an ``nn.Module`` in eval
            mode (then ``input_shape`` and ``name`` are required; ``name`` must be the plan's model).
        plan: a ``Plan``, its dict, or the path of a plan JSON (docs/hardening.md §2); its model
            must be this model.
        out: the directory to create (a previous export there is replaced; anything else refused).
        weights, num_classes, seed: as for ``kernelfi.models.load_model`` (registry models).
        input_shape, name: (C, H, W) and the model name, for a module; ``input_shape`` also for a
            model file ``PATH.py:FACTORY`` whose factory does not say it.
        check_inputs: a batch (N, C, H, W) the variants are checked on against the original;
            default: four seeded standard-normal inputs.

    Returns:
        The ``Export`` (directory and manifest). ``load_exported`` or the generated
        ``model.load`` run it; nothing of kernelfi is needed to do so.
    """
    src = _resolve(model, weights, num_classes, seed, input_shape, name)
    plan = _plan(plan)
    if plan.model and plan.model != src.name:
        raise KernelfiError(f"hardening plan is for model '{plan.model}', not '{src.name}'")
    lowered = lower_fx(src.module, src.input_shape)
    trace, _ = build_trace(src.name, lowered.layers, lowered.state, src.input_shape)
    harden_trace(trace, plan)  # the same validation (names, bounds, abft operands) as campaigns
    variants = _variants(trace, lowered, plan)
    if check_inputs is None:
        check_inputs = torch.randn((4, *src.input_shape), generator=torch.Generator().manual_seed(0))
    dest = Path(out)
    _check_destination(dest)
    tmp = dest.parent / f".{dest.name}.export-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        manifest = _write(tmp, src, lowered, plan, variants)
        manifest["check"] = _check(tmp, src.module, check_inputs, variants["plan"])
        (tmp / FILES["manifest"]).write_text(json.dumps(manifest, indent=1) + "\n")
        if dest.exists():
            shutil.rmtree(dest)
        tmp.rename(dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return Export(dest, manifest)


def _check_destination(dest: Path) -> None:
    if dest.exists() and (not dest.is_dir() or (any(dest.iterdir()) and not (dest / FILES["manifest"]).is_file())):
        raise KernelfiError(f"{dest}: exists and is not an export directory (refusing to overwrite it)")


def _write(folder: Path, src: _Source, lowered: FxLowered, plan: Plan,
           variants: dict[str, OpHardening | None]) -> dict[str, Any]:
    """model.py, weights.safetensors, plan.json; the manifest's contents (without the check)."""
    plan_sha = hashlib.sha256(plan.to_json().encode()).hexdigest()
    header = (f"{src.name} hardened by a kernelfi {__version__} plan (sha256 {plan_sha[:16]}): plain PyTorch.\n\n"
              "Generated by `kernelfi export`; needs torch and safetensors, nothing of kernelfi.\n\n"
              "    import sys; sys.path.insert(0, DIRECTORY)   # the directory holding this file\n"
              "    import model\n"
              '    net = model.load(variant="plan", device="cuda")    # or "none", "full-dmr", "full-tmr"\n'
              "    logits = net(x)                                    # x: (N, C, H, W) float32\n\n"
              "manifest.json says which plan entry protects which op; kernelfi's docs/export.md explains\n"
              "the techniques. Inference only (the voters and checks are not differentiable).\n")
    constants: dict[str, Any] = {"MODEL": src.name, "INPUT_SHAPE": src.input_shape, "WEIGHTS": FILES["weights"]}
    # The weights: the original state dict's entries that the rebuilt modules hold.
    probe = _exec_source(generate(lowered, variants, header, {**constants, "WEIGHTS_SHA256": ""}), folder, "probe")
    keys = list(probe.Net().state_dict())
    state = src.module.state_dict()
    missing = [k for k in keys if k not in state]
    if missing:
        raise KernelfiError(f"export: the model's state dict lacks {', '.join(missing[:3])}")
    save_file({k: state[k].detach().to("cpu").clone().contiguous() for k in keys}, str(folder / FILES["weights"]))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(folder / FILES["weights"], 0o666 & ~umask)  # safetensors writes it private; it is no secret
    constants["WEIGHTS_SHA256"] = _sha256(folder / FILES["weights"])
    (folder / FILES["source"]).write_text(generate(lowered, variants, header, constants))
    plan.save(folder / FILES["plan"])
    ops = {}
    for variant, h in variants.items():
        if h is None:
            continue
        for node, tech in h.replicate.items():
            ops.setdefault(node, {})[variant] = tech
        for node, (lo, hi) in h.clamps.items():
            ops.setdefault(node, {})[variant + " range"] = [lo, hi]
    plan_h = variants["plan"]
    assert plan_h is not None
    return {"format": FORMAT, "version": VERSION, "model": src.name, "input_shape": list(src.input_shape),
            **src.info, "kernelfi": __version__, "torch": torch.__version__,
            "files": {k: {"name": v, "sha256": _sha256(folder / v)} for k, v in FILES.items() if k != "manifest"},
            "variants": {v: {"class": VARIANT_CLASSES[v][0], "runs": VARIANT_CLASSES[v][1]} for v in variants},
            "entries": plan_h.entries, "not_exported": plan_h.not_exported,
            "ops": {node: by for node, by in ops.items()}}


def _exec_source(text: str, folder: Path, tag: str) -> Any:
    path = folder / f".{tag}.py"
    path.write_text(text)
    try:
        return _import(path, tag)
    finally:
        path.unlink()


def _import(path: Path, tag: str) -> Any:
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    spec = importlib.util.spec_from_file_location(f"kernelfi_export_{tag}_{digest}", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def load_exported(directory: str | os.PathLike[str], variant: str = "plan",
                  device: str | torch.device = "cpu") -> nn.Module:
    """Load an exported model the way a user would: its own ``model.load`` (no kernelfi code runs
    the model; the weights are safetensors, never unpickled; their sha256 is checked).

    Args:
        directory: an export directory (``export_model``, ``kernelfi export``).
        variant: ``plan``, ``none`` (unhardened), ``full-dmr`` or ``full-tmr``.
        device: where to put it (``cpu``, ``cuda``, ...).

    Returns:
        The model in eval mode without gradients. Loading executes the directory's model.py:
        load exports you made or have read.
    """
    folder = Path(directory)
    if not (folder / FILES["source"]).is_file():
        raise KernelfiError(f"{folder}: not an exported model (no {FILES['source']})")
    mod = _import(folder / FILES["source"], "model")
    try:
        return mod.load(folder, variant, device)
    except (ValueError, FileNotFoundError) as err:
        raise KernelfiError(f"{folder}: {err}") from None


def read_manifest(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """The manifest of an export directory (a one-line error when it is not one)."""
    path = Path(directory) / FILES["manifest"]
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise KernelfiError(f"{directory}: not an exported model (no {FILES['manifest']})") from None
    except json.JSONDecodeError as err:
        raise KernelfiError(f"{path}: not JSON ({err})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise KernelfiError(f"{path}: not a kernelfi export manifest")
    return manifest


def _bitwise(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per sample: are the two outputs identical bit for bit?"""
    ia, ib = a.contiguous().view(torch.int32), b.contiguous().view(torch.int32)
    return (ia == ib).reshape(a.shape[0], -1).all(1)


def _check(folder: Path, original: nn.Module, x: torch.Tensor, plan: OpHardening | None) -> dict[str, Any]:
    """Every variant, loaded back from the files, against the original on ``x`` (fault-free)."""
    with torch.no_grad():
        want = original(x)
        out: dict[str, Any] = {"inputs": int(x.shape[0])}
        for variant in VARIANTS:
            got = load_exported(folder, variant)(x)
            same = _bitwise(got, want)
            out[variant] = {"bitwise": bool(same.all()), "inputs_bitwise": int(same.sum()),
                            "max_abs_diff": float((got - want).abs().nan_to_num(float("inf")).max())}
            clamps = variant == "plan" and plan is not None and bool(plan.clamps)
            if not same.all() and not clamps:
                raise KernelfiError(f"export check: the {variant} variant differs from the original on "
                                    f"{int((~same).sum())} of {x.shape[0]} inputs (max |diff| "
                                    f"{out[variant]['max_abs_diff']:.3g}); nothing written")
    return out
