"""export (a hardened model as plain PyTorch) and overhead --exported (its native run time)."""
from __future__ import annotations

import click
import torch

from kernelfi.cli.app import cli
from kernelfi.cli.common import model_options
from kernelfi.data import load_inputs
from kernelfi.harden.export import LABELS, export_model, read_manifest, time_exported
from kernelfi.models import get_model_info

_TITLES = {"original": "original model", "none": "export, no hardening", "plan": "plan",
           "full-dmr": "full DMR", "full-tmr": "full TMR"}


def _inputs(model: str, data: str | None, n: int, input_shape: tuple[int, int, int] | None = None) -> torch.Tensor:
    info = get_model_info(model, input_shape)
    return load_inputs(data if data is not None else (info.default_data or "random"), info, n).x.to(torch.float32)


@cli.command("export")
@model_options
@click.option("--hardening", type=click.Path(dir_okay=False, exists=True), required=True,
              help="hardening plan (JSON) the exported model implements")
@click.option("--out", type=click.Path(file_okay=False), required=True,
              help="directory to write (a previous export there is replaced, anything else refused)")
@click.option("--check", type=click.IntRange(1), default=16, show_default=True,
              help="inputs of the data on which every variant is checked against the original")
@click.option("--data", default=None, help="data of the check inputs (default: the model's own)")
def export_cmd(model: str, weights: str | None, num_classes: int | None, seed_weights: int,
               input_shape: tuple[int, int, int] | None, hardening: str, out: str, check: int, data: str | None) -> None:
    """Write MODEL hardened by a plan as plain PyTorch: model.py, weights.safetensors, manifest.json."""
    x = _inputs(model, data, check, input_shape)
    exp = export_model(model, hardening, out, weights=weights, num_classes=num_classes, seed=seed_weights,
                       input_shape=input_shape, check_inputs=x)
    m = exp.manifest
    for entry in m["entries"]:
        ops = ", ".join(f"{op['module']} ({op['op']}): {op['applied']}" for op in entry["ops"]) or "no op"
        click.echo(f"  entry {entry['entry']} {entry['technique']} {entry['target']} {entry['name']} -> {ops}")
    for item in m["not_exported"]:
        click.echo(f"  not exported: {item['launch']} ({item['reason']})")
    c = m["check"]
    click.echo(f"{out}: {m['model']} exported; on {c['inputs']} inputs, against the original: "
               + ", ".join(f"{v} {'bitwise' if c[v]['bitwise'] else str(c[v]['inputs_bitwise']) + ' bitwise'}"
                           + ("" if c[v]["bitwise"] else f" (clamped elsewhere, max |diff| {c[v]['max_abs_diff']:.3g})")
                           for v in ("none", "plan", "full-dmr", "full-tmr")))


def overhead_exported(directory: str, reps: int, lanes: int, device: str, clock: str) -> None:
    """``kernelfi overhead --exported DIR``: the export's variants against the original, natively."""
    manifest = read_manifest(directory)
    model = manifest.get("registry") or manifest.get("model_file") or manifest["model"]
    x = _inputs(model, None, lanes, tuple(manifest["input_shape"]))
    devices = ["cpu"] if device == "cpu" else ["cuda"] if device == "cuda" else \
        ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    click.echo(f"{directory} ({manifest['model']}): plain PyTorch, {x.shape[0]} inputs per forward, {reps} "
               "interleaved repetitions")
    for dev in devices:
        res = time_exported(directory, x, reps=reps, device=dev, clock=clock if dev == "cpu" else "wall")
        click.echo(f"{'variant (' + res.device + ', ' + res.clock + ')':28s}{'median ms':>12s}{'fastest ms':>12s}"
                   f"{'overhead':>11s}{'(fastest)':>11s}")
        for label in LABELS:
            pct = "" if label == "original" else f"{100 * res.overhead(label):+10.1f}%{100 * res.overhead(label, True):+10.1f}%"
            click.echo(f"{_TITLES[label]:28s}{1000 * res.median_s[label]:12.3f}{1000 * res.min_s[label]:12.3f}{pct}")
