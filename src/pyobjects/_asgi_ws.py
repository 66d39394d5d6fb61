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

import logging
from typing import TYPE_CHECKING, Any, Final, Protocol

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
from ._ws_bridge import Bridge, call

if TYPE_CHECKING:
    from ._core._runtime import Runtime
    from ._ws_direct import FrameCache

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


class Host(Protocol):
    """What :func:`serve_websocket` uses of :class:`pyobjects.asgi.App`.

    Declared here rather than imported, so that the two modules do not import
    each other (not even for type checking).
    """

    max_message_size: int
    _runtime: Runtime | None
    _frames: FrameCache  # one per app: a broadcast's frame is encoded once

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
            await call(client.accept)
    except Exception:
        failure = app._failure(f"the worker failed on the WebSocket upgrade of {url}")
        await _deny(send, failure, can_deny=can_deny)
        return
    if client is None:
        await _deny(send, response, can_deny=can_deny)
        return
    bridge = Bridge(client, receive, send, app.max_message_size, frames=app._frames)
    # The handshake is done with: keep none of it alive while the connection
    # lasts, for the garbage collector walks every live object (#16).
    del message, headers, request, response
    await bridge.run(accept)


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
