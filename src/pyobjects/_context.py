"""Which object's event is running in the current task.

A leaf module (it imports nothing from pyobjects at run time), so that both
the actor and the WebSocket code can read it without an import cycle.
"""

from __future__ import annotations

import contextvars
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._actor import Actor

__all__ = ["current_actor"]

# The object whose event is running in this task, if any: its pending writes
# must be durable before output it produces (a call to another object, a
# WebSocket message) leaves it.
current_actor: contextvars.ContextVar[Actor | None] = contextvars.ContextVar(
    "pyobjects_current_actor", default=None
)
