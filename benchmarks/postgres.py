"""Benchmark of ``PostgresBackend``: durable increments against raw asyncpg, cold opens.

    python benchmarks/postgres.py [--dsn DSN] [--quick] [--only NAME...]
                                  [--callers N] [--pool-size N] [--state-mib N]
                                  [--json PATH] [--tmpdir DIR] [--profile [TOP]]

Everything runs against one PostgreSQL server (``--dsn``, default
``$PYOBJECTS_TEST_POSTGRES`` or ``postgresql://127.0.0.1:5432/test``) in a
schema of its own (``pyobjects_bench_<random>``), dropped at the end. Three
benchmarks (``--only`` takes one or more names):

- ``seq``: one caller. ``v = await storage.get("n"); storage.put("n", v + 1)``
  per RPC call on a ``Runtime`` over ``PostgresBackend`` (each call's commit
  is in PostgreSQL before the call returns), against the same loop of raw
  asyncpg transactions on one connection (``async with conn.transaction():
  UPDATE counter SET n = n + 1``: ``BEGIN``, ``UPDATE``, ``COMMIT``, three
  round trips), and, for reference, one autocommit ``UPDATE`` per commit (one
  round trip, as the backend's commit statement). The sides take turns call
  by call, so a slow phase of a shared machine hits them alike. Target: the
  object >= 0.7x raw transactions.
- ``conc``: ``--callers`` (100) tasks calling ``incr()`` on one counter
  object, against as many tasks running the raw transaction on one row
  through an asyncpg pool of ``--pool-size`` (10) connections, the backend's
  pool the same size; rounds alternate between the sides. The object
  coalesces the writes made while a commit is in flight into the next one
  (group commit); the row lock serializes the raw transactions. Target: the
  object >= 5x raw.
- ``cold``: an object holding ``--state-mib`` (1) MiB of incompressible
  state, as KV (16 values of 64 KiB) and as SQL (a table of 1 KiB rows),
  each written in 16 commits; the time of the first call after
  ``pyobjects.testing.evict()`` (the lease taken again, the log read from
  PostgreSQL, the local SQLite copy rebuilt, the instance constructed), and
  of the first call in a fresh ``Runtime`` on a new backend (as in another
  process). References: the same opens on ``SQLiteBackend`` and a raw
  ``SELECT`` of one ``bytea`` of the same size. The local copies (the
  backend's ``cache_directory``) go in ``--tmpdir``: rebuilding writes the
  whole database file there, so ``--tmpdir /dev/shm`` (tmpfs) is faster than
  a disk.

Every count is checked (the counters must equal the calls made, in
PostgreSQL too, and every reopened object's state its digest). The report
follows benchmarks/run.py: the machine, one table with the targets, the
ratios (over all rounds: total calls over total time of each side), the
details. Needs the ``postgres`` extra (asyncpg); runs on asyncio only.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import os
import pstats
import random
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio
import asyncpg

from pyobjects import DurableObject, DurableObjectState, Runtime
from pyobjects.storage import PostgresBackend, SQLiteBackend, StorageBackend
from pyobjects.testing import evict

# benchmarks/ is not a package: run.py sits next to this script.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import add_run_arguments, run_benchmark
from run import (
    Counter,
    Result,
    concurrent,
    machine_info,
    print_report,
    result,
    rounded,
    timed,
    write_json,
)

if TYPE_CHECKING:
    import cProfile
    from collections.abc import AsyncIterator, Awaitable, Callable

    # A connection of its own or one from a pool.
    Conn = asyncpg.Connection[Any] | asyncpg.pool.PoolConnectionProxy[Any]

DEFAULT_DSN = "postgresql://127.0.0.1:5432/test"


def add_dsn_argument(parser: argparse.ArgumentParser) -> None:
    """Add ``--dsn`` (default: ``$PYOBJECTS_TEST_POSTGRES``, else the local server)."""
    parser.add_argument(
        "--dsn",
        default=os.environ.get("PYOBJECTS_TEST_POSTGRES", DEFAULT_DSN),
        help="PostgreSQL to use (default: $PYOBJECTS_TEST_POSTGRES or %(default)s)",
    )


@contextlib.asynccontextmanager
async def bench_connection(
    dsn: str, schema: str
) -> AsyncIterator[asyncpg.Connection[Any]]:
    """A connection to *dsn*; the benchmark's *schema* is dropped at the end."""
    conn = await asyncpg.connect(dsn)
    try:
        yield conn
    finally:
        with anyio.CancelScope(shield=True):
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
            await conn.close()


SEQ_TARGET = 0.7  # object increments / raw transactions, one caller
CONC_TARGET = 5.0  # the same with --callers concurrent callers
COMMITS = 16  # the cold-open state is written in this many commits
ROW_BYTES = 1024  # one row of the SQL state


@dataclass(frozen=True)
class Sizes:
    """Work of one run."""

    rounds: int  # rounds per measurement; the best is reported
    calls: int  # sequential calls per side per round
    seconds: float  # time box of one concurrent round
    opens: int  # cold opens after evict() per kind of state
    fresh: int  # cold opens in a fresh Runtime per kind of state


FULL = Sizes(rounds=5, calls=400, seconds=2.0, opens=20, fresh=3)
QUICK = Sizes(rounds=3, calls=100, seconds=0.5, opens=5, fresh=2)


@dataclass(frozen=True)
class Context:
    """What every benchmark needs besides its sizes."""

    dsn: str
    schema: str
    callers: int
    pool_size: int
    state_bytes: int
    tmpdir: str
    cache: str  # the backends' local copies (cache_directory), in tmpdir

    def backend(self) -> PostgresBackend:
        return PostgresBackend(
            self.dsn,
            schema=self.schema,
            pool_size=self.pool_size,
            cache_directory=self.cache,
        )

    def q(self, statement: str) -> str:
        return statement.format(s=f'"{self.schema}"')


# -- objects under test ------------------------------------------------------------


class KvState(DurableObject):
    """Holds its state as KV values; ``ping()`` touches nothing."""

    async def fill(self, first: int, values: list[bytes]) -> None:
        self.ctx.storage.put(
            {f"v{first + i:05d}": value for i, value in enumerate(values)}
        )

    async def ping(self) -> None:
        return None

    async def digest(self) -> str:
        h = hashlib.sha256()
        for key, value in (await self.ctx.storage.list()).items():
            h.update(key.encode())
            h.update(value)
        return h.hexdigest()


class SqlState(DurableObject):
    """Holds its state as rows of a SQL table; ``ping()`` touches nothing."""

    def __init__(self, ctx: DurableObjectState, env: Any) -> None:
        super().__init__(ctx, env)
        ctx.storage.sql.exec(
            "CREATE TABLE IF NOT EXISTS blobs (id INTEGER PRIMARY KEY, data BLOB)"
        )

    async def fill(self, first: int, rows: list[bytes]) -> None:
        execute = self.ctx.storage.sql.exec
        for i, data in enumerate(rows):
            execute("INSERT INTO blobs (id, data) VALUES (?, ?)", first + i, data)

    async def ping(self) -> None:
        return None

    async def digest(self) -> str:
        h = hashlib.sha256()
        for key, value in self.ctx.storage.sql.exec(
            "SELECT id, data FROM blobs ORDER BY id"
        ).raw():
            h.update(f"v{key:05d}".encode())
            h.update(value)
        return h.hexdigest()


BINDINGS: dict[str, type[DurableObject]] = {
    "COUNTER": Counter,
    "KV": KvState,
    "SQL": SqlState,
}


# -- raw asyncpg -------------------------------------------------------------------

RAW_SCHEMA = "CREATE TABLE {s}.raw_counter (id integer PRIMARY KEY, n bigint NOT NULL)"
RAW_UPDATE = "UPDATE {s}.raw_counter SET n = n + 1 WHERE id = $1"


async def raw_setup(conn: Conn, ctx: Context) -> None:
    await conn.execute(ctx.q("CREATE SCHEMA IF NOT EXISTS {s}"))
    await conn.execute(ctx.q(RAW_SCHEMA))
    await conn.execute(
        ctx.q("INSERT INTO {s}.raw_counter (id, n) VALUES (1, 0), (2, 0), (3, 0)")
    )


async def raw_value(conn: Conn, ctx: Context, row: int) -> int:
    n = await conn.fetchval(ctx.q("SELECT n FROM {s}.raw_counter WHERE id = $1"), row)
    return int(n)


async def head(conn: Conn, ctx: Context, object_id: str) -> int:
    """The sequence number of the object's last commit in PostgreSQL."""
    value = await conn.fetchval(
        ctx.q("SELECT head FROM {s}.objects WHERE object_id = $1"), object_id
    )
    return int(value or 0)


# -- seq: one caller ---------------------------------------------------------------


async def bench_seq(sizes: Sizes, ctx: Context) -> list[Result]:
    conn = await asyncpg.connect(ctx.dsn)
    try:
        update = ctx.q(RAW_UPDATE)

        async def raw_tx() -> None:
            async with conn.transaction():
                await conn.execute(update, 1)

        async def raw_auto() -> None:
            await conn.execute(update, 2)

        async with Runtime(bindings=BINDINGS, storage=ctx.backend()) as rt:
            stub = rt.env.COUNTER.get_by_name("seq")
            await stub.reset()
            sides: dict[str, Callable[[], Awaitable[Any]]] = {
                "object": stub.incr,
                "raw": raw_tx,
                "auto": raw_auto,
            }
            rates: dict[str, list[float]] = {name: [] for name in sides}
            clock = time.perf_counter
            for round_ in range(sizes.rounds + 1):  # round 0 warms up
                spent = dict.fromkeys(sides, 0.0)
                for _ in range(sizes.calls):
                    for name, call in sides.items():
                        t0 = clock()
                        await call()
                        spent[name] += clock() - t0
                if round_:
                    for name in sides:
                        rates[name].append(sizes.calls / spent[name])
            calls = (sizes.rounds + 1) * sizes.calls
            if (final := await stub.value()) != calls:
                raise AssertionError(f"seq: counter {final} != {calls} calls")
            seq_head = await head(conn, ctx, str(stub.id))
        for row in (1, 2):
            if (n := await raw_value(conn, ctx, row)) != calls:
                raise AssertionError(f"seq: raw row {row} is {n}, not {calls}")
    finally:
        await conn.close()

    def all_rounds(values: list[float]) -> float:
        return statistics.harmonic_mean(values)

    obj, raw, auto = rates["object"], rates["raw"], rates["auto"]
    return [
        result(
            "seq.object",
            "durable increments, PostgresBackend, 1 caller",
            max(obj),
            "ops/s",
            rounds=rounded(obj),
            all_rounds=round(all_rounds(obj)),
            ratio_per_round=rounded([o / r for o, r in zip(obj, raw, strict=True)]),
            calls_per_round=sizes.calls,
            commits_in_postgres=seq_head,
        ),
        result(
            "seq.raw",
            "  raw asyncpg: BEGIN; UPDATE; COMMIT, 1 connection",
            max(raw),
            "ops/s",
            rounds=rounded(raw),
            all_rounds=round(all_rounds(raw)),
        ),
        result(
            "seq.auto",
            "  raw asyncpg: one autocommit UPDATE, 1 connection",
            max(auto),
            "ops/s",
            rounds=rounded(auto),
            all_rounds=round(all_rounds(auto)),
        ),
        result(
            "ratio.seq",
            "1 caller: object / raw transactions",
            all_rounds(obj) / all_rounds(raw),
            "x",
            at_least=SEQ_TARGET,
        ),
        result(
            "ratio.seq.auto",
            "1 caller: object / raw autocommit UPDATEs",
            all_rounds(obj) / all_rounds(auto),
            "x",
        ),
    ]


# -- conc: many callers, one counter -----------------------------------------------


async def bench_conc(sizes: Sizes, ctx: Context) -> list[Result]:
    update = ctx.q(RAW_UPDATE)
    pool = await asyncpg.create_pool(
        ctx.dsn, min_size=ctx.pool_size, max_size=ctx.pool_size
    )
    try:

        async def raw_tx() -> None:
            async with pool.acquire() as conn, conn.transaction():
                await conn.execute(update, 3)

        async with Runtime(bindings=BINDINGS, storage=ctx.backend()) as rt:
            stub = rt.env.COUNTER.get_by_name("conc")
            await stub.reset()
            await stub.incr()  # the object is active, "n" cached
            total_obj, total_raw = 1, 0
            obj: list[float] = []
            raw: list[float] = []
            obj_calls = obj_seconds = raw_calls = raw_seconds = 0.0
            spread: list[tuple[int, int]] = []
            async with pool.acquire() as conn:
                first_head = await head(conn, ctx, str(stub.id))
            for round_ in range(sizes.rounds + 1):  # round 0 warms up
                counts, seconds = await timed(
                    concurrent(raw_tx, sizes.seconds, ctx.callers)
                )
                total_raw += sum(counts)
                if round_:
                    raw.append(sum(counts) / seconds)
                    raw_calls += sum(counts)
                    raw_seconds += seconds
                counts, seconds = await timed(
                    concurrent(stub.incr, sizes.seconds, ctx.callers)
                )
                total_obj += sum(counts)
                if round_:
                    obj.append(sum(counts) / seconds)
                    obj_calls += sum(counts)
                    obj_seconds += seconds
                    spread.append((min(counts), max(counts)))
            if (final := await stub.value()) != total_obj:
                raise AssertionError(f"conc: counter {final} != {total_obj} calls")
            async with pool.acquire() as conn:
                commits = await head(conn, ctx, str(stub.id)) - first_head
                if (n := await raw_value(conn, ctx, 3)) != total_raw:
                    raise AssertionError(f"conc: raw row is {n}, not {total_raw}")
    finally:
        await pool.close()
    callers = ctx.callers
    return [
        result(
            "conc.object",
            f"durable increments, PostgresBackend, {callers} callers, 1 object",
            max(obj),
            "ops/s",
            rounds=rounded(obj),
            all_rounds=round(obj_calls / obj_seconds),
            calls_per_caller_min_max=spread,
            increments_per_commit=round((total_obj - 1) / max(commits, 1), 1),
        ),
        result(
            "conc.raw",
            f"  raw asyncpg transactions, {callers} tasks, 1 row,"
            f" pool of {ctx.pool_size}",
            max(raw),
            "ops/s",
            rounds=rounded(raw),
            all_rounds=round(raw_calls / raw_seconds),
        ),
        result(
            "ratio.conc",
            f"{callers} callers: object / raw transactions",
            (obj_calls / obj_seconds) / (raw_calls / raw_seconds),
            "x",
            at_least=CONC_TARGET,
        ),
    ]


# -- cold: opening an object with state --------------------------------------------


def payloads(total: int, size: int, seed: int) -> list[bytes]:
    """Incompressible chunks of *size* bytes adding up to *total*."""
    rng = random.Random(seed)
    return [rng.randbytes(size) for _ in range(max(1, total // size))]


async def fill(stub: Any, kind: str, total: int) -> str:
    """Write the state in COMMITS calls; return its expected digest."""
    chunks = payloads(total, total // COMMITS if kind == "KV" else ROW_BYTES, 1)
    per_call = max(1, len(chunks) // COMMITS)
    h = hashlib.sha256()
    for first in range(0, len(chunks), per_call):
        await stub.fill(first, chunks[first : first + per_call])
    for i, chunk in enumerate(chunks):
        h.update(f"v{i:05d}".encode())
        h.update(chunk)
    return h.hexdigest()


async def first_call_ms(stub: Any) -> float:
    t0 = time.perf_counter()
    await stub.ping()
    return (time.perf_counter() - t0) * 1000


async def cold_opens(
    make_backend: Callable[[], StorageBackend], kind: str, sizes: Sizes, total: int
) -> tuple[list[float], list[float], str]:
    """Milliseconds of the first call after evict(), in fresh runtimes; the id."""
    name = f"cold-{uuid.uuid4().hex[:8]}"
    async with Runtime(bindings=BINDINGS, storage=make_backend()) as rt:
        stub = getattr(rt.env, kind).get_by_name(name)
        expected = await fill(stub, kind, total)
        evicted = []
        for _ in range(sizes.opens + 1):  # the first one warms up
            await evict(stub)
            evicted.append(await first_call_ms(stub))
            if await stub.digest() != expected:
                raise AssertionError(f"cold {kind}: the state changed on reopening")
        del evicted[0]
    fresh = []
    for _ in range(sizes.fresh):
        async with Runtime(bindings=BINDINGS, storage=make_backend()) as rt:
            stub = getattr(rt.env, kind).get_by_name(name)
            fresh.append(await first_call_ms(stub))
            if await stub.digest() != expected:
                raise AssertionError(f"cold {kind}: the state changed in a new runtime")
    return evicted, fresh, str(stub.id)


async def log_size(ctx: Context, object_id: str) -> tuple[int, int]:
    """(commits, compressed bytes) a rebuild of the object reads."""
    conn = await asyncpg.connect(ctx.dsn)
    try:
        row = await conn.fetchrow(
            ctx.q(
                "SELECT count(*), sum(length(c.data)) FROM {s}.commits c"
                " JOIN {s}.objects o USING (namespace, object_id)"
                " WHERE c.object_id = $1 AND c.seq <= o.head AND c.seq >= ("
                " SELECT max(seq) FROM {s}.commits w WHERE w.namespace = c.namespace"
                " AND w.object_id = c.object_id AND w.whole AND w.seq <= o.head)"
            ),
            object_id,
        )
    finally:
        await conn.close()
    assert row is not None
    return int(row[0]), int(row[1] or 0)


async def raw_fetch_ms(ctx: Context, total: int, n: int) -> list[float]:
    """Milliseconds of ``SELECT data`` of one bytea of *total* bytes."""
    conn = await asyncpg.connect(ctx.dsn)
    try:
        await conn.execute(
            ctx.q("CREATE TABLE {s}.raw_blob (id integer PRIMARY KEY, data bytea)")
        )
        # Stored uncompressed and out of line, as the backend's log.
        await conn.execute(
            ctx.q("ALTER TABLE {s}.raw_blob ALTER COLUMN data SET STORAGE EXTERNAL")
        )
        data = random.Random(2).randbytes(total)
        await conn.execute(ctx.q("INSERT INTO {s}.raw_blob VALUES (1, $1)"), data)
        select = ctx.q("SELECT data FROM {s}.raw_blob WHERE id = 1")
        samples = []
        for _ in range(n + 1):
            t0 = time.perf_counter()
            got = await conn.fetchval(select)
            samples.append((time.perf_counter() - t0) * 1000)
            if got != data:
                raise AssertionError("raw fetch: wrong data")
    finally:
        await conn.close()
    return samples[1:]


async def bench_cold(sizes: Sizes, ctx: Context) -> list[Result]:
    total = ctx.state_bytes
    mib = f"{total / (1 << 20):g} MiB"
    results = []
    for kind in ("KV", "SQL"):
        evicted, fresh, object_id = await cold_opens(ctx.backend, kind, sizes, total)
        commits, stored = await log_size(ctx, object_id)
        with tempfile.TemporaryDirectory(
            prefix="pyobjects-pgbench-", dir=ctx.tmpdir
        ) as directory:
            local, _, _ = await cold_opens(
                functools.partial(SQLiteBackend, directory),
                kind,
                Sizes(1, 0, 0.0, sizes.opens, 0),
                total,
            )
        results += [
            result(
                f"cold.{kind.lower()}.evict",
                f"cold open, {mib} of {kind} state, after evict(), median",
                statistics.median(evicted),
                "ms",
                best=min(evicted),
                max=max(evicted),
                opens=len(evicted),
                log_commits_read=commits,
                log_bytes_read=stored,
            ),
            result(
                f"cold.{kind.lower()}.fresh",
                "  the same, first call in a fresh Runtime, median",
                statistics.median(fresh),
                "ms",
                every=rounded(fresh),
            ),
            result(
                f"cold.{kind.lower()}.sqlite",
                "  reference: the same after evict() on SQLiteBackend, median",
                statistics.median(local),
                "ms",
                best=min(local),
            ),
        ]
    samples = await raw_fetch_ms(ctx, total, sizes.opens)
    results.append(
        result(
            "cold.raw",
            f"  reference: raw asyncpg SELECT of one {mib} bytea, median",
            statistics.median(samples),
            "ms",
            best=min(samples),
        )
    )
    return results


# -- driver ------------------------------------------------------------------------

BENCHMARKS: dict[str, Callable[[Sizes, Context], Awaitable[list[Result]]]] = {
    "seq": bench_seq,
    "conc": bench_conc,
    "cold": bench_cold,
}


async def server_info(dsn: str) -> str:
    """The PostgreSQL server and the settings that decide commit latency."""
    conn = await asyncpg.connect(dsn)
    try:
        version = await conn.fetchval("SHOW server_version")
        settings = [
            f"{name}={await conn.fetchval(f'SHOW {name}')}"
            for name in ("synchronous_commit", "fsync", "wal_sync_method")
        ]
    finally:
        await conn.close()
    host = dsn.rsplit("@", 1)[-1]  # no password in the report
    return f"{version} at {host} ({', '.join(settings)})"


async def run_all(
    args: argparse.Namespace,
) -> tuple[str, list[Result], list[tuple[str, cProfile.Profile]]]:
    """The selected benchmarks, in one schema dropped at the end."""
    sizes = QUICK if args.quick else FULL
    with tempfile.TemporaryDirectory(prefix="pyobjects-pgbench-", dir=args.tmpdir) as d:
        return await run_in(args, sizes, d)


async def run_in(
    args: argparse.Namespace, sizes: Sizes, cache: str
) -> tuple[str, list[Result], list[tuple[str, cProfile.Profile]]]:
    ctx = Context(
        dsn=args.dsn,
        schema=f"pyobjects_bench_{uuid.uuid4().hex[:8]}",
        callers=args.callers,
        pool_size=args.pool_size,
        state_bytes=int(args.state_mib * (1 << 20)),
        tmpdir=args.tmpdir,
        cache=cache,
    )
    server = await server_info(ctx.dsn)
    results: list[Result] = []
    profiles: list[tuple[str, cProfile.Profile]] = []
    async with bench_connection(ctx.dsn, ctx.schema) as conn:
        await raw_setup(conn, ctx)
        for name, bench in BENCHMARKS.items():
            if args.only and name not in args.only:
                continue
            results += await run_benchmark(
                name,
                functools.partial(bench, sizes, ctx),
                profiles if args.profile else None,
            )
    return server, results, profiles


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="PostgresBackend against raw asyncpg (see benchmarks/README.md)."
    )
    add_dsn_argument(parser)
    parser.add_argument("--quick", action="store_true", help="short run (about 20 s)")
    parser.add_argument(
        "--callers",
        type=int,
        default=100,
        help="concurrent callers of conc (default: %(default)s)",
    )
    parser.add_argument(
        "--pool-size",
        type=int,
        default=10,
        help="connections of each side's pool (default: %(default)s)",
    )
    parser.add_argument(
        "--state-mib",
        type=float,
        default=1.0,
        help="state of the cold-open objects, MiB (default: %(default)s)",
    )
    add_run_arguments(parser, tuple(BENCHMARKS))
    parser.add_argument(
        "--tmpdir",
        default=tempfile.gettempdir(),
        help="directory of the local SQLite copies (PostgresBackend's"
        " cache_directory) and of the SQLiteBackend reference (default: %(default)s)",
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
    ratios = [r for r in results if r.key.startswith("ratio.")]
    print_report(info, table, ratios, extra={"postgres": server, "load": load})
    for name, profile in profiles:
        print(f"\ncProfile of {name} (the profiler slows every call down)")
        stats = pstats.Stats(profile, stream=sys.stdout)
        stats.sort_stats("tottime").print_stats(args.profile)
    if args.json:
        info["postgres"] = server
        info["load"] = load
        write_json(args.json, info, table, ratios)


if __name__ == "__main__":
    main()
