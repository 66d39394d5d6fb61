"""``DurableObjectState``: the ``ctx`` every Durable Object receives."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Generic, NoReturn, TypeVar, final

import anyio

from pyobjects._aliases import camel_aliases

from . import _hibernation

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Generator, Iterable
    from datetime import datetime

    from pyobjects._ids import DurableObjectId
    from pyobjects._websocket import WebSocket
    from pyobjects.storage._api import Storage

    from ._actor import Actor
    from ._hibernation import WebSocketRequestResponsePair

__all__ = ["BlockConcurrencyHandle", "DurableObjectState"]

T = TypeVar("T")


@final
class BlockConcurrencyHandle(Generic[T]):
    """The result of ``block_concurrency_while``: await it for the callback's value.

    It is not a coroutine, so it may be left un-awaited (as in a constructor)
    without a warning.
    """

    __slots__ = ("_done", "_error", "_result")

    def __init__(self) -> None:
        self._done = anyio.Event()
        self._result: T | None = None
        self._error: BaseException | None = None

    def _set(self, result: T | None, error: BaseException | None) -> None:
        self._result = result
        self._error = error
        self._done.set()

    async def _wait(self) -> T:
        await self._done.wait()
        if self._error is not None:
            raise self._error
        return self._result  # type: ignore[return-value]

    def __await__(self) -> Generator[Any, None, T]:
        return self._wait().__await__()


@final
@camel_aliases(
    "block_concurrency_while",
    "wait_until",
    "accept_websocket",
    "get_websockets",
    "get_tags",
    "set_websocket_auto_response",
    "get_websocket_auto_response",
    "get_websocket_auto_response_timestamp",
    "set_hibernatable_websocket_event_timeout",
    "get_hibernatable_websocket_event_timeout",
)
class DurableObjectState:
    """The state of one Durable Object instance (``ctx``); built by the runtime.

    Mirrors ``DurableObjectState`` in Workers. The constructor is private.
    """

    __slots__ = ("_actor", "id", "storage")

    id: DurableObjectId
    storage: Storage

    def __init__(self, actor: Actor) -> None:
        self._actor = actor
        self.id = actor.id
        self.storage = actor.storage

    def block_concurrency_while(
        self, fn: Callable[..., Awaitable[T]], /, *args: Any
    ) -> BlockConcurrencyHandle[T]:
        """Run ``await fn(*args)`` while no other event may start in the object.

        May be called un-awaited from ``__init__`` (the first events wait for
        it) or awaited from a handler (returns ``fn``'s result). If ``fn``
        raises or runs past the runtime's ``block_concurrency_timeout`` (30 s
        by default), the object is reset and every waiting caller gets the
        error with ``durable_object_reset = True``.

        Raises:
            RuntimeError: When nested more than 64 deep.
        """
        return self._actor.block_concurrency_while(fn, args)

    def wait_until(self, awaitable: Awaitable[Any], /) -> None:
        """Keep the object alive until *awaitable* finishes (errors are logged)."""
        self._actor.wait_until(awaitable)

    def abort(self, reason: str | None = None, *, retry_alarm: bool = True) -> NoReturn:
        """Reset the object now: uncommitted writes are discarded.

        Raises the reset error; even if the code catches it, the instance is
        gone and every caller waiting on it gets the error. Inside
        ``alarm()``, the alarm is retried like any failed alarm, unless
        *retry_alarm* is false: then it is deleted and not retried. Mirrors
        ``ctx.abort(reason, {retryAlarm})``.
        """
        self._actor.abort(reason, retry_alarm=retry_alarm)

    def now_ms(self) -> int:
        """Return the runtime clock's time in epoch milliseconds.

        Use it instead of ``time.time()`` so that tests with a manual clock
        are exact.
        """
        return self._actor.runtime.clock.now_ms()

    # -- hibernatable WebSockets ---------------------------------------------

    def accept_websocket(self, ws: WebSocket, tags: Iterable[str] = ()) -> None:
        """Accept the server end *ws* as a hibernatable WebSocket of this object.

        Its messages, close and errors become events that call
        ``websocket_message``, ``websocket_close`` and ``websocket_error``,
        and it stays connected while the object hibernates (is evicted when
        idle); the next event builds the object again. Duplicate *tags* are
        dropped. Do not call ``ws.accept()`` as well. Mirrors
        ``ctx.acceptWebSocket()``.

        Raises:
            WebSocketStateError: If *ws* or its pair was already accepted.
            WebSocketLimitError: More than 10 tags, a tag over 256 bytes, or
                more than 32,768 sockets on the object.
        """
        _hibernation.accept_websocket(self._actor, ws, tags)

    def get_websockets(self, tag: str | None = None) -> list[WebSocket]:
        """Return the object's hibernatable sockets that are still connected.

        Newest first; with *tag*, only those with the tag, in the order they
        were accepted. A socket stays listed until its ``websocket_close``
        (or ``websocket_error``) handler has run.
        """
        return _hibernation.get_websockets(self._actor, tag)

    def get_tags(self, ws: WebSocket) -> list[str]:
        """Return the tags *ws* was accepted with.

        Raises:
            WebSocketStateError: If *ws* is not a hibernatable socket.
        """
        return _hibernation.get_tags(ws)

    def set_websocket_auto_response(
        self, pair: WebSocketRequestResponsePair | None = None
    ) -> None:
        """Answer a text message equal to ``pair.request`` with ``pair.response``.

        The runtime answers by itself, without building or waking the object,
        and records the time (`get_websocket_auto_response_timestamp`). With
        no argument, stop answering. Mirrors ``ctx.setWebSocketAutoResponse()``.

        Raises:
            WebSocketLimitError: If the request or the response is over 2,048
                UTF-8 bytes.
        """
        _hibernation.set_auto_response(self._actor, pair)

    def get_websocket_auto_response(self) -> WebSocketRequestResponsePair | None:
        """Return the auto-response pair in effect, or ``None``."""
        return _hibernation.get_auto_response(self._actor)

    def get_websocket_auto_response_timestamp(self, ws: WebSocket) -> datetime | None:
        """Return when *ws* was last answered automatically (UTC), or ``None``."""
        return _hibernation.get_auto_response_timestamp(ws)

    def set_hibernatable_websocket_event_timeout(self, ms: int | None = None) -> None:
        """Limit how long a WebSocket event may run, in milliseconds.

        A handler still running after *ms* resets the object (and so
        disconnects its sockets). ``None`` or 0 removes the limit (the
        default). Mirrors ``ctx.setHibernatableWebSocketEventTimeout()``.

        Raises:
            WebSocketLimitError: Above 604,800,000 ms (7 days).
        """
        _hibernation.set_event_timeout(self._actor, ms)

    def get_hibernatable_websocket_event_timeout(self) -> int | None:
        """Return the event timeout in milliseconds, or ``None``."""
        return _hibernation.get_event_timeout(self._actor)

    def __repr__(self) -> str:
        return f"<DurableObjectState {self.id!r}>"
