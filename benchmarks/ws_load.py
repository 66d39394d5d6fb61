"""WebSocket benchmark: N clients on one object through uvicorn, broadcast latency.

    python benchmarks/ws_load.py [--clients N] [--broadcasts B] [--json PATH]
                                 [--no-gc-freeze] [--floor]

The server is a child process: ``pyobjects.asgi.App`` under uvicorn
(httptools, uvloop, no access log, no keep-alive pings) on 127.0.0.1, pinned
to the last CPU. Its worker sends every ``GET /ws`` to one object
(``get_by_name("room")``), which accepts the socket with
``ctx.accept_websocket()`` (hibernatable) and answers ``101``.

This process is the load generator, pinned to the first CPU: N real
WebSocket connections over TCP (a minimal RFC 6455 client on asyncio
protocols, so that the generator costs a few microseconds per message and
not the tens a full client library takes), opened 200 at a time. Then, B
times, one client sends ``broadcast <seq>``; the object reads the wall clock
(``time.time_ns()``) once and sends ``b <seq> <ns>`` to each of its
``ctx.get_websockets()``. Each client notes ``time.time_ns()`` when the frame
is parsed; latency = receive time - server timestamp, so it covers the
object's loop over all sockets, the bridge, uvicorn, the kernel and the
client's own parsing (both processes read the same clock). The next
broadcast starts once every client has the previous one, after a 0.2 s
pause; a first, warm-up broadcast is not counted.

Both processes raise their open-file limit (``RLIMIT_NOFILE``) to the hard
limit; each connection takes one descriptor on each side. The script reports
the limit and how many clients connected. Target: p99 <= 100 ms at 10,000.

The server calls ``gc.freeze()`` after building the app, as ``pyobjects
serve`` does (``--no-gc-freeze``: not), and prints at the end the wall and CPU
time of each send loop, its garbage collections and where the full ones fell,
and how many objects the collector tracked once everyone had connected.
``--floor`` runs no server: it times ``socket.send()`` of one frame over as
many loopback connections, the system calls any server would make.
"""

from __future__ import annotations

import argparse
import asyncio  # noqa: TID251 - the load generator, not pyobjects: protocols on uvloop
import base64
import bisect
import contextlib
import datetime
import gc
import json
import os
import platform
import resource
import signal
import socket
import statistics
import subprocess
import sys
import time
from importlib.metadata import version
from typing import Any

from _common import cpu_model, free_port, pin

CONNECT_BATCH = 200
PAUSE = 0.2  # seconds between broadcasts
BROADCAST_TIMEOUT = 60.0


def raise_fd_limit() -> int:
    """Raise the soft open-file limit to the hard one; return the new limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# -- the server (child process) ------------------------------------------------


# Server side: when each broadcast's loop started (perf_counter_ns), how long
# the object's loop over its sockets took (ms) and the CPU time the process
# got meanwhile (ms; less when other processes share the CPU), seq 0 first.
LOOPS: list[tuple[int, float, float]] = []
TRACKED: list[int] = []  # objects the garbage collector tracks, once connected


def build_app() -> Any:
    from pyobjects import (
        DurableObject,
        Request,
        Response,
        WebSocket,
        WebSocketPair,
        Worker,
    )
    from pyobjects.asgi import App

    class Room(DurableObject):
        async def fetch(self, request: Request) -> Response:
            client, server = WebSocketPair()
            self.ctx.accept_websocket(server)
            return Response(status=101, websocket=client)

        async def websocket_message(self, ws: WebSocket, message: str | bytes) -> None:
            if not isinstance(message, str):
                return
            command, _, arg = message.partition(" ")
            if command == "broadcast":
                started, cpu = time.perf_counter_ns(), time.process_time_ns()
                text = f"b {arg} {time.time_ns()}"
                for peer in self.ctx.get_websockets():
                    peer.send(text)
                wall = (time.perf_counter_ns() - started) / 1e6
                LOOPS.append((started, wall, (time.process_time_ns() - cpu) / 1e6))
            elif command == "count":
                TRACKED.append(len(gc.get_objects()))  # before the broadcasts
                ws.send(f"count {len(self.ctx.get_websockets())}")

    async def fetch(request: Request, env: Any) -> Response:
        response: Response = await env.ROOM.get_by_name("room").fetch(request)
        return response

    return App(Worker(fetch, bindings={"ROOM": Room}))


class GcPauses:
    """Times the server's garbage collections (``gc.callbacks``)."""

    def __init__(self) -> None:
        self.started = 0
        # (when it started, generation, pause in ms)
        self.pauses: list[tuple[int, int, float]] = []

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self.started = time.perf_counter_ns()
        else:
            pause = (time.perf_counter_ns() - self.started) / 1e6
            self.pauses.append((self.started, info["generation"], pause))

    def report(self) -> str:
        """Count and longest pause per generation, and where full ones fell."""
        counts = []
        for gen in (0, 1, 2):
            ms = [m for _, g, m in self.pauses if g == gen]
            counts.append(f"gen{gen} {len(ms)}x (longest {max(ms, default=0):.0f} ms)")
        starts = [at for at, _, _ in LOOPS]
        where = []
        for at, gen, ms in self.pauses:
            if gen == 2 and starts and at >= starts[0]:
                seq = bisect.bisect_right(starts, at) - 1
                offset = (at - starts[seq]) / 1e6
                where.append(f"{ms:.0f} ms at +{offset:.0f} ms after broadcast {seq}")
        return (
            ", ".join(counts)
            + "; full collections from the warm-up broadcast on: "
            + ("; ".join(where) or "none")
        )


def serve(port: int, *, freeze: bool) -> None:
    import uvicorn

    pauses = GcPauses()
    gc.callbacks.append(pauses)
    pin(-1)
    limit = raise_fd_limit()
    import pyobjects

    print(f"server fd limit {limit}, pyobjects from {pyobjects.__file__}", flush=True)
    app = build_app()
    if freeze:  # as pyobjects serve does before it serves
        gc.collect()
        gc.freeze()
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        access_log=False,
        http="httptools",
        loop="uvloop",
        lifespan="on",
        backlog=4096,
        ws_ping_interval=None,
        ws_ping_timeout=None,
    )
    with contextlib.suppress(KeyboardInterrupt):
        uvicorn.Server(config).run()
    loops = ", ".join(f"{ms:.0f}" for _, ms, _ in LOOPS[1:])  # not the warm-up
    cpu = ", ".join(f"{ms:.0f}" for _, _, ms in LOOPS[1:])
    print(f"server: the object's send loops took {loops} ms", flush=True)
    print(f"server: of which CPU time of the server {cpu} ms", flush=True)
    print(f"server garbage collections: {pauses.report()}", flush=True)
    if TRACKED:
        print(f"server: {TRACKED[0]} objects tracked by the collector", flush=True)


# -- the load generator ----------------------------------------------------------


def frame(payload: bytes, opcode: int = 1) -> bytes:
    """A masked client frame (payload under 126 bytes)."""
    assert len(payload) < 126
    mask = os.urandom(4)
    key = int.from_bytes((mask * (len(payload) // 4 + 1))[: len(payload)])
    body = (int.from_bytes(payload) ^ key).to_bytes(len(payload)) if payload else b""
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + body


class Bench:
    def __init__(self, clients: int) -> None:
        self.clients = clients
        self.latencies: dict[int, list[int]] = {}
        self.done: dict[int, asyncio.Event] = {}
        self.replies: asyncio.Queue[str] = asyncio.Queue()
        self.lost = 0

    def expect(self, seq: int) -> asyncio.Event:
        self.latencies[seq] = []
        event = self.done[seq] = asyncio.Event()
        return event

    def received(self, text: str, now: int) -> None:
        if text.startswith("b "):
            _, seq, sent = text.split()
            got = self.latencies[int(seq)]
            got.append(now - int(sent))
            if len(got) == self.clients:
                self.done[int(seq)].set()
        else:
            self.replies.put_nowait(text)


class Client(asyncio.Protocol):
    def __init__(self, bench: Bench, host: str) -> None:
        self.bench = bench
        self.host = host
        self.buffer = bytearray()
        self.upgraded: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        key = base64.b64encode(os.urandom(16)).decode()
        transport.write(
            f"GET /ws HTTP/1.1\r\nHost: {self.host}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode()
        )

    def send(self, text: str) -> None:
        assert self.transport is not None
        self.transport.write(frame(text.encode()))

    def data_received(self, data: bytes) -> None:
        now = time.time_ns()
        buffer = self.buffer
        buffer += data
        if not self.upgraded.done():
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            if not buffer.startswith(b"HTTP/1.1 101"):
                self.upgraded.set_exception(
                    RuntimeError(f"handshake refused: {bytes(buffer[:40])!r}")
                )
                return
            del buffer[: end + 4]
            self.upgraded.set_result(None)
        while len(buffer) >= 2:
            opcode, length, start = buffer[0] & 0x0F, buffer[1] & 0x7F, 2
            if length == 126:
                if len(buffer) < 4:
                    return
                length, start = int.from_bytes(buffer[2:4]), 4
            elif length == 127:
                if len(buffer) < 10:
                    return
                length, start = int.from_bytes(buffer[2:10]), 10
            if len(buffer) < start + length:
                return
            payload = bytes(buffer[start : start + length])
            del buffer[: start + length]
            if opcode == 1:
                self.bench.received(payload.decode(), now)
            elif opcode == 9 and self.transport is not None:  # ping
                self.transport.write(frame(payload, 10))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.upgraded.done():
            self.upgraded.set_exception(exc or ConnectionError("closed"))
        else:
            self.bench.lost += 1


async def connect_all(
    bench: Bench, port: int, wanted: int
) -> tuple[list[Client], str | None]:
    loop = asyncio.get_running_loop()
    host = f"127.0.0.1:{port}"
    clients: list[Client] = []
    error: str | None = None

    async def one() -> Client:
        _, protocol = await loop.create_connection(
            lambda: Client(bench, host), "127.0.0.1", port
        )
        await asyncio.wait_for(protocol.upgraded, 30)
        return protocol

    while len(clients) < wanted and error is None:
        batch = min(CONNECT_BATCH, wanted - len(clients))
        results = await asyncio.gather(
            *(one() for _ in range(batch)), return_exceptions=True
        )
        for result in results:
            if isinstance(result, BaseException):
                error = error or f"{type(result).__name__}: {result}"
            else:
                clients.append(result)
    return clients, error


def percentile(values: list[int], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] / 1e6


async def run(port: int, wanted: int, broadcasts: int) -> dict[str, Any]:
    bench = Bench(wanted)
    started = time.perf_counter()
    clients, error = await connect_all(bench, port, wanted)
    connect_seconds = time.perf_counter() - started
    bench.clients = len(clients)
    print(
        f"connected {len(clients)} of {wanted} clients in {connect_seconds:.1f} s"
        + (f" (stopped by {error})" if error else ""),
        flush=True,
    )
    control = clients[0]
    control.send("count")
    counted = await asyncio.wait_for(bench.replies.get(), 30)
    print(f"the object holds {counted.split()[1]} sockets", flush=True)
    rounds: list[dict[str, Any]] = []
    for seq in range(broadcasts + 1):  # seq 0: warm-up
        done = bench.expect(seq)
        control.send(f"broadcast {seq}")
        try:
            await asyncio.wait_for(done.wait(), BROADCAST_TIMEOUT)
        except TimeoutError:
            print(f"broadcast {seq}: only {len(bench.latencies[seq])} received")
        got = bench.latencies[seq]
        if seq and got:
            result = {
                "seq": seq,
                "received": len(got),
                "p50_ms": percentile(got, 0.5),
                "p99_ms": percentile(got, 0.99),
                "max_ms": max(got) / 1e6,
            }
            rounds.append(result)
            print(
                f"broadcast {seq}: {len(got)} received, p50 {result['p50_ms']:.1f} ms,"
                f" p99 {result['p99_ms']:.1f} ms, max {result['max_ms']:.1f} ms",
                flush=True,
            )
        await asyncio.sleep(PAUSE)
    every = [
        value for seq in range(1, broadcasts + 1) for value in bench.latencies[seq]
    ]
    summary = {
        "clients_wanted": wanted,
        "clients": len(clients),
        "connect_error": error,
        "connect_seconds": round(connect_seconds, 2),
        "broadcasts": rounds,
        "p50_ms": percentile(every, 0.5) if every else None,
        "p99_ms": percentile(every, 0.99) if every else None,
        "max_ms": max(every) / 1e6 if every else None,
        "p99_ms_median_of_broadcasts": statistics.median(r["p99_ms"] for r in rounds)
        if rounds
        else None,
        "connections_lost": bench.lost,
    }
    for client in clients:
        if client.transport is not None:
            client.transport.close()
    return summary


# -- the kernel's share: plain socket writes ----------------------------------------


def floor(clients: int, rounds: int = 5) -> None:
    """Time ``socket.send()`` of one frame over loopback TCP connections.

    The least any server can spend per client and broadcast on this machine:
    one write system call per connection (on loopback the kernel also runs
    the receiving side's TCP inside that call). Pinned to the server's CPU.
    """
    pin(-1)
    limit = raise_fd_limit()
    count = min(clients, (limit - 100) // 2)
    listener = socket.create_server(("127.0.0.1", 0), backlog=4096)
    pairs = []
    for _ in range(count):
        near = socket.create_connection(listener.getsockname())
        far, _ = listener.accept()
        for sock in (near, far):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        pairs.append((far, near))
    payload = f"b 1 {time.time_ns()}".encode()
    data = bytes([0x81, len(payload)]) + payload  # a server frame: unmasked
    per_send, per_send_cpu = [], []
    for _ in range(rounds):
        started, cpu = time.perf_counter_ns(), time.process_time_ns()
        for far, _ in pairs:
            far.send(data)
        per_send.append((time.perf_counter_ns() - started) / count / 1e3)
        per_send_cpu.append((time.process_time_ns() - cpu) / count / 1e3)
        for _, near in pairs:
            near.recv(4096)
    for far, near in pairs:
        far.close()
        near.close()
    listener.close()
    middle = statistics.median(per_send)
    print(
        f"floor: socket.send() over {count} loopback connections: "
        + ", ".join(f"{us:.1f}" for us in per_send)
        + " µs per send (CPU time: "
        + ", ".join(f"{us:.1f}" for us in per_send_cpu)
        + f"); the median is {middle * clients / 1e3:.0f} ms for {clients} clients"
    )


# -- main ------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    return {
        "date": datetime.date.today().isoformat(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
        "uvicorn": version("uvicorn"),
        "websockets": version("websockets"),
        "pyobjects": version("pyobjects"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=10_000)
    parser.add_argument("--broadcasts", type=int, default=10)
    parser.add_argument("--json", metavar="PATH")
    parser.add_argument(
        "--no-gc-freeze",
        action="store_true",
        help="do not gc.freeze() the server after start-up (pyobjects serve does)",
    )
    parser.add_argument(
        "--floor",
        action="store_true",
        help="only time plain socket writes to as many loopback connections",
    )
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.port, freeze=not args.no_gc_freeze)
        return
    if args.floor:
        floor(args.clients)
        return
    pin(0)
    limit = raise_fd_limit()
    info = machine()
    print(" ".join(f"{k}={v}" for k, v in info.items()))
    print(f"load generator fd limit {limit}", flush=True)
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, __file__, "--serve", "--port", str(port)]
        + (["--no-gc-freeze"] if args.no_gc_freeze else [])
    )
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the server did not start") from None
                time.sleep(0.02)
        try:
            import uvloop

            runner: Any = uvloop.run
        except ImportError:  # pragma: no cover
            runner = asyncio.run
        summary = runner(run(port, args.clients, args.broadcasts))
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    summary["fd_limit"] = limit
    print(
        f"\n{summary['clients']} clients, {len(summary['broadcasts'])} broadcasts: "
        f"p50 {summary['p50_ms']:.1f} ms, p99 {summary['p99_ms']:.1f} ms, "
        f"max {summary['max_ms']:.1f} ms (target p99 <= 100 ms at 10,000)"
    )
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"machine": info, "result": summary}, out, indent=2)


if __name__ == "__main__":
    main()
