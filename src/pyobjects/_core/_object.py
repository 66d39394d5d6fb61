"""The ``DurableObject`` base class users subclass."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Generic

from typing_extensions import TypeVar

if TYPE_CHECKING:
    from pyobjects._http import Request, Response

    from ._state import DurableObjectState

__all__ = ["HANDLER_NAMES", "RESERVED_NAMES", "DurableObject", "EnvT", "ObjectT"]

EnvT = TypeVar("EnvT", default=Any)

# Event handlers the runtime calls; never reachable over RPC. Each may also be
# spelled the Cloudflare way (the second name).
HANDLER_NAMES: dict[str, str] = {
    "fetch": "fetch",
    "alarm": "alarm",
    "websocket_message": "webSocketMessage",
    "websocket_close": "webSocketClose",
    "websocket_error": "webSocketError",
}

# Names that are never RPC methods, besides anything starting with "_".
RESERVED_NAMES = frozenset(
    {*HANDLER_NAMES, *HANDLER_NAMES.values(), "ctx", "env", "dup", "constructor"}
)


class DurableObject(Generic[EnvT]):
    """Base class of a Durable Object: one live instance per id.

    Subclass it, bind the subclass in ``Runtime(bindings=...)`` and call its
    public methods through a stub. The constructor runs once per instance
    (again after eviction or a reset) with the object's state (``ctx``) and
    the runtime's ``env``; call ``super().__init__(ctx, env)``. Mirrors
    ``DurableObject`` from ``cloudflare:workers``.

    Optional handlers: ``fetch(request)``, ``alarm(alarm_info)``,
    ``websocket_message``/``websocket_close``/``websocket_error`` (also
    accepted with Cloudflare's names ``webSocketMessage`` and so on).

    The type parameter declares ``env``: ``class Cart(DurableObject[AppEnv])``
    makes ``self.env`` an ``AppEnv`` for type checkers (see the typing guide);
    a bare ``DurableObject`` leaves it ``Any``.
    """

    _rpc_reserved: ClassVar[frozenset[str]] = RESERVED_NAMES

    ctx: DurableObjectState
    env: EnvT

    def __init__(self, ctx: DurableObjectState, env: EnvT) -> None:
        self.ctx = ctx
        self.env = env

    async def fetch(self, request: Request) -> Response:
        """Handle an HTTP request sent with ``stub.fetch()``; override it."""
        raise TypeError(
            f"{type(self).__name__} does not implement fetch(); "
            "define `async def fetch(self, request)` to receive stub.fetch() calls"
        )


# The object class of a namespace or stub; a bare DurableObjectStub is one of
# DurableObject[Any], which type checkers treat as untyped (see _stub.py).
ObjectT = TypeVar("ObjectT", bound=DurableObject[Any], default=DurableObject[Any])
