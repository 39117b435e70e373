"""The ``kernelfi`` click group: every subcommand registers on ``cli``; user errors become one line.

Every user error is a ``KernelfiError``: printed as one line ``kernelfi: error: ...`` on stderr
with exit status 2; nothing already stored is touched.
"""
from __future__ import annotations

import click

from kernelfi import __version__
from kernelfi._utils import KernelfiError, one_line


class _Group(click.Group):
    def invoke(self, ctx: click.Context):  # type: ignore[override]
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
