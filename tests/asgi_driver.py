"""Drive an ASGI app in process: lifespan, HTTP requests and WebSockets.

Works on every anyio backend (no server involved), so the ASGI app is tested
under asyncio and trio alike; tests against a real uvicorn live in
test_asgi_server.py.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Coroutine, Sequence

    from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

    ASGIApp = Callable[..., Coroutine[Any, Any, None]]

Message = dict[str, Any]


@contextlib.asynccontextmanager
async def lifespan(app: ASGIApp) -> AsyncIterator[list[Message]]:
    """Run *app*'s lifespan around the block; yields the messages it sent."""
    to_app, app_inbox = anyio.create_memory_object_stream[Message](4)
    app_outbox, from_app = anyio.create_memory_object_stream[Message](4)
    sent: list[Message] = []
    with to_app, app_inbox, app_outbox, from_app:

        async def send(message: Message) -> None:
            sent.append(message)
            await app_outbox.send(message)

        async with anyio.create_task_group() as tg:
            scope: Message = {"type": "lifespan", "asgi": {"version": "3.0"}}
            tg.start_soon(app, scope, app_inbox.receive, send)
            await to_app.send({"type": "lifespan.startup"})
            started = await from_app.receive()
            if started["type"] != "lifespan.startup.complete":
                tg.cancel_scope.cancel()
                yield sent
                return
            yield sent
            await to_app.send({"type": "lifespan.shutdown"})
            await from_app.receive()


@dataclass
class HTTPResult:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes
    messages: list[Message]
    receives: int  # how many times the app called receive()

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.decode() == name:
                return value.decode("latin-1")
        return None


def http_scope(
    method: str = "GET",
    path: str = "/",
    *,
    query: bytes = b"",
    headers: Sequence[tuple[str, str]] = (("host", "example.test"),),
    scheme: str = "http",
    raw_path: bytes | None = None,
    server: tuple[str, int] | None = ("127.0.0.1", 8787),
    kind: str = "http",
    root_path: str = "",
) -> dict[str, Any]:
    scope: dict[str, Any] = {
        "type": kind,
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": scheme,
        "path": path,
        "query_string": query,
        "headers": [(k.lower().encode(), v.encode("latin-1")) for k, v in headers],
        "server": server,
        "client": ("127.0.0.1", 50000),
        "root_path": root_path,
    }
    if raw_path is not None:
        scope["raw_path"] = raw_path
    return scope


async def http(
    app: ASGIApp,
    method: str = "GET",
    path: str = "/",
    *,
    chunks: Sequence[bytes] = (b"",),
    disconnect: bool = False,
    **scope_options: Any,
) -> HTTPResult:
    """Send one request; ``disconnect`` ends the body with ``http.disconnect``."""
    scope = http_scope(method, path, **scope_options)
    inbox: list[Message] = [
        {"type": "http.request", "body": chunk, "more_body": i < len(chunks) - 1}
        for i, chunk in enumerate(chunks)
    ]
    if disconnect:
        inbox[-1]["more_body"] = True
        inbox.append({"type": "http.disconnect"})
    receives = 0
    sent: list[Message] = []
    forever = anyio.Event()

    async def receive() -> Message:
        nonlocal receives
        receives += 1
        if inbox:
            return inbox.pop(0)
        await forever.wait()  # pragma: no cover - the app read too much
        raise AssertionError

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope, receive, send)
    start = next((m for m in sent if m["type"] == "http.response.start"), None)
    body = b"".join(
        m.get("body", b"") for m in sent if m["type"] == "http.response.body"
    )
    return HTTPResult(
        status=0 if start is None else start["status"],
        headers=[] if start is None else list(start["headers"]),
        body=body,
        messages=sent,
        receives=receives,
    )


@dataclass
class WebSocketPeer:
    """The client side of an in-process WebSocket connection."""

    to_app: MemoryObjectSendStream[Message]
    from_app: MemoryObjectReceiveStream[Message]
    sent_by_app: list[Message] = field(default_factory=list)

    async def next(self) -> Message:
        with anyio.fail_after(5):
            message = await self.from_app.receive()
        self.sent_by_app.append(message)
        return message

    async def send_text(self, text: str) -> None:
        await self.to_app.send({"type": "websocket.receive", "text": text})

    async def send_bytes(self, data: bytes) -> None:
        await self.to_app.send({"type": "websocket.receive", "bytes": data})

    async def disconnect(self, code: int = 1000, reason: str = "") -> None:
        await self.to_app.send(
            {"type": "websocket.disconnect", "code": code, "reason": reason}
        )


@contextlib.asynccontextmanager
async def websocket(
    app: ASGIApp,
    path: str = "/ws",
    *,
    denial_extension: bool = True,
    headers: Sequence[tuple[str, str]] = (),
    query: bytes = b"",
) -> AsyncIterator[WebSocketPeer]:
    """Open a WebSocket to *app*; the block ends when the app returns."""
    all_headers = [
        ("host", "example.test"),
        ("connection", "Upgrade"),
        ("upgrade", "websocket"),
        ("sec-websocket-version", "13"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        *headers,
    ]
    scope = http_scope(
        "GET", path, query=query, headers=all_headers, scheme="ws", kind="websocket"
    )
    if denial_extension:
        scope["extensions"] = {"websocket.http.response": {}}
    to_app, app_inbox = anyio.create_memory_object_stream[Message](16)
    app_outbox, from_app = anyio.create_memory_object_stream[Message](16)
    with to_app, app_inbox, app_outbox, from_app:
        peer = WebSocketPeer(to_app, from_app)
        await to_app.send({"type": "websocket.connect"})
        async with anyio.create_task_group() as tg:

            async def run() -> None:
                await app(scope, app_inbox.receive, app_outbox.send)

            tg.start_soon(run)
            yield peer
