"""A stand-in for the client end of a WebSocketPair, for testing the ASGI bridge.

It implements the five members the bridge uses (accept, send, close,
_disconnect, receive) and records what the bridge did. By default it echoes
every message back; ``close_after`` makes the object side close after that
many messages. Thread-safe enough to be built in a server thread and checked
from the test thread (``ended`` is a ``threading.Event``).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import anyio

from pyobjects import Response, WebSocketPair


@dataclass(frozen=True)
class Closed:
    code: int
    reason: str
    was_clean: bool = True


class FakeClientSocket:
    def __init__(
        self, *, echo: bool = True, close_after: int | None = None, greeting: str = ""
    ) -> None:
        self.echo = echo
        self.close_after = close_after
        self.greeting = greeting
        self.events: list[tuple[object, ...]] = []
        self.ended = threading.Event()
        self._outgoing: list[str | bytes | Closed] = []
        self._wakeup: anyio.Event | None = None

    def _push(self, item: str | bytes | Closed) -> None:
        self._outgoing.append(item)
        if self._wakeup is not None:
            self._wakeup.set()

    def accept(self) -> None:
        self.events.append(("accept",))
        if self.greeting:
            self._push(self.greeting)

    async def send(self, message: str | bytes) -> None:  # async on purpose
        self.events.append(("message", message))
        if self.echo:
            self._push(message)
        received = sum(1 for e in self.events if e[0] == "message")
        if self.close_after is not None and received >= self.close_after:
            self._push(Closed(4000, "object says bye"))

    def close(self, code: int, reason: str) -> None:
        self.events.append(("close", code, reason))
        self.ended.set()

    def _disconnect(self) -> None:
        self.events.append(("disconnect",))
        self.ended.set()

    def close_from_object(self, code: int, reason: str) -> None:
        self._push(Closed(code, reason))

    async def receive(self) -> str | bytes | Closed:
        while not self._outgoing:
            self._wakeup = anyio.Event()
            await self._wakeup.wait()
        item = self._outgoing.pop(0)
        if isinstance(item, Closed):
            self.events.append(("object-closed", item.code))
            self.ended.set()
        return item


def upgrade(socket: Any, headers: dict[str, str] | None = None) -> Response:
    """``Response(status=101)`` carrying *socket* in place of a real client end.

    ``Response()`` itself takes only a fresh end of a ``WebSocketPair``; the
    bridge is duck-typed, which is what these fakes test.
    """
    response = Response(status=101, websocket=WebSocketPair()[0], headers=headers)
    response.websocket = socket
    return response
