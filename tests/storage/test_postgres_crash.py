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
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import pytest

import pyobjects
from pyobjects import Runtime
from pyobjects.storage import PostgresBackend
from pyobjects.testing import run_in_durable_object
from tests.durability_writer import Ledger
from tests.postgres import (
    drop_schema,
    new_schema,
    require_postgres,
)
from tests.zombie_owner import Register

if TYPE_CHECKING:
    from collections.abc import Iterator

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
        assert proc.stdout is not None
        for line in proc.stdout:
            kind, obj, i = line.split()
            seen.append((kind, int(obj), int(i)))
            if len(seen) >= acks:
                break
    finally:
        proc.send_signal(signal.SIGKILL)
        watchdog.cancel()
        err = _reap(proc)
    assert len(seen) >= acks, f"the writer exited early:\n{err}"
    assert proc.returncode == -signal.SIGKILL
    return seen


async def _dump(instance: Any, ctx: pyobjects.DurableObjectState) -> dict[str, Any]:
    rows = ctx.storage.sql.exec("SELECT run, i FROM ledger").raw()
    out: dict[str, Any] = {"@sql": {(run, i) for run, i in rows}}
    start = None
    while True:
        page = (
            await ctx.storage.list(start_after=start, limit=256)
            if start
            else await ctx.storage.list(limit=256)
        )
        if not page:
            return out
        out.update(page)
        start = next(reversed(page))


async def test_acknowledged_writes_survive_sigkill_on_postgres(
    schema: tuple[str, str],
) -> None:
    dsn, name = schema
    rng = random.Random(1212)
    acked: dict[int, list[tuple[str, int, int]]] = {}
    for run in range(ROUNDS):
        acked[run] = _kill_after_acks(dsn, name, run, rng.randrange(50, 600))
        # Its leases would hold the objects for lease_ttl: the next writer
        # could not start them before.
        await _expire_leases(dsn, name)

    backend = PostgresBackend(dsn, schema=name)
    async with Runtime(bindings={"LEDGER": Ledger}, storage=backend) as rt:
        for obj in range(3):
            stub = rt.env.LEDGER.get_by_name(f"ledger-{obj}")
            data = await run_in_durable_object(stub, _dump)
            txn_keys = 0
            for run, seen in acked.items():
                for kind, o, i in seen:
                    if o != obj:
                        continue
                    if kind == "ack":
                        for prefix in "abc":
                            assert f"{prefix}:{run}:{i:06}" in data, (run, obj, i)
                        assert (run, i) in data["@sql"], (run, obj, i)
                    else:
                        assert f"t:{run}:{i:06}" in data, (run, obj, i)
                # No batch is torn: its a, b and c keys and its SQL row exist
                # together or not at all.
                present = {
                    prefix: {
                        k.split(":")[2]
                        for k in data
                        if k.startswith(f"{prefix}:{run}:")
                    }
                    for prefix in "abc"
                }
                assert present["a"] == present["b"] == present["c"], (run, obj)
                sql_rows = {f"{i:06}" for r, i in data["@sql"] if r == run}
                assert sql_rows == present["a"], (run, obj)
                txn_keys += sum(1 for k in data if k.startswith(f"t:{run}:"))
            # Every transaction wrote its key and bumped the total together.
            assert data.get("total", 0) == txn_keys, obj


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
