"""harden (plan selective hardening from a results DB) and overhead (measured run time)."""
from __future__ import annotations

import click
import torch

from kernelfi.campaign.harden_planner import plan_hardening
from kernelfi.campaign.session import ModelSpec, inputs_tensor, open_session, session_inputs
from kernelfi.cli.app import cli
from kernelfi.harden import Plan, by_kernel, comparison_programs, time_programs
from kernelfi.lowering import Program


@cli.command("harden")
@click.option("--db", type=click.Path(dir_okay=False, exists=True), required=True, help="results database")
@click.option("--budget", default="5%", show_default=True, help="run-time overhead budget (5% or 0.05)")
@click.option("--techniques", default="tmr,dmr,abft,range", show_default=True,
              help="comma-separated subset of tmr, dmr, abft, range")
@click.option("--campaign", "campaigns", type=int, multiple=True,
              help="plan from these campaigns (default: every unhardened campaign of the DB's model)")
@click.option("--out", type=click.Path(dir_okay=False), required=True, help="plan file to write (JSON)")
@click.option("--reps", type=int, default=10, show_default=True, help="timing repetitions (medians)")
@click.option("--lanes", type=int, default=32, show_default=True, help="inputs per timed run")
@click.option("--light-weight", type=float, default=0.01, show_default=True,
              help="worth of one Light-Malfunction relative to one Malfunction")
@click.option("--clock", type=click.Choice(["cpu", "wall"]), default="cpu", show_default=True,
              help="cpu: thread CPU time, one intra-op thread (robust on a shared machine); wall: wall-clock")
def harden_cmd(db: str, budget: str, techniques: str, campaigns: tuple[int, ...], out: str, reps: int, lanes: int,
               light_weight: float, clock: str) -> None:
    """Choose what to protect, from campaign results and measured time, within an overhead budget."""
    from kernelfi.analysis import outcome_table

    plan = plan_hardening(db, budget, outcome_table, techniques.split(","), campaigns or None, reps=reps,
                          lanes=lanes, light_weight=light_weight, clock=clock, log=lambda s: click.echo(s, err=True))
    plan.save(out)
    e = plan.expected
    for p in plan.protect:
        est = p.extra.get("estimate", {})
        click.echo(f"  {p.technique:5s} {p.target} {p.name}: {-100 * est.get('malfunction_removed', 0):+.3f}% "
                   f"Malfunction, {-100 * est.get('light_removed', 0):+.3f}% Light, "
                   f"+{100 * est.get('overhead', 0):.2f}% time")
    click.echo(f"plan {out}: {len(plan.protect)} protections; Malfunction {100 * e['malfunction_before']:.2f}% -> "
               f"{100 * e['malfunction_after']:.3f}%, Light {100 * e['light_before']:.2f}% -> "
               f"{100 * e['light_after']:.3f}%; overhead {100 * e['overhead']:.2f}% estimated, "
               f"{100 * e['overhead_measured']:.2f}% measured (budget {100 * (plan.budget or 0):.1f}%)")


def _table(programs: dict[str, Program], timing: dict, device: str) -> None:
    """Per kernel type and in total: milliseconds and the overhead over the unhardened run."""
    per = {k: by_kernel(programs[k].trace, t) for k, t in timing.items()}
    labels = list(programs)
    kernels = sorted({k for d in per.values() for k in d}, key=lambda k: -per["unhardened"].get(k, 0.0))
    head = f"{'kernel (' + device + ')':24s}" + "".join(f"{lab:>22s}" for lab in labels)
    click.echo(head)

    def row(name: str, vals: dict[str, float]) -> str:
        base = vals["unhardened"]
        cells = []
        for lab in labels:
            v = vals[lab]
            pct = f" ({100 * (v / base - 1):+.1f}%)" if lab != "unhardened" and base > 0 else ""
            cells.append(f"{1000 * v:10.3f} ms{pct:>9s}")
        return f"{name:24s}" + "".join(f"{c:>22s}" for c in cells)

    for k in kernels:
        click.echo(row(k, {lab: per[lab].get(k, 0.0) for lab in labels}))
    click.echo(row("whole model", {lab: timing[lab].total for lab in labels}))


@cli.command("overhead")
@click.argument("model")
@click.option("--hardening", type=click.Path(dir_okay=False, exists=True), default=None, help="hardening plan (JSON)")
@click.option("--reps", type=int, default=20, show_default=True, help="repetitions (medians)")
@click.option("--weights", type=click.Path(), default=None)
@click.option("--num-classes", type=int, default=None)
@click.option("--seed-weights", type=int, default=0, show_default=True)
@click.option("--lanes", type=int, default=32, show_default=True, help="inputs per timed run")
@click.option("--explicit", is_flag=True, help="run im2col and gemm as separate kernels (no fused convolution)")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
              help="auto: CPU, and CUDA too when available")
@click.option("--clock", type=click.Choice(["wall", "cpu"]), default="wall", show_default=True,
              help="CPU timing: wall-clock, or thread CPU time with one intra-op thread (CUDA: events)")
def overhead_cmd(model: str, hardening: str | None, reps: int, weights: str | None, num_classes: int | None,
                 seed_weights: int, lanes: int, explicit: bool, device: str, clock: str) -> None:
    """Wall-clock of MODEL unhardened, with a plan, full DMR and full TMR (medians, one run)."""
    session = open_session(ModelSpec(model, weights, num_classes, seed_weights))
    base = session.program
    x = inputs_tensor(session_inputs(session, None, lanes))
    programs = comparison_programs(base, None if hardening is None else Plan.load(hardening))
    devices = ["cpu"] if device == "cpu" else ["cuda"] if device == "cuda" else \
        ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    click.echo(f"{model}: {x.shape[0]} inputs per run, {reps} repetitions, medians; "
               f"{'explicit kernels' if explicit else 'im2col+gemm fused (charged to gemm)'}; "
               "conditional re-executions not run (fault-free)")
    for dev in devices:
        timing = time_programs(programs, x, reps=reps, fast=not explicit, device=dev, clock=clock)
        _table(programs, timing, dev if dev == "cuda" else f"cpu, {clock}")
        base_t = timing["unhardened"].total
        click.echo("overhead (medians): " + ", ".join(f"{lab} {100 * (t.total / base_t - 1):+.2f}%"
                                                      for lab, t in timing.items() if lab != "unhardened"))
        best = timing["unhardened"].total_min
        click.echo("overhead (fastest runs): " + ", ".join(f"{lab} {100 * (t.total_min / best - 1):+.2f}%"
                                                           for lab, t in timing.items() if lab != "unhardened"))
