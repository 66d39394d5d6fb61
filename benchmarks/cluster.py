"""Benchmark of the cluster (#13): calls through the owner, through another node, alone.

    python benchmarks/cluster.py [--dsn DSN] [--quick] [--only NAME...]
                                 [--callers N] [--json PATH] [--tmpdir DIR]
                                 [--profile [TOP]]

Everything runs against one PostgreSQL server (``--dsn``, default
``$PYOBJECTS_TEST_POSTGRES`` or ``postgresql://127.0.0.1:5432/test``) in a
schema of its own (``pyobjects_bench_<random>``), dropped at the end.

**The nodes are in-process runtimes**: two ``Runtime(node=Node())`` on their
own ``PostgresBackend`` each, in this one process and event loop, talking
over loopback HTTP (the node endpoint: uvicorn serving, httpx calling), as
the tests in ``tests/cluster/`` do. A forwarded call therefore pays both
nodes' CPU on the same core: the caller's httpx request, the holder's
uvicorn and the codec on both sides. Two benchmarks (``--only`` takes one or
more names):

- ``rpc``: calls to one counter object through three paths: the **owner**
  node (the runtime holding the object's lease: a local call with the
  cluster's routing and lease check), the **hop** node (the other runtime:
  the call is forwarded to the owner over HTTP, one hop), and **single**, a
  ``Runtime`` on ``PostgresBackend`` without ``node`` (the same call with
  no cluster at all, on another object). Two methods: ``read``, a read-only
  method (a cached ``storage.get``, nothing committed) and ``incr``, a
  durable increment (get, put; the commit is in PostgreSQL before the call
  returns). Each one sequentially (one caller; the three paths take turns
  call by call, so a slow phase of a shared machine hits them alike; every
  call timed) and with ``--callers`` (50) concurrent callers (tasks;
  rounds of each path alternate; every call timed too). Reported: calls/s
  (best round; all rounds in the details) and p50/p99 latency over all
  rounds; ratios hop/owner and owner/single.
- ``commit``: the latency of a fenced commit, a durable increment on
  ``PostgresBackend`` (its commit statement checks the lease epoch) by
  one caller, single-process and on the owner node, against a raw asyncpg
  ``INSERT`` (autocommit, one round trip, one WAL flush) on its own
  connection to the same server; the three take turns call by call; p50,
  p99 and mean.

Every counter is checked against the increments made. The report follows
benchmarks/run.py (the machine, the table with targets, the ratios, the
details), plus a latency table. Needs the ``postgres`` and ``server``
extras (asyncpg, uvicorn, httpx); runs on asyncio only (asyncpg).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import os
import pstats
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio
import asyncpg

from pyobjects import Node, Runtime
from pyobjects.storage import PostgresBackend

# benchmarks/ is not a package: run.py and postgres.py sit next to this script.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _cluster_app import Counter
from _common import add_run_arguments, free_port, run_benchmark
from run import (
    Result,
    fmt,
    latency,
    machine_info,
    print_report,
    result,
    rounded,
    write_json,
)

from postgres import add_dsn_argument, bench_connection, server_info

if TYPE_CHECKING:
    import cProfile
    from collections.abc import Awaitable, Callable

# Profile the hop when it is slower than this fraction of the owner path
# (the threshold of issue #13's benchmark brief), sequential calls.
HOP_TARGET = 1 / 3
PATHS = ("owner", "hop", "single")
METHODS = ("read", "incr")


@dataclass(frozen=True)
class Sizes:
    """Work of one run."""

    rounds: int  # measured rounds (one more warms up)
    calls: int  # sequential calls per path and method per round
    seconds: float  # time box of one concurrent round
    commits: int  # commits per side of the commit benchmark


FULL = Sizes(rounds=5, calls=300, seconds=2.0, commits=1000)
QUICK = Sizes(rounds=2, calls=100, seconds=0.5, commits=200)


@dataclass(frozen=True)
class Context:
    """What every benchmark needs besides its sizes."""

    dsn: str
    schema: str
    callers: int
    cache: str  # the backends' local copies go in subdirectories of this

    def backend(self, name: str) -> PostgresBackend:
        directory = os.path.join(self.cache, name)
        os.makedirs(directory, exist_ok=True)
        return PostgresBackend(self.dsn, schema=self.schema, cache_directory=directory)

    def q(self, statement: str) -> str:
        return statement.format(s=f'"{self.schema}"')


def runtime(ctx: Context, name: str, *, node: bool) -> Runtime:
    return Runtime(
        bindings={"COUNTER": Counter},
        storage=ctx.backend(name),
        vars={"NODE": name},
        node=Node(host="127.0.0.1", port=0) if node else None,
    )


class Paths:
    """The three runtimes and one stub per path."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.stubs: dict[str, Any] = {}
        self.owner_name = ""

    async def open(self, stack: contextlib.AsyncExitStack) -> None:
        a = await stack.enter_async_context(runtime(self.ctx, "a", node=True))
        b = await stack.enter_async_context(runtime(self.ctx, "b", node=True))
        solo = await stack.enter_async_context(runtime(self.ctx, "solo", node=False))
        # The first call places the object by rendezvous hashing.
        first = a.env.COUNTER.get_by_name("bench")
        await first.reset()
        self.owner_name = await first.where()
        owner, hop = (a, b) if self.owner_name == "a" else (b, a)
        self.stubs = {
            "owner": owner.env.COUNTER.get_by_name("bench"),
            "hop": hop.env.COUNTER.get_by_name("bench"),
            "single": solo.env.COUNTER.get_by_name("solo"),
        }
        await self.stubs["single"].reset()
        for stub in self.stubs.values():
            if stub is not self.stubs["single"] and await stub.where() != (
                self.owner_name
            ):
                raise AssertionError("the object is not where it was placed")


# -- rpc -------------------------------------------------------------------------


async def timed_concurrent(
    call: Callable[[], Awaitable[Any]], seconds: float, callers: int
) -> tuple[list[int], list[int], float]:
    """*callers* tasks awaiting *call* until the deadline: calls per task,
    every call's nanoseconds, the seconds the round took."""
    counts = [0] * callers
    samples: list[int] = []
    clock = time.perf_counter_ns
    gc.collect()
    start = clock()
    deadline = start + int(seconds * 1e9)

    async def caller(index: int) -> None:
        n = 0
        while (t0 := clock()) < deadline:
            await call()
            samples.append(clock() - t0)
            n += 1
        counts[index] = n

    async with anyio.create_task_group() as tg:
        for i in range(callers):
            tg.start_soon(caller, i)
    return counts, samples, (clock() - start) / 1e9


Calls = dict[str, "Callable[[], Awaitable[Any]]"]
Summary = dict[tuple[str, str, str], dict[str, float]]


async def rpc_sequential(
    sizes: Sizes, method: str, calls: Calls, summary: Summary
) -> list[Result]:
    """One caller; the paths take turns call by call, every call timed."""
    clock = time.perf_counter_ns
    rates: dict[str, list[float]] = {p: [] for p in PATHS}
    samples: dict[str, list[int]] = {p: [] for p in PATHS}
    for round_ in range(sizes.rounds + 1):  # round 0 warms up
        gc.collect()
        spent = dict.fromkeys(PATHS, 0)
        for _ in range(sizes.calls):
            for p in PATHS:
                t0 = clock()
                await calls[p]()
                dt = clock() - t0
                spent[p] += dt
                if round_:
                    samples[p].append(dt)
        if round_:
            for p in PATHS:
                rates[p].append(sizes.calls / (spent[p] / 1e9))
    results = []
    for p in PATHS:
        lat = latency(samples[p])
        summary[(method, "seq", p)] = {"rate": max(rates[p]), **lat}
        results.append(
            result(
                f"{method}.seq.{p}",
                f"{method}, {label(p)}, 1 caller",
                max(rates[p]),
                "ops/s",
                rounds=rounded(rates[p]),
                all_rounds=round(statistics.harmonic_mean(rates[p])),
                p50_us=lat["p50"],
                p99_us=lat["p99"],
                mean_us=lat["mean"],
            )
        )
    return results


async def rpc_concurrent(
    sizes: Sizes, method: str, calls: Calls, summary: Summary, callers: int
) -> list[Result]:
    """*callers* tasks; rounds of the paths alternate, every call timed."""
    rates: dict[str, list[float]] = {p: [] for p in PATHS}
    samples: dict[str, list[int]] = {p: [] for p in PATHS}
    spread: dict[str, list[tuple[int, int]]] = {p: [] for p in PATHS}
    for round_ in range(sizes.rounds + 1):  # round 0 warms up
        for p in PATHS:
            counts, got, seconds = await timed_concurrent(
                calls[p], sizes.seconds, callers
            )
            if round_:
                rates[p].append(sum(counts) / seconds)
                samples[p] += got
                spread[p].append((min(counts), max(counts)))
    results = []
    for p in PATHS:
        lat = latency(samples[p])
        summary[(method, "conc", p)] = {"rate": max(rates[p]), **lat}
        results.append(
            result(
                f"{method}.conc.{p}",
                f"{method}, {label(p)}, {callers} callers",
                max(rates[p]),
                "ops/s",
                rounds=rounded(rates[p]),
                p50_us=lat["p50"],
                p99_us=lat["p99"],
                mean_us=lat["mean"],
                calls_per_caller_min_max=spread[p],
            )
        )
    return results


async def bench_rpc(sizes: Sizes, ctx: Context) -> list[Result]:
    results: list[Result] = []
    summary: Summary = {}
    async with contextlib.AsyncExitStack() as stack:
        paths = Paths(ctx)
        await paths.open(stack)
        stubs = paths.stubs
        made = dict.fromkeys(("bench", "solo"), 0)  # increments per object

        def counted(path: str, method: str) -> Callable[[], Awaitable[Any]]:
            fn = getattr(stubs[path], method)
            if method != "incr":
                return fn  # type: ignore[no-any-return]
            key = "solo" if path == "single" else "bench"

            async def incr() -> Any:
                value = await fn()
                made[key] += 1
                return value

            return incr

        calls = {m: {p: counted(p, m) for p in PATHS} for m in METHODS}
        # All sequential rounds first: after a concurrent burst, the caller's
        # httpx pool holds idle connections for a while (keepalive_expiry),
        # and it checks each of them on every request.
        for method in METHODS:
            results += await rpc_sequential(sizes, method, calls[method], summary)
        for method in METHODS:
            results += await rpc_concurrent(
                sizes, method, calls[method], summary, ctx.callers
            )
        for key, stub in (("bench", stubs["owner"]), ("solo", stubs["single"])):
            if (n := await stub.read()) != made[key]:
                raise AssertionError(f"rpc: counter {key} is {n}, not {made[key]}")
        results[0].details["owner_node"] = paths.owner_name
        results[0].details["increments_checked"] = made["bench"] + made["solo"]
    BENCH_SUMMARY["rpc"] = summary
    return results


def label(path: str) -> str:
    return {
        "owner": "owner node",
        "hop": "other node (1 hop)",
        "single": "single process, no node",
    }[path]


# -- commit ----------------------------------------------------------------------


async def bench_commit(sizes: Sizes, ctx: Context) -> list[Result]:
    conn = await asyncpg.connect(ctx.dsn)
    try:
        await conn.execute(
            ctx.q("CREATE TABLE {s}.raw_log (id bigserial PRIMARY KEY, v bigint)")
        )
        insert = ctx.q("INSERT INTO {s}.raw_log (v) VALUES ($1)")

        async def raw() -> None:
            await conn.execute(insert, 1)

        async with contextlib.AsyncExitStack() as stack:
            paths = Paths(ctx)
            await paths.open(stack)
            owner, single = paths.stubs["owner"], paths.stubs["single"]
            start = {"owner": await owner.read(), "single": await single.read()}
            sides: dict[str, Callable[[], Awaitable[Any]]] = {
                "single": single.incr,
                "owner": owner.incr,
                "raw": raw,
            }
            samples: dict[str, list[int]] = {name: [] for name in sides}
            clock = time.perf_counter_ns
            warmup = max(20, sizes.commits // 10)
            gc.collect()
            for i in range(warmup + sizes.commits):
                for name, call in sides.items():
                    t0 = clock()
                    await call()
                    dt = clock() - t0
                    if i >= warmup:
                        samples[name].append(dt)
            total = warmup + sizes.commits
            for name, stub in (("owner", owner), ("single", single)):
                if (n := await stub.read()) != start[name] + total:
                    raise AssertionError(f"commit: {name} counter {n} is off")
        rows = await conn.fetchval(ctx.q("SELECT count(*) FROM {s}.raw_log"))
        if rows != total:
            raise AssertionError(f"commit: {rows} raw rows, not {total}")
    finally:
        await conn.close()
    lat = {name: latency(s) for name, s in samples.items()}
    labels = {
        "single": "fenced commit: durable increment, single process, p50",
        "owner": "  the same on the owner node, p50",
        "raw": "  raw asyncpg INSERT (autocommit), same server, p50",
    }
    out = [
        result(
            f"commit.{name}",
            labels[name],
            lat[name]["p50"] / 1000,
            "ms",
            p99_ms=lat[name]["p99"] / 1000,
            mean_ms=lat[name]["mean"] / 1000,
            max_ms=lat[name]["max"] / 1000,
            commits=sizes.commits,
        )
        for name in sides
    ]
    out += [
        result(
            "ratio.commit.p50",
            "fenced commit / raw INSERT, p50 latency (single process)",
            lat["single"]["p50"] / lat["raw"]["p50"],
            "x",
        ),
        result(
            "ratio.commit.p99",
            "fenced commit / raw INSERT, p99 latency (single process)",
            lat["single"]["p99"] / lat["raw"]["p99"],
            "x",
        ),
    ]
    return out


# -- procs: real node processes -------------------------------------------------


class HttpConnection:
    """One keep-alive HTTP/1.1 connection over a raw socket (no client library).

    The load generator should cost as little as possible: it shares the
    machine with the nodes.
    """

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.buffer = b""

    @classmethod
    async def open(cls, port: int) -> HttpConnection:
        return cls(await anyio.connect_tcp("127.0.0.1", port))

    async def get(self, path: str) -> bytes:
        await self.stream.send(f"GET {path} HTTP/1.1\r\nhost: bench\r\n\r\n".encode())
        while True:
            head_end = self.buffer.find(b"\r\n\r\n")
            if head_end >= 0:
                head = self.buffer[:head_end]
                if not head.startswith(b"HTTP/1.1 200"):
                    raise RuntimeError(f"unexpected answer: {head[:60]!r}")
                start = head.lower().index(b"content-length:") + 15
                stop = head.find(b"\r\n", start)
                length = int(head[start : stop if stop >= 0 else len(head)])
                total = head_end + 4 + length
                if len(self.buffer) >= total:
                    body = self.buffer[head_end + 4 : total]
                    self.buffer = self.buffer[total:]
                    return body
            self.buffer += await self.stream.receive()

    async def aclose(self) -> None:
        await self.stream.aclose()


def start_node(ctx: Context, name: str) -> tuple[subprocess.Popen[str], int]:
    """``pyobjects serve --postgres`` of benchmarks/_cluster_app.py: (process, port)."""
    here = os.path.dirname(os.path.abspath(__file__))
    process = subprocess.Popen(
        [
            *(sys.executable, "-m", "pyobjects", "serve", "_cluster_app:worker"),
            *("--app-dir", here, "--postgres", ctx.dsn, "--schema", ctx.schema),
            *("--port", "0", "--node-port", str(free_port()), "--var", f"NODE={name}"),
            *("--log-level", "warning"),
        ],
        cwd=ctx.cache,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    if "pyobjects: serving" not in line:
        process.kill()
        process.wait()
        raise RuntimeError(f"node {name} did not start: {line!r}")
    url = line.split(" at ")[1].split()[0]
    return process, int(url.rsplit(":", 1)[1])


def stop_node(process: subprocess.Popen[str]) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()


async def bench_procs(sizes: Sizes, ctx: Context) -> list[Result]:
    nodes: dict[str, subprocess.Popen[str]] = {}
    ports: dict[str, int] = {}
    try:
        for name in ("a", "b"):
            nodes[name], ports[name] = start_node(ctx, name)
        return await procs_paths(sizes, ctx, ports)
    finally:
        for process in nodes.values():
            stop_node(process)


async def procs_paths(
    sizes: Sizes, ctx: Context, ports: dict[str, int]
) -> list[Result]:
    results: list[Result] = []
    summary: Summary = {}
    first = await HttpConnection.open(ports["a"])
    try:
        await first.get("/read")  # places the object by rendezvous hashing
        owner = (await first.get("/where")).decode()
        start = int(await first.get("/read"))
    finally:
        await first.aclose()
    port = {"owner": ports[owner], "hop": ports["b" if owner == "a" else "a"]}
    made = 0
    clock = time.perf_counter_ns

    async def seq_calls(method: str) -> dict[str, list[int]]:
        nonlocal made
        conns = {p: await HttpConnection.open(port[p]) for p in port}
        path = f"/{method}"
        samples: dict[str, list[int]] = {p: [] for p in port}
        try:
            for _ in range(sizes.calls):
                for p, conn in conns.items():
                    t0 = clock()
                    await conn.get(path)
                    samples[p].append(clock() - t0)
                    made += method == "incr"
        finally:
            for conn in conns.values():
                await conn.aclose()
        return samples

    async def conc_calls(p: str, method: str) -> tuple[list[int], list[int], float]:
        nonlocal made
        conns = [await HttpConnection.open(port[p]) for _ in range(ctx.callers)]
        path = f"/{method}"
        counts = [0] * ctx.callers
        samples: list[int] = []
        gc.collect()
        begin = clock()
        deadline = begin + int(sizes.seconds * 1e9)

        async def caller(index: int) -> None:
            n = 0
            conn = conns[index]
            while (t0 := clock()) < deadline:
                await conn.get(path)
                samples.append(clock() - t0)
                n += 1
            counts[index] = n

        try:
            async with anyio.create_task_group() as tg:
                for i in range(ctx.callers):
                    tg.start_soon(caller, i)
        finally:
            for conn in conns:
                await conn.aclose()
        if method == "incr":
            made += sum(counts)
        return counts, samples, (clock() - begin) / 1e9

    for method in METHODS:
        rates: dict[str, list[float]] = {p: [] for p in port}
        lat: dict[str, list[int]] = {p: [] for p in port}
        for round_ in range(sizes.rounds + 1):  # round 0 warms up
            got = await seq_calls(method)
            if round_:
                for p in port:
                    rates[p].append(sizes.calls / (sum(got[p]) / 1e9))
                    lat[p] += got[p]
        for p in port:
            q = latency(lat[p])
            summary[(method, "seq", p)] = {"rate": max(rates[p]), **q}
            results.append(
                result(
                    f"procs.{method}.seq.{p}",
                    f"processes: {method}, {label(p)}, 1 caller",
                    max(rates[p]),
                    "ops/s",
                    rounds=rounded(rates[p]),
                    p50_us=q["p50"],
                    p99_us=q["p99"],
                )
            )
    for method in METHODS:
        rates = {p: [] for p in port}
        lat = {p: [] for p in port}
        for round_ in range(sizes.rounds + 1):
            for p in port:
                counts, got_samples, seconds = await conc_calls(p, method)
                if round_:
                    rates[p].append(sum(counts) / seconds)
                    lat[p] += got_samples
        for p in port:
            q = latency(lat[p])
            summary[(method, "conc", p)] = {"rate": max(rates[p]), **q}
            results.append(
                result(
                    f"procs.{method}.conc.{p}",
                    f"processes: {method}, {label(p)}, {ctx.callers} callers",
                    max(rates[p]),
                    "ops/s",
                    rounds=rounded(rates[p]),
                    p50_us=q["p50"],
                    p99_us=q["p99"],
                )
            )
    check = await HttpConnection.open(port["owner"])
    try:
        if (n := int(await check.get("/read"))) != start + made:
            raise AssertionError(f"procs: counter is {n}, not {start + made}")
    finally:
        await check.aclose()
    results[0].details["owner_node"] = owner
    results[0].details["increments_checked"] = made
    BENCH_SUMMARY["procs"] = summary
    return results


# -- driver ----------------------------------------------------------------------

BENCHMARKS: dict[str, Callable[[Sizes, Context], Awaitable[list[Result]]]] = {
    "rpc": bench_rpc,
    "commit": bench_commit,
    "procs": bench_procs,
}
BENCH_SUMMARY: dict[str, dict[tuple[str, str, str], dict[str, float]]] = {}


def rpc_ratios(results: list[Result], callers: int) -> list[Result]:
    """hop/owner and owner/single throughput, per method and concurrency."""
    rate = {r.key: r.value for r in results}
    out = []
    for prefix, where in (("", ""), ("procs.", "processes: ")):
        for method in METHODS:
            for mode, who in (("seq", "1 caller"), ("conc", f"{callers} callers")):
                key = f"{prefix}{method}.{mode}"
                owner = rate.get(f"{key}.owner")
                if owner is None:
                    continue
                out.append(
                    result(
                        f"ratio.{key}.hop",
                        f"{where}{method}, {who}: one hop / owner node, calls/s",
                        rate[f"{key}.hop"] / owner,
                        "x",
                        **({"at_least": HOP_TARGET} if mode == "seq" else {}),
                    )
                )
                if (single := rate.get(f"{key}.single")) is not None:
                    out.append(
                        result(
                            f"ratio.{key}.owner",
                            f"{where}{method}, {who}: owner node / single process",
                            owner / single,
                            "x",
                        )
                    )
    return out


def print_latency(title: str, summary: Summary) -> None:
    if not summary:
        return
    print(f"\nLatency, {title} (calls/s: best round; p50/p99: all rounds)")
    print(
        f"  {'method':<6} {'callers':<8} {'path':<8} {'calls/s':>10}"
        f" {'p50':>11} {'p99':>11}"
    )
    for (method, mode, path), v in summary.items():
        print(
            f"  {method:<6} {mode:<8} {path:<8} {v['rate']:>10,.0f}"
            f" {fmt(v['p50'] / 1000, 'ms'):>11} {fmt(v['p99'] / 1000, 'ms'):>11}"
        )


async def run_all(
    args: argparse.Namespace,
) -> tuple[str, list[Result], list[tuple[str, cProfile.Profile]]]:
    """The selected benchmarks, in one schema dropped at the end."""
    sizes = QUICK if args.quick else FULL
    with tempfile.TemporaryDirectory(prefix="pyobjects-clbench-", dir=args.tmpdir) as d:
        ctx = Context(
            dsn=args.dsn,
            schema=f"pyobjects_bench_{uuid.uuid4().hex[:8]}",
            callers=args.callers,
            cache=d,
        )
        server = await server_info(ctx.dsn)
        results: list[Result] = []
        profiles: list[tuple[str, cProfile.Profile]] = []
        async with bench_connection(ctx.dsn, ctx.schema) as conn:
            await conn.execute(ctx.q("CREATE SCHEMA IF NOT EXISTS {s}"))
            for name, bench in BENCHMARKS.items():
                if args.only and name not in args.only:
                    continue
                run = functools.partial(bench, sizes, ctx)
                for r in await run_benchmark(
                    name, run, profiles if args.profile else None
                ):
                    r.bench = name
                    results.append(r)
    return server, results, profiles


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Cluster calls and fenced commits (see benchmarks/README.md)."
    )
    add_dsn_argument(parser)
    parser.add_argument("--quick", action="store_true", help="short run (about 20 s)")
    parser.add_argument(
        "--callers",
        type=int,
        default=50,
        help="concurrent callers of the concurrent rounds (default: %(default)s)",
    )
    add_run_arguments(parser, tuple(BENCHMARKS))
    parser.add_argument(
        "--tmpdir",
        default=tempfile.gettempdir(),
        help="directory of the backends' local copies (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    args.backend = "asyncio"  # asyncpg runs on asyncio only
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    info = machine_info(args)
    load = "load average {:.2f} {:.2f} {:.2f} at the start".format(*os.getloadavg())
    started = time.perf_counter()
    server, results, profiles = anyio.run(run_all, args, backend="asyncio")
    info["seconds"] = round(time.perf_counter() - started, 1)
    table = [r for r in results if not r.key.startswith("ratio.")]
    ratios = rpc_ratios(table, args.callers) + [
        r for r in results if r.key.startswith("ratio.")
    ]
    nodes = (
        "rpc, commit: in-process (2 Runtime(node=Node()) + 1 Runtime without node);"
        " procs: 2 pyobjects serve processes, driven over HTTP"
    )
    print_report(
        info, table, ratios, extra={"postgres": server, "load": load, "nodes": nodes}
    )
    print_latency("in-process nodes", BENCH_SUMMARY.get("rpc", {}))
    print_latency("node processes, over HTTP", BENCH_SUMMARY.get("procs", {}))
    for name, profile in profiles:
        print(f"\ncProfile of {name} (the profiler slows every call down)")
        stats = pstats.Stats(profile, stream=sys.stdout)
        stats.sort_stats("tottime").print_stats(args.profile)
    if args.json:
        info["postgres"] = server
        info["load"] = load
        info["nodes"] = nodes
        write_json(args.json, info, table, ratios)


if __name__ == "__main__":
    main()
