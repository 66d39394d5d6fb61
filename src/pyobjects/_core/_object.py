"""The ``DurableObject`` base class users subclass."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from pyobjects._http import Request, Response

    from ._state import DurableObjectState

__all__ = ["HANDLER_NAMES", "DurableObject"]

# Event handlers the runtime calls; never reachable over RPC. Each may also be
# spelled the Cloudflare way (the second name).
HANDLER_NAMES: dict[str, str] = {
    "fetch": "fetch",
    "alarm": "alarm",
    "websocket_message": "webSocketMessage",
    "websocket_close": "webSocketClose",
    "websocket_error": "webSocketError",
}


class DurableObject:
    """Base class of a Durable Object: one live instance per id.

    Subclass it, bind the subclass in ``Runtime(bindings=...)`` and call its
    public methods through a stub. The constructor runs once per instance
    (again after eviction or a reset) with the object's state (``ctx``) and
    the runtime's ``env``; call ``super().__init__(ctx, env)``. Mirrors
    ``DurableObject`` from ``cloudflare:workers``.

    Optional handlers: ``fetch(request)``, ``alarm(alarm_info)``,
    ``websocket_message``/``websocket_close``/``websocket_error`` (also
    accepted with Cloudflare's names ``webSocketMessage`` and so on).
    """

    # Names that are never RPC methods, besides anything starting with "_".
    _rpc_reserved: ClassVar[frozenset[str]] = frozenset(
        {*HANDLER_NAMES, *HANDLER_NAMES.values(), "ctx", "env", "dup", "constructor"}
    )

    ctx: DurableObjectState
    env: Any

    def __init__(self, ctx: DurableObjectState, env: Any) -> None:
        self.ctx = ctx
        self.env = env

    async def fetch(self, request: Request) -> Response:
        """Handle an HTTP request sent with ``stub.fetch()``; override it."""
        raise TypeError(
            f"{type(self).__name__} does not implement fetch(); "
            "define `async def fetch(self, request)` to receive stub.fetch() calls"
        )
