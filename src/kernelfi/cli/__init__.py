"""The ``kernelfi`` command line: thin wrappers over the library (sqlite-utils style).

Every user error is a ``KernelfiError``: printed as one line ``kernelfi: error: ...`` on stderr
with exit status 2; nothing already stored is touched. A ``KernelfiWarning`` (a cfg quirk
Darknet tolerates) is one line ``kernelfi: warning: ...`` on stderr. The group lives in
``cli.app``; the modules imported below register their subcommands on it.
"""
from __future__ import annotations

import sys

from kernelfi.cli.app import cli, main
from kernelfi.cli import campaign_cmds, commands, demo_cmd, export_cmd, harden_cmds, report_cmds  # noqa: F401  (they register on cli)

__all__ = ["cli", "main"]

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
