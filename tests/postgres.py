"""Finding a real PostgreSQL server for the tests (never a mock).

In order: the DSN in ``PYOBJECTS_TEST_POSTGRES``; else a private server
started in a temporary directory with the PostgreSQL binaries (``initdb``,
``pg_ctl``) if they are installed (as the ``postgres`` user when the tests
run as root, since ``initdb`` refuses root); else the PostgreSQL tests skip
with one line saying why. With ``PYOBJECTS_REQUIRE_POSTGRES=1`` (``.ci/run``
sets it) a missing server fails them instead.

Every backend a test gets works in a schema of its own, dropped afterwards.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from typing import Any

import anyio
import pytest

_found: list[str | None] = []


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrivateServer:
    """A PostgreSQL server of the tests' own, in a temporary directory.

    Unlike a shared server, it may be stopped and started again (the data
    and the port stay), which the restart tests need. :meth:`close` stops it
    for good and removes its directory.
    """

    def __init__(
        self, directory: str, port: int, prefix: list[str], pg_ctl: str
    ) -> None:
        self.directory = directory
        self.port = port
        self._prefix = prefix
        self._pg_ctl = pg_ctl
        self.dsn = f"postgresql://postgres@127.0.0.1:{port}/postgres"
        self.running = False

    def _ctl(self, *args: str) -> None:
        subprocess.run(
            [
                *self._prefix,
                self._pg_ctl,
                "-D",
                os.path.join(self.directory, "data"),
                *args,
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        self._ctl(
            "-w",
            "-l",
            os.path.join(self.directory, "log"),
            "-o",
            f"-h 127.0.0.1 -p {self.port} -k {self.directory} -F",
            "start",
        )
        self.running = True

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``fast``: clients get an error; ``immediate``: a crash)."""
        self._ctl("-w", "-m", mode, "stop")
        self.running = False

    def close(self) -> None:
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            self.stop("immediate")
        shutil.rmtree(self.directory, ignore_errors=True)


def private_server() -> PrivateServer | None:
    """Start a new private server, or ``None`` without the server binaries.

    The caller closes it (:meth:`PrivateServer.close`).
    """
    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    if initdb is None or pg_ctl is None:
        return None
    prefix: list[str] = []
    if os.geteuid() == 0:
        runuser = shutil.which("runuser")
        if runuser is None:
            return None
        try:
            import pwd

            pwd.getpwnam("postgres")
        except KeyError:
            return None
        prefix = [runuser, "-u", "postgres", "--"]
    directory = tempfile.mkdtemp(prefix="pyobjects-pg-server-")
    if prefix:
        shutil.chown(directory, "postgres")
    server = PrivateServer(directory, _free_port(), prefix, pg_ctl)
    try:
        subprocess.run(
            [
                *prefix,
                initdb,
                "-D",
                os.path.join(directory, "data"),
                "-A",
                "trust",
                "-U",
                "postgres",
            ],
            check=True,
            capture_output=True,
        )
        server.start()
    except (subprocess.SubprocessError, OSError):
        server.close()
        return None
    return server


def require_private_server() -> PrivateServer:
    """A new private server (the caller closes it), or skip/fail as above."""
    server = private_server()
    if server is None:
        reason = (
            "no PostgreSQL server binaries (initdb, pg_ctl) to start a private "
            "server that this test may stop and start"
        )
        if os.environ.get("PYOBJECTS_REQUIRE_POSTGRES") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    return server


def _start_private() -> str | None:
    server = private_server()
    if server is None:
        return None
    atexit.register(server.close)
    return server.dsn


def postgres_dsn() -> str | None:
    """The server's DSN, or ``None`` if there is none (found once per run)."""
    if not _found:
        _found.append(os.environ.get("PYOBJECTS_TEST_POSTGRES") or _start_private())
    return _found[0]


def require_postgres() -> str:
    """The DSN, or skip (fail when PYOBJECTS_REQUIRE_POSTGRES=1) the test."""
    dsn = postgres_dsn()
    if dsn is None:
        reason = (
            "no PostgreSQL: set PYOBJECTS_TEST_POSTGRES to a DSN or install the "
            "server binaries (initdb, pg_ctl)"
        )
        if os.environ.get("PYOBJECTS_REQUIRE_POSTGRES") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    return dsn


def new_schema() -> str:
    return "t_" + uuid.uuid4().hex[:16]


def drop_schema(dsn: str, schema: str) -> None:
    async def drop() -> None:
        import asyncpg

        conn: Any = await asyncpg.connect(dsn)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            await conn.close()

    with contextlib.suppress(Exception):
        anyio.run(drop)


def sql(dsn: str, statement: str, *args: Any) -> list[Any]:
    """Run one statement on the server (from outside any event loop)."""

    async def run() -> list[Any]:
        import asyncpg

        conn: Any = await asyncpg.connect(dsn)
        try:
            return list(await conn.fetch(statement, *args))
        finally:
            await conn.close()

    return anyio.run(run)


async def settle(backend: object) -> None:
    """Wait until *backend* has no PostgreSQL operation under way.

    A local backend finishes a commit (or an alarm retry record) before the
    test goes on; over the network it is still on its way when every task
    looks blocked, so tests that stop a runtime right there wait for it.
    Bounded: a few seconds at most. Does nothing on other backends.
    """
    if not hasattr(backend, "_busy"):
        return
    for _ in range(5_000):
        await anyio.wait_all_tasks_blocked()
        if not getattr(backend, "_busy", 0):
            return
        await anyio.sleep(0.001)
    raise AssertionError("PostgreSQL operations did not settle")
