"""Fixtures of the cluster tests: asyncio only (asyncpg), a schema per test."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from tests.postgres import drop_schema, new_schema, require_postgres

if TYPE_CHECKING:
    from collections.abc import Iterator


@pytest.fixture
def anyio_backend() -> str:
    """Nodes need PostgresBackend, which runs on asyncio only."""
    return "asyncio"


@pytest.fixture
def database() -> Iterator[tuple[str, str]]:
    """The test server's DSN and a fresh schema on it, dropped afterwards."""
    dsn = require_postgres()
    schema = new_schema()
    yield dsn, schema
    drop_schema(dsn, schema)
