"""Benchmark of ``ctx.storage.sql.exec`` against raw ``sqlite3``, same statements.

    python benchmarks/sql.py [--quick] [--backend asyncio|trio] [--batch N]
                             [--only SETUP...] [--json PATH] [--tmpdir DIR]
                             [--profile [TOP]]

Two workloads, each measured inside a Durable Object and with plain
``sqlite3`` doing the same statements on the same machine, in the same run
(the two sides take turns call by call, so a slow phase of a shared machine
hits both alike):

- ``insert``: calls of ``--batch`` (100) ``INSERT`` statements each, one
  commit per call. Inside the object, a stub call runs the inserts through
  ``sql.exec()`` and the runtime commits them when the call returns; raw,
  ``BEGIN``, the inserts and ``COMMIT``.
- ``select``: indexed point selects (``WHERE name = ?`` on a secondary
  index of a 10,000-row table), ``--batch`` per call, the row read as a dict
  with ``.one()``; raw, ``fetchall()`` of the same statement (one() reads the
  whole result too, to know there is exactly one row).

Storage: ``SQLiteBackend`` in a fresh temporary directory with its defaults
(WAL, ``synchronous="normal"``, point-in-time recovery on), the same with
``pitr_retention=0``, and ``MemoryBackend`` (an in-memory database per
object) for reference. Raw ``sqlite3`` uses a WAL file database with
``synchronous=NORMAL`` for the first two and ``:memory:`` for the last. The
table reports statements per second (best round; ``all_rounds`` in the
details is the rate over all rounds together) and the ratio to raw over all
rounds together (total statements over total time, each side); the target
is >= 0.7x of raw on ``SQLiteBackend``. ``--only``
takes setups: ``sqlite``, ``sqlite-nopitr``, ``memory``. See
benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import os
import pstats
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio

from pyobjects import DurableObject, Runtime
from pyobjects.storage import MemoryBackend, SQLiteBackend

# benchmarks/ is not a package: run.py sits next to this script.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from run import Result, machine_info, print_report, result, rounded, write_json

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from pyobjects.storage import StorageBackend

SCHEMA = (
    "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT NOT NULL,"
    " value REAL NOT NULL)",
    "CREATE INDEX items_by_name ON items (name)",
)
INSERT = "INSERT INTO items (id, name, value) VALUES (?, ?, ?)"
SELECT = "SELECT id, value FROM items WHERE name = ?"
SELECT_ROWS = 10_000  # rows of the select table
TARGET = 0.7  # of raw sqlite3, on SQLiteBackend


def row(i: int) -> tuple[int, str, float]:
    """The row with primary key *i* (the same on both sides)."""
    return i, f"item-{i:08d}", i * 0.5


@dataclass(frozen=True)
class Sizes:
    """Work of one run."""

    rounds: int  # rounds per measurement; the best is reported
    calls: int  # object calls (raw: transactions or loops) per round


FULL = Sizes(rounds=5, calls=200)
QUICK = Sizes(rounds=3, calls=50)


@dataclass(frozen=True)
class Setup:
    """One storage configuration and its raw sqlite3 counterpart."""

    key: str
    label: str
    make_backend: Callable[[str], StorageBackend]
    raw_file: bool  # raw sqlite3 on a WAL file (else :memory:)


SETUPS = (
    Setup("sqlite", "SQLiteBackend (defaults)", lambda d: SQLiteBackend(d), True),
    Setup(
        "sqlite-nopitr",
        "SQLiteBackend, pitr_retention=0",
        lambda d: SQLiteBackend(d, pitr_retention=0),
        True,
    ),
    Setup("memory", "MemoryBackend", lambda d: MemoryBackend(), False),
)


# -- the object under test ------------------------------------------------------


class Items(DurableObject):
    """Runs batches of the benchmark's statements through ``sql.exec``."""

    def __init__(self, ctx: Any, env: Any) -> None:
        super().__init__(ctx, env)
        ctx.storage.sql.exec("; ".join(SCHEMA))

    async def insert(self, start: int, n: int) -> int:
        execute = self.ctx.storage.sql.exec
        for i in range(start, start + n):
            execute(INSERT, *row(i))
        return n

    async def select(self, names: list[str]) -> int:
        execute = self.ctx.storage.sql.exec
        for name in names:
            execute(SELECT, name).one()  # raises unless exactly one row
        return len(names)

    async def count(self) -> list[int]:
        return list(next(self.ctx.storage.sql.exec("SELECT count(*) FROM items").raw()))


# -- raw sqlite3 -------------------------------------------------------------------


def raw_connect(path: str) -> sqlite3.Connection:
    """A plain connection: autocommit mode, WAL and NORMAL for a file."""
    conn = sqlite3.connect(path, isolation_level=None)
    if path != ":memory:":
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
    for statement in SCHEMA:
        conn.execute(statement)
    return conn


def raw_insert(conn: sqlite3.Connection, start: int, n: int) -> int:
    """One transaction of *n* inserts, as the object's call makes."""
    execute = conn.execute
    execute("BEGIN")
    for i in range(start, start + n):
        execute(INSERT, row(i))
    execute("COMMIT")
    return n


def raw_select(conn: sqlite3.Connection, names: list[str]) -> int:
    """The same selects; the rows as tuples, checked as one() checks them."""
    execute = conn.execute
    for name in names:
        if len(execute(SELECT, (name,)).fetchall()) != 1:
            raise AssertionError(f"raw select of {name!r}: not exactly one row")
    return len(names)


# -- measurements ------------------------------------------------------------------


@dataclass
class Rates:
    """Statements per second of every round, for one side."""

    values: list[float]

    @property
    def best(self) -> float:
        return max(self.values)


async def alternate(
    obj_call: Callable[[Any], Awaitable[object]],
    raw_call: Callable[[Any], object],
    items: list[Any],
    per_call: int,
) -> tuple[float, float]:
    """Statements per second of both sides, calls alternating one by one.

    Alternating call by call (not round by round) exposes both sides to the
    same phases of a shared machine.
    """
    clock = time.perf_counter
    obj_seconds = raw_seconds = 0.0
    gc.collect()
    for item in items:
        t0 = clock()
        await obj_call(item)
        t1 = clock()
        raw_call(item)
        raw_seconds += clock() - t1
        obj_seconds += t1 - t0
    total = len(items) * per_call
    return total / obj_seconds, total / raw_seconds


async def measure(
    setup: Setup, sizes: Sizes, batch: int, tmpdir: str
) -> dict[str, tuple[Rates, Rates]]:
    """Insert and select rates of every round: (object, raw)."""
    out: dict[str, tuple[Rates, Rates]] = {}
    with tempfile.TemporaryDirectory(
        prefix=f"pyobjects-sqlbench-{setup.key}-", dir=tmpdir
    ) as directory:

        def raw_path(name: str) -> str:
            return os.path.join(directory, name) if setup.raw_file else ":memory:"

        backend = setup.make_backend(os.path.join(directory, "data"))
        async with Runtime(bindings={"ITEMS": Items}, storage=backend) as rt:
            inserts = rt.env.ITEMS.get_by_name("inserts")
            selects = rt.env.ITEMS.get_by_name("selects")
            conn = raw_connect(raw_path("raw-insert.sqlite"))
            select_conn = raw_connect(raw_path("raw-select.sqlite"))
            try:
                # Inserts: both sides insert the same rows, one call (one
                # transaction) at a time, the calls alternating.
                async def insert(start: int) -> None:
                    await inserts.insert(start, batch)

                def raw_insert_batch(start: int) -> None:
                    raw_insert(conn, start, batch)

                obj, raw = Rates([]), Rates([])
                next_id = 0
                for _ in range(sizes.rounds + 1):  # the first round warms up
                    starts = list(range(next_id, next_id + sizes.calls * batch, batch))
                    next_id += sizes.calls * batch
                    o, r = await alternate(insert, raw_insert_batch, starts, batch)
                    obj.values.append(o)
                    raw.values.append(r)
                del obj.values[0], raw.values[0]
                check_count(conn, next_id, "raw inserts")
                (n,) = await inserts.count()
                if n != next_id:
                    raise AssertionError(
                        f"object inserts: {n} rows, expected {next_id}"
                    )
                out["insert"] = (obj, raw)

                # Selects: the same table on both sides, the same random names.
                for start in range(0, SELECT_ROWS, 100):
                    await selects.insert(start, 100)
                    raw_insert(select_conn, start, 100)
                rng = random.Random(42)
                names = [
                    [row(rng.randrange(SELECT_ROWS))[1] for _ in range(batch)]
                    for _ in range(sizes.calls)
                ]

                async def select(chunk: list[str]) -> None:
                    if await selects.select(chunk) != batch:
                        raise AssertionError("object selects: rows missing")

                def raw_select_batch(chunk: list[str]) -> None:
                    if raw_select(select_conn, chunk) != batch:
                        raise AssertionError("raw selects: rows missing")

                obj, raw = Rates([]), Rates([])
                for _ in range(sizes.rounds + 1):
                    o, r = await alternate(select, raw_select_batch, names, batch)
                    obj.values.append(o)
                    raw.values.append(r)
                del obj.values[0], raw.values[0]
                out["select"] = (obj, raw)
            finally:
                conn.close()
                select_conn.close()
    return out


def check_count(conn: sqlite3.Connection, expected: int, what: str) -> None:
    (n,) = conn.execute("SELECT count(*) FROM items").fetchone()
    if n != expected:
        raise AssertionError(f"{what}: {n} rows, expected {expected}")


async def run_all(args: argparse.Namespace) -> tuple[list[Result], list[Result]]:
    """Every setup and workload: the rates, and the ratios to raw sqlite3."""
    sizes = QUICK if args.quick else FULL
    batch = args.batch
    results: list[Result] = []
    ratios: list[Result] = []
    for setup in SETUPS:
        if args.only and setup.key not in args.only:
            continue
        print(f"running {setup.key} ...", end="", file=sys.stderr, flush=True)
        started = time.perf_counter()
        measured = await measure(setup, sizes, batch, args.tmpdir)
        print(f" {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)
        on_disk = setup.raw_file
        for workload, (obj, raw) in measured.items():
            what = "inserts" if workload == "insert" else "indexed point selects"
            per_round = [o / r for o, r in zip(obj.values, raw.values, strict=True)]
            results.append(
                result(
                    f"{setup.key}.{workload}",
                    f"{setup.label}: {what}, {batch} per call",
                    obj.best,
                    "ops/s",
                    rounds=rounded(obj.values),
                    all_rounds=round(statistics.harmonic_mean(obj.values)),
                    ratio_to_raw_per_round=rounded(per_round),
                    calls_per_round=sizes.calls,
                )
            )
            results.append(
                result(
                    f"{setup.key}.{workload}.raw",
                    f"  raw sqlite3 ({'WAL file' if on_disk else ':memory:'}),"
                    " same statements",
                    raw.best,
                    "ops/s",
                    rounds=rounded(raw.values),
                    all_rounds=round(statistics.harmonic_mean(raw.values)),
                )
            )
            ratios.append(
                result(
                    f"ratio.{setup.key}.{workload}",
                    f"{setup.label}: {what} / raw",
                    # All rounds together (the same work each): an archive of
                    # the history (after 1,024 commits or ~8 MiB of WAL) lands
                    # in some rounds only.
                    statistics.harmonic_mean(obj.values)
                    / statistics.harmonic_mean(raw.values),
                    "x",
                    **({"at_least": TARGET} if on_disk else {}),
                )
            )
    return results, ratios


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="sql.exec() against raw sqlite3 (see benchmarks/README.md)."
    )
    parser.add_argument("--quick", action="store_true", help="short run (about 10 s)")
    parser.add_argument("--backend", choices=("asyncio", "trio"), default="asyncio")
    parser.add_argument(
        "--batch",
        type=int,
        default=100,
        help="statements per object call (default: %(default)s)",
    )
    parser.add_argument(
        "--only",
        nargs="+",
        choices=[setup.key for setup in SETUPS],
        metavar="SETUP",
        help=f"run only these: {', '.join(setup.key for setup in SETUPS)}",
    )
    parser.add_argument("--json", metavar="PATH", help="also write the results here")
    parser.add_argument(
        "--profile",
        type=int,
        nargs="?",
        const=25,
        metavar="TOP",
        help="run under cProfile and print the TOP (25) functions by own time",
    )
    parser.add_argument(
        "--tmpdir",
        default=tempfile.gettempdir(),
        help="directory for the SQLite files (default: %(default)s)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    info = machine_info(args)
    started = time.perf_counter()
    profile = cProfile.Profile() if args.profile else None
    if profile is not None:
        profile.enable()
    results, ratios = anyio.run(run_all, args, backend=args.backend)
    if profile is not None:
        profile.disable()
    info["seconds"] = round(time.perf_counter() - started, 1)
    print_report(info, results, ratios)
    if profile is not None:
        print("\ncProfile (the profiler slows every call down)")
        stats = pstats.Stats(profile, stream=sys.stdout)
        stats.sort_stats("tottime").print_stats(args.profile)
    if args.json:
        write_json(args.json, info, results, ratios)


if __name__ == "__main__":
    main()
