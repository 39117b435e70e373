"""campaign, summary, replay."""
from __future__ import annotations

import json
import time

import click
from click.core import ParameterSource

from typing import Any

from kernelfi._utils import KernelfiError
from kernelfi.analysis import summarise
from kernelfi.campaign import CampaignConfig, ModelSpec, replay, run_campaign
from kernelfi.cli.app import cli
from kernelfi.cli.common import (
    TOOL_ERROR_EXIT, data_options, model_options, note, outcome_counts, prep_options, tool_errors_exit,
)
from kernelfi.store import InjectionRecord, Store, ToolErrorRecord
from kernelfi.types import OUTCOME_LABELS, OUTCOMES, BitModel, Mode


class _Bar:
    """tqdm progress with injections/s, ETA and running counts per outcome, drawn at its first
    update (so that argument errors and notes come before any bar)."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.bar: Any = None
        self.last = 0

    def __call__(self, done: int, counts: dict[str, int]) -> None:
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=self.total, unit="inj", dynamic_ncols=True, mininterval=0.5)
        self.bar.update(done - self.last)
        self.last = done
        text = ", ".join(f"{OUTCOME_LABELS[o]} {counts.get(o, 0)}" for o in OUTCOMES)
        if counts.get("tool_error"):
            text += f", TOOL ERRORS {counts['tool_error']}"
        self.bar.set_postfix_str(text)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


@cli.command("campaign")
@model_options
@click.option("--mode", type=click.Choice([m.value for m in Mode]), required=True,
              help="SASSIFI injection mode: rf = a register-file bit, iov = an instruction's output value, "
                   "ioa = an instruction's output address (docs/method.md)")
@click.option("--bit-model", type=click.Choice([b.value for b in BitModel]), default="single", show_default=True,
              help="how the chosen value is corrupted: single or double (adjacent) bit flip, random value, zero; "
                   "none injects nothing (a control)")
@click.option("--warp", is_flag=True, help="the same corruption in all 32 threads of the warp")
@click.option("-n", "n", type=int, required=True, help="number of injections")
@click.option("--seed", type=int, default=0, show_default=True,
              help="campaign seed: every injection's site and bits follow from (seed, injection id)")
@click.option("--db", type=click.Path(dir_okay=False), required=True, help="results database (created if missing)")
@data_options
@click.option("--scope", type=click.Choice(["all", "sassifi"]), default="all", show_default=True,
              help="kernels injected into: all, or only those SASSIFI can instrument (not cuBLAS's gemm)")
@click.option("--select", "selection", type=click.Choice(["uniform", "kernel", "layer"]), default="uniform",
              show_default=True,
              help="fault-site selection: uniform over all dynamic instructions (SASSIFI's), or the same number "
                   "of injections per kernel or per layer (rates reweighted to the uniform population)")
@click.option("--workers", type=int, default=0, show_default=True,
              help="worker processes, each on one thread (0: one per CPU, as many as the memory holds; "
                   "the rows do not depend on it); "
                   "with --executor ray: Ray actors (default one per CPU of the cluster)")
@click.option("--executor", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="where injections run: this machine, or a Ray cluster (pip install 'kernelfi[ray]')")
@click.option("--address", default=None, help="Ray cluster address (auto, HOST:PORT, ray://HOST:10001)")
@click.option("--batch", type=int, default=0, show_default=True,
              help="faults per batched run (0: as many as fit 1 GiB of lanes, up to 256)")
@click.option("--hardening", type=click.Path(dir_okay=False), default=None,
              help="hardening plan (JSON, from kernelfi harden): inject into the hardened model")
@click.option("--resume", is_flag=True, help="accepted for clarity: re-running the same command always resumes")
@click.option("--quiet", is_flag=True, help="no progress bar (notes and the result line still print)")
def campaign_cmd(model: str, weights: str | None, num_classes: int | None, seed_weights: int,
                 input_shape: tuple[int, int, int] | None, mode: str,
                 bit_model: str, warp: bool, n: int, seed: int, db: str, data: str | None, inputs: int | None,
                 select_inputs: str, fit: str | None, resize: int | None, crop: tuple[int, int] | None,
                 mean: tuple[float, ...] | None, std: tuple[float, ...] | None, no_normalize: bool, scope: str,
                 selection: str, workers: int, executor: str, address: str | None, batch: int, hardening: str | None,
                 resume: bool, quiet: bool) -> None:
    """Run (or resume) a fault-injection campaign on MODEL (a registered name, see
    `kernelfi models`, a Darknet .cfg path, or a model file PATH.py:FACTORY)."""
    execute = None
    if executor == "ray":
        from kernelfi.distributed import ray_executor

        explicit = click.get_current_context().get_parameter_source("workers") != ParameterSource.DEFAULT
        execute = ray_executor(address, workers=workers if explicit else None)
    elif address is not None:
        raise KernelfiError("--address needs --executor ray")
    cfg = CampaignConfig(model=ModelSpec(model, weights, num_classes, seed_weights, hardening, input_shape), mode=mode,
                         bit_model=bit_model, n=n, seed=seed, warp=warp, data=data, inputs=inputs, scope=scope,
                         selection=selection, batch=batch, workers=workers,
                         prep=prep_options(fit, resize, crop, mean, std, no_normalize), select_inputs=select_inputs)
    bar = None if quiet else _Bar(n)
    t0 = time.perf_counter()
    try:
        cid = run_campaign(cfg, db, progress=bar, execute=execute, notify=note)
    finally:
        if bar is not None:
            bar.close()
    with Store(db, create=False, readonly=True) as store:
        counts = store.outcome_counts(cid)
        errors = store.tool_errors(cid)
    secs = time.perf_counter() - t0
    click.echo(f"campaign {cid} in {db}: {outcome_counts(counts)} ({secs:.1f}s)")
    if errors:
        tool_errors_exit({cid: errors})


@cli.command("summary")
@click.option("--db", type=click.Path(dir_okay=False), required=True, help="results database (read, never written)")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="text for reading; json with the outcome keys masked, due, sdc_no_malfunction, "
                   "sdc_light_malfunction, sdc_malfunction")
def summary_cmd(db: str, fmt: str) -> None:
    """Model, weights, data, golden accuracy and outcome counts of every campaign in a results
    database (exit status 3 if the tool failed on some faults: their tool errors are listed, and
    counted in no rate)."""
    out, errors = summarise(db)
    if fmt == "json":
        click.echo(json.dumps({"campaigns": [c for c, _ in out]}, indent=1))
    else:
        for c, acc in out:
            hard = " hardened" if c["hardened"] else ""
            errs = f"; TOOL ERRORS {c['tool_errors']} (not in the rates)" if c["tool_errors"] else ""
            click.echo(f"#{c['id']} {c['model']}{hard} {c['mode']}/{c['bit_model']}{'/warp' if c['warp'] else ''} "
                       f"scope={c['scope']} n={c['n']}/{c['n_planned']}: {outcome_counts(c['outcomes'], c['n'])}{errs}")
            click.echo(f"    weights: {c['weights']['source']} (sha256 {c['weights']['sha256'][:12]})")
            click.echo(f"    data: {c['data']['source']}: {c['data']['n_inputs']} inputs, {c['data']['inputs']}")
            click.echo(f"    {acc.describe() if acc is not None else 'golden accuracy: the inputs carry no labels'}")
    if errors:
        tool_errors_exit(errors)


@cli.command("replay")
@click.option("--db", type=click.Path(dir_okay=False), required=True, help="results database (read, never written)")
@click.option("--id", "injection", type=int, required=True, help="injection id (0 .. n-1 of its campaign)")
@click.option("--campaign", type=int, default=None, help="campaign id (needed when the database holds several)")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="text for reading; json with the stored and the replayed row")
def replay_cmd(db: str, injection: int, campaign: int | None, fmt: str) -> None:
    """Re-execute one stored injection and compare it with its row (exit status 1 if they
    differ, 3 if the tool fails on the fault)."""
    stored, again = replay(db, injection, campaign)
    same = stored == again
    if fmt == "json":
        from dataclasses import asdict

        click.echo(json.dumps({"stored": asdict(stored), "replayed": asdict(again), "match": same}, indent=1,
                              default=str))
    elif isinstance(again, ToolErrorRecord):
        click.echo(f"injection {again.id}: {again.mode}/{again.bit_model} input {again.input_id}, launch "
                   f"{again.launch}, thread {again.thread}, slot {again.slot}, iteration {again.iteration}, "
                   f"register {again.register}, bits {list(again.bits)}")
        click.echo(f"  the tool failed on it: {again.error}")
        click.echo(again.traceback.rstrip())
    else:
        f = again
        click.echo(f"injection {f.id}: {f.mode}/{f.bit_model}{'/warp' if f.warp else ''} input {f.input_id}")
        click.echo(f"  site: launch {f.launch} {f.launch_name} (layer {f.layer} {f.layer_type}), group {f.grp}, "
                   f"tag {f.tag}, thread {f.thread}, slot {f.slot}, iteration {f.iteration}, register {f.register}")
        click.echo(f"  fault: bits {list(f.bits)} value {f.value}; element {f.element}: {f.original} -> {f.corrupted}")
        click.echo(f"  outcome: {OUTCOME_LABELS[f.outcome]} flags {list(f.flags)} top1 {f.golden_top1} -> {f.faulty_top1}")
        for p in f.propagation:
            click.echo(f"    layer {p.layer}: {p.corrupted}/{p.numel} corrupted, max abs {p.max_abs:.3g}, "
                       f"max rel {p.max_rel:.3g}")
        if isinstance(stored, ToolErrorRecord):
            click.echo(f"  stored as a tool error ({stored.error}, kernelfi {stored.tool_version}); it runs now: "
                       "resume the campaign to store its row")
        else:
            click.echo("  matches the stored row" if same else "  DIFFERS from the stored row")
    if isinstance(again, ToolErrorRecord):
        raise SystemExit(TOOL_ERROR_EXIT)
    if not same and isinstance(stored, InjectionRecord):
        raise SystemExit(1)
