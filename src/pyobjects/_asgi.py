"""The ASGI 3 application behind :class:`pyobjects.asgi.App`.

One ``App`` serves one :class:`~pyobjects.Worker`. The ASGI lifespan (or
``async with app.running():`` in a host application's lifespan) enters a
:class:`~pyobjects.Runtime`; HTTP requests and WebSocket handshakes become
:class:`~pyobjects.Request` objects for the worker's ``fetch``, and its
:class:`~pyobjects.Response` goes back to the client. WebSocket bridging lives
in :mod:`pyobjects._asgi_ws`.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import traceback
from typing import TYPE_CHECKING, Any, Final, final

import anyio

from ._asgi_common import (
    BadRequestError,
    Receive,
    Scope,
    Send,
    content_length,
    plain,
    read_body,
    refuse_upgrade,
    request_parts,
    response_messages,
    send_quietly,
    send_response,
)
from ._asgi_ws import serve_websocket
from ._core._runtime import Runtime
from ._errors import RuntimeClosedError
from ._http import Request, Response
from ._worker import Worker
from ._ws_direct import FrameCache
from .storage.memory import MemoryBackend

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable

    from .storage._base import StorageBackend

__all__ = ["DEFAULT_MAX_BODY_SIZE", "DEFAULT_MAX_MESSAGE_SIZE", "App"]

logger = logging.getLogger("pyobjects.asgi")

#: Cloudflare's request body limit on the Free and Pro plans (100 MB).
DEFAULT_MAX_BODY_SIZE: Final = 100 * 1024 * 1024
#: Cloudflare's limit on a received WebSocket message (32 MiB).
DEFAULT_MAX_MESSAGE_SIZE: Final = 32 * 1024 * 1024
#: Seconds a stopping server waits for ``ctx.wait_until()`` work (Cloudflare: 30 s).
SHUTDOWN_GRACE: Final = 30.0

_NOT_RUNNING = (
    "Service Unavailable: the pyobjects runtime is not running. Start it with "
    "the ASGI lifespan (the default under uvicorn and hypercorn) or, when the "
    "app is mounted in another one, with `async with app.running():` in the "
    "host app's lifespan.\n"
)


@final
class _Background:
    """``ctx.wait_until()`` work, counted so that shutdown can wait for it."""

    __slots__ = ("_count", "_idle")

    def __init__(self) -> None:
        self._count = 0
        self._idle: anyio.Event | None = None

    def spawn(self, runtime: Runtime, awaitable: Awaitable[Any]) -> None:
        try:
            runtime._spawn(self._run, awaitable)
        except RuntimeClosedError:
            if inspect.iscoroutine(awaitable):
                awaitable.close()  # never started: no "never awaited" warning
            raise
        self._count += 1

    async def _run(self, awaitable: Awaitable[Any]) -> None:
        try:
            await awaitable
        except Exception:
            logger.exception("a ctx.wait_until() task of the worker failed")
        finally:
            self._count -= 1
            if not self._count and self._idle is not None:
                self._idle.set()

    async def wait(self, seconds: float) -> None:
        with anyio.move_on_after(seconds):
            while self._count:
                self._idle = anyio.Event()
                await self._idle.wait()
        if self._count:  # pragma: no cover - needs 30 s of stuck work
            logger.warning(
                "stopping with %d ctx.wait_until() task(s) still running",
                self._count,
            )


@final
class App:
    """Serve a :class:`~pyobjects.Worker` as an ASGI 3 application.

    Run it under any ASGI server (``uvicorn module:app``, hypercorn) or with
    ``pyobjects serve module:worker``. The server's lifespan protocol starts
    and stops the runtime; stopping waits for ``ctx.wait_until()`` work and
    flushes pending writes. Mounted inside another application (Starlette,
    FastAPI), start it from the host's lifespan with
    ``async with app.running():``. Until the runtime runs, every request is
    answered ``503 Service Unavailable``.

    Args:
        worker: What to serve.
        storage: The storage backend; ``None`` means one ``MemoryBackend``
            kept for the life of this ``App``.
        debug: Put the traceback in the body of a ``500`` response when the
            worker raises (never do this in production). The error is logged
            either way.
        max_body_size: Largest request body in bytes (default 100 MiB, as
            Cloudflare's Free and Pro plans); a larger one is answered ``413``
            without being read further. ``None`` means no limit.
        max_message_size: Largest WebSocket message accepted from a client,
            in bytes (default 32 MiB, as Cloudflare); a larger one closes the
            connection with code 1009.
        runtime_options: Passed to :class:`~pyobjects.Runtime` (``clock``,
            ``idle_timeout``, ...), which checks them at once.
    """

    __slots__ = (
        "_background",
        "_frames",
        "_fresh",
        "_options",
        "_runtime",
        "_starting",
        "_warned_not_running",
        "debug",
        "max_body_size",
        "max_message_size",
        "storage",
        "worker",
    )

    def __init__(
        self,
        worker: Worker,
        *,
        storage: StorageBackend | None = None,
        debug: bool = False,
        max_body_size: int | None = DEFAULT_MAX_BODY_SIZE,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        **runtime_options: Any,
    ) -> None:
        if not isinstance(worker, Worker):
            raise TypeError(
                f"App() takes a pyobjects.Worker, not {type(worker).__name__}"
            )
        if max_body_size is not None and max_body_size < 0:
            raise ValueError(f"max_body_size must be >= 0, got {max_body_size}")
        if max_message_size < 1:
            raise ValueError(f"max_message_size must be >= 1, got {max_message_size}")
        self.worker: Worker = worker
        self.storage: StorageBackend = MemoryBackend() if storage is None else storage
        self.debug: bool = debug
        self.max_body_size: int | None = max_body_size
        self.max_message_size: int = max_message_size
        self._options = runtime_options
        self._background = _Background()
        self._runtime: Runtime | None = None
        self._starting = False
        self._warned_not_running = False
        self._frames = FrameCache()
        # Built now so that bad bindings or options fail at construction.
        self._fresh: Runtime | None = self._new_runtime()

    def _new_runtime(self) -> Runtime:
        return Runtime(
            bindings=self.worker.bindings,
            vars=self.worker.vars,
            storage=self.storage,
            **self._options,
        )

    @property
    def runtime(self) -> Runtime:
        """The running :class:`~pyobjects.Runtime` (its ``env`` reaches the objects).

        Raises:
            RuntimeClosedError: If the app is not running.
        """
        if self._runtime is None:
            raise RuntimeClosedError("the App is not running")
        return self._runtime

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Runtime]:
        """Run the runtime for the duration of an ``async with`` block.

        Use it in a host application's lifespan when this app is mounted;
        the ASGI lifespan of this app does the same. Leaving the block waits
        up to 30 s for ``ctx.wait_until()`` work, then flushes pending writes
        and stops the runtime. Yields the runtime.

        Raises:
            RuntimeError: If the app is already running.
        """
        if self._starting:
            raise RuntimeError("this App is already running")
        self._starting = True
        try:
            runtime = self._fresh or self._new_runtime()
            self._fresh = None
            async with runtime:
                self._runtime = runtime
                try:
                    yield runtime
                finally:
                    self._runtime = None
                    await self._background.wait(SHUTDOWN_GRACE)
        finally:
            self._starting = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "websocket":
            await serve_websocket(self, scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)
        else:
            raise ValueError(f"unsupported ASGI scope type {kind!r}")

    # -- lifespan ------------------------------------------------------------

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        message = await receive()
        if message["type"] != "lifespan.startup":  # pragma: no cover - bad server
            return
        started = False
        try:
            async with self.running():
                started = True
                await send({"type": "lifespan.startup.complete"})
                while (await receive())["type"] != "lifespan.shutdown":
                    pass  # pragma: no cover - servers send nothing else
        except Exception as exc:
            phase = "shutdown" if started else "startup"
            logger.exception("pyobjects %s failed", phase)
            await send({"type": f"lifespan.{phase}.failed", "message": repr(exc)})
            return
        await send({"type": "lifespan.shutdown.complete"})

    # -- HTTP ----------------------------------------------------------------

    async def _invoke(self, runtime: Runtime, request: Request) -> Response:
        spawn = functools.partial(self._background.spawn, runtime)
        return await self.worker._dispatch(request, runtime.env, spawn)

    def _not_running(self) -> Response:
        if not self._warned_not_running:
            self._warned_not_running = True
            logger.error(
                "a request arrived while the pyobjects runtime is not running "
                "(answered 503); start it with the ASGI lifespan or app.running()"
            )
        return plain(503, _NOT_RUNNING)

    def _failure(self, what: str) -> Response:
        """Log the current exception; return the 500 the client gets."""
        logger.exception("%s", what)
        if self.debug:
            return plain(500, f"{what}\n\n{traceback.format_exc()}")
        return plain(500, "Internal Server Error\n")

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        runtime = self._runtime
        if runtime is None:
            await send_response(send, self._not_running(), head=False)
            return
        method = str(scope["method"]).upper()
        try:
            url, headers = request_parts(scope)
            length = content_length(headers)
        except BadRequestError as exc:
            await send_response(send, plain(400, f"Bad Request: {exc}\n"), head=False)
            return
        limit = self.max_body_size
        if limit is not None and length is not None and length > limit:
            await send_response(send, _too_large(limit), head=False)
            return
        body = await read_body(receive, limit)
        if body is None:
            return  # the client went away: nothing to answer
        if not isinstance(body, bytes):
            await send_response(send, _too_large(limit), head=False)
            return
        try:
            request = Request._from_edge(url, method, headers, body)
        except (ValueError, TypeError) as exc:
            await send_response(send, plain(400, f"Bad Request: {exc}\n"), head=False)
            return
        try:
            response = await self._invoke(runtime, request)
            if response.websocket is not None:
                await refuse_upgrade(response.websocket)
                if "websocket" in (headers.get("upgrade") or "").lower():
                    response = plain(
                        400,
                        "Bad Request: malformed WebSocket upgrade request (expected "
                        "GET with Connection: Upgrade, Upgrade: websocket, "
                        "Sec-WebSocket-Key and Sec-WebSocket-Version: 13)\n",
                    )
                else:
                    raise TypeError(
                        "the worker answered a plain HTTP request with a "
                        "WebSocket (status 101) response"
                    )
            start, chunk = response_messages(response, head=method == "HEAD")
        except Exception:
            response = self._failure(f"the worker failed on {method} {url}")
            start, chunk = response_messages(response, head=method == "HEAD")
        await send_quietly(send, start, chunk)

    def __repr__(self) -> str:
        state = "running" if self._runtime is not None else "stopped"
        return f"<pyobjects.asgi.App {self.worker!r} {state}>"


def _too_large(limit: int | None) -> Response:
    # Connection: close, since the rest of the body is never read.
    return plain(
        413,
        f"Payload Too Large: the request body is limited to {limit} bytes\n",
        connection="close",
    )
