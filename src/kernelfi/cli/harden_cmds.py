"""harden (plan selective hardening from a results DB), gpus (the GPU time model's GPUs) and
overhead (the AlexNet study's Table 2: measured here, or modelled on a GPU)."""
from __future__ import annotations

import click
import torch

from kernelfi._utils import KernelfiError
from kernelfi.campaign.harden_planner import plan_hardening
from kernelfi.campaign.session import ModelSpec, Session, inputs_tensor, open_session, session_inputs
from kernelfi.cli.app import cli
from kernelfi.cli.common import WEIGHTS_HELP, input_shape_option
from kernelfi.cli.export_cmd import overhead_exported
from kernelfi.gputime import GpuSpec, get_gpu, gpus
from kernelfi.harden import (
    DEFAULT_COST, OverheadTable, Plan, comparison_programs, modelled_overhead, overhead_table, time_programs,
)
from kernelfi.lowering import Program
from kernelfi.types import OUTCOME_LABELS

MAL, LIGHT = OUTCOME_LABELS["sdc_malfunction"], OUTCOME_LABELS["sdc_light_malfunction"]


@cli.command("harden")
@click.option("--db", type=click.Path(dir_okay=False, exists=True), required=True, help="results database")
@click.option("--budget", default="5%", show_default=True, help="run-time overhead budget (5% or 0.05)")
@click.option("--techniques", default="tmr,dmr,abft,range", show_default=True,
              help="comma-separated subset of tmr, dmr, abft, range")
@click.option("--campaign", "campaigns", type=int, multiple=True,
              help="plan from these campaigns (default: every unhardened campaign of the DB's model)")
@click.option("--out", type=click.Path(dir_okay=False), required=True, help="plan file to write (JSON)")
@click.option("--cost", default=DEFAULT_COST, show_default=True,
              help="what a protection costs: gpu:NAME (modelled GPU time, `kernelfi gpus` lists the GPUs; the "
                   "same plan on every run and machine) or measured (this machine's time of the simulator)")
@click.option("--explain", is_flag=True, help="print every candidate weighed, its expected gain, cost and verdict")
@click.option("--reps", type=int, default=10, show_default=True, help="timing repetitions (medians; --cost measured)")
@click.option("--lanes", type=int, default=32, show_default=True, help="inputs per timed run (--cost measured)")
@click.option("--light-weight", type=float, default=0.01, show_default=True,
              help="worth of one SDC Light-Malfunction relative to one SDC Malfunction")
@click.option("--clock", type=click.Choice(["cpu", "wall"]), default="cpu", show_default=True,
              help="--cost measured: cpu (thread CPU time, one intra-op thread: robust on a shared machine) or "
                   "wall (wall-clock)")
def harden_cmd(db: str, budget: str, techniques: str, campaigns: tuple[int, ...], out: str, cost: str, explain: bool,
               reps: int, lanes: int, light_weight: float, clock: str) -> None:
    """Choose what to protect, from campaign results and its cost, within an overhead budget."""
    from kernelfi.analysis import outcome_table

    plan = plan_hardening(db, budget, outcome_table, techniques.split(","), campaigns or None, reps=reps,
                          lanes=lanes, light_weight=light_weight, clock=clock, cost=cost,
                          log=lambda s: click.echo(s, err=True))
    plan.save(out)
    e = plan.expected
    for p in plan.protect:
        est = p.extra.get("estimate", {})
        click.echo(f"  {p.technique:5s} {p.target} {p.name}: {-100 * est.get('malfunction_removed', 0):+.3f}% "
                   f"{MAL}, {-100 * est.get('light_removed', 0):+.3f}% {LIGHT}, "
                   f"+{100 * est.get('overhead', 0):.2f}% time")
    planner = plan.extra.get("planner", {})
    word, whole = ("modelled on the " + str(planner.get("gpu")), e.get("overhead_modelled")) \
        if "overhead_modelled" in e else ("measured", e.get("overhead_measured"))
    click.echo(f"plan {out}: {len(plan.protect)} protections; {MAL} {100 * e['malfunction_before']:.2f}% -> "
               f"{100 * e['malfunction_after']:.3f}%, {LIGHT} {100 * e['light_before']:.2f}% -> "
               f"{100 * e['light_after']:.3f}%; overhead {100 * e['overhead']:.2f}% estimated, "
               f"{100 * (whole or 0):.2f}% {word} (budget {100 * (plan.budget or 0):.1f}%)")
    rows = plan.extra.get("explain", [])
    counts = ", ".join(f"{n} {status.replace('_', ' ')}" for status, n in planner.get("candidates", {}).items())
    click.echo(f"weighed {len(rows)} candidates (unit x technique, clamp per layer): {counts}"
               + ("" if explain else "; --explain lists them"))
    if explain:
        click.echo(explain_table(rows))
    elif not plan.protect:   # never an unexplained "0 protections"
        click.echo("nothing was chosen; the candidates with the most expected gain:")
        click.echo(explain_table(rows[:10]))


def explain_table(rows: list[dict]) -> str:
    """The plan's ``explain`` rows as a text table: verdict, candidate, gain (± sd), cost, why."""
    lines = [f"{'verdict':16s} {'technique':9s} {'unit':34s} {MAL + ' removed':>26s} {LIGHT:>22s} "
             f"{'cost':>10s} {'+time':>8s}  why"]
    for r in rows:
        gain = f"{100 * r['malfunction_removed']:.3f}% ±{100 * r['malfunction_removed_sd']:.3f}"
        why = r["reason"] + (f"; dominated by {r['dominated_by']}" if r.get("dominated_by") else "")
        lines.append(f"{r['status']:16s} {r['technique']:9s} {r['name'][:34]:34s} {gain:>26s} "
                     f"{100 * r['light_removed']:21.3f}% {1e6 * r['cost_s']:8.1f}us {100 * r['overhead']:7.2f}%  {why}")
    return "\n".join(lines)


@cli.command("gpus")
def gpus_cmd() -> None:
    """List the GPUs the time model knows (for --cost gpu:NAME and overhead --gpu NAME)."""
    click.echo(f"{'name':10s} {'GPU':24s} {'cc':>4s} {'SMs':>4s} {'clock':>9s} {'DRAM':>11s} {'FP32/clk/SM':>12s} "
               f"{'launch':>8s}")
    for key, g in gpus().items():
        click.echo(f"{key:10s} {g.name:24s} {g.compute_capability:>4s} {g.sms:4d} {g.clock_hz / 1e6:6.0f} MHz "
                   f"{g.dram_bytes_per_s / 1e9:7.1f} GB/s {g.throughput['fp32']:12d} {1e6 * g.launch_s:6.1f}us"
                   + (f"  ({g.note})" if g.note else ""))
    click.echo("Every number and its public source: kernelfi/assets/gpus.json; the model: docs/hardening.md.")


def _table(table: OverheadTable, invocations: bool = False) -> None:
    """Per kernel type and in total: milliseconds and the overhead over the unhardened run."""
    labels = table.labels
    head = f"{'kernel (' + table.device + ')':24s}" + (f"{'invocations':>12s}" if invocations else "")
    click.echo(head + "".join(f"{lab:>22s}" for lab in labels))

    def row(name: str, vals: dict[str, float], count: str) -> str:
        base = vals["unhardened"]
        cells = []
        for lab in labels:
            v = vals[lab]
            pct = f" ({100 * (v / base - 1):+.1f}%)" if lab != "unhardened" and base > 0 else ""
            cells.append(f"{1000 * v:10.4f} ms{pct:>9s}")
        return f"{name:24s}" + (f"{count:>12s}" if invocations else "") + "".join(f"{c:>22s}" for c in cells)

    for k in table.kernels:
        click.echo(row(k, {lab: table.seconds[lab][k] for lab in labels}, str(table.invocations.get(k, 0))))
    click.echo(row("whole model", dict(table.total), "1"))


@cli.command("overhead")
@click.argument("model", required=False)
@click.option("--exported", type=click.Path(file_okay=False, exists=True), default=None,
              help="time an export directory (kernelfi export) natively against the original instead")
@click.option("--hardening", type=click.Path(dir_okay=False, exists=True), default=None, help="hardening plan (JSON)")
@click.option("--gpu", default=None,
              help="model the time on this GPU (`kernelfi gpus`) instead of measuring this machine: the AlexNet "
                   "study's Table 2, the same on every run")
@click.option("--reps", type=int, default=20, show_default=True, help="repetitions (medians)")
@click.option("--weights", type=click.Path(), default=None, help=WEIGHTS_HELP)
@click.option("--num-classes", type=int, default=None, help="classifier width of alexnet/resnet*")
@click.option("--seed-weights", type=int, default=0, show_default=True,
              help="seed of the random weights used when a model has no trained weights")
@click.option("--lanes", type=int, default=32, show_default=True,
              help="inputs per timed run (the model's embedded data, else seeded random inputs: timing does "
                   "not depend on their values)")
@click.option("--explicit", is_flag=True, help="run im2col and gemm as separate kernels (no fused convolution)")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
              help="auto: CPU, and CUDA too when available")
@click.option("--clock", type=click.Choice(["wall", "cpu"]), default="wall", show_default=True,
              help="CPU timing: wall-clock, or thread CPU time with one intra-op thread (CUDA: events)")
@input_shape_option
def overhead_cmd(model: str | None, exported: str | None, hardening: str | None, gpu: str | None, reps: int,
                 weights: str | None, num_classes: int | None, seed_weights: int, lanes: int, explicit: bool,
                 device: str, clock: str, input_shape: tuple[int, int, int] | None) -> None:
    """MODEL unhardened, with a plan, full DMR and full TMR: measured here (medians), or modelled on
    --gpu; or an export directory (--exported) timed natively against its original."""
    if exported is not None:
        return overhead_exported(exported, reps, lanes, device, clock)
    if model is None:
        raise click.UsageError("give MODEL (or --exported DIR)")
    spec = get_gpu(gpu) if gpu is not None else None   # an unknown GPU fails before the model loads
    session = open_session(ModelSpec(model, weights, num_classes, seed_weights, input_shape=input_shape))
    plan = None if hardening is None else Plan.load(hardening)
    if plan is not None and plan.model and plan.model != session.program.trace.model:
        raise KernelfiError(f"{hardening}: the plan is for model '{plan.model}', not '{session.program.trace.model}'")
    if spec is not None:
        _overhead_modelled(session.program, plan, spec)
    else:
        _overhead_measured(session, plan, reps, lanes, explicit, device, clock)


def _overhead_modelled(base: Program, plan: Plan | None, gpu: GpuSpec) -> None:
    """Table 2 in modelled GPU time (docs/hardening.md, "GPU time model")."""
    table = modelled_overhead(base, plan, gpu)
    click.echo(f"{base.trace.model} on the {gpu.name} (modelled: kernelfi.gputime; one inference, kernel by kernel; "
               "conditional re-executions not run)")
    _table(table, invocations=True)
    click.echo("overhead (modelled): " + ", ".join(f"{lab} {100 * table.overhead(lab):+.2f}%"
                                                  for lab in table.labels if lab != "unhardened"))


def _overhead_measured(session: Session, plan: Plan | None, reps: int, lanes: int, explicit: bool, device: str,
                       clock: str) -> None:
    """Table 2 measured on this machine: one interleaved loop, medians (docs/hardening.md §4)."""
    base = session.program
    x = inputs_tensor(session_inputs(session, session.loaded.info.default_data or "random", lanes))
    programs = comparison_programs(base, plan)
    devices = ["cpu"] if device == "cpu" else ["cuda"] if device == "cuda" else \
        ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    click.echo(f"{base.trace.model}: {x.shape[0]} inputs per run, {reps} repetitions, medians; "
               f"{'explicit kernels' if explicit else 'im2col+gemm fused (charged to gemm)'}; "
               "conditional re-executions not run (fault-free)")
    for dev in devices:
        timing = time_programs(programs, x, reps=reps, fast=not explicit, device=dev, clock=clock)
        _table(overhead_table(programs, timing, dev if dev == "cuda" else f"cpu, {clock}"))
        base_t = timing["unhardened"].total
        click.echo("overhead (medians): " + ", ".join(f"{lab} {100 * (t.total / base_t - 1):+.2f}%"
                                                      for lab, t in timing.items() if lab != "unhardened"))
        best = timing["unhardened"].total_min
        click.echo("overhead (fastest runs): " + ", ".join(f"{lab} {100 * (t.total_min / best - 1):+.2f}%"
                                                           for lab, t in timing.items() if lab != "unhardened"))
