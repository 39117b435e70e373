"""plan-samples, report."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from kernelfi._utils import KernelfiError
from kernelfi.analysis import sample_size
from kernelfi.cli.app import cli
from kernelfi.cli.common import tool_errors_exit
from kernelfi.store import Store


@cli.command("plan-samples")
@click.option("--margin", type=float, required=True, help="error margin e, as a fraction (0.01 = ±1%)")
@click.option("--confidence", type=float, default=0.95, show_default=True, help="confidence level")
@click.option("--p", "p", type=float, default=0.5, show_default=True,
              help="expected rate (0.5 is the worst case)")
@click.option("--population", type=int, default=None,
              help="fault-site population N (default: infinite, as for ~10^10 sites)")
def plan_samples_cmd(margin: float, confidence: float, p: float, population: int | None) -> None:
    """Print how many injections reach ±MARGIN at CONFIDENCE (Leveugle et al., DATE 2009)."""
    if not 0.0 < p < 1.0:
        raise KernelfiError(f"--p must be in (0, 1), got {p}")
    if population is not None and population < 1:
        raise KernelfiError(f"--population must be >= 1, got {population}")
    try:
        n = sample_size(margin, confidence, p, population)
    except ValueError as err:
        raise KernelfiError(f"plan-samples: {err}") from None
    click.echo(n)


@cli.command("report")
@click.option("--db", type=click.Path(dir_okay=False), required=True, help="results database")
@click.option("--out", type=click.Path(file_okay=False), required=True, help="output directory")
@click.option("--raw-fit-per-mbit", type=float, default=1000.0, show_default=True,
              help="raw soft-error rate of the register file (IEC 61508: 700-1200 FIT/Mbit)")
@click.option("--fit-budget", type=float, default=10.0, show_default=True, help="FIT budget (ASIL-D: 10)")
@click.option("--margin", type=float, default=0.01, show_default=True,
              help="target ± margin for the sample-size verdicts")
@click.option("--exposed-bits", type=float, default=None,
              help="RF exposed bits for FIT (default: allocated registers x 32 x resident threads)")
@click.option("--native", "native", type=click.Path(dir_okay=False, exists=True), multiple=True,
              help="native timings of an exported model (`kernelfi overhead --exported DIR --json FILE`), "
                   "shown beside the modelled Table 2; repeatable")
def report_cmd(db: str, out: str, raw_fit_per_mbit: float, fit_budget: float, margin: float,
               exposed_bits: float | None, native: tuple[str, ...]) -> None:
    """Write OUT/index.html (self-contained) with figures/ and tables/ for every campaign in DB
    (exit status 3 if the tool failed on some faults: the report lists them first)."""
    from kernelfi.report import ReportOptions, build_report  # matplotlib loads only when asked

    if not 0.0 < margin < 1.0:
        raise KernelfiError(f"--margin must be in (0, 1), got {margin}")
    if raw_fit_per_mbit < 0 or fit_budget < 0 or (exposed_bits is not None and exposed_bits < 0):
        raise KernelfiError("--raw-fit-per-mbit, --fit-budget and --exposed-bits must be >= 0")
    index = build_report(db, out, ReportOptions(raw_fit_per_mbit, fit_budget, margin,
                                                exposed_bits=exposed_bits, native=read_native(native)))
    click.echo(str(index))
    with Store(db, create=False, readonly=True) as store:
        errors = {c.id: store.tool_errors(c.id) for c in store.campaigns() if c.n_tool_errors}
    if errors:
        tool_errors_exit(errors)


def read_native(paths: tuple[str, ...]) -> tuple[dict[str, Any], ...]:
    """The timing records of ``--native`` files (a record or a list of them each), checked."""
    from kernelfi.report.hardening import check_native

    out = []
    for path in paths:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise KernelfiError(f"{path}: cannot read the native timings: {err}") from None
        for record in data if isinstance(data, list) else [data]:
            if not isinstance(record, dict):
                raise KernelfiError(f"{path}: not a native timing of an export (a JSON object or a list of them)")
            out.append(dict(check_native(record, path)))
    return tuple(out)
