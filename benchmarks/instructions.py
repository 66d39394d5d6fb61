"""CPU instructions per operation, counted with valgrind's callgrind.

Wall-clock timings on a shared machine vary between rounds; an instruction
count does not, so this is the script for before/after comparisons of the
hot paths (docs/performance.md). Each operation kind runs twice under
callgrind, with N and 6N operations; the difference divided by 5N is the cost
of one operation, interpreter start-up and imports excluded.

    python benchmarks/instructions.py                    # this checkout
    python benchmarks/instructions.py --src /tmp/old     # another tree's src/

The ``*-sqlite`` kinds count every thread: ``incr-sqlite`` includes the
point-in-time history's worker (reading the WAL, compressing, appending),
``incr-sqlite-nopitr`` runs with ``pitr_retention=0``, and ``raw-sqlite`` is
plain ``sqlite3`` committing one row per transaction, the baseline.

Needs ``valgrind`` on PATH. ``--src`` puts ``<tree>/src`` first on the path,
so another commit can be measured with this checkout's interpreter.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from typing import Any

import anyio

import pyobjects
from pyobjects.storage import MemoryBackend, SQLiteBackend, StorageBackend

KINDS = (
    "rpc",
    "incr",
    "new",
    "rpc-otel",
    "rpc-otel-noop",
    "incr-sqlite",
    "incr-sqlite-nopitr",
    "raw-sqlite",
    "http-starlette",
    "http-edge",
    "http-fetch",
    "http-rpc",
)


class Obj(pyobjects.DurableObject):
    """The object every kind of operation calls."""

    async def ping(self) -> int:
        """Do nothing: the cost of a call."""
        return 1

    async def incr(self) -> int:
        """A counter: one read, one write and its commit."""
        n: int = (await self.ctx.storage.get("n") or 0) + 1
        self.ctx.storage.put("n", n)
        return n


def _telemetry() -> pyobjects.OpenTelemetry:
    """SDK providers that record every span and measurement (and export none)."""
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider

    return pyobjects.OpenTelemetry(
        tracer_provider=TracerProvider(),
        meter_provider=MeterProvider(metric_readers=[InMemoryMetricReader()]),
    )


def _raw_sqlite(directory: str, n: int) -> None:
    """*n* commits of one row through plain ``sqlite3`` (the baseline)."""
    conn = sqlite3.connect(os.path.join(directory, "raw.sqlite"), isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("CREATE TABLE kv (key BLOB PRIMARY KEY, value BLOB) WITHOUT ROWID")
    execute = conn.execute
    sql = "INSERT OR REPLACE INTO kv (key, value) VALUES (?, ?)"
    for i in range(20 + n):
        execute("BEGIN")
        execute(sql, (b"n", str(i).encode()))
        execute("COMMIT")
    conn.close()


async def _http(kind: str, n: int) -> None:
    """*n* ``GET /count`` requests straight into an app of http_load.py.

    No server and no socket: the cost of the app alone (uvicorn's parsing and
    writing are the same for every variant).
    """
    from http_load import build_app

    variant = {"http-starlette": "starlette", "http-edge": "pyobjects-edge"}.get(
        kind, "pyobjects-" + ("memory" if kind == "http-fetch" else "rpc")
    )
    app = build_app(variant, tempfile.gettempdir())
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/count",
        "raw_path": b"/count",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"bench")],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }
    request = {"type": "http.request", "body": b"", "more_body": False}

    async def receive() -> dict[str, Any]:
        return request

    async def send(message: dict[str, Any]) -> None:
        pass

    startup: list[dict[str, Any]] = [{"type": "lifespan.startup"}]
    started = anyio.Event()
    stop = anyio.Event()

    async def lifespan_receive() -> dict[str, Any]:
        if startup:
            return startup.pop()
        await stop.wait()
        return {"type": "lifespan.shutdown"}

    async def lifespan_send(message: dict[str, Any]) -> None:
        if message["type"] == "lifespan.startup.complete":
            started.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(
            app,
            {"type": "lifespan", "asgi": {"version": "3.0"}},
            lifespan_receive,
            lifespan_send,
        )
        await started.wait()
        for _ in range(20 + n):
            await app(dict(scope), receive, send)
        stop.set()


async def _run(kind: str, n: int) -> None:
    if kind.startswith("http-"):
        await _http(kind, n)
        return
    if "sqlite" in kind:
        with tempfile.TemporaryDirectory() as directory:
            if kind == "raw-sqlite":
                _raw_sqlite(directory, n)
                return
            retention = {} if kind == "incr-sqlite" else {"pitr_retention": 0}
            storage = SQLiteBackend(directory, synchronous="normal", **retention)
            await _calls("incr", n, storage, None)
        return
    telemetry = None
    if kind == "rpc-otel":
        telemetry = _telemetry()
    elif kind == "rpc-otel-noop":  # the API's no-op providers: no SDK installed
        telemetry = pyobjects.OpenTelemetry()
    await _calls(kind, n, MemoryBackend(), telemetry)


async def _calls(
    kind: str,
    n: int,
    storage: StorageBackend,
    telemetry: pyobjects.OpenTelemetry | None,
) -> None:
    async with pyobjects.Runtime(
        bindings={"O": Obj},
        storage=storage,
        idle_timeout=None,
        opentelemetry=telemetry,
    ) as rt:
        ns = rt.env.O
        stub = ns.get_by_name("x")
        for _ in range(20):  # past the pipeline's first-calls path
            await stub.ping()
            await stub.incr()
        if kind.startswith("rpc"):
            for _ in range(n):
                await stub.ping()
        elif kind == "incr":
            for _ in range(n):
                await stub.incr()
        else:
            for i in range(n):
                await ns.get_by_name(f"o{i}").ping()


def _count(kind: str, n: int, src: str | None) -> int:
    env = dict(os.environ)
    if src is not None:
        env["PYTHONPATH"] = os.path.join(src, "src")
    with tempfile.TemporaryDirectory() as tmp:
        out = subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                f"--callgrind-out-file={tmp}/out",
                sys.executable,
                __file__,
                "--child",
                kind,
                str(n),
            ],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
    found = re.search(r"Collected : (\d+)", out.stderr)
    if found is None:
        raise RuntimeError(f"no instruction count in valgrind's output:\n{out.stderr}")
    return int(found.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--src", help="measure the tree at this path instead")
    parser.add_argument("-n", type=int, default=1000, help="operations (default 1000)")
    parser.add_argument("--only", nargs="+", choices=KINDS, default=list(KINDS))
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        anyio.run(_run, args.child[0], int(args.child[1]))
        return
    if shutil.which("valgrind") is None:
        sys.exit("valgrind is not installed (Debian: apt install valgrind)")
    for kind in args.only:
        if "otel" in kind and args.src is not None:
            continue  # trees before #17 have no OpenTelemetry option
        small = _count(kind, args.n, args.src)
        large = _count(kind, 6 * args.n, args.src)
        print(f"{kind:13s} {(large - small) // (5 * args.n):>9,} instructions per op")


if __name__ == "__main__":
    main()
