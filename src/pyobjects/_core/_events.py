"""The kinds of event that run inside an object, and how each finds its handler.

Everything that runs inside a Durable Object is an event delivered through
``Actor.deliver(event)``: an RPC call, a fetch, an alarm, a WebSocket
message/close/error, ``run_in_durable_object``. An event knows only what is
particular to it: its kind (for statistics), a description (for error
notes), its handler and arguments, and its deadline. The input gate, the
deadline, group commit, the output gate and the reset path are the actor's,
the same for all of them.

Handlers are called with the arguments they accept: ``async def alarm(self)``
(as Cloudflare's samples write it) gets no ``AlarmInfo``, and a WebSocket
close handler may take fewer than four arguments.
"""

from __future__ import annotations

import inspect
from types import FunctionType, MappingProxyType
from typing import TYPE_CHECKING, Any, ClassVar, Final, TypeAlias

from pyobjects._errors import DurableObjectResetError

from ._object import HANDLER_NAMES

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from pyobjects._http import Request

    from ._actor import Actor

__all__ = [
    "EVENT_TIMEOUT_MESSAGE",
    "AlarmEvent",
    "AlarmTimeoutError",
    "Call",
    "Event",
    "Fetch",
    "RunIn",
    "SocketEvent",
    "accepted_arity",
    "find_handler",
    "resolve_rpc",
]

# What an event runs: the function, its positional and its keyword arguments.
Handler: TypeAlias = "tuple[Callable[..., Any], tuple[Any, ...], Mapping[str, Any]]"
NO_KWARGS: Final[Mapping[str, Any]] = MappingProxyType({})

EVENT_KINDS: Final = ("call", "fetch", "alarm", "websocket", "run")
EVENT_TIMEOUT_MESSAGE: Final = (
    "Actor exceeded event execution time and was disconnected."
)


class AlarmTimeoutError(Exception):
    """An alarm handler ran past the runtime's ``alarm_timeout``."""


class Event:
    """One event for an object (internal). Subclasses fill in the details."""

    __slots__ = ()

    kind: ClassVar[str]
    # Whether the instance, if this event builds it, shows its stored name.
    needs_name: ClassVar[bool] = False
    # Milliseconds the handler may run (None: no limit).
    timeout_ms: int | None = None

    @property
    def what(self) -> str:
        """How error notes name the event, e.g. ``"increment()"``."""
        raise NotImplementedError

    def handler(self, actor: Actor) -> Handler:
        """Return the function to run and its positional arguments."""
        raise NotImplementedError

    def timed_out(self, actor: Actor) -> BaseException:
        """The handler ran past :attr:`timeout_ms`: return the error to raise.

        May reset the object (``actor.break_``) as a side effect.
        """
        raise NotImplementedError  # pragma: no cover - events with a deadline override


class Call(Event):
    """An RPC call: ``await stub.name(*args, **kwargs)``."""

    __slots__ = ("args", "kwargs", "name")
    kind = "call"

    def __init__(
        self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        self.name = name
        self.args = args
        self.kwargs = kwargs

    @property
    def what(self) -> str:
        return f"{self.name}()"

    def handler(self, actor: Actor) -> Handler:
        # Hot path: one cache lookup; a plain function is called with the
        # instance prepended rather than bound (binding costs a call).
        instance = actor.instance
        cls = type(instance)
        cache = actor.runtime._method_cache
        found = cache.get((cls, self.name))
        if found is None:
            found = cache[(cls, self.name)] = resolve_rpc(cls, self.name)
        if type(found) is FunctionType:
            return found, (instance, *self.args), self.kwargs
        if isinstance(found, str):
            raise TypeError(found)
        return found.__get__(instance, cls), self.args, self.kwargs


class Fetch(Event):
    """``await stub.fetch(request)``."""

    __slots__ = ("request",)
    kind = "fetch"
    what = "fetch()"

    def __init__(self, request: Request) -> None:
        self.request = request

    def handler(self, actor: Actor) -> Handler:
        fn = find_handler(actor.instance, "fetch")
        if fn is None:
            raise TypeError(f"{type(actor.instance).__name__} has no fetch() handler")
        return fn, (self.request,), NO_KWARGS


class RunIn(Event):
    """``run_in_durable_object(stub, fn)``: ``await fn(instance, ctx)``."""

    __slots__ = ("fn",)
    kind = "run"
    what = "run_in_durable_object()"

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn

    def handler(self, actor: Actor) -> Handler:
        return self.fn, (actor.instance, actor.ctx), NO_KWARGS


class AlarmEvent(Event):
    """A due alarm: runs *body(actor)*, which calls the object's ``alarm()``.

    The alarm scheduler's checks (is the alarm still set, does the class
    have a handler) run inside the event, under the input gate, so they see
    exactly the state the handler would.
    """

    __slots__ = ("body", "timeout_ms")
    kind = "alarm"
    what = "alarm()"
    needs_name = True

    def __init__(self, body: Callable[[Actor], Any], timeout_ms: int) -> None:
        self.body = body
        self.timeout_ms = timeout_ms

    def handler(self, actor: Actor) -> Handler:
        return self.body, (actor,), NO_KWARGS

    def timed_out(self, actor: Actor) -> BaseException:
        return AlarmTimeoutError("Alarm exceeded its allowed execution time")


class SocketEvent(Event):
    """A message, close or error on one of the object's hibernatable sockets."""

    __slots__ = ("args", "name", "timeout_ms")
    kind = "websocket"

    def __init__(
        self, name: str, args: tuple[Any, ...], timeout_ms: int | None
    ) -> None:
        self.name = name  # websocket_message / websocket_close / websocket_error
        self.args = args
        self.timeout_ms = timeout_ms

    @property
    def what(self) -> str:
        return f"{self.name}()"

    def handler(self, actor: Actor) -> Handler:
        fn = find_handler(actor.instance, self.name)
        if fn is None:  # a missing handler ignores the event
            return _ignore, (), NO_KWARGS
        arity = accepted_arity(fn, len(self.args), actor.runtime._method_cache)
        return fn, self.args[:arity], NO_KWARGS

    def timed_out(self, actor: Actor) -> BaseException:
        actor.break_(DurableObjectResetError(EVENT_TIMEOUT_MESSAGE))
        return actor.reset_error()


def _ignore() -> None:
    return None


def find_handler(instance: object, name: str) -> Callable[..., Any] | None:
    """The instance's handler *name*, also under its Cloudflare spelling."""
    fn = getattr(instance, name, None)
    if fn is None:
        fn = getattr(instance, HANDLER_NAMES[name], None)
    return fn


def accepted_arity(fn: Callable[..., Any], given: int, cache: dict[Any, Any]) -> int:
    """How many of *given* positional arguments *fn* (a bound method) accepts.

    *cache* is the runtime's: signatures are inspected once per function.
    """
    key = ("arity", getattr(fn, "__func__", fn))
    cached = cache.get(key)
    if cached is None:
        try:
            params = inspect.signature(fn).parameters.values()
        except (TypeError, ValueError):  # pragma: no cover - a builtin
            return given
        cached = 0
        for param in params:
            if param.kind is param.VAR_POSITIONAL:
                cached = 1 << 30  # *args: everything
                break
            if param.kind in (param.POSITIONAL_ONLY, param.POSITIONAL_OR_KEYWORD):
                cached += 1
        cache[key] = cached
    return min(cached, given)


def resolve_rpc(cls: type, name: str) -> Callable[..., Any] | str:
    """Find the function behind an RPC call, or the TypeError message."""
    if name.startswith("_"):
        return (
            f'The RPC receiver does not implement the method "{name}": '
            "names starting with '_' are private and cannot be called over RPC."
        )
    reserved: frozenset[str] = getattr(cls, "_rpc_reserved", frozenset())
    if name in reserved:
        return (
            f'The RPC receiver does not implement the method "{name}": '
            f"{name}() is an event handler or reserved name, not an RPC method."
        )
    attr = inspect.getattr_static(cls, name, None)
    if isinstance(attr, (staticmethod, classmethod)):
        return attr  # type: ignore[return-value]
    if attr is None or not inspect.isfunction(attr):
        return f'The RPC receiver does not implement the method "{name}".'
    return attr
