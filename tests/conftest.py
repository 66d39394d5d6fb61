from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from pyobjects.storage import MemoryBackend, SQLiteBackend, StorageBackend

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Run every async test on both anyio backends."""
    return str(request.param)


@pytest.fixture(params=["memory", "sqlite"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StorageBackend]:
    """Each built-in storage backend, fresh for the test."""
    if request.param == "memory":
        yield MemoryBackend()
    else:
        yield SQLiteBackend(tmp_path / "data")


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
