"""``pyobjects serve --reload``: restart the server when the project changes.

The dev loop of ``wrangler dev``: a supervisor runs ``pyobjects serve`` (the
same options, without ``--reload``) as a child process and watches the
project folder with watchfiles (in uvicorn's ``standard`` extra). When a
Python file, a wrangler config or ``.dev.vars`` changes, it stops the child
as Ctrl-C would (pending writes are flushed, the storage directory is
released) and starts a new one on the same port. A child that fails to start
(a syntax error, say) is started again at the next change.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["WATCHED_NAMES", "WATCHED_SUFFIXES", "run_with_reload", "watched"]

WATCHED_SUFFIXES = frozenset({".py", ".toml", ".json", ".jsonc"})
WATCHED_NAMES = frozenset({".dev.vars"})
#: How long a child gets to stop (flush its writes) before it is killed.
STOP_TIMEOUT = 30.0


def watched(path: str, ignore: Sequence[Path]) -> bool:
    """True if a change to *path* should restart the server."""
    file = Path(path)
    if file.suffix not in WATCHED_SUFFIXES and file.name not in WATCHED_NAMES:
        return False
    if "__pycache__" in file.parts:
        return False
    resolved = file.resolve()
    return not any(resolved.is_relative_to(directory) for directory in ignore)


def run_with_reload(args: Sequence[str], *, watch: str, ignore: Sequence[str]) -> None:
    """Run ``pyobjects serve *args`` and restart it whenever *watch* changes.

    *ignore* lists folders whose changes do not count (the storage).
    Returns after Ctrl-C or SIGTERM, once the child stopped.
    """
    try:
        import watchfiles  # in uvicorn[standard], the server extra
    except ModuleNotFoundError:
        raise click.ClickException(
            "pyobjects serve --reload needs watchfiles: pip install 'pyobjects[server]'"
        ) from None
    ignored = [Path(directory).resolve() for directory in ignore]
    command = [sys.executable, "-m", "pyobjects", "serve", *args]
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    # The child has its own session, so a Ctrl-C in the terminal reaches the
    # supervisor only, which then stops the child with exactly one SIGINT (a
    # second one would make uvicorn skip its graceful shutdown).
    child = subprocess.Popen(command, start_new_session=True)
    try:
        for changes in watchfiles.watch(
            watch,
            watch_filter=lambda _change, path: watched(path, ignored),
            raise_interrupt=True,
        ):
            names = sorted({os.path.relpath(path, watch) for _, path in changes})
            click.echo(f"pyobjects: {', '.join(names)} changed; restarting", err=True)
            _stop(child)
            child = subprocess.Popen(command, start_new_session=True)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        _stop(child)


def _stop(child: subprocess.Popen[bytes]) -> None:
    if child.poll() is not None:
        return
    child.send_signal(signal.SIGINT)  # serve flushes its writes and exits 0
    try:
        child.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:  # pragma: no cover - a hung server
        child.kill()
        child.wait()
