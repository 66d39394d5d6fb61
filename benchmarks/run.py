"""Benchmarks of pyobjects: RPC latency, storage, commit rates, objects, memory.

    python benchmarks/run.py [--quick] [--backend asyncio|trio] [--only NAME...]
                             [--json PATH] [--tmpdir DIR]

Prints the machine, then one table of results with their targets, then the
ratios and the details. Benchmarks (``--only`` takes one or more names):

- ``rpc``: round trip of ``await stub.ping()`` on one live object (no storage).
- ``get``: ``await ctx.storage.get("k")`` of a cached key, inside the object.
- ``incr-memory``: counter increments on the memory backend, one caller and
  100 concurrent callers.
- ``incr-sqlite``: the same on the SQLite backend, ``synchronous`` "normal"
  and "full".
- ``raw-sqlite``: plain ``sqlite3`` commits with the same settings, the
  physical limit of ``incr-sqlite``.
- ``new-objects``: calls to distinct ids, each constructing an object.
- ``peak-memory``: peak RSS after calls to 1,000,000 distinct ids (100,000
  with ``--quick``), in child processes.

Every measurement runs in a few rounds and reports the best one (the others
are listed under Details): shared machines are noisy. Only the public API is
used (``Runtime.statistics()`` counts live instances).
See benchmarks/README.md for what each number means.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import gc
import json
import math
import os
import platform
import pstats
import resource
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from importlib.metadata import version
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import anyio
import anyio.lowlevel
from _common import add_run_arguments, cpu_model, run_benchmark

from pyobjects import AlarmInfo, DurableObject, DurableObjectState, Runtime, __version__
from pyobjects.storage import SQLiteBackend
from pyobjects.testing import ManualClock, run_in_durable_object

if TYPE_CHECKING:
    import cProfile
    from collections.abc import Awaitable, Callable

T = TypeVar("T")
SyncLevel = Literal["normal", "full"]
SYNC_LEVELS: tuple[SyncLevel, ...] = ("normal", "full")
CONCURRENT_CALLERS = 100
# Sequential loops look at the clock once per chunk of calls.
CHUNK = 64
# new-objects and the "yielding" peak-memory driver yield to the event loop
# once per this many calls (as a server does on I/O): the idle-eviction timer
# is a task, and it only runs when the caller yields.
YIELD_EVERY = 1000
IDLE_TIMEOUT = 1.0
SCRIPT = os.path.abspath(__file__)


# -- sizes -------------------------------------------------------------------


@dataclass(frozen=True)
class Sizes:
    """Iteration counts and time boxes of one run."""

    rounds: int  # every measurement is repeated; the best round is reported
    latency_rounds: int  # rounds of rpc and get (they are short)
    warmup: int  # calls before the latency rounds
    latency_calls: int  # timed calls per latency round (rpc, get)
    seconds: float  # time box of one throughput round
    peak_objects: int  # distinct ids called by each peak-memory child
    alarm_objects: int  # objects with an alarm in the alarms benchmark


FULL = Sizes(
    rounds=3,
    latency_rounds=5,
    warmup=10_000,
    latency_calls=100_000,
    seconds=1.0,
    peak_objects=1_000_000,
    alarm_objects=100_000,
)
QUICK = Sizes(
    rounds=2,
    latency_rounds=3,
    warmup=2_000,
    latency_calls=15_000,
    seconds=0.25,
    peak_objects=100_000,
    alarm_objects=10_000,
)


# -- results -----------------------------------------------------------------


@dataclass
class Result:
    """One number of the table, with its target if it has one."""

    key: str
    label: str
    value: float
    unit: str
    target: str | None = None  # e.g. "<= 4.00 us"
    ok: bool | None = None
    details: dict[str, Any] = field(default_factory=dict)
    bench: str = ""  # the benchmark that produced it


def result(
    key: str,
    label: str,
    value: float,
    unit: str,
    *,
    at_most: float | None = None,
    at_least: float | None = None,
    **details: Any,
) -> Result:
    """Build a result, checking it against ``at_most`` or ``at_least``."""
    target: str | None = None
    ok: bool | None = None
    if at_most is not None:
        target, ok = f"<= {fmt(at_most, unit)}", value <= at_most
    elif at_least is not None:
        target, ok = f">= {fmt(at_least, unit)}", value >= at_least
    return Result(key, label, value, unit, target, ok, details)


def fmt(value: float, unit: str) -> str:
    """Format a value with its unit for the table."""
    if unit == "x":
        return f"{value:.2f}x"
    if unit in {"us", "ms", "MiB"} and value < 100:
        return f"{value:,.2f} {unit}"
    return f"{value:,.0f} {unit}".rstrip()


def percentile(ordered: list[int], q: float) -> int:
    """Nearest-rank percentile of an already sorted list."""
    return ordered[max(1, math.ceil(q * len(ordered))) - 1]


def latency(samples: list[int]) -> dict[str, float]:
    """p50 / p99 / p99.9 / max / mean of nanosecond samples, in microseconds."""
    ordered = sorted(samples)
    return {
        "p50": percentile(ordered, 0.50) / 1000,
        "p99": percentile(ordered, 0.99) / 1000,
        "p999": percentile(ordered, 0.999) / 1000,
        "max": ordered[-1] / 1000,
        "mean": sum(ordered) / len(ordered) / 1000,
    }


def timer_overhead_ns(n: int = 100_000) -> int:
    """Median cost of one ``perf_counter_ns()`` pair around nothing."""
    clock = time.perf_counter_ns
    samples = [0] * n
    for i in range(n):
        t0 = clock()
        samples[i] = clock() - t0
    samples.sort()
    return samples[n // 2]


def rounded(values: list[float]) -> list[float]:
    """Values of the rounds, for the details (3 significant digits)."""
    return [float(f"{v:.3g}") for v in values]


# -- Durable Objects under test ----------------------------------------------


class Empty(DurableObject):
    """No storage at all: measures the call path alone."""

    async def ping(self) -> None:
        return None


class Counter(DurableObject):
    """The benchmark counter: one read and one write per increment."""

    async def reset(self) -> None:
        self.ctx.storage.put("n", 0)

    async def incr(self) -> int:
        storage = self.ctx.storage
        v = await storage.get("n")
        storage.put("n", v + 1)
        return v + 1  # type: ignore[no-any-return]

    async def value(self) -> int:
        return await self.ctx.storage.get("n")  # type: ignore[no-any-return]


class Store(DurableObject):
    """Holds the key ``k`` for the cached-get benchmark."""

    async def setup(self) -> None:
        self.ctx.storage.put("k", 42)


class Plain:
    """The floor: an ordinary object with an async method, no pyobjects."""

    async def ping(self) -> None:
        return None


# -- 1. RPC round trip --------------------------------------------------------


async def timed_calls(call: Callable[[], Awaitable[Any]], n: int) -> list[int]:
    """Await *call* n times, timing each await (nanoseconds)."""
    clock = time.perf_counter_ns
    samples = [0] * n
    for i in range(n):
        t0 = clock()
        await call()
        samples[i] = clock() - t0
    return samples


async def loop_ns(call: Callable[[], Awaitable[Any]], n: int) -> int:
    """Await *call* n times in a plain loop; return the total nanoseconds."""
    clock = time.perf_counter_ns
    t0 = clock()
    for _ in range(n):
        await call()
    return clock() - t0


async def bench_rpc(sizes: Sizes, ctx: Context) -> list[Result]:
    n = sizes.latency_calls
    rounds: list[dict[str, float]] = []
    loops: list[float] = []
    async with Runtime(bindings={"EMPTY": Empty}) as rt:
        stub = rt.env.EMPTY.get_by_name("rpc")
        for _ in range(sizes.warmup):
            await stub.ping()
        for _ in range(sizes.latency_rounds):
            gc.collect()
            rounds.append(latency(await timed_calls(stub.ping, n)))
            gc.collect()
            loops.append(await loop_ns(stub.ping, n) / n / 1000)
    plain = Plain()
    floor = min(
        [await loop_ns(plain.ping, n) / n / 1000 for _ in range(sizes.latency_rounds)]
    )
    best = min(rounds, key=lambda r: r["p50"])
    details: dict[str, Any] = {
        "calls_per_round": n,
        "p50_rounds": rounded([r["p50"] for r in rounds]),
        "timer_overhead_ns": ctx.timer_ns,
        **{k: round(v, 2) for k, v in best.items()},
    }
    return [
        result("rpc.p50", "RPC ping() p50", best["p50"], "us", at_most=4.0, **details),
        result("rpc.p99", "RPC ping() p99", best["p99"], "us"),
        result("rpc.mean", "RPC ping() mean", best["mean"], "us"),
        result(
            "rpc.loop",
            "RPC ping() loop throughput",
            1e6 / min(loops),
            "ops/s",
            us_per_call_rounds=rounded(loops),
        ),
        result("rpc.floor", "plain `await obj.ping()`, no pyobjects", floor, "us"),
    ]


# -- 2. Cached get ------------------------------------------------------------


async def bench_get(sizes: Sizes, ctx: Context) -> list[Result]:
    n = sizes.latency_calls

    async def body(
        instance: Any, state: DurableObjectState
    ) -> tuple[list[dict[str, float]], list[float]]:
        del instance
        storage = state.storage
        clock = time.perf_counter_ns
        await storage.get("k")  # read once: the value is cached from now on
        for _ in range(sizes.warmup):
            await storage.get("k")
        rounds, loops = [], []
        for _ in range(sizes.latency_rounds):
            gc.collect()
            samples = [0] * n
            for i in range(n):
                t0 = clock()
                await storage.get("k")
                samples[i] = clock() - t0
            rounds.append(latency(samples))
            gc.collect()
            t0 = clock()
            for _ in range(n):
                await storage.get("k")
            loops.append((clock() - t0) / n / 1000)
        return rounds, loops

    async with Runtime(bindings={"STORE": Store}) as rt:
        stub = rt.env.STORE.get_by_name("get")
        await stub.setup()
        rounds, loops = await run_in_durable_object(stub, body)
    best = min(rounds, key=lambda r: r["p50"])
    details: dict[str, Any] = {
        "calls_per_round": n,
        "p50_rounds": rounded([r["p50"] for r in rounds]),
        "timer_overhead_ns": ctx.timer_ns,
        **{k: round(v, 2) for k, v in best.items()},
    }
    return [
        result("get.p50", "cached storage.get() p50", best["p50"], "us", at_most=2.0),
        result(
            "get.mean",
            "cached storage.get() mean",
            best["mean"],
            "us",
            at_most=2.0,
            **details,
        ),
        result(
            "get.loop",
            "cached storage.get() loop throughput",
            1e6 / min(loops),
            "ops/s",
            us_per_call_rounds=rounded(loops),
        ),
    ]


# -- 3. Counter increments ----------------------------------------------------


async def sequential(call: Callable[[], Awaitable[Any]], seconds: float) -> int:
    """Await *call* one after another for about *seconds*; return the count."""
    done = 0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        for _ in range(CHUNK):
            await call()
        done += CHUNK
    return done


async def timed(awaitable: Awaitable[T]) -> tuple[T, float]:
    """Collect garbage, then await *awaitable*: its result and the seconds taken."""
    gc.collect()
    start = time.perf_counter()
    value = await awaitable
    return value, time.perf_counter() - start


async def concurrent(
    call: Callable[[], Awaitable[Any]], seconds: float, callers: int
) -> list[int]:
    """Run *callers* tasks awaiting *call* until the deadline; calls per task."""
    counts = [0] * callers
    clock = time.perf_counter
    deadline = clock() + seconds

    async def caller(index: int) -> None:
        n = 0
        while clock() < deadline:
            await call()
            n += 1
        counts[index] = n

    async with anyio.create_task_group() as tg:
        for i in range(callers):
            tg.start_soon(caller, i)
    return counts


async def counter_pair(
    rt: Runtime, label: str, key: str, sizes: Sizes
) -> tuple[Result, Result]:
    """Sequential and concurrent increments, checking that none is lost."""
    stub = rt.env.COUNTER.get_by_name(f"{key}-seq")
    await stub.reset()
    total = 0
    for _ in range(CHUNK):  # warm-up
        total += 1
        await stub.incr()
    seq_rates = []
    for _ in range(sizes.rounds):
        done, seconds = await timed(sequential(stub.incr, sizes.seconds))
        seq_rates.append(done / seconds)
        total += done
    if (final := await stub.value()) != total:
        raise AssertionError(f"{label}: lost updates: counter {final} != {total}")

    stub = rt.env.COUNTER.get_by_name(f"{key}-conc")
    await stub.reset()
    await stub.incr()  # the object exists and "n" is cached
    total = 1
    conc_rates = []
    spread: list[tuple[int, int]] = []
    for _ in range(sizes.rounds):
        counts, seconds = await timed(
            concurrent(stub.incr, sizes.seconds, CONCURRENT_CALLERS)
        )
        conc_rates.append(sum(counts) / seconds)
        total += sum(counts)
        spread.append((min(counts), max(counts)))
    if (final := await stub.value()) != total:
        raise AssertionError(f"{label}: lost updates: counter {final} != {total}")

    seq = result(
        f"incr.{key}.seq",
        f"{label}, sequential",
        max(seq_rates),
        "ops/s",
        rounds=rounded(seq_rates),
    )
    conc = result(
        f"incr.{key}.conc",
        f"{label}, {CONCURRENT_CALLERS} concurrent callers",
        max(conc_rates),
        "ops/s",
        rounds=rounded(conc_rates),
        calls_per_caller_min_max=spread,
    )
    return seq, conc


def with_target(r: Result, *, at_least: float) -> Result:
    """The same result, checked against a target."""
    return result(r.key, r.label, r.value, r.unit, at_least=at_least, **r.details)


async def bench_incr_memory(sizes: Sizes, ctx: Context) -> list[Result]:
    del ctx
    async with Runtime(bindings={"COUNTER": Counter}) as rt:
        seq, conc = await counter_pair(rt, "incr memory", "memory", sizes)
    return [with_target(seq, at_least=200_000), conc]


async def bench_incr_sqlite(sizes: Sizes, ctx: Context) -> list[Result]:
    results: list[Result] = []
    for level in SYNC_LEVELS:
        with tempfile.TemporaryDirectory(
            prefix=f"pyobjects-bench-{level}-", dir=ctx.tmpdir
        ) as directory:
            backend = SQLiteBackend(directory, synchronous=level)
            async with Runtime(bindings={"COUNTER": Counter}, storage=backend) as rt:
                seq, conc = await counter_pair(
                    rt, f"incr sqlite {level}", f"sqlite-{level}", sizes
                )
        results += [seq, with_target(conc, at_least=20_000)]
    return results


def raw_sqlite_commits(conn: sqlite3.Connection, seconds: float, start: int) -> int:
    """BEGIN; INSERT OR REPLACE one row; COMMIT, for *seconds*: the count."""
    execute = conn.execute
    sql = "INSERT OR REPLACE INTO kv (key, value) VALUES (?, ?)"
    key = b"n"
    i = start
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        for _ in range(CHUNK):
            execute("BEGIN")
            execute(sql, (key, str(i).encode()))
            execute("COMMIT")
            i += 1
    return i - start


async def bench_raw_sqlite(sizes: Sizes, ctx: Context) -> list[Result]:
    results = []
    for level in SYNC_LEVELS:
        with tempfile.TemporaryDirectory(
            prefix=f"pyobjects-raw-{level}-", dir=ctx.tmpdir
        ) as directory:
            conn = sqlite3.connect(
                os.path.join(directory, "raw.sqlite"), isolation_level=None
            )
            try:
                conn.execute("PRAGMA journal_mode = WAL")
                conn.execute(f"PRAGMA synchronous = {level.upper()}")
                conn.execute(
                    "CREATE TABLE kv (key BLOB PRIMARY KEY, value BLOB) WITHOUT ROWID"
                )
                done = raw_sqlite_commits(conn, sizes.seconds / 10, 0)  # warm-up
                rates = []
                for _ in range(sizes.rounds):
                    gc.collect()
                    start = time.perf_counter()
                    n = raw_sqlite_commits(conn, sizes.seconds, done)
                    rates.append(n / (time.perf_counter() - start))
                    done += n
            finally:
                conn.close()
        results.append(
            result(
                f"raw.sqlite-{level}",
                f"raw sqlite3 commits, {level}",
                max(rates),
                "ops/s",
                rounds=rounded(rates),
            )
        )
    return results


# -- 4. New objects -----------------------------------------------------------


async def new_objects(ns: Any, first: int, seconds: float) -> int:
    """Call ``ping()`` on ids ``o<first>``, ``o<first+1>``... for *seconds*."""
    i = first
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        for _ in range(YIELD_EVERY):
            await ns.get_by_name(f"o{i}").ping()
            i += 1
        await anyio.lowlevel.checkpoint()  # a server yields on I/O
    return i - first


async def bench_new_objects(sizes: Sizes, ctx: Context) -> list[Result]:
    del ctx
    seconds = sizes.seconds * 1.5
    async with Runtime(bindings={"EMPTY": Empty}, idle_timeout=IDLE_TIMEOUT) as rt:
        ns = rt.env.EMPTY
        for i in range(YIELD_EVERY):  # warm-up, other ids
            await ns.get_by_name(f"w{i}").ping()
        made = 0
        rates = []
        for _ in range(sizes.rounds):
            n, elapsed = await timed(new_objects(ns, made, seconds))
            rates.append(n / elapsed)
            made += n
        live = rt.statistics().live_objects
    return [
        result(
            "new_objects",
            "new objects (distinct ids), memory, eviction on",
            max(rates),
            "ops/s",
            at_least=50_000,
            rounds=rounded(rates),
            objects=made,
            live_at_end=live,
        )
    ]


# -- 4b. Many alarms ------------------------------------------------------------


class Alarmed(DurableObject):
    """Sets an alarm when asked; counts the alarms that fire."""

    fired = 0

    async def arm(self, at: int) -> None:
        self.ctx.storage.set_alarm(at)

    async def alarm(self, info: AlarmInfo) -> None:
        type(self).fired += 1


async def bench_alarms(sizes: Sizes, ctx: Context) -> list[Result]:
    del ctx
    n = sizes.alarm_objects
    clock = ManualClock()
    Alarmed.fired = 0
    async with Runtime(
        bindings={"A": Alarmed}, clock=clock, idle_timeout=IDLE_TIMEOUT
    ) as rt:
        ns = rt.env.A
        start = clock.now_ms()
        began = time.perf_counter()
        for i in range(n):
            # Due 20 s from now, 10 alarms per millisecond after that.
            await ns.get_by_name(f"a{i}").arm(start + 20_000 + i // 10)
            if i % 10_000 == 9_999:
                await clock.advance(1_000)  # lets idle instances be evicted
        set_seconds = time.perf_counter() - began
        scheduled = rt._alarms.scheduled
        began = time.perf_counter()
        await clock.advance(start + 20_000 + n // 10 + 1 - clock.now_ms())
        fire_seconds = time.perf_counter() - began
        fired = Alarmed.fired
    if fired != n or scheduled != n:
        raise SystemExit(f"alarms: {scheduled} scheduled and {fired} fired of {n}")
    return [
        result(
            "alarms.set",
            f"set_alarm() on {n:,} objects (one call each)",
            n / set_seconds,
            "ops/s",
            scheduled=scheduled,
        ),
        result(
            "alarms.fire",
            f"alarms fired and deleted, {n:,} objects",
            n / fire_seconds,
            "ops/s",
            fired=fired,
            peak_rss_mib=round(
                resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1
            ),
        ),
    ]


# -- 5. Peak memory (child processes) -----------------------------------------


def vm_hwm_kib() -> int | None:
    """This process's own peak RSS (Linux ``VmHWM``), or None where unknown.

    Unlike ``ru_maxrss``, it is not inherited from the parent across exec.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


async def child_peak_memory(n: int, yield_every: int) -> dict[str, Any]:
    """Drive *n* calls to distinct ids; report peak RSS and live instances."""
    rusage = resource.getrusage
    async with Runtime(bindings={"EMPTY": Empty}, idle_timeout=IDLE_TIMEOUT) as rt:
        ns = rt.env.EMPTY
        baseline_kib = rusage(resource.RUSAGE_SELF).ru_maxrss
        chunk = yield_every or n
        start = time.perf_counter()
        i = 0
        while i < n:
            for _ in range(min(chunk, n - i)):
                await ns.get_by_name(f"o{i}").ping()
                i += 1
            if yield_every:
                await anyio.lowlevel.checkpoint()
        elapsed = time.perf_counter() - start
        live_end = rt.statistics().live_objects
        peak_kib = rusage(resource.RUSAGE_SELF).ru_maxrss
        hwm_kib = vm_hwm_kib()
        await anyio.sleep(IDLE_TIMEOUT + 0.5)
        live_later = rt.statistics().live_objects
    return {
        "calls": n,
        "yield_every": yield_every,
        "seconds": elapsed,
        "baseline_kib": baseline_kib,
        "peak_kib": peak_kib,
        "vm_hwm_kib": hwm_kib,
        "live_at_end": live_end,
        "live_after_idle_timeout": live_later,
    }


async def bench_peak_memory(sizes: Sizes, ctx: Context) -> list[Result]:
    variants = {
        "tight": 0,  # the driver never yields by itself
        "yielding": YIELD_EVERY,
    }
    outputs: dict[str, tuple[int, bytes, bytes]] = {}

    async def child(name: str, every: int) -> None:
        command = [
            sys.executable,
            SCRIPT,
            "--backend",
            ctx.backend,
            "--child-peak-memory",
            str(sizes.peak_objects),
            str(every),
        ]
        done = await anyio.run_process(command, check=False)
        outputs[name] = (done.returncode, done.stdout, done.stderr)

    # The children only measure memory, so they may share the CPUs.
    async with anyio.create_task_group() as tg:
        for name, every in variants.items():
            tg.start_soon(child, name, every)
    results = []
    for name in variants:
        returncode, out, err = outputs[name]
        if returncode != 0:
            raise RuntimeError(
                f"peak-memory child ({name}) failed with {returncode}:\n"
                + err.decode(errors="replace")
            )
        data = json.loads(out.strip().splitlines()[-1])
        how = "never yields" if name == "tight" else f"yields every {YIELD_EVERY}"
        results.append(
            result(
                f"peak_memory.{name}",
                f"peak RSS after {data['calls']:,} ids, driver {how}",
                data["peak_kib"] / 1024,
                "MiB",
                at_most=1024,
                baseline_mib=round(data["baseline_kib"] / 1024, 1),
                vm_hwm_mib=round((data["vm_hwm_kib"] or 0) / 1024, 1),
                calls_per_s=round(data["calls"] / data["seconds"]),
                live_after_idle_timeout=data["live_after_idle_timeout"],
            )
        )
        results.append(
            result(
                f"peak_memory.{name}.live",
                "  live instances right after the calls",
                data["live_at_end"],
                "",
            )
        )
    return results


# -- driver -------------------------------------------------------------------


@dataclass(frozen=True)
class Context:
    """What every benchmark may need besides its sizes."""

    backend: str
    tmpdir: str
    timer_ns: int


# In the order of the table.
BENCHMARKS: dict[str, Callable[[Sizes, Context], Awaitable[list[Result]]]] = {
    "rpc": bench_rpc,
    "get": bench_get,
    "incr-memory": bench_incr_memory,
    "raw-sqlite": bench_raw_sqlite,
    "incr-sqlite": bench_incr_sqlite,
    "new-objects": bench_new_objects,
    "alarms": bench_alarms,
    "peak-memory": bench_peak_memory,
}


def ratios(results: list[Result]) -> list[Result]:
    """Durable SQLite increments over raw sqlite3 commits, and a few more."""
    by_key = {r.key: r.value for r in results}
    out = []
    for level in SYNC_LEVELS:
        raw = by_key.get(f"raw.sqlite-{level}")
        if not raw:
            continue
        seq = by_key.get(f"incr.sqlite-{level}.seq")
        if seq is not None:
            out.append(
                result(
                    f"ratio.sqlite-{level}.seq",
                    f"sqlite {level}: sequential increments / raw commits",
                    seq / raw,
                    "x",
                    at_least=0.8,
                )
            )
        conc = by_key.get(f"incr.sqlite-{level}.conc")
        if conc is not None:
            out.append(
                result(
                    f"ratio.sqlite-{level}.conc",
                    f"sqlite {level}: {CONCURRENT_CALLERS} callers / raw commits",
                    conc / raw,
                    "x",
                )
            )
    mem = by_key.get("incr.memory.seq")
    normal = by_key.get("incr.sqlite-normal.seq")
    if mem and normal:
        out.append(
            result(
                "ratio.sqlite-normal.vs-memory",
                "sqlite normal / memory, sequential increments",
                normal / mem,
                "x",
            )
        )
    rpc = by_key.get("rpc.mean")
    floor = by_key.get("rpc.floor")
    if rpc and floor:
        out.append(
            result(
                "ratio.rpc.vs-plain", "RPC ping() mean / plain await", rpc / floor, "x"
            )
        )
    return out


def source_revision() -> str:
    """The git commit of the checkout, with "+dirty" if it has local changes."""
    root = os.path.dirname(os.path.dirname(SCRIPT))
    try:
        head = subprocess.run(
            ["git", "-C", root, "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        status = subprocess.run(
            ["git", "-C", root, "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if status.strip() else "")


def machine_info(args: argparse.Namespace) -> dict[str, Any]:
    """Where and how this run happens."""
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "python": f"{platform.python_implementation()} {sys.version.split()[0]}",
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "pyobjects": f"{__version__} (git {source_revision()})",
        "anyio": version("anyio"),
        "sqlite": sqlite3.sqlite_version,
        "backend": args.backend,
        "mode": "quick" if args.quick else "full",
        "tmpdir": args.tmpdir,
    }


def detail(value: object) -> str:
    """Format one detail value."""
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 100 else f"{value:,.3g}"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, list):
        return "[" + ", ".join(detail(v) for v in value) + "]"
    if isinstance(value, tuple):
        return "/".join(detail(v) for v in value)
    return str(value)


def print_report(
    info: dict[str, Any],
    results: list[Result],
    ratio: list[Result],
    *,
    extra: dict[str, str] | None = None,
) -> None:
    """Print the machine, the results table, the ratios and the details.

    *extra* adds lines to the machine's (name, text), as another script's
    server.
    """
    print("pyobjects benchmarks")
    for name in ("date", "python", "platform", "cpu", "cpu_count", "pyobjects"):
        print(f"  {name:<10} {info[name]}")
    print(
        f"  {'run':<10} {info['mode']}, anyio {info['anyio']} on {info['backend']},"
        f" sqlite {info['sqlite']}, files in {info['tmpdir']}"
    )
    for name, text in (extra or {}).items():
        print(f"  {name:<10} {text}")
    print()
    rows = [*results, *ratio]
    width = max((len(r.label) for r in rows), default=10)
    for title, section in (("Results", results), ("Ratios", ratio)):
        if not section:
            continue
        print(f"{title:<{width + 2}}  {'value':>15}  {'target':>17}  status")
        for r in section:
            status = "" if r.ok is None else ("ok" if r.ok else "MISS")
            print(
                f"  {r.label:<{width}}  {fmt(r.value, r.unit):>15}"
                f"  {r.target or '':>17}  {status}".rstrip()
            )
        print()
    with_details = [r for r in results if r.details]
    if with_details:
        print("Details (rounds: every round's value; the table shows the best)")
        for r in with_details:
            items = ", ".join(f"{k}={detail(v)}" for k, v in r.details.items())
            print(f"  {r.key}: {items}")
        print()
    missed = [r.key for r in rows if r.ok is False]
    print(f"Targets missed: {', '.join(missed) if missed else 'none'}")
    print(f"Total time: {info['seconds']} s")


async def run_all(
    args: argparse.Namespace,
) -> tuple[list[Result], list[tuple[str, cProfile.Profile]]]:
    """Run the selected benchmarks; results in the order of BENCHMARKS."""
    sizes = QUICK if args.quick else FULL
    ctx = Context(args.backend, args.tmpdir, timer_overhead_ns())
    selected = set(args.only or BENCHMARKS)
    # peak-memory runs first: on Linux a child's ru_maxrss starts at the
    # parent's peak RSS (it survives exec), so the parent must still be small.
    order = [n for n in sorted(BENCHMARKS, key="peak-memory".__ne__) if n in selected]
    results: list[Result] = []
    profiles: list[tuple[str, cProfile.Profile]] = []
    for name in order:
        bench = functools.partial(BENCHMARKS[name], sizes, ctx)
        for r in await run_benchmark(name, bench, profiles if args.profile else None):
            r.bench = name
            results.append(r)
    rank = {name: i for i, name in enumerate(BENCHMARKS)}
    results.sort(key=lambda r: rank[r.bench])
    return results, profiles


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(
        description="Benchmarks of pyobjects (see benchmarks/README.md)."
    )
    parser.add_argument(
        "--quick", action="store_true", help="short run (about 20 s instead of 3 min)"
    )
    parser.add_argument("--backend", choices=("asyncio", "trio"), default="asyncio")
    add_run_arguments(parser, tuple(BENCHMARKS))
    parser.add_argument(
        "--tmpdir",
        default=tempfile.gettempdir(),
        help="directory for the SQLite files (default: %(default)s)",
    )
    parser.add_argument(
        "--child-peak-memory",
        nargs=2,
        type=int,
        metavar=("N", "YIELD_EVERY"),
        help=argparse.SUPPRESS,
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.child_peak_memory is not None:
        n, every = args.child_peak_memory
        data = anyio.run(child_peak_memory, n, every, backend=args.backend)
        print(json.dumps(data))
        return
    info = machine_info(args)
    started = time.perf_counter()
    results, profiles = anyio.run(run_all, args, backend=args.backend)
    info["seconds"] = round(time.perf_counter() - started, 1)
    ratio = ratios(results)
    print_report(info, results, ratio)
    for name, profile in profiles:
        print(f"\ncProfile of {name} (the profiler slows every call down)")
        stats = pstats.Stats(profile, stream=sys.stdout)
        stats.sort_stats("tottime").print_stats(args.profile)
    if args.json:
        write_json(args.json, info, results, ratio)


def write_json(
    path: str, info: dict[str, Any], results: list[Result], ratios: list[Result]
) -> None:
    """Write a run's machine info, results and ratios as JSON (``--json``)."""
    with open(path, "w", encoding="utf-8") as f:
        json.dump(
            {
                "machine": info,
                "results": [asdict(r) for r in results],
                "ratios": [asdict(r) for r in ratios],
            },
            f,
            indent=2,
        )
        f.write("\n")


if __name__ == "__main__":
    main()
