"""Cloudflare camelCase spellings as aliases of the snake_case methods.

One mechanism for every public class: :func:`camel_aliases` adds, for each
snake_case method listed, a class attribute with the camelCase name bound to
the very same function, so code ported from Workers (``idFromName``,
``blockConcurrencyWhile``, ``deleteAll``, ...) runs unchanged.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from collections.abc import Callable

T = TypeVar("T", bound=type)


def to_camel(name: str) -> str:
    """Return Cloudflare's spelling of a snake_case name."""
    special = {
        "websocket": "WebSocket",
        "websockets": "WebSockets",
    }
    head, *rest = name.split("_")
    if head in special:
        head = special[head][0].lower() + special[head][1:]
    return head + "".join(special.get(part, part.capitalize()) for part in rest)


def camel_aliases(*names: str) -> Callable[[T], T]:
    """Class decorator: alias each snake_case method *names* under camelCase."""

    def decorate(cls: T) -> T:
        for name in names:
            camel = to_camel(name)
            if camel != name and camel not in cls.__dict__:
                setattr(cls, camel, cls.__dict__[name])
        return cls

    return decorate
