"""Hibernatable WebSockets: sockets that belong to the runtime, not the instance.

``ctx.accept_websocket(ws, tags)`` gives the socket to the object's `Hub`,
which lives in the namespace as long as the object has sockets (or a live
instance), across evictions. Idle eviction does not look at hibernatable
sockets, so an object whose only activity is such sockets is dropped after
its idle time while the connections stay open; the next event builds a new
instance (the constructor runs again) and hands it the same ``ws`` objects,
with their tags and attachments.

Every message, close or error on a hibernatable socket is an event of the
object, admitted by the input gate like a call, and calls
``websocket_message``, ``websocket_close`` or ``websocket_error``. Events of
one socket run one after another, in order (as workerd's read loop awaits
each event); events of different sockets may interleave at awaits. A handler
that raises is logged: there is no caller to give the error to, and the
object and the socket stay (workerd does the same).

A text message equal to the auto-response request is answered by the hub
without building the instance. When the instance is reset (``abort()``, a
failed commit, a failing constructor or ``block_concurrency_while``, an
event over the configured timeout), every hibernatable socket is
disconnected, as workerd drops its hibernation manager with a broken actor:
peers see code 1006 and the object gets no close events.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Final, cast, final

from pyobjects._errors import (
    RuntimeClosedError,
    WebSocketLimitError,
    WebSocketStateError,
)
from pyobjects._websocket import (
    ACCEPTED,
    HIBERNATABLE,
    NEW,
    Message,
    WebSocket,
)

from ._events import EVENT_TIMEOUT_MESSAGE as EVENT_TIMEOUT_MESSAGE, SocketEvent

if TYPE_CHECKING:
    from collections.abc import Iterable

    from pyobjects._ids import DurableObjectId

    from ._actor import Actor
    from ._catalog import Key
    from ._namespace import DurableObjectNamespace
    from ._runtime import Runtime

__all__ = ["Hub", "WebSocketRequestResponsePair", "close_all"]

logger = logging.getLogger("pyobjects")

MAX_TAGS: Final = 10
MAX_TAG_BYTES: Final = 256
MAX_SOCKETS: Final = 32_768  # workerd's ACTIVE_CONNECTION_LIMIT
MAX_AUTO_RESPONSE_BYTES: Final = 2_048
MAX_EVENT_TIMEOUT_MS: Final = 604_800_000  # 7 days
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


@final
@dataclass(frozen=True, slots=True)
class WebSocketRequestResponsePair:
    """A text request and the response sent back for it without waking the object.

    ``WebSocketRequestResponsePair(request, response)``; pass it to
    ``ctx.set_websocket_auto_response()``. Mirrors Cloudflare's
    ``WebSocketRequestResponsePair``, whose arguments are positional too.
    """

    request: str
    response: str

    def __post_init__(self) -> None:
        for what in ("request", "response"):
            value: object = getattr(self, what)
            if not isinstance(value, str):
                raise TypeError(
                    f"WebSocketRequestResponsePair {what} must be a str, "
                    f"not {type(value).__name__}"
                )


@final
class Hub:
    """The hibernatable sockets of one object, and their settings (internal).

    Kept in the runtime's catalog under the object's key while the object
    has sockets or a live instance.
    """

    __slots__ = (
        "auto_response",
        "event_timeout_ms",
        "key",
        "namespace",
        "object_id",
        "runtime",
        "sockets",
        "tags",
    )

    def __init__(
        self,
        runtime: Runtime[Any],
        namespace: DurableObjectNamespace[Any],
        object_id: DurableObjectId,
    ) -> None:
        self.runtime = runtime
        self.namespace = namespace
        self.object_id = object_id
        self.key: Key = (namespace._storage_name, object_id)
        # Insertion (acceptance) order; get_websockets() lists newest first.
        self.sockets: dict[WebSocket, None] = {}
        self.tags: dict[str, dict[WebSocket, None]] = {}
        self.auto_response: tuple[str, str] | None = None
        self.event_timeout_ms: int | None = None

    # -- sockets -------------------------------------------------------------

    def accept(self, ws: WebSocket, tags: tuple[str, ...]) -> None:
        """Take *ws* as a hibernatable socket of this object."""
        if len(self.sockets) >= MAX_SOCKETS:
            raise WebSocketLimitError(
                "sockets", limit=MAX_SOCKETS, size=len(self.sockets) + 1
            )
        ws._mode = HIBERNATABLE
        ws._hub = self
        ws._tags = tags
        self.sockets[ws] = None
        for tag in tags:
            self.tags.setdefault(tag, {})[ws] = None
        # No message can have arrived (the peer is not accepted yet), but the
        # peer may have vanished already: then the close event comes at once.
        if ws._closed_in is not None:
            self.event(ws, "close", ws._closed_in)

    def drop(self, ws: WebSocket) -> None:
        """Forget a closed socket (after its close or error event).

        The instance that ran the event is live, so the hub stays until it is
        evicted (see `instance_evicted`).
        """
        del self.sockets[ws]
        for tag in ws._tags:
            bucket = self.tags[tag]
            del bucket[ws]
            if not bucket:
                del self.tags[tag]
        ws._hub = None

    def instance_evicted(self) -> None:
        """The live instance was evicted: keep the hub only for its sockets."""
        if not self.sockets:
            self._forget()

    def reset(self) -> None:
        """The instance was reset: disconnect every socket (peers see 1006)."""
        self._forget()
        sockets = list(self.sockets)
        self.sockets.clear()
        self.tags.clear()
        for ws in sockets:
            ws._abort()

    def shutdown(self, *, clean: bool) -> None:
        """The runtime stops: close every socket (1001), or drop it (crash)."""
        sockets = list(self.sockets)
        self.sockets.clear()
        self.tags.clear()
        for ws in sockets:
            if clean:
                ws._shutdown()
            else:
                ws._abort()

    def _forget(self) -> None:
        hubs = self.runtime._catalog.hubs
        if hubs.get(self.key) is self:
            del hubs[self.key]

    # -- events --------------------------------------------------------------

    def message(self, ws: WebSocket, message: Message) -> None:
        """A message reached *ws*: answer it, or make it an event."""
        if not ws._events and not ws._dispatching and self._auto_respond(ws, message):
            return
        self.event(ws, "message", message)

    def _auto_respond(self, ws: WebSocket, message: Message) -> bool:
        pair = self.auto_response
        if pair is None or type(message) is not str or message != pair[0]:
            return False
        ws._auto_response_ms = self.runtime.clock.now_ms()
        ws._send(pair[1], gated=False)
        return True

    def event(self, ws: WebSocket, kind: str, payload: Any) -> None:
        """Queue an event of *ws*; its events are delivered one by one."""
        if not self.runtime._running:  # pragma: no cover - needs a crash mid-loop
            return  # the runtime is stopping: no more events
        events = ws._events
        if events is None:
            events = ws._events = deque()
        events.append((kind, payload))
        if not ws._dispatching:
            self.runtime._spawn(self._dispatch, ws)
            ws._dispatching = True

    async def _dispatch(self, ws: WebSocket) -> None:
        events = ws._events
        assert events is not None
        try:
            while events and ws._hub is self:
                kind, payload = events.popleft()
                if kind == "message" and self._auto_respond(ws, payload):
                    continue
                await self._deliver(ws, kind, payload)
        finally:
            ws._dispatching = False

    async def _deliver(self, ws: WebSocket, kind: str, payload: Any) -> None:
        """Run one event in the object (building the instance if needed)."""
        name = f"websocket_{kind}"
        args: tuple[Any, ...]
        if kind == "close":
            args = (ws, payload.code, payload.reason, payload.was_clean)
        else:
            args = (ws, payload)
        try:
            actor = self.runtime._catalog.actor(self.namespace, self.object_id)
            await actor.deliver(SocketEvent(name, args, self.event_timeout_ms))
        except RuntimeClosedError:
            pass  # the runtime is stopping: its sockets close with it
        except Exception:
            logger.exception(
                "uncaught exception in %s() of Durable Object %s (%s)",
                name,
                self.namespace.object_class.__name__,
                self.object_id,
            )
        finally:
            if kind != "message" and ws._hub is self:
                self.drop(ws)


# -- the ctx API ---------------------------------------------------------------


def _hub(actor: Actor, *, create: bool) -> Hub | None:
    hubs = actor.runtime._catalog.hubs
    hub = hubs.get(actor.key)
    if hub is None and create:
        hub = hubs[actor.key] = Hub(actor.runtime, actor.namespace, actor.id)
    return hub


def _check_tags(tags: Iterable[str]) -> tuple[str, ...]:
    if isinstance(tags, (str, bytes)):
        raise TypeError("tags must be a list of str, not a single str")
    seen: dict[str, None] = {}
    for tag in tags:
        if not isinstance(tag, str):
            raise TypeError(f"WebSocket tags must be str, not {type(tag).__name__}")
        # As in workerd, the count is checked before duplicates are removed.
        if len(seen) >= MAX_TAGS:
            raise WebSocketLimitError("tags", limit=MAX_TAGS, size=len(seen) + 1)
        size = len(tag.encode())
        if size > MAX_TAG_BYTES:
            raise WebSocketLimitError("tag", limit=MAX_TAG_BYTES, size=size, tag=tag)
        seen[tag] = None
    return tuple(seen)


def accept_websocket(actor: Actor, ws: WebSocket, tags: Iterable[str]) -> None:
    """``ctx.accept_websocket()``: make *ws* a hibernatable socket of the object."""
    actor.check_usable()
    if not isinstance(ws, WebSocket):
        raise TypeError(
            f"accept_websocket() takes a WebSocket, not {type(ws).__name__}"
        )
    if ws._mode != NEW:
        raise WebSocketStateError(
            "Cannot call `acceptWebSocket()` if the WebSocket was already accepted "
            "via `accept()`"
        )
    if ws._peer._mode != NEW:
        raise WebSocketStateError(
            "Cannot call `acceptWebSocket()` on this WebSocket because its pair has "
            "already been accepted or used in a Response."
        )
    distinct = _check_tags(tags)
    hub = _hub(actor, create=True)
    assert hub is not None
    hub.accept(ws, distinct)


def get_websockets(actor: Actor, tag: str | None) -> list[WebSocket]:
    """``ctx.get_websockets()``: newest first; with a tag, in acceptance order."""
    hub = _hub(actor, create=False)
    if hub is None:
        return []
    if tag is None:
        return list(reversed(hub.sockets))
    return list(hub.tags.get(tag, ()))


def get_tags(ws: WebSocket) -> list[str]:
    """``ctx.get_tags()``: the tags *ws* was accepted with."""
    if not isinstance(ws, WebSocket):
        raise TypeError(f"get_tags() takes a WebSocket, not {type(ws).__name__}")
    if ws._mode == NEW:
        raise WebSocketStateError(
            "you must call 'acceptWebSocket()' before attempting to access the tags "
            "of a WebSocket."
        )
    if ws._mode == ACCEPTED:
        raise WebSocketStateError("only hibernatable websockets can have tags.")
    return list(ws._tags)


def set_auto_response(actor: Actor, pair: WebSocketRequestResponsePair | None) -> None:
    """``ctx.set_websocket_auto_response()``; ``None`` clears it."""
    if pair is None:
        hub = _hub(actor, create=False)
        if hub is not None:
            hub.auto_response = None
        return
    if not isinstance(pair, WebSocketRequestResponsePair):
        raise TypeError(
            "set_websocket_auto_response() takes a WebSocketRequestResponsePair, "
            f"not {type(pair).__name__}"
        )
    for kind, text in (
        ("auto_request", pair.request),
        ("auto_response", pair.response),
    ):
        size = len(text.encode())
        if size > MAX_AUTO_RESPONSE_BYTES:
            raise WebSocketLimitError(kind, limit=MAX_AUTO_RESPONSE_BYTES, size=size)
    hub = _hub(actor, create=True)
    assert hub is not None
    hub.auto_response = (pair.request, pair.response)


def get_auto_response(actor: Actor) -> WebSocketRequestResponsePair | None:
    """``ctx.get_websocket_auto_response()``."""
    hub = _hub(actor, create=False)
    if hub is None or hub.auto_response is None:
        return None
    return WebSocketRequestResponsePair(*hub.auto_response)


def get_auto_response_timestamp(ws: WebSocket) -> datetime | None:
    """When *ws* was last answered automatically (runtime clock), or ``None``."""
    if not isinstance(ws, WebSocket):
        raise TypeError(
            "get_websocket_auto_response_timestamp() takes a WebSocket, "
            f"not {type(ws).__name__}"
        )
    ms = ws._auto_response_ms
    return None if ms is None else _EPOCH + timedelta(milliseconds=ms)


def set_event_timeout(actor: Actor, ms: int | None) -> None:
    """``ctx.set_hibernatable_websocket_event_timeout()``; ``None`` or 0 clears it."""
    if ms is not None and (
        not isinstance(cast("object", ms), int) or isinstance(ms, bool)
    ):
        raise TypeError(
            f"the event timeout must be an int (ms), not {type(ms).__name__}"
        )
    if not ms:
        hub = _hub(actor, create=False)
        if hub is not None:
            hub.event_timeout_ms = None
        return
    if ms < 0:
        raise ValueError(f"the event timeout must not be negative, got {ms} ms")
    if ms > MAX_EVENT_TIMEOUT_MS:
        raise WebSocketLimitError("event_timeout", limit=MAX_EVENT_TIMEOUT_MS, size=ms)
    hub = _hub(actor, create=True)
    assert hub is not None
    hub.event_timeout_ms = ms


def get_event_timeout(actor: Actor) -> int | None:
    """``ctx.get_hibernatable_websocket_event_timeout()``."""
    hub = _hub(actor, create=False)
    return None if hub is None else hub.event_timeout_ms


# -- the runtime -----------------------------------------------------------------


def close_all(runtime: Runtime[Any], *, clean: bool) -> None:
    """Close every socket of *runtime*: with 1001 when *clean*, else drop them."""
    catalog = runtime._catalog
    hubs = list(catalog.hubs.values())
    catalog.hubs.clear()
    for hub in hubs:
        hub.shutdown(clean=clean)
    for actor in catalog.actors.values():
        sockets, actor.sockets = actor.sockets, None
        for ws in sockets or ():
            if clean:
                ws._shutdown()
            else:
                ws._abort()
