"""Subcommands: models, profile (more are registered by sibling modules)."""
from __future__ import annotations

import csv
import io
import json

import click

from kernelfi.cli.app import cli
from kernelfi.campaign.session import ModelSpec, open_session
from kernelfi.cli.common import model_options
from kernelfi.lowering.profile import profile_dict, profile_rows
from kernelfi.models import list_models
from kernelfi.types import GROUPS


@cli.command("models")
def models_cmd() -> None:
    """List the registered models: name, input shape, classes, data, description."""
    for info in list_models():
        shape = "x".join(str(d) for d in info.input_shape)
        data = f"data: {info.default_data}" if info.default_data else "needs --data"
        click.echo(f"{info.name:16s} {shape:10s} {info.num_classes:5d} classes  {data:12s}  {info.description}")


@cli.command("profile")
@model_options
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table", show_default=True,
              help="table for reading, csv or json (per launch: instruction counts per group, threads, share)")
def profile_cmd(model: str, weights: str | None, num_classes: int | None, seed_weights: int,
                input_shape: tuple[int, int, int] | None, fmt: str) -> None:
    """Per-launch and per-layer dynamic instruction profile of MODEL (a registered name, a .cfg path or a
    model file PATH.py:FACTORY)."""
    session = open_session(ModelSpec(model, weights, num_classes, seed_weights, input_shape=input_shape))
    program, loaded = session.program, session.loaded
    if fmt == "json":
        click.echo(json.dumps(profile_dict(program.trace), indent=1))
        return
    rows = profile_rows(program.trace)
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
        click.echo(buf.getvalue(), nl=False)
        return
    if loaded.note:
        click.echo(f"# {loaded.note}", err=True)
    head = f"{'layer':>5} {'type':14s} {'kernel':16s}" + "".join(f"{g:>14s}" for g in GROUPS) + f"{'threads':>11s} {'share':>7s}"
    click.echo(head)
    for r in rows:
        click.echo(f"{r['layer']:5d} {r['type']:14s} {r['kernel']:16s}" + "".join(f"{r[g]:14d}" for g in GROUPS)
                   + f"{r['threads']:11d} {100 * r['share']:6.2f}%")
    d = profile_dict(program.trace)
    click.echo(f"total dynamic instructions: {d['total_instructions']}")
