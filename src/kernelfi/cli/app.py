"""The ``kernelfi`` click group: every subcommand registers on ``cli``; user errors become one line.

Every user error is a ``KernelfiError``: printed as one line ``kernelfi: error: ...`` on stderr
with exit status 2; nothing already stored is touched. A ``KernelfiWarning`` (a cfg quirk
Darknet tolerates) is one line ``kernelfi: warning: ...`` on stderr.
"""
from __future__ import annotations

import warnings

import click

from kernelfi.version import __version__
from kernelfi._utils import KernelfiError, KernelfiWarning, one_line


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:  # type: ignore[no-untyped-def]
    """``warnings.showwarning`` for the CLI: a KernelfiWarning is one line on stderr."""
    if issubclass(category, KernelfiWarning):
        click.echo(f"kernelfi: warning: {one_line(str(message))}", err=True)
    else:
        _PLAIN_SHOW(message, category, filename, lineno, file, line)


_PLAIN_SHOW = warnings.showwarning


class _Group(click.Group):
    def invoke(self, ctx: click.Context):  # type: ignore[override]
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            try:
                return super().invoke(ctx)
            except KernelfiError as err:
                click.echo(f"kernelfi: error: {one_line(str(err))}", err=True)
                ctx.exit(2)


@click.group(cls=_Group)
@click.version_option(__version__, prog_name="kernelfi")
def cli() -> None:
    """Kernel-level soft-error fault injection for CNNs on GPUs."""


def main() -> None:
    cli(prog_name="kernelfi")
