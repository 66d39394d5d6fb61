"""HTTP benchmark: requests/s to a counter object through uvicorn vs plain Starlette.

    python benchmarks/http_load.py [--quick] [--seconds S] [--rounds N] [--only V...]
                              [--connections C] [--json PATH]

Each server variant runs under uvicorn (httptools, uvloop when installed, no
access log) in a child process of its own; this process is the load
generator: C keep-alive HTTP/1.1 connections over raw sockets, each sending
``GET /count`` and reading the whole response before sending the next (no
pipelining), for S seconds after a short warm-up. Variants:

- ``starlette``: a plain Starlette route adding 1 to a dict entry (no
  pyobjects, nothing durable): the baseline.
- ``pyobjects-edge``: ``pyobjects.asgi.App`` whose worker adds 1 to a dict
  entry itself, calling no object: the cost of the HTTP edge alone.
- ``pyobjects-memory``: ``pyobjects.asgi.App``; the worker forwards the
  request with ``stub.fetch()`` to one counter object, which reads, adds 1
  and writes its storage (``MemoryBackend``).
- ``pyobjects-rpc``: the same, through an RPC method instead of ``fetch()``.
- ``pyobjects-sqlite``: as ``pyobjects-memory`` on ``SQLiteBackend``
  (``synchronous="normal"``): every answer waits for its commit.

The variants run in turn, round after round, and the best round of each is
reported, plus the median over rounds of each variant's ratio to the
starlette round run just before it (shared machines are noisy: paired ratios
move less than absolute numbers). The target is pyobjects-memory >= 0.7x
starlette. With two or more CPUs the server is pinned to the last one and the
load generator to the first, so that they do not take turns on one core.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from typing import TYPE_CHECKING, Any

import anyio
from _common import cpu_model, free_port, pin

if TYPE_CHECKING:
    from starlette.requests import Request as StarletteRequest

VARIANTS = (
    "starlette",
    "pyobjects-edge",
    "pyobjects-memory",
    "pyobjects-rpc",
    "pyobjects-sqlite",
)
REQUEST = b"GET /count HTTP/1.1\r\nHost: bench\r\n\r\n"
TARGET_RATIO = 0.7


# -- the servers (run in child processes) -------------------------------------------


def build_app(variant: str, directory: str) -> Any:
    """Return the ASGI app of a variant."""
    if variant == "starlette":
        from starlette.applications import Starlette
        from starlette.responses import PlainTextResponse
        from starlette.routing import Route

        state = {"n": 0}

        async def count(request: StarletteRequest) -> PlainTextResponse:
            state["n"] += 1
            return PlainTextResponse(str(state["n"]))

        return Starlette(routes=[Route("/count", count)])

    from pyobjects import DurableObject, Request, Response, Worker
    from pyobjects.asgi import App
    from pyobjects.storage import MemoryBackend, SQLiteBackend

    class Counter(DurableObject):
        async def fetch(self, request: Request) -> Response:
            return Response(str(await self.increment()))

        async def increment(self) -> int:
            value = (await self.ctx.storage.get("n") or 0) + 1
            self.ctx.storage.put("n", value)
            return value

    async def via_fetch(request: Request, env: Any) -> Response:
        response: Response = await env.COUNTER.get_by_name("global").fetch(request)
        return response

    async def via_rpc(request: Request, env: Any) -> Response:
        value = await env.COUNTER.get_by_name("global").increment()
        return Response(str(value))

    state = {"n": 0}

    async def edge_only(request: Request, env: Any) -> Response:
        state["n"] += 1
        return Response(str(state["n"]))

    fetch = {"pyobjects-rpc": via_rpc, "pyobjects-edge": edge_only}.get(
        variant, via_fetch
    )
    storage = (
        SQLiteBackend(directory) if variant == "pyobjects-sqlite" else MemoryBackend()
    )
    return App(Worker(fetch, bindings={"COUNTER": Counter}), storage=storage)


def serve(variant: str, port: int, directory: str) -> None:
    """Run one variant under uvicorn until SIGINT."""
    import uvicorn

    pin(-1)
    config = uvicorn.Config(
        build_app(variant, directory),
        host="127.0.0.1",
        port=port,
        log_level="warning",
        access_log=False,
        http="httptools",
        lifespan="on",
    )
    with contextlib.suppress(KeyboardInterrupt):
        uvicorn.Server(config).run()


# -- the load generator --------------------------------------------------------------


def start_server(variant: str, directory: str) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, __file__, "--serve", variant, "--port", str(port)],
        cwd=directory,
    )
    deadline = time.monotonic() + 15
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return process, port
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise RuntimeError(f"the {variant} server did not start") from None
            time.sleep(0.02)


def stop_server(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


async def _connection(
    port: int, warmup_end: float, end: float, counts: list[int]
) -> None:
    stream = await anyio.connect_tcp("127.0.0.1", port)
    done = 0
    buffer = b""
    async with stream:
        while True:
            now = time.perf_counter()
            if now >= end:
                break
            await stream.send(REQUEST)
            while True:
                head_end = buffer.find(b"\r\n\r\n")
                if head_end >= 0:
                    head = buffer[:head_end]
                    if not head.startswith(b"HTTP/1.1 200"):
                        raise RuntimeError(f"unexpected answer: {head[:40]!r}")
                    start = head.lower().index(b"content-length:") + 15
                    stop = head.find(b"\r\n", start)
                    length = int(head[start : stop if stop >= 0 else len(head)])
                    total = head_end + 4 + length
                    if len(buffer) >= total:
                        buffer = buffer[total:]
                        break
                buffer += await stream.receive()
            if now >= warmup_end:
                done += 1
    counts.append(done)


async def load(port: int, connections: int, seconds: float, warmup: float) -> float:
    """Return the requests/s the server answered over *seconds*."""
    counts: list[int] = []
    start = time.perf_counter()
    warmup_end = start + warmup
    end = warmup_end + seconds
    async with anyio.create_task_group() as tg:
        for _ in range(connections):
            tg.start_soon(_connection, port, warmup_end, end, counts)
    return sum(counts) / seconds


def machine() -> dict[str, Any]:
    return {
        "date": datetime.date.today().isoformat(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
        "uvicorn": version("uvicorn"),
        "starlette": version("starlette"),
        "pyobjects": version("pyobjects"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 round of 1.5 s")
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--json", metavar="PATH")
    parser.add_argument("--only", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--serve", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.port, os.getcwd())
        return
    seconds, rounds = (1.5, 1) if args.quick else (args.seconds, args.rounds)
    pin(0)
    info = machine()
    print(" ".join(f"{k}={v}" for k, v in info.items()))
    print(f"{args.connections} connections, {rounds} round(s) of {seconds} s each\n")
    results: dict[str, list[float]] = {variant: [] for variant in args.only}
    options = {"use_uvloop": True}
    for round_number in range(rounds):
        for variant in args.only:
            with tempfile.TemporaryDirectory() as directory:
                process, port = start_server(variant, directory)
                try:
                    rate = anyio.run(
                        load,
                        port,
                        args.connections,
                        seconds,
                        0.5,
                        backend_options=options,
                    )
                finally:
                    stop_server(process)
            results[variant].append(rate)
            print(f"round {round_number + 1}: {variant:18} {rate:10,.0f} req/s")
    print()
    best = {variant: max(rates) for variant, rates in results.items()}
    baseline = best.get("starlette")
    paired: dict[str, float] = {}
    for variant, rate in best.items():
        line = f"{variant:18} {rate:10,.0f} req/s (best of {rounds})"
        if baseline is not None:
            line += f"  {rate / baseline:.2f}x best starlette"
            pairs = zip(results[variant], results["starlette"], strict=True)
            ratios = [rate / base for rate, base in pairs]
            paired[variant] = statistics.median(ratios)
            line += f", median paired ratio {paired[variant]:.2f}x"
        print(line)
    if "pyobjects-memory" in paired:
        ratio = paired["pyobjects-memory"]
        verdict = "met" if ratio >= TARGET_RATIO else "missed"
        print(f"\ntarget pyobjects-memory >= {TARGET_RATIO}x starlette: {verdict}")
    if args.json:
        with open(args.json, "w") as out:
            document = {
                "machine": info,
                "rounds": results,
                "best": best,
                "median_paired_ratio": paired,
            }
            json.dump(document, out, indent=2)


if __name__ == "__main__":
    main()
