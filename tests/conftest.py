from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from pyobjects.storage import (
    MemoryBackend,
    PostgresBackend,
    SQLiteBackend,
    StorageBackend,
)

from .postgres import drop_schema, new_schema, require_postgres

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Run every async test on both anyio backends."""
    return str(request.param)


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StorageBackend]:
    """Each built-in storage backend, fresh for the test.

    PostgreSQL runs on asyncio only (asyncpg): its trio variants are
    deselected (see pytest_collection_modifyitems).
    """
    if request.param == "memory":
        yield MemoryBackend()
    elif request.param == "sqlite":
        yield SQLiteBackend(tmp_path / "data")
    else:
        dsn = require_postgres()
        schema = new_schema()
        yield PostgresBackend(dsn, schema=schema)
        drop_schema(dsn, schema)


def pytest_collection_modifyitems(
    config: pytest.Config, items: list[pytest.Item]
) -> None:
    """Leave out PostgreSQL tests on trio (asyncpg needs asyncio)."""
    kept, dropped = [], []
    for item in items:
        params = getattr(item, "callspec", None)
        values = {} if params is None else params.params
        if values.get("anyio_backend") == "trio" and "postgres" in values.values():
            dropped.append(item)
        else:
            kept.append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


@pytest.fixture
def serve() -> Iterator[Callable[..., str]]:
    """Start ASGI apps under a real uvicorn on 127.0.0.1; stopped at teardown.

    ``url = serve(app, **uvicorn_config)`` returns the base URL.
    """
    from .servers import ServerThread  # imported late: needs the server extra

    started: list[ServerThread] = []

    def start(app: Any, **config: Any) -> str:
        thread = ServerThread(app, **config)
        started.append(thread)
        return thread.start()

    yield start
    for thread in reversed(started):
        thread.stop()


@pytest.fixture
def serve_on_trio() -> Iterator[Callable[[Any], str]]:
    """Like ``serve``, with hypercorn running the app on trio."""
    from .servers import HypercornTrioThread  # imported late: optional server

    started: list[HypercornTrioThread] = []

    def start(app: Any) -> str:
        thread = HypercornTrioThread(app)
        started.append(thread)
        return thread.start()

    yield start
    for thread in reversed(started):
        thread.stop()
