"""WebSocket connections of :class:`pyobjects.asgi.App`.

The handshake becomes a ``GET`` :class:`~pyobjects.Request` carrying the
upgrade headers. A worker that answers anything but ``101`` refuses the
connection: the response goes back as an HTTP response when the server
supports the ASGI ``websocket.http.response`` extension, and as a close
(HTTP 403) otherwise. ``Response(status=101, websocket=client)`` accepts it,
and the connection is bridged to ``client``, the client end of a
``WebSocketPair``, through five members:

- ``client.accept()`` once, before the ASGI ``websocket.accept``;
- ``client.send(message)`` for every message from the peer (``str`` or
  ``bytes``);
- ``client.close(code, reason)`` when the peer closes with a close frame;
- ``client._disconnect()`` when the connection is lost without one;
- ``await client.receive()``, looped, returns what to send to the peer
  (``str`` or ``bytes``), or an object with ``code``, ``reason`` and
  ``was_clean`` once the object side has closed.

Exactly one of ``close``/``_disconnect`` is called, and neither once the
object side has closed. ``accept``, ``send``, ``close`` and ``_disconnect``
may be plain or async methods.
"""

from __future__ import annotations

import inspect
import logging
from typing import TYPE_CHECKING, Any, Final, Protocol

import anyio

from ._asgi_common import (
    BadRequestError,
    Receive,
    Scope,
    Send,
    plain,
    request_parts,
    response_messages,
    send_quietly,
)
from ._http import Request, Response, check_websocket
from ._websocket import WebSocket

if TYPE_CHECKING:
    from ._core._runtime import Runtime

__all__ = ["BRIDGE_MEMBERS", "serve_websocket"]

logger = logging.getLogger("pyobjects.asgi")

BRIDGE_MEMBERS: Final = ("accept", "send", "close", "_disconnect", "receive")
_DENIAL_EXTENSION = "websocket.http.response"
# Headers the server computes for the 101 response itself.
_HANDSHAKE_HEADERS = frozenset(
    {
        "connection",
        "content-length",
        "sec-websocket-accept",
        "sec-websocket-extensions",
        "sec-websocket-protocol",
        "transfer-encoding",
        "upgrade",
    }
)
_MAX_REASON_BYTES = 123  # what fits in a close frame


class Host(Protocol):
    """What :func:`serve_websocket` uses of :class:`pyobjects.asgi.App`.

    Declared here rather than imported, so that the two modules do not import
    each other (not even for type checking).
    """

    max_message_size: int
    _runtime: Runtime | None

    async def _invoke(self, runtime: Runtime, request: Request) -> Response: ...
    def _not_running(self) -> Response: ...
    def _failure(self, what: str) -> Response: ...


async def serve_websocket(
    app: Host, scope: Scope, receive: Receive, send: Send
) -> None:
    """Handle one ASGI ``websocket`` connection for *app*."""
    message = await receive()
    if message["type"] != "websocket.connect":
        return  # the client left before the handshake reached the app
    can_deny = _DENIAL_EXTENSION in (scope.get("extensions") or {})
    runtime = app._runtime
    if runtime is None:
        await _deny(send, app._not_running(), can_deny=can_deny)
        return
    try:
        url, headers = request_parts(scope)
        if "websocket" not in (headers.get("upgrade") or "").lower():
            headers.set("upgrade", "websocket")
        request = Request(url, method="GET", headers=headers)
    except (BadRequestError, ValueError) as exc:
        await _deny(send, plain(400, f"Bad Request: {exc}\n"), can_deny=can_deny)
        return
    accept: dict[str, Any] = {}
    try:
        response = await app._invoke(runtime, request)
        client: Any = response.websocket
        if client is not None:
            missing = [name for name in BRIDGE_MEMBERS if not hasattr(client, name)]
            if missing:
                raise TypeError(
                    f"Response(websocket=...) got a {type(client).__name__}, which "
                    f"lacks {', '.join(missing)}; pass the client end of a "
                    "WebSocketPair"
                )
            if isinstance(client, WebSocket):
                check_websocket(client)  # not accepted, nor bridged already
            accept = _accept_message(response)
            await _call(client.accept)
    except Exception:
        failure = app._failure(f"the worker failed on the WebSocket upgrade of {url}")
        await _deny(send, failure, can_deny=can_deny)
        return
    if client is None:
        await _deny(send, response, can_deny=can_deny)
        return
    await _Bridge(client, receive, send, app.max_message_size).run(accept)


def _accept_message(response: Response) -> dict[str, Any]:
    message: dict[str, Any] = {"type": "websocket.accept"}
    protocol = response.headers.get("sec-websocket-protocol")
    if protocol:
        message["subprotocol"] = protocol
    extra = [
        (name.encode("latin-1"), value.encode("latin-1"))
        for name, value in response.headers.items()
        if name not in _HANDSHAKE_HEADERS
    ]
    if extra:
        message["headers"] = extra
    return message


async def _deny(send: Send, response: Response, *, can_deny: bool) -> None:
    """Refuse the handshake with *response* (or a 1008 close, i.e. HTTP 403)."""
    if can_deny:
        try:
            messages = response_messages(
                response, head=False, kind="websocket.http.response"
            )
        except UnicodeEncodeError:
            logger.exception("the worker's refusal has a header that is not Latin-1")
            messages = response_messages(
                plain(500, "Internal Server Error\n"),
                head=False,
                kind="websocket.http.response",
            )
        await send_quietly(send, *messages)
    else:
        await send_quietly(send, {"type": "websocket.close", "code": 1008})


async def _call(method: Any, *args: Any) -> None:
    result = method(*args)
    if inspect.isawaitable(result):
        await result


def _vanished(message: Any, code: int) -> bool:
    """True if the peer went away without a close frame.

    That is code 1006 by convention. uvicorn reports a lost connection as
    1005 without a ``reason`` key, while a close frame that carried no code
    (1005, as a browser's plain ``ws.close()`` sends) comes with one.
    """
    return code == 1006 or (code == 1005 and "reason" not in message)


def _sendable_code(code: int) -> int:
    """A close code allowed on the wire (1005/1006/1015 never are)."""
    if code in {1000, 1001, 1002, 1003} or 1007 <= code <= 1014:
        return code
    if 3000 <= code <= 4999:
        return code
    return 1000 if code == 1005 else 1011


def _short_reason(reason: str) -> str:
    data = reason.encode()
    if len(data) <= _MAX_REASON_BYTES:
        return reason
    return data[:_MAX_REASON_BYTES].decode(errors="ignore")


class _Bridge:
    """Pump messages between the ASGI connection and the object's socket."""

    def __init__(
        self, client: Any, receive: Receive, send: Send, max_size: int
    ) -> None:
        self.client = client
        self.receive = receive
        self.send = send
        self.max_size = max_size
        # Set once the object side has been told the connection ended, or has
        # closed it itself: nothing more is reported to it after that.
        self.settled = False

    async def run(self, accept: dict[str, Any]) -> None:
        try:
            try:
                await self.send(accept)
            except OSError:
                await self._disconnected()
                return
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._to_peer, tg.cancel_scope)
                await self._from_peer()
                tg.cancel_scope.cancel()
        finally:
            if not self.settled:
                # Cancelled or failed half-way: the connection is gone.
                with anyio.CancelScope(shield=True):
                    await self._disconnected()

    async def _from_peer(self) -> None:
        while True:
            message = await self.receive()
            kind = message["type"]
            if kind == "websocket.disconnect":
                code = int(message.get("code") or 1005)
                if _vanished(message, code):
                    await self._disconnected()
                else:
                    await self._closed(code, str(message.get("reason") or ""))
                return
            if kind != "websocket.receive":  # pragma: no cover - bad server
                continue
            data: str | bytes
            text = message.get("text")
            data = text if text is not None else bytes(message.get("bytes") or b"")
            if self._too_big(data):
                reason = f"message larger than {self.max_size} bytes"
                await self._close_peer(1009, reason)
                await self._closed(1009, reason)
                return
            if self.settled:
                continue  # the object closed; drop what was in flight
            try:
                await _call(self.client.send, data)
            except Exception:
                logger.debug("the object's socket refused a message", exc_info=True)

    async def _to_peer(self, scope: anyio.CancelScope) -> None:
        try:
            await self._pump_to_peer()
        except OSError:
            await self._disconnected()
        except Exception:
            logger.exception("the WebSocket bridge failed; closing with 1011")
            await self._close_peer(1011, "internal error")
            await self._disconnected()
        # Nothing more goes out: stop reading from the peer too.
        scope.cancel()

    async def _pump_to_peer(self) -> None:
        while True:
            item = await self.client.receive()
            if isinstance(item, str):
                await self.send({"type": "websocket.send", "text": item})
            elif isinstance(item, (bytes, bytearray, memoryview)):
                await self.send({"type": "websocket.send", "bytes": bytes(item)})
            else:
                self.settled = True  # the object side closed
                code = int(getattr(item, "code", 1000))
                await self._close_peer(code, str(getattr(item, "reason", "") or ""))
                return

    def _too_big(self, data: str | bytes) -> bool:
        size, limit = len(data), self.max_size
        if size > limit:
            return True
        if isinstance(data, str) and size * 4 > limit:
            return len(data.encode()) > limit
        return False

    async def _close_peer(self, code: int, reason: str) -> None:
        message = {
            "type": "websocket.close",
            "code": _sendable_code(code),
            "reason": _short_reason(reason),
        }
        await send_quietly(self.send, message)

    async def _closed(self, code: int, reason: str) -> None:
        if not self.settled:
            self.settled = True
            await self._notify(self.client.close, code, reason)

    async def _disconnected(self) -> None:
        if not self.settled:
            self.settled = True
            await self._notify(self.client._disconnect)

    @staticmethod
    async def _notify(method: Any, *args: Any) -> None:
        try:
            await _call(method, *args)
        except Exception:
            logger.debug("the object's socket failed to take the close", exc_info=True)
