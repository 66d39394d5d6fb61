"""pytest plugin, loaded through the ``pytest11`` entry point on install.

Fixtures give each test its own manual clock, a fresh in-memory storage,
runtimes built on both, and HTTP clients for workers, all closed when the
test ends, so tests are isolated and need no real sleeps. The async fixtures
run under anyio's pytest plugin (``anyio_mode = "auto"``, or mark the test
``@pytest.mark.anyio``) or under pytest-asyncio (``asyncio_mode = "auto"``):
their context managers are held by a task of their own (see
:mod:`pyobjects.testing._hosting`), so setup and teardown may run in
different tasks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from pyobjects._core._runtime import Runtime
from pyobjects.storage.memory import MemoryBackend
from pyobjects.testing._clients import (
    ServerThread,
    as_asgi_app,
    lifespan,
    with_state,
)
from pyobjects.testing._clock import ManualClock
from pyobjects.testing._hosting import ContextHost

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator, Mapping

    import httpx

    from pyobjects._core._object import DurableObject
    from pyobjects._worker import Worker
    from pyobjects.testing._clients import ASGIApp, MakeClient, MakeServer
    from pyobjects.testing._harness import MakeRuntime


@pytest.fixture
def manual_clock() -> ManualClock:
    """A fresh :class:`ManualClock` for one test."""
    return ManualClock()


@pytest.fixture
def memory_backend() -> MemoryBackend:
    """A fresh, empty :class:`MemoryBackend` for one test."""
    return MemoryBackend()


@pytest.fixture
async def make_runtime(
    manual_clock: ManualClock, memory_backend: MemoryBackend
) -> AsyncIterator[MakeRuntime]:
    """Build running runtimes on the test's clock and storage.

    ``rt = await make_runtime({"COUNTER": Counter})`` returns a runtime that
    is already entered and is closed when the test ends. Keyword arguments go
    to :class:`~pyobjects.Runtime`; ``clock`` and ``storage`` default to the
    ``manual_clock`` and ``memory_backend`` fixtures.
    """
    host = ContextHost()

    async def make(
        bindings: Mapping[str, type[DurableObject]], **options: Any
    ) -> Runtime:
        options.setdefault("clock", manual_clock)
        options.setdefault("storage", memory_backend)
        return await host.enter(Runtime(bindings=bindings, **options))

    yield make
    await host.aclose()


@pytest.fixture
async def make_client(
    manual_clock: ManualClock, memory_backend: MemoryBackend
) -> AsyncIterator[MakeClient]:
    """Build in-process HTTP clients for workers and ASGI apps.

    ``client = await make_client(worker)`` serves the
    :class:`~pyobjects.Worker` with a :class:`~pyobjects.asgi.App` on the
    test's ``manual_clock`` and ``memory_backend`` (keyword arguments go to
    the ``App``), runs its lifespan and returns an ``httpx.AsyncClient``
    whose requests reach the app in process. Any other ASGI app (an ``App``,
    a FastAPI or Starlette app) is used as it is, its lifespan run. Clients
    are closed and lifespans shut down when the test ends. Needs httpx.
    """
    try:
        import httpx
    except ImportError:
        raise ImportError(
            "make_client needs httpx: pip install 'pyobjects[fetch]'"
        ) from None
    host = ContextHost()

    async def make(
        app: Worker | ASGIApp,
        /,
        *,
        base_url: str = "http://testserver",
        **app_options: Any,
    ) -> httpx.AsyncClient:
        defaults = {"storage": memory_backend, "clock": manual_clock}
        asgi_app = as_asgi_app(app, app_options, defaults)
        state = await host.enter(lifespan(asgi_app))
        transport = httpx.ASGITransport(app=with_state(asgi_app, state))
        client = httpx.AsyncClient(transport=transport, base_url=base_url)
        return await host.enter(client)

    yield make
    await host.aclose()


@pytest.fixture
def make_server() -> Iterator[MakeServer]:
    """Serve workers and ASGI apps with a real uvicorn on ``127.0.0.1``.

    ``url = make_server(worker)`` serves the :class:`~pyobjects.Worker` with
    a :class:`~pyobjects.asgi.App` (keyword arguments go to the ``App``; its
    storage is a fresh ``MemoryBackend`` unless given) on a free port, and
    returns the base URL, ``http://127.0.0.1:<port>``. Any other ASGI app is
    served as it is. uvicorn runs in a thread, on an event loop of its own;
    servers stop when the test ends. Needs uvicorn.
    """
    started: list[ServerThread] = []

    def make(app: Worker | ASGIApp, /, **app_options: Any) -> str:
        server = ServerThread(as_asgi_app(app, app_options, {}))
        started.append(server)
        return server.start()

    yield make
    for server in reversed(started):
        server.stop()
