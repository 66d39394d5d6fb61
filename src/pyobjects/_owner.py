"""What a WebSocket needs from the object whose event is running (a leaf module).

WebSockets are values that live outside the actor core: a socket must know
which object's writes its sends wait for (the output gate), which instance a
plain socket keeps alive, and how to hand a received message to an object's
event. :class:`EventOwner` is that narrow interface; the core's actor
implements it. ``current_owner`` says which object's event runs in the
current task. This module imports nothing of pyobjects at run time, so the
WebSocket code and the core can both read it without an import cycle.
"""

from __future__ import annotations

import contextvars
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine

__all__ = ["EventOwner", "current_owner"]


class EventOwner(Protocol):
    """One live Durable Object instance, as its WebSockets see it."""

    @property
    def is_reset(self) -> bool:
        """True once the instance was reset (its held output is never sent)."""
        ...

    def check_usable(self) -> None:
        """Raise the reset error if the instance was reset."""
        ...

    def output_mark(self) -> int:
        """The write number output produced now must wait for; 0 when none."""
        ...

    def is_durable(self, mark: int) -> bool:
        """True once every write up to *mark* is durable (False after a reset)."""
        ...

    async def wait_output(self, mark: int) -> None:
        """Wait until writes up to *mark* are durable; raise if the object reset."""
        ...

    def spawn(self, fn: Callable[[], Coroutine[Any, Any, Any]]) -> None:
        """Run *fn()* in the background on the runtime's task group."""
        ...

    def socket_opened(self, ws: object) -> None:
        """A plain (non-hibernatable) socket was accepted: keep the instance alive."""
        ...

    def socket_closed(self, ws: object) -> None:
        """That socket closed: the instance may go idle."""
        ...

    async def admit(self) -> None:
        """Wait at the input gate before a received message is handed over."""
        ...


# The object whose event is running in this task, if any: its pending writes
# must be durable before output it produces (a call to another object, a
# WebSocket message) leaves it.
current_owner: contextvars.ContextVar[EventOwner | None] = contextvars.ContextVar(
    "pyobjects_current_owner", default=None
)
