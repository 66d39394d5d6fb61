"""WebSockets: ``WebSocketPair``, the two ends, and the transport contract.

A pair is two in-process ends joined to each other: what one end sends, the
other receives. Inside a Durable Object the *server* end is either accepted
with ``ctx.accept_websocket(server)`` (hibernatable: its messages become
events of the object, and the socket outlives the instance; see
``_hibernation.py``) or with ``server.accept()`` (the socket belongs to the
instance, keeps it alive, and is read with ``await server.receive()``). The
*client* end goes back in ``Response(status=101, websocket=client)``.

Sends are output, so the output gate holds them: a message sent after a
storage write reaches the peer only once that write is durable, and never if
the commit fails. Messages of one end arrive in the order they were sent.

A received close frame is answered at once with the same code and reason
(Cloudflare's behaviour since compatibility date 2026-04-07), so a close
handler sees the socket CLOSED.

Contract for transports (the ASGI bridge)
-----------------------------------------
The transport drives the client end of the pair it finds in
``Response(status=101, websocket=client)``, outside any object:

- ``client.accept()`` once, before anything else.
- ``client.send(message)`` delivers a ``str`` or ``bytes`` message from the
  real peer to the server end. A message over 32 MiB raises
  ``WebSocketLimitError`` and is not delivered; close the connection with
  1009 then.
- ``client.close(code, reason)`` is the real peer's close frame (``1005``
  when the frame carried no code). The server end sees it as a clean close
  and answers it.
- ``client._disconnect()`` means the connection ended without a close frame:
  the server end sees ``websocket_close(ws, 1006, "WebSocket disconnected
  without sending Close frame.", False)``. ``client._disconnect(error)``
  reports a protocol error instead: a hibernatable server end gets
  ``websocket_error(ws, error)``.
- ``await client.receive()`` returns the next ``str | bytes`` the server end
  sent, or a `WebSocketClose` once the server end closed, and then keeps
  returning that same value. ``was_clean=True``: send a close frame with
  its ``code`` and ``reason``. ``was_clean=False`` (code 1006: the object was
  reset or the runtime crashed): drop the connection. After the peer's own
  close or disconnect, ``receive()`` returns the close too; nothing more
  needs sending. When the runtime shuts down, every server end closes with
  1001.

``receive()`` works the same on any accepted, non-hibernatable end, which is
how tests talk to an object in-process.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import (
    TYPE_CHECKING,
    Any,
    ClassVar,
    Final,
    Protocol,
    Self,
    TypeAlias,
    cast,
    final,
)

import anyio
import anyio.lowlevel

from ._aliases import camel_aliases
from ._errors import WebSocketLimitError, WebSocketStateError
from ._owner import current_owner
from ._serialization import decode, encode

if TYPE_CHECKING:
    from collections.abc import Callable

    from ._owner import EventOwner

__all__ = [
    "DISCONNECTED_REASON",
    "WebSocket",
    "WebSocketClose",
    "WebSocketPair",
]

MAX_MESSAGE_BYTES: Final = 32 * 1024 * 1024  # Cloudflare's received-message limit
MAX_ATTACHMENT_BYTES: Final = 16_384  # workerd since 2026-03 (was 2,048)
MAX_CLOSE_REASON_BYTES: Final = 123  # a close frame body is at most 125 bytes
DISCONNECTED_REASON: Final = "WebSocket disconnected without sending Close frame."
SHUTDOWN_CODE: Final = 1001  # "going away"
SHUTDOWN_REASON: Final = "Durable Object runtime shutting down"
# Close codes an endpoint may not put in a close frame (RFC 6455 7.4.1);
# 1005 ("no status") is allowed here to pass on a frame that had no code.
_RESERVED_CODES: Final = frozenset({1004, 1006, 1015})
_NOT_ACCEPTED: Final = (
    "You must call one of accept() or state.acceptWebSocket() on this WebSocket "
    "before sending messages."
)

# How an end was accepted.
NEW: Final = 0
ACCEPTED: Final = 1  # accept(): receive() / async for
HIBERNATABLE: Final = 2  # ctx.accept_websocket(): events of the object

Message: TypeAlias = "str | bytes"


@final
@camel_aliases("was_clean")
@dataclass(frozen=True, slots=True, kw_only=True)
class WebSocketClose:
    """How a WebSocket connection ended, as ``receive()`` reports it.

    ``was_clean`` is ``False`` when the connection dropped without a close
    frame (code 1006). Mirrors the fields of a ``CloseEvent`` in Workers.
    """

    code: int
    reason: str
    was_clean: bool


_ABNORMAL: Final = WebSocketClose(
    code=1006, reason=DISCONNECTED_REASON, was_clean=False
)

# One message waiting at the output gate: the message (or close frame), the
# object whose writes it waits for (None: nothing) and the write to wait for.
_Held: TypeAlias = "tuple[Message | WebSocketClose, EventOwner | None, int]"


class SocketHub(Protocol):
    """Where a hibernatable socket's traffic goes (the object's hub, in the core)."""

    def message(self, ws: WebSocket, message: Message, /) -> None:
        """A message arrived for *ws*."""
        ...

    def event(self, ws: WebSocket, kind: str, payload: Any, /) -> None:
        """A close (``WebSocketClose``) or error (an exception) arrived for *ws*."""
        ...


def _check_message(message: object) -> Message:
    """Return *message* as ``str`` or ``bytes``, or raise if it cannot be sent."""
    data: Message
    if isinstance(message, str):
        data = message
        if message.isascii():
            size = len(message)
        else:
            try:
                size = len(message.encode())
            except UnicodeEncodeError:
                raise ValueError(
                    "a WebSocket text message must be valid Unicode "
                    "(it has a lone surrogate)"
                ) from None
    elif isinstance(message, (bytes, bytearray, memoryview)):
        data = message if type(message) is bytes else bytes(message)
        size = len(data)
    else:
        raise TypeError(
            f"a WebSocket message must be str or bytes, not {type(message).__name__}"
        )
    if size > MAX_MESSAGE_BYTES:
        raise WebSocketLimitError("message", limit=MAX_MESSAGE_BYTES, size=size)
    return data


def _check_close(code: int, reason: str) -> None:
    if not isinstance(cast("object", code), int) or isinstance(code, bool):
        raise TypeError(f"close code must be an int, not {type(code).__name__}")
    if not isinstance(cast("object", reason), str):
        raise TypeError(f"close reason must be a str, not {type(reason).__name__}")
    if not 1000 <= code < 5000 or code in _RESERVED_CODES:
        raise ValueError(f"Invalid WebSocket close code: {code}.")
    if code == 1005 and reason:
        raise ValueError("a close without a status code (1005) cannot have a reason")
    if len(reason) > MAX_CLOSE_REASON_BYTES // 4 and (
        len(reason.encode()) > MAX_CLOSE_REASON_BYTES
    ):
        raise ValueError(
            "WebSocket close reason must not be longer than 123 bytes when UTF-8 "
            "encoded."
        )


@final
@camel_aliases("serialize_attachment", "deserialize_attachment", "ready_state")
class WebSocket:
    """One end of a `WebSocketPair` (Cloudflare's server-side ``WebSocket``).

    Accept it first: ``ctx.accept_websocket(ws)`` inside an object makes it
    hibernatable; ``ws.accept()`` makes it a plain socket read with
    ``await ws.receive()`` or ``async for message in ws``. Then ``send()``
    and ``close()``. Built by `WebSocketPair`; the constructor is private.
    """

    READY_STATE_CONNECTING: ClassVar[int] = 0
    READY_STATE_OPEN: ClassVar[int] = 1
    READY_STATE_CLOSING: ClassVar[int] = 2
    READY_STATE_CLOSED: ClassVar[int] = 3
    CONNECTING: ClassVar[int] = 0
    OPEN: ClassVar[int] = 1
    CLOSING: ClassVar[int] = 2
    CLOSED: ClassVar[int] = 3

    __slots__ = (
        "__weakref__",
        "_attachment",
        "_auto_response_ms",
        "_closed_by_user",
        "_closed_in",
        "_closed_out",
        "_dispatching",
        "_events",
        "_hub",
        "_inbox",
        "_mode",
        "_outbox",
        "_owner",
        "_peer",
        "_pumping",
        "_sink",
        "_tags",
        "_wakeup",
    )

    _peer: WebSocket
    _mode: int
    _owner: EventOwner | None  # the instance a plain socket keeps alive
    _hub: SocketHub | None  # the object a hibernatable socket belongs to
    _tags: tuple[str, ...]
    _attachment: bytes | None
    _auto_response_ms: int | None
    _inbox: deque[Message]
    _wakeup: anyio.Event | None
    # The incoming direction ended: the close frame received, or _ABNORMAL.
    _closed_in: WebSocketClose | None
    _closed_out: bool  # a close frame was sent (or cannot be any more)
    _closed_by_user: bool  # close() was called
    _outbox: deque[_Held] | None  # messages held at the output gate
    _pumping: bool
    # Set by a transport that can write a message itself (see _ws_direct):
    # used while its reader waits and nothing is queued, else the inbox.
    _sink: Callable[[Message], bool] | None
    # Events of a hibernatable socket not delivered yet (see _hibernation).
    _events: deque[tuple[str, Any]] | None
    _dispatching: bool

    def __init__(self) -> None:
        raise TypeError("WebSocket cannot be created directly; use WebSocketPair()")

    @classmethod
    def _make(cls) -> WebSocket:
        self = object.__new__(cls)
        self._mode = NEW
        self._owner = None
        self._hub = None
        self._tags = ()
        self._attachment = None
        self._auto_response_ms = None
        self._inbox = deque()
        self._wakeup = None
        self._closed_in = None
        self._closed_out = False
        self._closed_by_user = False
        self._outbox = None
        self._pumping = False
        self._sink = None
        self._events = None
        self._dispatching = False
        return self

    # -- the public API ------------------------------------------------------

    @property
    def ready_state(self) -> int:
        """``OPEN`` (1), ``CLOSING`` (2, one side sent a close) or ``CLOSED`` (3)."""
        if self._closed_in is not None:
            return 3 if self._closed_out else 2
        return 2 if self._closed_out else 1

    def accept(self) -> None:
        """Accept this end as a plain (non-hibernatable) socket.

        Accepted inside an object, the socket belongs to that instance and
        keeps it from being evicted while open. Read it with ``receive()``.
        Accepting twice does nothing.

        Raises:
            WebSocketStateError: If the socket was given to
                ``ctx.accept_websocket()``.
        """
        if self._mode == HIBERNATABLE:
            raise WebSocketStateError(
                "Can't accept() WebSocket after enabling hibernation."
            )
        if self._mode == ACCEPTED:
            return
        owner = current_owner.get()
        if owner is not None:
            owner.check_usable()  # not in an instance that was reset
        self._mode = ACCEPTED
        self._answer_close()  # a close that came before the accept
        if owner is not None and self.ready_state != 3:
            self._owner = owner
            owner.socket_opened(self)

    def send(self, message: str | bytes | bytearray | memoryview) -> None:
        """Send a text (``str``) or binary (``bytes``-like) message to the peer.

        Returns at once. Inside an object the message waits at the output
        gate: the peer gets it only once every write made before it is
        durable. After the connection closed, messages are dropped silently
        (as the WebSocket standard says).

        Raises:
            WebSocketLimitError: If the message is over 32 MiB.
            WebSocketStateError: Before the socket is accepted, or after
                ``close()`` was called on it.
        """
        data = _check_message(message)
        if self._closed_by_user:
            raise WebSocketStateError("Can't call WebSocket send() after close().")
        if self._mode == NEW:
            raise WebSocketStateError(_NOT_ACCEPTED)
        if not self._closed_out:
            self._send(data, gated=True)

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Start the closing handshake with *code* and *reason*.

        Waits at the output gate like ``send()``. Closing a closed socket
        does nothing.

        Raises:
            ValueError: For a code outside 1000-4999 or reserved (1004,
                1006, 1015), or a reason over 123 UTF-8 bytes.
            WebSocketStateError: Before the socket is accepted.
        """
        _check_close(code, reason)
        if self._closed_out:
            return
        if self._mode == NEW:
            raise WebSocketStateError(_NOT_ACCEPTED)
        self._closed_by_user = True
        self._closed_out = True
        self._send(WebSocketClose(code=code, reason=reason, was_clean=True), gated=True)
        self._check_finished()

    async def receive(self) -> str | bytes | WebSocketClose:
        """Wait for the next message, or the `WebSocketClose` once closed.

        Once the connection closed, every call returns the same
        `WebSocketClose`. On a socket accepted inside an object, the message
        is handed over only when the object's input gate lets a new event in
        (not during ``block_concurrency_while``), and writes made so far are
        committed while the loop waits.

        Raises:
            WebSocketStateError: On a hibernatable socket (its messages go to
                ``websocket_message()``) or one not accepted yet.
        """
        if self._mode != ACCEPTED:
            if self._mode == HIBERNATABLE:
                raise WebSocketStateError(
                    "receive() cannot be used on a hibernatable WebSocket: its "
                    "messages go to the object's websocket_message() handler"
                )
            raise WebSocketStateError(
                "You must call accept() on this WebSocket before receiving messages."
            )
        if self._inbox or self._closed_in is not None:
            await anyio.lowlevel.checkpoint()  # a ready item: let others run first
        while not self._inbox and self._closed_in is None:
            # Waiting is a checkpoint already: no extra trip through the loop
            # per message when a broadcast wakes thousands of readers.
            if self._wakeup is None:
                self._wakeup = anyio.Event()
            await self._wakeup.wait()
        item: Message | WebSocketClose
        if self._inbox:
            item = self._inbox.popleft()
        else:
            assert self._closed_in is not None
            item = self._closed_in
        owner = self._owner
        if owner is not None and not owner.is_reset:
            await owner.admit()
        return item

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> str | bytes:
        """``async for message in ws``: messages until the connection closes."""
        item = await self.receive()
        if isinstance(item, WebSocketClose):
            raise StopAsyncIteration
        return item

    def serialize_attachment(self, value: object) -> None:
        """Keep a copy of *value* with the socket; it survives hibernation.

        The value goes through the storage codec (any storable value).
        Mirrors ``ws.serializeAttachment()``.

        Raises:
            SerializationError: If the value cannot be stored.
            WebSocketLimitError: If it encodes to more than 16,384 bytes.
        """
        data = encode(value)
        if len(data) > MAX_ATTACHMENT_BYTES:
            raise WebSocketLimitError(
                "attachment", limit=MAX_ATTACHMENT_BYTES, size=len(data)
            )
        self._attachment = data

    def deserialize_attachment(self) -> Any:
        """Return a fresh copy of the last serialized attachment, or ``None``."""
        data = self._attachment
        return None if data is None else decode(data)

    def __repr__(self) -> str:
        mode = ("new", "accepted", "hibernatable")[self._mode]
        state = ("connecting", "open", "closing", "closed")[self.ready_state]
        return f"<WebSocket {mode} {state}>"

    # -- transport side --------------------------------------------------------

    def _disconnect(self, error: BaseException | None = None) -> None:
        """The transport lost the connection without a close frame.

        The peer end sees an abnormal close (1006), or, with *error*, a
        hibernatable peer gets ``websocket_error(ws, error)``.
        """
        self._abort(error)

    # -- delivery ------------------------------------------------------------

    def _send(self, item: Message | WebSocketClose, *, gated: bool) -> None:
        """Pass *item* to the peer, after the output gate when *gated*."""
        outbox = self._outbox
        owner = current_owner.get() if gated else None
        mark = 0 if owner is None else owner.output_mark()
        if not outbox and not mark:
            self._peer._arrive(item)
            return
        if outbox is None:
            # Created once and never replaced: the pump holds on to it.
            outbox = self._outbox = deque()
        # This message must wait, or earlier ones still do: keep the order.
        outbox.append((item, owner if mark else None, mark))
        if not self._pumping:
            spawner = next((o for _, o, _ in outbox if o is not None), None)
            if spawner is None:  # pragma: no cover - needs a pump cancelled midway
                # Only after a crash cancelled the pump of an end no object
                # owns: nothing is held back any more.
                self._drain_durable()
                return
            spawner.spawn(self._pump)
            self._pumping = True

    async def _pump(self) -> None:
        """Deliver held messages in order, each once its writes are durable."""
        outbox = self._outbox
        assert outbox is not None
        try:
            while outbox:
                held = outbox[0]
                item, owner, mark = held
                if owner is not None and not owner.is_durable(mark):
                    try:
                        await owner.wait_output(mark)
                    except Exception:
                        # The commit failed and reset the object: what it held
                        # back is never sent.
                        kept = [h for h in outbox if h[1] is not owner]
                        outbox.clear()
                        outbox.extend(kept)
                        continue
                    if not outbox or outbox[0] is not held:
                        continue  # the socket was aborted meanwhile
                outbox.popleft()
                self._peer._arrive(item)
        finally:
            self._pumping = False

    def _drain_durable(self) -> None:
        """Deliver the held messages whose writes are durable by now."""
        outbox = self._outbox
        while outbox:
            item, owner, mark = outbox[0]
            if owner is not None and not owner.is_durable(mark):
                break
            outbox.popleft()
            self._peer._arrive(item)

    def _arrive(self, item: Message | WebSocketClose) -> None:
        """The peer's message or close frame reached this end."""
        if self._closed_in is not None:
            return  # nothing arrives after a close
        if isinstance(item, WebSocketClose):
            self._closed_in = item
            if self._mode != NEW:
                self._answer_close()
            hub = self._hub
            if hub is not None:
                hub.event(self, "close", item)
            else:
                self._wake()
                self._check_finished()
            return
        hub = self._hub
        if hub is not None:
            hub.message(self, item)
            return
        sink = self._sink
        # The reader is parked and has nothing queued: everything before this
        # message is written, so writing it now keeps the order.
        if (
            sink is not None
            and self._wakeup is not None
            and not self._inbox
            and sink(item)
        ):
            return
        self._inbox.append(item)
        self._wake()

    def _answer_close(self) -> None:
        """Answer a received close frame with the same code and reason."""
        closed = self._closed_in
        if closed is not None and closed.was_clean and not self._closed_out:
            self._closed_out = True
            self._send(closed, gated=False)

    def _wake(self) -> None:
        wakeup = self._wakeup
        if wakeup is not None:
            self._wakeup = None
            wakeup.set()

    def _check_finished(self) -> None:
        """Release the instance a plain socket kept alive, once it is closed."""
        owner = self._owner
        if owner is None or self.ready_state != 3:
            return
        self._owner = None
        owner.socket_closed(self)  # the idle time starts now

    def _abort(self, error: BaseException | None = None) -> None:
        """This end's side vanished (transport gone, object reset).

        Nothing more is sent or delivered here, no event reaches this side,
        and the peer sees an abnormal close (or *error*).
        """
        if self._events:
            self._events.clear()
        self._hub = None
        self._lost(None)
        self._peer._lost(error)

    def _lost(self, error: BaseException | None) -> None:
        """The connection ended without a close frame."""
        if self._outbox:
            self._outbox.clear()  # nobody is left to receive them
        self._closed_out = True
        if self._closed_in is None:
            self._closed_in = _ABNORMAL
            hub = self._hub
            if hub is not None:
                if error is None:
                    hub.event(self, "close", _ABNORMAL)
                else:
                    hub.event(self, "error", error)
            else:
                self._wake()
        self._check_finished()

    def _shutdown(self) -> None:
        """The runtime stops: deliver what is durable, then close with 1001."""
        self._drain_durable()
        if self._outbox:
            self._outbox.clear()
        if self._events:
            self._events.clear()
        self._hub = None
        self._owner = None  # the runtime is stopping: no instance to release
        frame = WebSocketClose(
            code=SHUTDOWN_CODE, reason=SHUTDOWN_REASON, was_clean=True
        )
        sent = self._closed_out
        self._closed_out = True
        if self._closed_in is None:
            self._closed_in = frame
        self._wake()
        if not sent:
            self._peer._arrive(frame)


@final
class WebSocketPair(tuple[WebSocket, WebSocket]):
    """Two joined WebSocket ends: ``client, server = WebSocketPair()``.

    ``pair[0]`` is the client end (return it in ``Response(status=101,
    websocket=client)``), ``pair[1]`` the server end (accept it in the
    object). Mirrors ``new WebSocketPair()`` in Workers;
    ``WebSocketPair.new().object_values()`` (the Python Workers spelling)
    works too.
    """

    __slots__ = ()

    def __new__(cls) -> Self:
        client = WebSocket._make()
        server = WebSocket._make()
        client._peer = server
        server._peer = client
        return super().__new__(cls, (client, server))

    @classmethod
    def new(cls) -> Self:
        """Return a new pair: Pyodide's spelling of ``new WebSocketPair()``.

        Lets ``client, server = WebSocketPair.new().object_values()``, as
        Python Workers write it, run unchanged.
        """
        return cls()

    def object_values(self) -> tuple[WebSocket, WebSocket]:
        """Return ``(client, server)``: ``Object.values(pair)`` in Workers."""
        return (self[0], self[1])

    def __repr__(self) -> str:
        return f"WebSocketPair({self[0]!r}, {self[1]!r})"
