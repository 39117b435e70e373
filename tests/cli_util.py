"""CLI test helpers: run a command in-process with stderr apart, and check a one-line error."""
from __future__ import annotations

from click.testing import CliRunner, Result

from kernelfi.cli import cli


def invoke(*args: str) -> Result:
    """``kernelfi ARGS`` in this process; stdout and stderr kept apart (click 8.2's default,
    an option before)."""
    try:
        runner = CliRunner(mix_stderr=False)  # type: ignore[call-arg]
    except TypeError:
        runner = CliRunner()
    return runner.invoke(cli, list(args))


def one_line(r: Result, *needles: str) -> str:
    """A user error: exit 2, exactly one ``kernelfi: error:`` line on stderr holding every
    needle, no traceback (an exception escaping the command fails here)."""
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    assert r.exit_code == 2, (r.exit_code, r.output)
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("kernelfi: error: "), r.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]
