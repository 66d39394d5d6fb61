"""HTTP test clients for workers: in process (httpx) and over a real uvicorn.

``make_client`` is the equivalent of ``SELF.fetch()`` in ``cloudflare:test``
(and of Starlette's ``TestClient``): an ``httpx.AsyncClient`` whose requests go
straight into the ASGI app, on the test's event loop. ``make_server`` serves
the app with uvicorn on ``127.0.0.1`` (a free port, in a thread of its own)
for tests that need a real socket, WebSockets included. The fixtures live in
:mod:`pyobjects.testing._pytest_plugin`; httpx and uvicorn are imported only
when a test uses them.
"""

from __future__ import annotations

import contextlib
import math
import socket
import threading
from typing import TYPE_CHECKING, Any, Final, Protocol, TypeAlias, final

import anyio

from pyobjects._asgi import DEFAULT_MAX_MESSAGE_SIZE, App
from pyobjects._asgi_common import Message
from pyobjects._worker import Worker

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

    import httpx

    from pyobjects._asgi_common import Receive, Scope, Send

__all__ = [
    "ASGIApp",
    "MakeClient",
    "MakeServer",
    "ServerThread",
    "as_asgi_app",
    "lifespan",
    "with_state",
]

#: Seconds to wait for uvicorn to start, or to stop.
SERVER_TIMEOUT: Final = 10.0

ASGIApp: TypeAlias = "Callable[[Scope, Receive, Send], Awaitable[None]]"


class MakeClient(Protocol):
    """The type of the ``make_client`` fixture.

    ``client = await make_client(app, *, base_url="http://testserver",
    **app_options)`` returns an ``httpx.AsyncClient`` whose requests go to
    *app* in process; the app's lifespan has run its startup, and the client
    is closed and the lifespan shut down when the test ends.
    """

    def __call__(
        self,
        app: Worker | ASGIApp,
        /,
        *,
        base_url: str = "http://testserver",
        **app_options: Any,
    ) -> Awaitable[httpx.AsyncClient]:
        """Start *app* and return a client for it."""
        ...


class MakeServer(Protocol):
    """The type of the ``make_server`` fixture.

    ``url = make_server(app, **app_options)`` serves *app* with uvicorn on
    ``127.0.0.1`` and returns its base URL, ``http://127.0.0.1:<port>``; the
    server stops when the test ends.
    """

    def __call__(self, app: Worker | ASGIApp, /, **app_options: Any) -> str:
        """Serve *app*; return its base URL."""
        ...


def as_asgi_app(
    app: Worker | ASGIApp, options: dict[str, Any], defaults: dict[str, Any]
) -> ASGIApp:
    """Return *app* as an ASGI app: a :class:`Worker` gets an :class:`App`.

    Raises:
        TypeError: For app options given with something other than a Worker.
    """
    if isinstance(app, Worker):
        return App(app, **{**defaults, **options})
    if options:
        raise TypeError(
            "options such as "
            f"{', '.join(sorted(options))}= are for the App built around a "
            "pyobjects.Worker; pass them to App(...) yourself when you pass an app"
        )
    return app


@contextlib.asynccontextmanager
async def lifespan(app: ASGIApp) -> AsyncIterator[dict[str, Any]]:
    """Run *app*'s ASGI lifespan around the block; yield its ``state``.

    An app that returns or raises before answering the startup message does
    not speak the lifespan protocol and runs without it (uvicorn's
    ``--lifespan auto``).

    Raises:
        RuntimeError: If the app reports that its startup or shutdown failed.
    """
    state: dict[str, Any] = {}
    scope = {
        "type": "lifespan",
        "asgi": {"version": "3.0", "spec_version": "2.0"},
        "state": state,
    }
    to_app, app_inbox = anyio.create_memory_object_stream[Message](math.inf)
    app_outbox, from_app = anyio.create_memory_object_stream[Message](math.inf)
    errors: list[Exception] = []

    async def run() -> None:
        async with app_inbox, app_outbox:
            try:
                await app(scope, app_inbox.receive, app_outbox.send)
            except Exception as exc:  # reported below, with the phase
                errors.append(exc)

    async def answer(phase: str) -> RuntimeError | bool:
        """Send the phase's message; return the failure, or if it was answered."""
        to_app.send_nowait({"type": f"lifespan.{phase}"})
        try:
            message = await from_app.receive()
        except anyio.EndOfStream:
            if phase == "startup":
                return False  # no lifespan support
            message = {"message": "the app returned without completing it"}
        else:
            if message["type"] != f"lifespan.{phase}.failed":
                return True
            with contextlib.suppress(anyio.EndOfStream):
                while True:  # let the app finish, to chain its exception
                    await from_app.receive()
        failure = RuntimeError(
            f"the app's lifespan {phase} failed: {message.get('message', '')}"
        )
        failure.__cause__ = errors[0] if errors else None
        return failure

    # Failures are raised after the task group, so that they are not wrapped
    # in an ExceptionGroup.
    failure: RuntimeError | None = None
    async with anyio.create_task_group() as tg, to_app, from_app:
        tg.start_soon(run)
        started = await answer("startup")
        if isinstance(started, RuntimeError):
            failure = started
        else:
            try:
                yield state
            finally:
                if started:
                    stopped = await answer("shutdown")
                    if isinstance(stopped, RuntimeError):
                        failure = stopped
    if failure is not None:
        raise failure


def with_state(app: ASGIApp, state: dict[str, Any]) -> ASGIApp:
    """Give each request a copy of the lifespan ``state``, as servers do."""

    async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket") and "state" not in scope:
            scope = {**scope, "state": dict(state)}
        await app(scope, receive, send)

    return wrapped


def _listen() -> socket.socket:
    # IPPROTO_TCP: asyncio then turns Nagle's algorithm off on connections.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.bind(("127.0.0.1", 0))  # a free port, chosen by the system
        sock.listen(128)
    except OSError:  # pragma: no cover - loopback always binds
        sock.close()
        raise
    return sock


@final
class ServerThread:
    """uvicorn serving one app on 127.0.0.1, in a thread with its own loop."""

    __slots__ = ("_ready", "_server", "_socket", "_thread", "url")

    def __init__(self, app: ASGIApp) -> None:
        try:
            import uvicorn  # optional: the server extra
        except ImportError:
            raise ImportError(
                "make_server needs uvicorn: pip install 'pyobjects[server]'"
            ) from None
        ready = threading.Event()

        class _Server(uvicorn.Server):
            async def startup(self, sockets: list[socket.socket] | None = None) -> None:
                try:
                    await super().startup(sockets)
                finally:
                    ready.set()

        config = uvicorn.Config(
            app,
            lifespan="on",
            log_config=None,  # leave the test process's logging alone
            log_level="warning",
            access_log=False,
            ws_max_size=DEFAULT_MAX_MESSAGE_SIZE,
        )
        self._ready = ready
        self._server = _Server(config)
        self._socket = _listen()
        port = self._socket.getsockname()[1]
        self.url: str = f"http://127.0.0.1:{port}"
        self._thread = threading.Thread(
            target=self._run, name=f"pyobjects uvicorn :{port}", daemon=True
        )

    def _run(self) -> None:
        try:
            self._server.run(sockets=[self._socket])
        except SystemExit:
            pass  # uvicorn's way to report a failed startup: start() says so
        finally:
            self._ready.set()  # also when startup never got that far

    def start(self) -> str:
        """Start serving; return the base URL once uvicorn has started.

        Raises:
            RuntimeError: If uvicorn (or the app's lifespan) failed to start.
        """
        self._thread.start()
        if not self._ready.wait(SERVER_TIMEOUT):  # pragma: no cover - a hang
            raise RuntimeError("uvicorn did not start in time")
        if not self._server.started:
            self.stop()
            raise RuntimeError(
                "uvicorn failed to start (the app's lifespan startup failed?); "
                "its log says why"
            )
        return self.url

    def stop(self) -> None:
        """Stop the server (open connections are closed) and wait for it.

        Raises:
            RuntimeError: If it did not stop in time.
        """
        self._server.should_exit = True
        self._thread.join(SERVER_TIMEOUT)
        if self._thread.is_alive():  # pragma: no cover - a hung app
            self._server.force_exit = True
            self._thread.join(SERVER_TIMEOUT)
        self._socket.close()
        if self._thread.is_alive():  # pragma: no cover - a hung app
            raise RuntimeError("uvicorn did not stop in time")
