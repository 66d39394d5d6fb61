"""PostgresBackend under real failures: killed, stopped and fenced processes,
a restarted server and killed connections (#12).

Real processes and a real server, so real time too: every wait is bounded
(``fail_after``) and the outcome does not depend on how long anything took.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import pytest

import pyobjects
from pyobjects import (
    DurableObject,
    DurableObjectResetError,
    Runtime,
    StorageUnavailableError,
)
from pyobjects.storage import PostgresBackend
from pyobjects.testing import run_in_durable_object
from tests.durability_writer import Ledger, check_ledgers, read_acks
from tests.postgres import (
    PrivateServer,
    drop_schema,
    new_schema,
    require_postgres,
    require_private_server,
)
from tests.zombie_owner import Register

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

TESTS = Path(__file__).parent.parent
WRITER = TESTS / "durability_writer.py"
ZOMBIE = TESTS / "zombie_owner.py"

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="needs signals")


@pytest.fixture
def anyio_backend() -> str:
    """asyncpg runs on asyncio only."""
    return "asyncio"


@pytest.fixture
def schema() -> Iterator[tuple[str, str]]:
    """The DSN of the test server and a schema of the test's own."""
    dsn = require_postgres()
    name = new_schema()
    yield dsn, name
    drop_schema(dsn, name)


def _spawn(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(TESTS)),
    )


def _reap(proc: subprocess.Popen[str]) -> str:
    """Kill *proc* if it still runs; return what it wrote on stderr."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    err = proc.stderr.read() if proc.stderr is not None else ""
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()
    return err


async def _sql(dsn: str, statement: str, *args: Any) -> list[Any]:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        return list(await conn.fetch(statement, *args))
    finally:
        await conn.close()


async def _expire_leases(dsn: str, schema: str) -> None:
    """Expire every lease now: a killed owner's would last lease_ttl otherwise."""
    await _sql(
        dsn,
        f"UPDATE \"{schema}\".objects SET expires = now() - interval '1 second'"
        " WHERE owner IS NOT NULL",
    )


# -- 1. a writer SIGKILLed under load, many times -----------------------------

ROUNDS = 8


def _kill_after_acks(
    dsn: str, schema: str, run: int, acks: int
) -> list[tuple[str, int, int]]:
    proc = _spawn(str(WRITER), "--postgres", dsn, schema, str(run))
    # Bounded: a writer that stops writing is killed, which ends the loop.
    watchdog = threading.Timer(30, proc.kill)
    watchdog.start()
    seen: list[tuple[str, int, int]] = []
    try:
        seen = read_acks(proc, acks)
    finally:
        proc.send_signal(signal.SIGKILL)
        watchdog.cancel()
        err = _reap(proc)
    assert len(seen) >= acks, f"the writer exited early:\n{err}"
    assert proc.returncode == -signal.SIGKILL
    return seen


async def test_acknowledged_writes_survive_sigkill_on_postgres(
    schema: tuple[str, str],
) -> None:
    dsn, name = schema
    rng = random.Random(1212)
    acked: dict[int, list[tuple[str, int, int]]] = {}
    for run in range(ROUNDS):
        acked[run] = _kill_after_acks(dsn, name, run, rng.randrange(50, 1500))
        # Its leases would hold the objects for lease_ttl: the next writer
        # could not start them before.
        await _expire_leases(dsn, name)

    backend = PostgresBackend(dsn, schema=name)
    async with Runtime(bindings={"LEDGER": Ledger}, storage=backend) as rt:
        await check_ledgers(rt, acked)


# -- 2. a zombie owner: stopped, fenced, woken --------------------------------


async def _readline(proc: subprocess.Popen[str], seconds: float = 30) -> str:
    assert proc.stdout is not None
    with anyio.fail_after(seconds):
        line = await anyio.to_thread.run_sync(
            proc.stdout.readline, abandon_on_cancel=True
        )
    return str(line).strip()


async def _wait_expired(dsn: str, schema: str) -> None:
    """Wait (bounded) until every lease in *schema* has run out by the DB clock."""
    with anyio.fail_after(20):
        while await _sql(  # noqa: ASYNC110 - polling the database clock
            dsn,
            f'SELECT 1 FROM "{schema}".objects'
            " WHERE owner IS NOT NULL AND expires >= clock_timestamp()",
        ):
            await anyio.sleep(0.05)


async def _contents(instance: Any, ctx: pyobjects.DurableObjectState) -> Any:
    rows = ctx.storage.sql.exec("SELECT key, owner FROM writes ORDER BY key").raw()
    return dict(await ctx.storage.list()), dict(rows)


@pytest.mark.parametrize("b_writes_first", [True, False], ids=["b-wrote", "b-read"])
@pytest.mark.parametrize("how", ["expired", "waited"])
async def test_a_zombie_owner_is_fenced_when_it_wakes(
    schema: tuple[str, str], how: str, b_writes_first: bool
) -> None:
    """A stopped owner whose object was taken over cannot commit on waking.

    Process A holds the object and is stopped (SIGSTOP); the test (owner B)
    takes the object over, then A wakes (SIGCONT) and commits. ``expired``:
    the lease is expired in the database while A sleeps with a long TTL (its
    renewal timer never fires, so only the commit's own fence stops it).
    ``waited``: A has a 1 s TTL and the test waits it out, so on waking A's
    renewal finds the lease gone too. ``b-read``: B only started the object
    (a read) before A's commit, so the log head did not move and only the
    epoch fences A.
    """
    dsn, name = schema
    a = _spawn(str(ZOMBIE), dsn, name, "60" if how == "expired" else "1")
    try:
        assert await _readline(a) == "held"
        a.send_signal(signal.SIGSTOP)
        if how == "expired":
            await _expire_leases(dsn, name)
        else:
            await _wait_expired(dsn, name)
        backend = PostgresBackend(dsn, schema=name)
        async with Runtime(bindings={"REGISTER": Register}, storage=backend) as rt:
            stub: Any = rt.env.REGISTER.get_by_name("register")
            if b_writes_first:
                await stub.write("b:1", "B")  # B took the object over
            else:
                kv, rows = await run_in_durable_object(stub, _contents)
                assert kv == rows == {"a:1": "A"}
            a.send_signal(signal.SIGCONT)
            assert a.stdin is not None
            a.stdin.write("commit now\n")
            a.stdin.flush()
            # A's commit is refused by the fence and resets A's instance ...
            assert await _readline(a) == (
                "error DurableObjectResetError LeaseLostError retryable=True reset=True"
            )
            # ... and A cannot start the object again while B holds it.
            assert (await _readline(a)).startswith("error LeaseHeldError")
            with anyio.fail_after(30):
                code = await anyio.to_thread.run_sync(a.wait)
            assert code == 0
            if not b_writes_first:
                await stub.write("b:1", "B")
            await stub.write("b:2", "B")  # B's lease is untouched
            kv, rows = await run_in_durable_object(stub, _contents)
        expected = {"a:1": "A", "b:1": "B", "b:2": "B"}
        assert kv == rows == expected
        # A fresh backend reads the same from PostgreSQL: nothing of A's
        # refused writes, all of B's.
        fresh = PostgresBackend(dsn, schema=name)
        async with Runtime(bindings={"REGISTER": Register}, storage=fresh) as rt:
            stub = rt.env.REGISTER.get_by_name("register")
            assert await run_in_durable_object(stub, _contents) == (expected, expected)
    finally:
        if a.poll() is None:
            a.send_signal(signal.SIGCONT)
        err = _reap(a)
    assert "Traceback" not in err, err


# -- 3. the server restarted, connections killed, under load ------------------


class Counter(DurableObject):
    async def add(self, worker: int, i: int) -> int:
        """Count one call; return the new total (written with the call's key)."""
        total = ((await self.ctx.storage.get("total")) or 0) + 1
        self.ctx.storage.put("total", total)
        self.ctx.storage.put(f"w:{worker:02}:{i:06}", total)
        return total


OBJECTS, WORKERS = 3, 8


@pytest.fixture(scope="module")
def private() -> Iterator[PrivateServer]:
    """A server of this module's own, which its tests stop and start."""
    server = require_private_server()
    yield server
    server.close()


@dataclass
class Load:
    """Calls to Counter.add from WORKERS tasks per object, and what they got."""

    rt: Runtime
    acked: dict[int, list[tuple[int, int, int]]] = field(default_factory=dict)
    errors: list[BaseException] = field(default_factory=list)
    errors_by_worker: dict[tuple[int, int], int] = field(default_factory=dict)
    acks_by_worker: dict[tuple[int, int], int] = field(default_factory=dict)
    stopping: bool = False
    changed: anyio.Event = field(default_factory=anyio.Event)

    def __post_init__(self) -> None:
        for obj in range(OBJECTS):
            self.acked[obj] = []
            for worker in range(WORKERS):
                self.errors_by_worker[obj, worker] = 0
                self.acks_by_worker[obj, worker] = 0

    @property
    def total_acks(self) -> int:
        return sum(self.acks_by_worker.values())

    async def worker(self, obj: int, worker: int) -> None:
        stub: Any = self.rt.env.COUNTER.get_by_name(f"counter-{obj}")
        i = 0
        while not self.stopping:
            i += 1
            try:
                total = await stub.add(worker, i)
            except Exception as exc:
                self.errors.append(exc)
                self.errors_by_worker[obj, worker] += 1
                # A reset instance is reached again through a new stub only.
                stub = self.rt.env.COUNTER.get_by_name(f"counter-{obj}")
                await anyio.sleep(0.01)  # do not spin while the server is down
            else:
                self.acked[obj].append((worker, i, total))
                self.acks_by_worker[obj, worker] += 1
            self.changed.set()
            self.changed = anyio.Event()

    async def until(self, condition: Callable[[], bool], seconds: float = 30) -> None:
        with anyio.fail_after(seconds):
            while not condition():
                await self.changed.wait()


async def _totals(instance: Any, ctx: pyobjects.DurableObjectState) -> Any:
    return dict(await ctx.storage.list())


async def _check_acknowledged(
    dsn: str, schema: str, load: Load
) -> dict[int, dict[str, Any]]:
    """Every acknowledged call is in PostgreSQL, once; batches are whole."""
    fresh = PostgresBackend(dsn, schema=schema)
    found: dict[int, dict[str, Any]] = {}
    async with Runtime(bindings={"COUNTER": Counter}, storage=fresh) as rt:
        for obj in range(OBJECTS):
            stub = rt.env.COUNTER.get_by_name(f"counter-{obj}")
            data = found[obj] = await run_in_durable_object(stub, _totals)
            calls = sorted(v for k, v in data.items() if k.startswith("w:"))
            # Each call's key and its total were one batch: the totals
            # written are exactly 1..n, n the total.
            assert calls == list(range(1, data["total"] + 1)), obj
            for worker, i, total in load.acked[obj]:
                assert data[f"w:{worker:02}:{i:06}"] == total, (obj, worker, i)
            # Two acknowledged calls never got the same total: none was lost
            # (rolled back under a later one) or applied twice.
            totals = [total for _, _, total in load.acked[obj]]
            assert len(set(totals)) == len(totals), obj
    return found


def _describe(errors: list[BaseException]) -> set[str]:
    """The kinds of *errors*, with their causes (for assertion messages)."""
    kinds = set()
    for exc in errors:
        chain: list[BaseException] = []
        cause: BaseException | None = exc
        while cause is not None and len(chain) < 4:
            chain.append(cause)
            cause = cause.__cause__
        kinds.add(" <- ".join(f"{type(e).__name__}({e})" for e in chain))
    return kinds


def _typed_retryable(exc: BaseException) -> bool:
    """What a caller may get while PostgreSQL is down: typed, retryable."""
    if isinstance(exc, StorageUnavailableError):
        return True
    return (
        isinstance(exc, DurableObjectResetError)
        and exc.retryable
        and isinstance(exc.__cause__, StorageUnavailableError)
    )


@pytest.mark.parametrize("mode", ["fast", "immediate"])
async def test_postgres_restarted_under_load(private: PrivateServer, mode: str) -> None:
    """Callers get typed retryable errors while it is down, then all resumes.

    ``fast``: the server tells its clients it shuts down; ``immediate``: it
    crashes (and recovers from its WAL on the way back).
    """
    name = new_schema()
    # Few retries: callers hear of the outage within a fraction of a second.
    backend = PostgresBackend(private.dsn, schema=name, retries=2, pool_size=4)
    try:
        async with Runtime(bindings={"COUNTER": Counter}, storage=backend) as rt:
            load = Load(rt)
            async with anyio.create_task_group() as tg:
                for obj in range(OBJECTS):
                    for worker in range(WORKERS):
                        tg.start_soon(load.worker, obj, worker)
                await load.until(lambda: load.total_acks >= 200)
                assert not load.errors
                await anyio.to_thread.run_sync(private.stop, mode)
                # Every caller finds out, with a typed retryable error.
                await load.until(lambda: min(load.errors_by_worker.values()) >= 2)
                await anyio.to_thread.run_sync(private.start)
                after = dict(load.acks_by_worker)
                await load.until(
                    lambda: all(load.acks_by_worker[k] >= after[k] + 5 for k in after)
                )
                load.stopping = True
        assert load.errors
        wrong = [e for e in load.errors if not _typed_retryable(e)]
        assert not wrong, _describe(wrong)
        await _check_acknowledged(private.dsn, name, load)
    finally:
        if not private.running:  # the next test needs it
            private.start()
        drop_schema(private.dsn, name)


async def test_killed_connections_are_retried_transparently(
    private: PrivateServer,
) -> None:
    """pg_terminate_backend() of every connection, again and again, under load.

    Every commit is retried on a new connection: no caller sees an error, and
    no increment is lost or applied twice (the totals returned are exactly
    1..n per object).
    """
    name = new_schema()
    app = f"pyobjects-{name}"
    dsn = f"{private.dsn}?application_name={app}"
    backend = PostgresBackend(dsn, schema=name, pool_size=4)
    kills = 0
    try:
        async with Runtime(bindings={"COUNTER": Counter}, storage=backend) as rt:
            load = Load(rt)
            async with anyio.create_task_group() as tg:
                for obj in range(OBJECTS):
                    for worker in range(WORKERS):
                        tg.start_soon(load.worker, obj, worker)
                for round_ in range(10):
                    target = 50 * (round_ + 1)
                    await load.until(lambda: load.total_acks >= target)  # noqa: B023
                    rows = await _sql(
                        private.dsn,
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                        " WHERE application_name = $1",
                        app,
                    )
                    kills += sum(1 for (done,) in rows if done)
                target = load.total_acks + 50
                await load.until(lambda: load.total_acks >= target)
                load.stopping = True
        assert not load.errors, _describe(load.errors)
        assert kills >= 10  # every round killed at least one connection
        found = await _check_acknowledged(private.dsn, name, load)
        for obj in range(OBJECTS):
            # Every call finished and was acknowledged: exactly 1..n each.
            totals = sorted(total for _, _, total in load.acked[obj])
            assert totals == list(range(1, len(totals) + 1)), obj
            assert found[obj]["total"] == len(totals), obj
    finally:
        drop_schema(private.dsn, name)
