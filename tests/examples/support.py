"""Run an example's worker in process, or under a real server with virtual time."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import anyio.from_thread
import anyio.lowlevel
import httpx

from pyobjects.asgi import App

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from pyobjects import Worker
    from pyobjects.testing import ManualClock

Serve = Callable[..., str]


@contextlib.asynccontextmanager
async def in_process(app: App) -> AsyncIterator[httpx.AsyncClient]:
    """Run *app*'s runtime; yield a client that calls it without a server."""
    async with app.running():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://example.test"
        ) as client:
            yield client


class ClockedApp:
    """An :class:`App` on a ManualClock, to serve with the ``serve`` fixture.

    The server runs the app on its own event loop in another thread;
    :meth:`advance` moves the clock on that loop and returns once every
    alarm that came due has run, so a test over real HTTP stays exact.
    """

    def __init__(self, worker: Worker, clock: ManualClock, **options: Any) -> None:
        self.app = App(worker, clock=clock, **options)
        self.clock = clock
        self._token: anyio.lowlevel.EventLoopToken | None = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":  # the server's loop, where the runtime runs
            self._token = anyio.lowlevel.current_token()
        await self.app(scope, receive, send)

    def advance(self, ms: int) -> None:
        assert self._token is not None, "serve the app first"
        anyio.from_thread.run(self.clock.advance, ms, token=self._token)

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``await fn(*args)`` on the server's loop (to reach the runtime)."""
        assert self._token is not None, "serve the app first"
        return anyio.from_thread.run(fn, *args, token=self._token)
