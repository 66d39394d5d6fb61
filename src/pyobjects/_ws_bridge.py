"""Pumping messages between an ASGI WebSocket connection and a socket end.

The ASGI edge (:mod:`pyobjects._asgi_ws`) bridges a client's connection to
the object's end of a ``WebSocketPair``; a cluster node bridges a connection
from another node the same way. A value module: it knows nothing of the
runtime.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any, Final

import anyio

from ._asgi_common import Receive, Send, send_quietly
from ._websocket import WebSocket
from ._ws_direct import FrameCache, direct_writer

__all__ = ["Bridge", "call"]

logger = logging.getLogger("pyobjects.asgi")

_MAX_REASON_BYTES: Final = 123  # what fits in a close frame


async def call(method: Any, *args: Any) -> None:
    """Call *method*, awaiting its result if it is awaitable."""
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


class Bridge:
    """Pump messages between the ASGI connection and the object's socket."""

    def __init__(
        self,
        client: Any,
        receive: Receive,
        send: Send,
        max_size: int,
        *,
        frames: FrameCache | None = None,
    ) -> None:
        self.client = client
        self.receive = receive
        self.send = send
        self.max_size = max_size
        # With a cache, messages may skip the ASGI send (see _ws_direct).
        self.frames = frames
        # Set once the object side has been told the connection ended, or has
        # closed it itself: nothing more is reported to it after that.
        self.settled = False

    async def run(self, accept: dict[str, Any] | None) -> None:
        """Send *accept* (unless the connection is accepted already), then pump."""
        try:
            try:
                if accept is not None:
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
                await call(self.client.send, data)
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
        client = self.client
        direct = (
            direct_writer(self.send, self.frames)
            if self.frames is not None and isinstance(client, WebSocket)
            else None
        )
        if direct is None:
            await self._send_all()
            return
        # The object's sends write to the transport themselves while this
        # task waits; what they cannot (paused writes, a close) comes here.
        client._sink = direct
        try:
            await self._send_all()
        finally:
            client._sink = None

    async def _send_all(self) -> None:
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
            await call(method, *args)
        except Exception:
            logger.debug("the object's socket failed to take the close", exc_info=True)
