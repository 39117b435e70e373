"""demo: the closed loop on the embedded model."""
from __future__ import annotations

import click

from kernelfi.cli.app import cli
from kernelfi.demo import DemoConfig, run_demo
from kernelfi.harden import DEFAULT_COST


@cli.command("demo")
@click.option("--out", default="kernelfi-demo", show_default=True, help="folder for the database, plan and report")
@click.option("-n", "n", type=int, default=1000, show_default=True, help="injections per campaign")
@click.option("--seed", type=int, default=1, show_default=True, help="seed of every campaign")
@click.option("--budget", default="5%", show_default=True, help="run-time overhead budget of the hardening plan")
@click.option("--model", default="digits-alexnet", show_default=True,
              help="a model with embedded weights and data (digits-alexnet or digits-resnet)")
@click.option("--cost", default=DEFAULT_COST, show_default=True,
              help="how the plan prices a protection: gpu:NAME (modelled GPU time, `kernelfi gpus`) or measured")
def demo_cmd(out: str, n: int, seed: int, budget: str, model: str, cost: str) -> None:
    """Baseline campaigns, a hardening plan, verification campaigns, overhead and the report."""
    run_demo(DemoConfig(out=out, model=model, n=n, seed=seed, budget=budget, cost=cost), log=click.echo)
