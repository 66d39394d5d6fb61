"""The ``pyobjects`` command: ``pyobjects serve`` and ``pyobjects inspect``.

The commands themselves live in :mod:`pyobjects._cli_commands` and need the
``server`` extra (click, uvicorn); this entry point explains what to install
when they are missing instead of failing with an import traceback.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["main"]

_MISSING = (
    "pyobjects: the command line needs the 'server' extra ({name} is not "
    "installed): pip install 'pyobjects[server]'"
)


def main(argv: Sequence[str] | None = None) -> None:
    """Run the ``pyobjects`` command line (``[project.scripts]`` entry point)."""
    try:
        from ._cli_commands import cli  # click is optional
    except ModuleNotFoundError as exc:
        if exc.name != "click":
            raise
        print(_MISSING.format(name="click"), file=sys.stderr)
        raise SystemExit(2) from None
    cli.main(args=list(argv) if argv is not None else None, prog_name="pyobjects")
