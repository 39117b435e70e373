"""export (a hardened model as plain PyTorch) and overhead --exported (its native run time)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
import torch

from kernelfi._utils import KernelfiError
from kernelfi.cli.app import cli
from kernelfi.cli.common import model_options
from kernelfi.harden.export import export_model, model_inputs, read_manifest, time_exported

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
    x = model_inputs(model, check, data, input_shape)
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


def overhead_exported(directory: str, reps: int, lanes: int, device: str, clock: str,
                      json_out: str | None = None) -> None:
    """``kernelfi overhead --exported DIR``: the export's variants against the original, natively."""
    manifest = read_manifest(directory)
    model = manifest.get("registry") or manifest.get("model_file") or manifest["model"]
    x = model_inputs(model, lanes, None, tuple(manifest["input_shape"]))
    devices = ["cpu"] if device == "cpu" else ["cuda"] if device == "cuda" else \
        ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    click.echo(f"{directory} ({manifest['model']}): plain PyTorch, {x.shape[0]} inputs per forward, {reps} "
               "interleaved repetitions")
    results: list[dict[str, Any]] = []
    for dev in devices:
        res = time_exported(directory, x, reps=reps, device=dev, clock=clock if dev == "cpu" else "wall")
        results.append(res.to_dict())
        for line in res.lines():
            click.echo(line)
    if json_out is not None:
        try:
            Path(json_out).write_text(json.dumps(results, indent=1) + "\n")
        except OSError as err:
            raise KernelfiError(f"{json_out}: cannot write the timings: {err.strerror or err}") from None
        click.echo(f"timings written to {json_out} (kernelfi report --native reads it)")
