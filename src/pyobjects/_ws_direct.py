"""Writing server frames straight to a connection, encoded once per message.

A server-to-client WebSocket frame is not masked, so a message broadcast to
10,000 clients is the same bytes on every connection. The ASGI path encodes
it once per connection, and costs one bridge task wake-up and one ASGI
``send`` each. Where the server allows it, :func:`direct_writer` returns a
function that writes a message as a frame straight to the connection's
transport, synchronously, from the sender's own event; a `FrameCache`
shared by the connections of one app encodes each message once.

Only uvicorn's default WebSocket protocol (``websockets-sansio``, what its
``ws="auto"`` picks when ``websockets`` is installed) is recognised, and only
when the connection negotiated no extension (``permessage-deflate``
compresses per connection, so its frames differ). The hook reads uvicorn
attributes that are not public API: every one is checked when the
connection is bridged and again before each write, and anything unexpected
means ``None`` (or ``False`` for one message), which falls back to plain
ASGI sends. A value module: it knows nothing of the runtime.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final, TypeAlias, final

__all__ = ["DirectWriter", "FrameCache", "direct_writer", "encode_frame"]

_UVICORN_SANSIO: Final = (
    "uvicorn.protocols.websockets.websockets_sansio_impl",
    "WebSocketsSansIOProtocol",
)
# Messages larger than this are encoded per connection, not kept.
_CACHE_LIMIT: Final = 1 << 16

# Write one message (str: text, bytes: binary) to the peer; False if it must
# go through the ASGI send instead (nothing was written then).
DirectWriter: TypeAlias = Callable[["str | bytes"], bool]


def encode_frame(message: str | bytes) -> bytes:
    """One unmasked, final frame carrying *message* (RFC 6455 5.2)."""
    if isinstance(message, str):
        payload, head = message.encode(), 0x81  # FIN + text
    else:
        payload, head = message, 0x82  # FIN + binary
    size = len(payload)
    if size < 126:
        header = bytes((head, size))
    elif size < 1 << 16:
        header = bytes((head, 126)) + size.to_bytes(2, "big")
    else:
        header = bytes((head, 127)) + size.to_bytes(8, "big")
    return header + payload


@final
class FrameCache:
    """The frame of the last message written, shared by one app's connections.

    A broadcast sends the same ``str`` (or ``bytes``) object to every socket,
    so an identity check finds it: it is encoded once, not once per client.
    """

    __slots__ = ("_frame", "_message")

    def __init__(self) -> None:
        self._message: str | bytes | None = None
        self._frame = b""

    def frame(self, message: str | bytes) -> bytes:
        """The frame for *message*, encoded at most once in a row."""
        if message is self._message:
            return self._frame
        frame = encode_frame(message)
        if len(frame) <= _CACHE_LIMIT:
            self._message, self._frame = message, frame
        return frame


def direct_writer(send: Any, cache: FrameCache) -> DirectWriter | None:
    """A writer straight to the transport behind the ASGI *send*, or ``None``.

    Call it once the connection is accepted (extensions are negotiated by
    then). ``None`` for any server but uvicorn's ``websockets-sansio``
    protocol, or a connection with an extension.
    """
    protocol: Any = getattr(send, "__self__", None)
    kind = type(protocol)
    if (kind.__module__, kind.__qualname__) != _UVICORN_SANSIO:
        return None
    try:
        from websockets.protocol import State
    except ImportError:  # pragma: no cover - uvicorn's module imported it
        return None
    conn = getattr(protocol, "conn", None)
    transport = getattr(protocol, "transport", None)
    writable = getattr(protocol, "writable", None)
    if conn is None or transport is None or writable is None:
        return None
    if not (
        hasattr(protocol, "close_sent")
        and hasattr(protocol, "disconnected")
        and hasattr(conn, "expect_continuation_frame")
    ):
        return None
    if getattr(conn, "extensions", None) != []:
        return None  # negotiated extensions (or an unknown shape)
    if getattr(conn, "state", None) is not State.OPEN:
        return None
    is_set: Callable[[], bool] = writable.is_set
    is_closing: Callable[[], bool] = transport.is_closing
    write: Callable[[bytes], object] = transport.write
    frame = cache.frame
    opened = State.OPEN

    def write_frame(message: str | bytes) -> bool:
        # What uvicorn's send() checks, minus the wait: a paused transport
        # (over its high-water mark) goes through the send, which waits.
        if (
            not is_set()
            or protocol.close_sent
            or protocol.disconnected
            or conn.state is not opened
            or conn.expect_continuation_frame
            or is_closing()
        ):
            return False
        try:
            write(frame(message))
        except Exception:  # nothing written: let the ASGI send deal with it
            return False
        return True

    return write_frame
