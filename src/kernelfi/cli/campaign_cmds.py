"""campaign, summary, replay."""
from __future__ import annotations

import json
import time

import click
from click.core import ParameterSource

from kernelfi._utils import KernelfiError
from kernelfi.campaign import CampaignConfig, ModelSpec, replay, run_campaign
from kernelfi.cli.app import cli
from kernelfi.store import Store
from kernelfi.types import OUTCOMES


class _Bar:
    """tqdm progress with injections/s, ETA and running counts per outcome."""

    def __init__(self, total: int) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=total, unit="inj", dynamic_ncols=True, mininterval=0.5)
        self.last = 0

    def __call__(self, done: int, counts: dict[str, int]) -> None:
        self.bar.update(done - self.last)
        self.last = done
        short = {"masked": "M", "due": "DUE", "sdc_no_malfunction": "NoMal", "sdc_light_malfunction": "Light",
                 "sdc_malfunction": "Mal"}
        self.bar.set_postfix_str(" ".join(f"{short[o]}={counts.get(o, 0)}" for o in OUTCOMES))

    def close(self) -> None:
        self.bar.close()


@cli.command("campaign")
@click.argument("model")
@click.option("--mode", type=click.Choice(["rf", "iov", "ioa"]), required=True)
@click.option("--bit-model", type=click.Choice(["none", "single", "double", "random", "zero"]), default="single",
              show_default=True)
@click.option("--warp", is_flag=True, help="the same corruption in all 32 threads of the warp")
@click.option("-n", "n", type=int, required=True, help="number of injections")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--db", type=click.Path(dir_okay=False), required=True, help="results database (created if missing)")
@click.option("--weights", type=click.Path(), default=None)
@click.option("--num-classes", type=int, default=None)
@click.option("--seed-weights", type=int, default=0, show_default=True)
@click.option("--data", default=None, help="digits, random, an ImageFolder directory or an .npz file")
@click.option("--inputs", type=int, default=None, help="use the first N inputs of the data")
@click.option("--scope", type=click.Choice(["all", "sassifi"]), default="all", show_default=True)
@click.option("--select", "selection", type=click.Choice(["uniform", "kernel", "layer"]), default="uniform",
              show_default=True)
@click.option("--workers", type=int, default=0, show_default=True,
              help="worker processes, each on one thread (0: one per CPU, as many as the memory holds; "
                   "the rows do not depend on it); "
                   "with --executor ray: Ray actors (default one per CPU of the cluster)")
@click.option("--executor", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="where injections run: this machine, or a Ray cluster (pip install 'kernelfi[ray]')")
@click.option("--address", default=None, help="Ray cluster address (auto, HOST:PORT, ray://HOST:10001)")
@click.option("--batch", type=int, default=0, show_default=True,
              help="faults per batched run (0: as many as fit 1 GiB of lanes, up to 256)")
@click.option("--hardening", type=click.Path(dir_okay=False), default=None, help="hardening plan (JSON)")
@click.option("--resume", is_flag=True, help="accepted for clarity: re-running the same command always resumes")
@click.option("--quiet", is_flag=True)
def campaign_cmd(model: str, mode: str, bit_model: str, warp: bool, n: int, seed: int, db: str, weights: str | None,
                 num_classes: int | None, seed_weights: int, data: str | None, inputs: int | None, scope: str,
                 selection: str, workers: int, executor: str, address: str | None, batch: int, hardening: str | None,
                 resume: bool, quiet: bool) -> None:
    """Run (or resume) a fault-injection campaign on MODEL."""
    execute = None
    if executor == "ray":
        from kernelfi.distributed import ray_executor

        explicit = click.get_current_context().get_parameter_source("workers") != ParameterSource.DEFAULT
        execute = ray_executor(address, workers=workers if explicit else None)
    elif address is not None:
        raise KernelfiError("--address needs --executor ray")
    cfg = CampaignConfig(model=ModelSpec(model, weights, num_classes, seed_weights, hardening), mode=mode,
                         bit_model=bit_model, n=n, seed=seed, warp=warp, data=data, inputs=inputs, scope=scope,
                         selection=selection, batch=batch, workers=workers)
    bar = None if quiet else _Bar(n)
    t0 = time.perf_counter()
    try:
        cid = run_campaign(cfg, db, progress=bar, execute=execute)
    finally:
        if bar is not None:
            bar.close()
    with Store(db, create=False) as store:
        counts = store.outcome_counts(cid)
    secs = time.perf_counter() - t0
    click.echo(f"campaign {cid} in {db}: " + ", ".join(f"{k}={v}" for k, v in counts.items()) + f" ({secs:.1f}s)")


@cli.command("summary")
@click.option("--db", type=click.Path(dir_okay=False), required=True)
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
def summary_cmd(db: str, fmt: str) -> None:
    """Outcome counts of every campaign in a results database."""
    with Store(db, create=False) as store:
        out = []
        for row in store.campaigns():
            m = row.meta
            out.append({"id": row.id, "model": m.model, "mode": m.mode, "bit_model": m.bit_model, "warp": m.warp,
                        "scope": m.scope, "selection": m.selection, "seed": m.seed, "n": row.n_done,
                        "n_planned": m.n_planned, "hardened": m.hardening is not None,
                        "outcomes": {o: store.outcome_counts(row.id).get(o, 0) for o in OUTCOMES}})
    if fmt == "json":
        click.echo(json.dumps({"campaigns": out}, indent=1))
        return
    for c in out:
        n = max(c["n"], 1)
        parts = ", ".join(f"{k} {v} ({100 * v / n:.1f}%)" for k, v in c["outcomes"].items())
        hard = " hardened" if c["hardened"] else ""
        click.echo(f"#{c['id']} {c['model']}{hard} {c['mode']}/{c['bit_model']}{'/warp' if c['warp'] else ''} "
                   f"scope={c['scope']} n={c['n']}/{c['n_planned']}: {parts}")


@cli.command("replay")
@click.option("--db", type=click.Path(dir_okay=False), required=True)
@click.option("--id", "injection", type=int, required=True)
@click.option("--campaign", type=int, default=None)
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
def replay_cmd(db: str, injection: int, campaign: int | None, fmt: str) -> None:
    """Re-execute one stored injection and compare it with its row."""
    stored, again = replay(db, injection, campaign)
    same = stored == again
    if fmt == "json":
        from dataclasses import asdict

        click.echo(json.dumps({"stored": asdict(stored), "replayed": asdict(again), "match": same}, indent=1,
                              default=str))
    else:
        f = again
        click.echo(f"injection {f.id}: {f.mode}/{f.bit_model}{'/warp' if f.warp else ''} input {f.input_id}")
        click.echo(f"  site: launch {f.launch} {f.launch_name} (layer {f.layer} {f.layer_type}), group {f.grp}, "
                   f"tag {f.tag}, thread {f.thread}, slot {f.slot}, iteration {f.iteration}, register {f.register}")
        click.echo(f"  fault: bits {list(f.bits)} value {f.value}; element {f.element}: {f.original} -> {f.corrupted}")
        click.echo(f"  outcome: {f.outcome} flags {list(f.flags)} top1 {f.golden_top1} -> {f.faulty_top1}")
        for p in f.propagation:
            click.echo(f"    layer {p.layer}: {p.corrupted}/{p.numel} corrupted, max abs {p.max_abs:.3g}, "
                       f"max rel {p.max_rel:.3g}")
        click.echo("  matches the stored row" if same else "  DIFFERS from the stored row")
    if not same:
        raise SystemExit(1)
