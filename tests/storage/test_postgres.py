"""PostgresBackend on a real PostgreSQL server: conformance, leases, fencing, the log.

The backend-generic tests (the ``backend`` fixture) and the point-in-time
recovery tests run on it too; this file holds what only PostgreSQL has.
"""

from __future__ import annotations

import os
import socket
from typing import TYPE_CHECKING, Any, ClassVar

import anyio
import pytest

import pyobjects
from pyobjects import (
    DurableObject,
    DurableObjectResetError,
    LeaseHeldError,
    LeaseLostError,
    Runtime,
    StorageError,
    StorageUnavailableError,
)
from pyobjects.storage import PostgresBackend, WriteBatch, postgres as pg
from pyobjects.testing import ManualClock, evict
from pyobjects.testing._conformance import check_storage_backend
from tests.postgres import drop_schema, new_schema, require_postgres

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator


@pytest.fixture
def anyio_backend() -> str:
    """asyncpg runs on asyncio only (trio is refused, see the last tests)."""
    return "asyncio"


@pytest.fixture
def dsn() -> str:
    return require_postgres()


@pytest.fixture
def schema(dsn: str) -> Iterator[str]:
    name = new_schema()
    yield name
    drop_schema(dsn, name)


@pytest.fixture
def make(dsn: str, schema: str) -> Callable[..., PostgresBackend]:
    """A new backend (a new process's view) on the test's schema."""

    def make(**options: Any) -> PostgresBackend:
        return PostgresBackend(dsn, schema=schema, **options)

    return make


async def fetch(dsn: str, statement: str, *args: Any) -> list[Any]:
    import asyncpg

    conn: Any = await asyncpg.connect(dsn)
    try:
        return list(await conn.fetch(statement, *args))
    finally:
        await conn.close()


class Counter(DurableObject):
    def __init__(self, ctx: Any, env: Any) -> None:
        super().__init__(ctx, env)
        ctx.storage.sql.exec("CREATE TABLE IF NOT EXISTS log (n INTEGER)")

    async def incr(self) -> int:
        n: int = (await self.ctx.storage.get("n") or 0) + 1
        self.ctx.storage.put("n", n)
        self.ctx.storage.sql.exec("INSERT INTO log VALUES (?)", n)
        return n

    async def state(self) -> tuple[Any, list[int]]:
        rows = self.ctx.storage.sql.exec("SELECT n FROM log ORDER BY n")
        return await self.ctx.storage.get("n"), [r["n"] for r in rows]

    async def fill(self, size: int) -> None:
        self.ctx.storage.sql.exec("CREATE TABLE IF NOT EXISTS blob (b BLOB)")
        chunk = os.urandom(64 << 10)
        for _ in range(size // len(chunk)):
            self.ctx.storage.sql.exec("INSERT INTO blob VALUES (?)", chunk)
        self.ctx.storage.put("filled", size)

    async def blob_bytes(self) -> int:
        (row,) = self.ctx.storage.sql.exec("SELECT sum(length(b)) AS s FROM blob")
        return int(row["s"])


async def test_conformance(make: Callable[..., PostgresBackend]) -> None:
    await check_storage_backend(make)


async def test_conformance_twice_on_one_schema(
    make: Callable[..., PostgresBackend],
) -> None:
    await check_storage_backend(make)
    await check_storage_backend(lambda: make(pitr_retention=0))


async def test_state_survives_a_new_backend_and_the_local_copy_goes(
    make: Callable[..., PostgresBackend],
) -> None:
    first = make()
    async with Runtime(bindings={"C": Counter}, storage=first) as rt:
        stub = rt.env.C.get_by_name("a")
        assert [await stub.incr() for _ in range(3)] == [1, 2, 3]
        cache = first._cache
        assert cache is not None
        assert os.listdir(cache)
    assert not os.path.exists(cache)  # noqa: ASYNC240 - the private cache is removed
    async with Runtime(bindings={"C": Counter}, storage=make()) as rt:
        stub = rt.env.C.get_by_name("a")
        assert await stub.state() == (3, [1, 2, 3])
        assert await stub.incr() == 4


async def test_a_second_runtime_cannot_run_a_held_object(
    make: Callable[..., PostgresBackend],
) -> None:
    async with Runtime(bindings={"C": Counter}, storage=make()) as one:
        assert await one.env.C.get_by_name("a").incr() == 1
        async with Runtime(bindings={"C": Counter}, storage=make()) as two:
            with pytest.raises(LeaseHeldError, match="is held by") as caught:
                await two.env.C.get_by_name("a").incr()
            assert caught.value.owner == one.storage.owner  # type: ignore[attr-defined]
            assert 0 < caught.value.expires_in <= 10
            assert caught.value.retryable  # the call did not run: try again later
            # Other objects run on the second runtime meanwhile.
            assert await two.env.C.get_by_name("b").incr() == 1
    # Closing the first gave its leases back: the next runtime takes over.
    async with Runtime(bindings={"C": Counter}, storage=make()) as three:
        assert await three.env.C.get_by_name("a").incr() == 2
        assert await three.env.C.get_by_name("b").incr() == 2


async def test_every_caller_of_a_held_object_gets_lease_held_error(
    make: Callable[..., PostgresBackend],
) -> None:
    """Callers that waited for the failed start get the same error, owner kept.

    (Cluster routing follows ``owner`` to the holder: a copy that lost the
    type, as a plain reset error, would fail those callers instead.)
    """
    async with Runtime(bindings={"C": Counter}, storage=make()) as one:
        await one.env.C.get_by_name("a").incr()
        async with Runtime(bindings={"C": Counter}, storage=make()) as two:
            stub = two.env.C.get_by_name("a")
            errors: list[BaseException] = []

            async def call() -> None:
                try:
                    await stub.incr()
                except Exception as exc:
                    errors.append(exc)

            async with anyio.create_task_group() as tg:
                for _ in range(3):
                    tg.start_soon(call)
            assert len(errors) == 3
            for error in errors:
                assert isinstance(error, LeaseHeldError), repr(error)
                assert error.owner == one.storage.owner  # type: ignore[attr-defined]


async def test_a_lease_given_back_while_starting_is_taken(
    make: Callable[..., PostgresBackend], dsn: str, schema: str
) -> None:
    """The holder gives the lease back between the two statements of a start.

    (The taking finds the row held; the look-up of its holder then finds it
    free.) The start takes it, instead of raising a ``LeaseHeldError`` that
    names no holder.
    """
    async with Runtime(bindings={"C": Counter}, storage=make()) as one:
        assert await one.env.C.get_by_name("a").incr() == 1
        backend = make()
        run = backend._run
        released = False

        async def racing(op: Any) -> Any:
            nonlocal released
            result = await run(op)
            if result is None and not released:  # the taking found it held
                released = True
                await fetch(
                    dsn,
                    f'UPDATE "{schema}".objects SET owner = NULL, expires = NULL',
                )
            return result

        backend._run = racing  # type: ignore[method-assign]
        async with Runtime(bindings={"C": Counter}, storage=backend) as two:
            assert await two.env.C.get_by_name("a").incr() == 2
        assert released


async def test_an_object_started_during_a_renewal_is_not_taken_for_lost(
    make: Callable[..., PostgresBackend],
) -> None:
    """The renewal's result lacks an object whose lease was taken after it ran."""
    backend = make()
    async with Runtime(bindings={"C": Counter}, storage=backend) as rt:
        assert await rt.env.C.get_by_name("a").incr() == 1
        b = rt.env.C.get_by_name("b")
        run = backend._run
        started = False

        async def racing(op: Any) -> Any:
            nonlocal started
            result = await run(op)
            if not started:  # the renewal's statement ran: b starts now
                started = True
                assert await b.incr() == 1
            return result

        backend._run = racing  # type: ignore[method-assign]
        await backend._renew()
        backend._run = run  # type: ignore[method-assign]
        assert started
        assert await b.incr() == 2  # b still holds its lease: it commits


async def test_eviction_gives_the_lease_back(
    make: Callable[..., PostgresBackend], dsn: str, schema: str
) -> None:
    async with Runtime(bindings={"C": Counter}, storage=make()) as one:
        stub = one.env.C.get_by_name("a")
        await stub.incr()
        await evict(stub)
        await anyio.wait_all_tasks_blocked()
        rows: list[Any] = []
        for _ in range(1_000):  # the renewal task releases it in the background
            rows = await fetch(dsn, f'SELECT owner FROM "{schema}".objects')
            if rows[0][0] is None:
                break
            await anyio.sleep(0.005)
        assert rows[0][0] is None
        async with Runtime(bindings={"C": Counter}, storage=make()) as two:
            assert await two.env.C.get_by_name("a").incr() == 2


async def test_a_zombie_owner_cannot_commit(
    make: Callable[..., PostgresBackend], dsn: str, schema: str
) -> None:
    zombie_backend = make()
    async with Runtime(bindings={"C": Counter}, storage=zombie_backend) as zombie:
        old = zombie.env.C.get_by_name("a")
        assert await old.incr() == 1
        # Its lease runs out (a long pause: GC, SIGSTOP, a partition)...
        await fetch(
            dsn,
            f"UPDATE \"{schema}\".objects SET expires = now() - interval '1 second'",
        )
        # ... and another process takes the object over and writes.
        async with Runtime(bindings={"C": Counter}, storage=make()) as fresh:
            assert await fresh.env.C.get_by_name("a").incr() == 2
            # The zombie wakes up and commits: refused, and its object reset.
            with pytest.raises(DurableObjectResetError) as caught:
                await old.incr()
            assert isinstance(caught.value.__cause__, LeaseLostError)
            assert caught.value.retryable
            assert await fresh.env.C.get_by_name("a").state() == (2, [1, 2])
            # Its next instance cannot start while the new owner holds it.
            with pytest.raises(LeaseHeldError):
                await zombie.env.C.get_by_name("a").incr()
    rows = await fetch(dsn, f'SELECT epoch, head FROM "{schema}".objects')
    assert [tuple(r) for r in rows] == [(2, 2)]  # two owners, a commit each


async def test_renewal_keeps_leases_and_notices_a_lost_one(
    make: Callable[..., PostgresBackend], dsn: str, schema: str
) -> None:
    backend = make(lease_ttl=30)
    async with Runtime(bindings={"C": Counter}, storage=backend) as rt:
        stub = rt.env.C.get_by_name("a")
        await stub.incr()
        await fetch(
            dsn,
            f"UPDATE \"{schema}\".objects SET expires = now() + interval '1 second'",
        )
        await backend._renew()
        (row,) = await fetch(
            dsn,
            f'SELECT extract(epoch FROM expires - now()) FROM "{schema}".objects',
        )
        assert row[0] > 20  # renewed for the whole TTL
        # Another owner takes it (as after an expiry): renewal sees it gone.
        await fetch(
            dsn,
            f"UPDATE \"{schema}\".objects SET owner = 'other', epoch = epoch + 1",
        )
        await backend._renew()
        with pytest.raises(DurableObjectResetError) as caught:
            await stub.incr()
        assert isinstance(caught.value.__cause__, LeaseLostError)


async def test_snapshots_compact_the_log(
    make: Callable[..., PostgresBackend], dsn: str, schema: str
) -> None:
    async with Runtime(bindings={"C": Counter}, storage=make(pitr_retention=0)) as rt:
        stub = rt.env.C.get_by_name("a")
        await stub.fill(256 << 10)
        for _ in range(300):
            await stub.incr()
        rows = await fetch(
            dsn,
            f"SELECT count(*), count(*) FILTER (WHERE whole), sum(length(data))"
            f' FROM "{schema}".commits',
        )
        commits, wholes, size = rows[0]
        # The log holds one snapshot and the commits after it, not all 302.
        assert wholes == 1
        assert commits < 302
        assert size < 4 * (256 << 10)
    async with Runtime(bindings={"C": Counter}, storage=make()) as rt:
        stub = rt.env.C.get_by_name("a")
        assert await stub.state() == (300, list(range(1, 301)))
        assert await stub.blob_bytes() == 256 << 10


async def test_a_megabyte_object_starts_from_postgres(
    make: Callable[..., PostgresBackend],
) -> None:
    async with Runtime(bindings={"C": Counter}, storage=make()) as rt:
        await rt.env.C.get_by_name("big").fill(1 << 20)
    async with Runtime(bindings={"C": Counter}, storage=make()) as rt:
        assert await rt.env.C.get_by_name("big").blob_bytes() == 1 << 20


async def test_alarms_of_objects_held_elsewhere_are_not_loaded(
    make: Callable[..., PostgresBackend],
) -> None:
    class Alarmed(Counter):
        async def arm(self, at: int) -> None:
            await self.ctx.storage.set_alarm(at)

        async def alarm(self, info: Any) -> None:
            pass

    clock = ManualClock()
    async with Runtime(bindings={"C": Alarmed}, storage=make(), clock=clock) as one:
        await one.env.C.get_by_name("a").arm(clock.now_ms() + 60_000)
        other = make()
        await other.claim()
        try:
            assert await other.pending_alarms() == []
            assert [e.object_id for e in await one.storage.pending_alarms()] == [
                str(one.env.C.id_from_name("a"))
            ]
        finally:
            await other.aclose()


async def test_a_store_must_be_active_for_sql(
    make: Callable[..., PostgresBackend],
) -> None:
    backend = make()
    try:
        store = backend.open("ns", "0" * 64)
        with pytest.raises(StorageError, match="not active"):
            store.sql_connection()
        await store.commit(WriteBatch(writes={"k": b"v"}))  # activates itself
        assert store.sql_connection(create=False) is not None
        assert await store.get(["k"]) == {"k": b"v"}
        store.close()
    finally:
        await backend.aclose()


async def test_an_unreachable_server_is_a_retryable_error() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    backend = PostgresBackend(f"postgresql://127.0.0.1:{port}/x", retries=1)
    with pytest.raises(StorageUnavailableError, match="cannot connect") as caught:
        async with Runtime(bindings={"C": Counter}, storage=backend):
            pass
    assert caught.value.retryable
    await backend.aclose()


def test_options_are_checked() -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"schema": "1bad"}, "invalid schema name"),
        ({"schema": 'x"; DROP'}, "invalid schema name"),
        ({"lease_ttl": 0.1}, "lease_ttl"),
        ({"pitr_retention": -1}, "pitr_retention"),
        ({"pool_size": 0}, "pool_size"),
        ({"retries": -1}, "retries"),
    ]
    for bad, match in cases:
        with pytest.raises(ValueError, match=match):
            PostgresBackend("postgresql://127.0.0.1/test", **bad)
    with pytest.raises(ValueError, match="dsn"):
        PostgresBackend("")


def test_trio_is_refused_clearly(dsn: str) -> None:
    backend = PostgresBackend(dsn)
    with pytest.raises(StorageError, match="asyncio only"):
        anyio.run(backend.claim, backend="trio")


def test_pages_round_trip() -> None:
    pages = {3: b"c" * 512, 1: b"a" * 512}
    out: dict[int, bytes] = {}
    pg._unpack(pg._pack(pages), 512, out)
    assert out == pages
    with pytest.raises(StorageError, match="damaged"):
        pg._unpack(pg._pack(pages), 500, {})


def test_public_names() -> None:
    assert pyobjects.storage.PostgresBackend is PostgresBackend
    for name in ("LeaseHeldError", "LeaseLostError", "StorageUnavailableError"):
        assert issubclass(getattr(pyobjects, name), StorageError)


class Reminder(DurableObject):
    fired: ClassVar[list[tuple[str, int]]] = []

    async def arm(self, at: int) -> None:
        await self.ctx.storage.set_alarm(at)

    async def alarm(self, info: Any) -> None:
        Reminder.fired.append((self.env.NAME, info.retry_count))


async def test_a_due_alarm_of_an_unheld_object_is_claimed_once(
    make: Callable[..., PostgresBackend],
) -> None:
    Reminder.fired = []
    clock = ManualClock()
    at = clock.now_ms() + 1_000
    runtimes = [
        Runtime(
            bindings={"R": Reminder},
            storage=make(lease_ttl=0.6),
            clock=clock,
            vars={"NAME": name},
        )
        for name in ("one", "two")
    ]
    async with runtimes[0], runtimes[1]:
        # A third runtime sets the alarm and stops: nobody holds the object,
        # and the two running ones loaded their alarms before it existed.
        async with Runtime(
            bindings={"R": Reminder},
            storage=make(),
            clock=clock,
            vars={"NAME": "setter"},
        ) as setter:
            await setter.env.R.get_by_name("r").arm(at)
        await clock.advance(1_000)
        for _ in range(500):  # claimed by a renewal round (real time, bounded)
            if Reminder.fired:
                break
            await anyio.sleep(0.01)
        await anyio.sleep(0.5)  # more rounds of both: still only one run
        await clock.advance(0)
        assert len(Reminder.fired) == 1
        assert Reminder.fired[0][1] == 0
