"""What PostgresBackend sends to PostgreSQL per operation (its round trips).

The commit is on every call's path: its cost is its round trips. These tests
log the statements on the wire with asyncpg's query loggers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from pyobjects import DurableObject, Runtime
from pyobjects.storage import PostgresBackend
from tests.postgres import drop_schema, new_schema, require_postgres

if TYPE_CHECKING:
    from collections.abc import Iterator


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def backend() -> Iterator[PostgresBackend]:
    dsn = require_postgres()
    schema = new_schema()
    # A long lease: no renewal runs (on another connection) during the test.
    yield PostgresBackend(dsn, schema=schema, lease_ttl=3600)
    drop_schema(dsn, schema)


class Counter(DurableObject):
    async def incr(self) -> int:
        n: int = (await self.ctx.storage.get("n") or 0) + 1
        self.ctx.storage.put("n", n)
        return n


@pytest.mark.anyio
async def test_a_commit_is_one_statement_on_the_wire(
    backend: PostgresBackend,
) -> None:
    sent: list[str] = []
    async with Runtime(bindings={"COUNTER": Counter}, storage=backend) as rt:
        stub = rt.env.COUNTER.get_by_name("wire")
        assert await stub.incr() == 1  # active, its lease taken, "n" cached
        pool = backend._pool
        assert pool is not None
        assert pool.get_size() == 1  # one caller at a time: one connection
        async with pool.acquire() as conn:

            def log(query: Any) -> None:
                sent.append(query.query)

            conn.add_query_logger(log)
        sent.clear()
        assert await stub.incr() == 2
        assert await stub.incr() == 3
        statements = list(sent)
    # The commit statement only: no reset of the session when the pool gets
    # the connection back (asyncpg's default adds a second round trip).
    assert len(statements) == 2, statements
    assert statements[0] == statements[1]
    assert statements[0].startswith("WITH o AS (UPDATE")
