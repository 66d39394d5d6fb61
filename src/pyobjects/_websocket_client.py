"""``pyobjects.connect_websocket``: an outgoing WebSocket (``new WebSocket(url)``).

The connection is a :class:`~pyobjects.WebSocketPair` whose far end is
bridged to the remote server, the way :mod:`pyobjects.asgi` bridges an
incoming connection: the caller gets the other end, already accepted as a
plain socket, and reads it with ``receive()`` or ``async for``; what it sends
reaches the server, after the output gate when sent from inside an object.
Opened inside an object, the socket keeps the instance alive while open.

The protocol is the sans-I/O one of the ``websockets`` package (the
``server`` extra) over anyio streams, so it runs on asyncio and trio alike.
"""

from __future__ import annotations

import contextlib
import ssl
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc

from ._errors import FetchError
from ._http import Headers, HeadersInit
from ._owner import current_owner
from ._websocket import WebSocket, WebSocketClose, WebSocketPair

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Sequence

__all__ = ["connect_websocket"]

#: How long leaving the ``async with`` waits for the closing handshake.
CLOSE_TIMEOUT = 5.0
_CLOSED = WebSocket.READY_STATE_CLOSED
#: Cloudflare's limit on a received message; a larger one fails the
#: connection with 1009, and the object sees it closed.
MAX_MESSAGE_SIZE = 32 * 1024 * 1024


@contextlib.asynccontextmanager
async def connect_websocket(
    url: str,
    *,
    headers: HeadersInit | None = None,
    protocols: Sequence[str] = (),
    ssl_context: ssl.SSLContext | None = None,
) -> AsyncIterator[WebSocket]:
    """Open a WebSocket to *url* (``ws://`` or ``wss://``) for the ``async with`` block.

    ``async with pyobjects.connect_websocket(url) as ws:`` gives an accepted
    :class:`WebSocket`: ``ws.send()``, ``await ws.receive()``, ``async for
    message in ws``, ``ws.close()``. Leaving the block closes the connection
    (code 1000) if it is still open. Mirrors ``new WebSocket(url)`` (and
    ``fetch()`` with ``Upgrade: websocket``) in Workers; to keep reading in
    the background, run the block in ``ctx.wait_until()``.

    Raises:
        FetchError: If the connection or the handshake fails.
        ModuleNotFoundError: If the ``websockets`` package is not installed.
    """
    try:
        from websockets.client import ClientProtocol
        from websockets.http11 import Response as WsResponse
        from websockets.typing import Subprotocol
        from websockets.uri import parse_uri
    except ModuleNotFoundError as exc:
        raise ModuleNotFoundError(
            "pyobjects.connect_websocket needs websockets: "
            "pip install 'pyobjects[server]'",
            name=exc.name,
        ) from None
    try:
        wsuri = parse_uri(url)
    except Exception as exc:  # websockets' InvalidURI
        raise ValueError(f"not a ws:// or wss:// URL: {url!r}") from exc
    protocol = ClientProtocol(
        wsuri,
        subprotocols=[Subprotocol(p) for p in protocols] or None,
        max_size=MAX_MESSAGE_SIZE,
    )
    request = protocol.connect()
    for name, value in Headers(headers).items():
        request.headers[name] = value
    try:
        stream: anyio.abc.ByteStream
        if wsuri.secure:
            stream = await anyio.connect_tcp(
                wsuri.host,
                wsuri.port,
                ssl_context=ssl_context or ssl.create_default_context(),
                tls_standard_compatible=False,
            )
        else:
            stream = await anyio.connect_tcp(wsuri.host, wsuri.port)
    except OSError as exc:
        raise FetchError("GET", url, str(exc) or repr(exc)) from exc
    async with stream:
        protocol.send_request(request)
        await _flush(protocol, stream)
        # The handshake: read until the response (or a failure) is parsed.
        response: WsResponse | None = None
        early: list[Any] = []  # frames that came in the handshake's last read
        while response is None:
            try:
                data = await stream.receive()
            except (anyio.EndOfStream, OSError) as exc:
                raise FetchError("GET", url, "the server closed the handshake") from exc
            protocol.receive_data(data)
            for event in protocol.events_received():
                if isinstance(event, WsResponse):
                    response = event
                else:
                    early.append(event)
            if protocol.handshake_exc is not None:
                raise FetchError("GET", url, str(protocol.handshake_exc))
        near, far = WebSocketPair()
        bridge = _Bridge(protocol, stream, near, early)
        async with anyio.create_task_group() as tg:
            tg.start_soon(bridge.run)
            far.accept()  # in the caller's context: an object's plain socket
            try:
                yield far
            finally:
                if far.ready_state != _CLOSED:
                    far.close(1000, "")  # does nothing if the caller closed it
                with anyio.move_on_after(CLOSE_TIMEOUT):
                    await bridge.done.wait()
                tg.cancel_scope.cancel()


async def _flush(protocol: Any, stream: anyio.abc.ByteStream) -> None:
    for chunk in protocol.data_to_send():
        if chunk:
            await stream.send(chunk)


class _Bridge:
    """Pumps frames between the connection and the near end of the pair."""

    def __init__(
        self,
        protocol: Any,
        stream: anyio.abc.ByteStream,
        near: WebSocket,
        early: list[Any],
    ) -> None:
        self._early = early
        self.protocol = protocol
        self.stream = stream
        self.near = near
        self.done = anyio.Event()
        # Both pumps write (frames out; pong and close replies): one at a
        # time, as a stream allows (trio raises BusyResourceError otherwise).
        self._writing = anyio.Lock()
        self._fragments: list[bytes] = []
        self._text = False

    async def run(self) -> None:
        # The pumps are no object's event: nothing they do waits at an
        # object's gates (the far end's sends already did).
        current_owner.set(None)
        self.near.accept()
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._to_server, tg.cancel_scope)
                await self._from_server()
                tg.cancel_scope.cancel()
        finally:
            self.done.set()

    async def _from_server(self) -> None:
        from websockets.frames import Opcode

        protocol, near = self.protocol, self.near
        data = b"-"  # the early frames, before any read
        frames, self._early = self._early, []
        while True:
            if not frames:
                try:
                    data = await self.stream.receive()
                except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                    protocol.receive_eof()
                    data = b""
                else:
                    protocol.receive_data(data)
                frames = protocol.events_received()
            for frame in frames:
                if frame.opcode in (Opcode.TEXT, Opcode.BINARY):
                    self._text = frame.opcode is Opcode.TEXT
                    self._fragments = [frame.data]
                elif frame.opcode is Opcode.CONT:
                    self._fragments.append(frame.data)
                else:
                    continue  # ping (answered by the protocol), pong, close
                if frame.fin:
                    payload = b"".join(self._fragments)
                    self._fragments = []
                    near.send(payload.decode() if self._text else payload)
            try:
                await self._flush()
            except (anyio.BrokenResourceError, OSError):
                data = b""  # the connection is gone
            frames = []
            if protocol.close_rcvd is not None or not data:
                break
        rcvd = protocol.close_rcvd
        if near.ready_state == _CLOSED:
            return
        if rcvd is None:
            near._disconnect()
            return
        try:
            near.close(rcvd.code, rcvd.reason)
        except ValueError:  # 1005 (no code) and others a close() cannot send
            near._disconnect()

    async def _to_server(self, scope: anyio.CancelScope) -> None:
        protocol, near = self.protocol, self.near
        while True:
            item = await near.receive()
            if isinstance(item, WebSocketClose):
                if protocol.close_sent is None and protocol.close_rcvd is None:
                    protocol.send_close(item.code, item.reason)
                    await self._flush()
                return
            if isinstance(item, str):
                protocol.send_text(item.encode())
            else:
                protocol.send_binary(item)
            try:
                await self._flush()
            except (anyio.BrokenResourceError, OSError):
                scope.cancel()
                return

    async def _flush(self) -> None:
        async with self._writing:
            await _flush(self.protocol, self.stream)
