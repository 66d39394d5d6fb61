"""``DurableObjectStub``: the client handle through which objects are called."""

from __future__ import annotations

import functools
import inspect
from types import FunctionType
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar, final, overload

from pyobjects._errors import SerializationError
from pyobjects._http import HeadersInit, Request, Response
from pyobjects._owner import current_owner
from pyobjects._serialization import copy_args, copy_value

from ._events import Call, Fetch
from ._object import DurableObject, ObjectT

if TYPE_CHECKING:
    from collections.abc import Coroutine

    from pyobjects._ids import DurableObjectId

    from ._actor import Actor
    from ._namespace import DurableObjectNamespace
    from ._rpc import AsyncRpcMethod, RpcMethod

__all__ = ["DurableObjectStub", "UntypedRpcMethod"]

_P = ParamSpec("_P")
_R = TypeVar("_R")


@final
class UntypedRpcMethod(Generic[ObjectT]):
    """``stub.name``: calling it sends one RPC call, unchecked.

    Type checkers let it be called only through an untyped stub (a bare
    ``DurableObjectStub``, or one of ``Any``): through a
    ``DurableObjectStub[Cart]`` the call is an error, so that every call on
    a typed stub is checked; use :meth:`DurableObjectStub.call` there.
    """

    __slots__ = ("_name", "_stub")

    def __init__(self, stub: DurableObjectStub[ObjectT], name: str) -> None:
        self._stub = stub
        self._name = name

    def __call__(
        self: UntypedRpcMethod[DurableObject[Any]], *args: Any, **kwargs: Any
    ) -> Coroutine[Any, Any, Any]:
        return self._stub._call(self._name, args, kwargs)

    def __repr__(self) -> str:
        return f"<RPC method {self._name!r} of {self._stub!r}>"


@final
class DurableObjectStub(Generic[ObjectT]):
    """A handle on one Durable Object; ``await stub.method(...)`` calls it.

    Arguments and results are passed by value (copied through the storage
    codec), so caller and object never share mutable data; ids and stubs pass
    as they are. Calls made through one stub reach the object in the order
    they were made. Creating a stub does nothing: the object is constructed
    on the first call. Built by ``namespace.get()``; the constructor is
    private. Mirrors ``DurableObjectStub`` in Workers.

    The type parameter is the object's class: on a ``DurableObjectStub[Cart]``
    type checkers check ``await stub.call(Cart.add_item, "sku", 2)`` against
    the ``@rpc`` method ``Cart.add_item`` (see the typing guide).
    """

    id: DurableObjectId

    def __init__(
        self, namespace: DurableObjectNamespace[ObjectT], object_id: DurableObjectId
    ) -> None:
        self._namespace = namespace
        self.id = object_id
        self._actor: Actor | None = None

    @property
    def name(self) -> str | None:
        """The name the id was made from, or ``None``."""
        return self.id.name

    def __getattr__(self, name: str) -> UntypedRpcMethod[ObjectT]:
        if name.startswith("__"):
            raise AttributeError(name)
        method = UntypedRpcMethod(self, name)
        self.__dict__[name] = method  # later lookups skip __getattr__
        return method

    @overload
    def call(
        self,
        method: AsyncRpcMethod[ObjectT, _P, _R],
        /,
        *args: _P.args,
        **kwargs: _P.kwargs,
    ) -> Coroutine[Any, Any, _R]: ...
    @overload
    def call(
        self, method: RpcMethod[ObjectT, _P, _R], /, *args: _P.args, **kwargs: _P.kwargs
    ) -> Coroutine[Any, Any, _R]: ...
    @overload
    def call(
        self: DurableObjectStub[DurableObject[Any]], /, *args: Any, **kwargs: Any
    ) -> Coroutine[Any, Any, Any]: ...
    def call(self, /, *args: Any, **kwargs: Any) -> Coroutine[Any, Any, Any]:
        """Call the ``@rpc`` method *method* of the object: typed RPC.

        ``await stub.call(Cart.add_item, "sku", 2)`` does what
        ``await stub.add_item("sku", 2)`` does, but a type checker checks
        the arguments against ``Cart.add_item`` and gives the result its
        return type; a sync method is awaited like an async one. Only
        methods marked with :func:`pyobjects.rpc` are accepted, so private
        names, ``ctx`` and the event handlers (``fetch``, ``alarm``, ...)
        are type errors.

        An object's own RPC method named ``call`` is still reached: through
        a typed stub as ``stub.call(Cart.call, ...)``, and through an
        untyped one by any first argument that is not a function.

        Raises:
            TypeError: If *method* is a function not marked with ``@rpc``, or
                a method of another class than this stub's object.
        """
        if not args:
            return self._call("call", args, kwargs)
        method = args[0]
        if type(method) is not FunctionType:
            if inspect.ismethod(method):
                raise TypeError(
                    f"stub.call() takes a method through its class, like "
                    f"stub.call({type(method.__self__).__name__}."
                    f"{method.__name__}, ...), not a bound method"
                )
            # Not a method reference: the object's own RPC method "call".
            return self._call("call", args, kwargs)
        cls = self._namespace.object_class
        cache = self._namespace._runtime._method_cache
        key = ("typed", cls, method)
        name: str | None = cache.get(key)
        if name is None:
            name = cache[key] = _typed_name(cls, method)
        return self._call(name, args[1:], kwargs)

    def _bind(self) -> Actor:
        actor = self._actor
        if actor is not None:
            if actor.broken is not None and not actor.start_failed:
                # This stub saw that instance reset: it keeps failing, like a
                # broken stub in Workers. Get a new stub to reach a fresh one.
                # (A constructor that failed is tried again on the next call.)
                raise actor.reset_error()
            if actor.broken is None and not actor.evicted:
                return actor
        namespace = self._namespace
        actor = namespace._runtime._catalog.actor(namespace, self.id)
        self._actor = actor
        return actor

    async def _call(
        self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        runtime = self._namespace._runtime
        passthrough = runtime._passthrough
        if args or kwargs:
            args, kwargs = copy_args(args, kwargs, passthrough)
        caller = current_owner.get()
        if caller is not None:
            mark = caller.output_mark()
            if mark:
                await caller.wait_output(mark)  # output gate: the call leaves
        if runtime._cluster is not None:  # maybe on another node
            return await runtime._cluster.call(
                self, name, args, kwargs, lambda: self._call_local(name, args, kwargs)
            )
        # The same as _call_local(), inline: this is the hot path.
        actor = self._actor
        if actor is None or actor.broken is not None or actor.evicted:
            actor = self._bind()
        result = await actor.deliver(Call(name, args, kwargs))
        if type(result) in _IMMUTABLE:
            return result
        try:
            return copy_value(result, passthrough)
        except SerializationError as exc:
            exc.add_note(
                f"while copying the result of {name}() from Durable Object "
                f"{actor.namespace.object_class.__name__} ({self.id})"
            )
            raise

    async def _call_local(
        self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        """Deliver a call (its arguments copied already) to the instance here."""
        actor = self._bind()
        result = await actor.deliver(Call(name, args, kwargs))
        if type(result) in _IMMUTABLE:
            return result
        try:
            return copy_value(result, self._namespace._runtime._passthrough)
        except SerializationError as exc:
            exc.add_note(
                f"while copying the result of {name}() from Durable Object "
                f"{actor.namespace.object_class.__name__} ({self.id})"
            )
            raise

    async def fetch(
        self,
        request: Request | str,
        *,
        method: str | None = None,
        headers: HeadersInit | None = None,
        body: bytes | str | None = None,
    ) -> Response:
        """Send an HTTP request to the object's ``fetch()`` handler.

        Takes a :class:`Request`, or an absolute URL plus ``method``,
        ``headers`` and ``body``. Returns the object's :class:`Response`.
        """
        if isinstance(request, Request):
            if method is not None or headers is not None or body is not None:
                raise TypeError(
                    "fetch() takes either a Request or a URL with method/headers/body"
                )
            request = request.copy()
        else:
            request = Request(
                request, method=method or "GET", headers=headers, body=body
            )
        # No checkpoint of its own: like an RPC call, a fetch that needs no
        # waiting runs inline (deliver() yields every 64th event, so that a
        # loop of calls cannot starve other tasks).
        caller = current_owner.get()
        if caller is not None:
            mark = caller.output_mark()
            if mark:
                await caller.wait_output(mark)
        cluster = self._namespace._runtime._cluster
        if cluster is not None:
            return await cluster.fetch(
                self, request, functools.partial(self._fetch_local, request)
            )
        return await self._fetch_local(request)

    async def _fetch_local(self, request: Request) -> Response:
        """Deliver a request to the instance's ``fetch()`` here."""
        actor = self._bind()
        response = await actor.deliver(Fetch(request))
        if not isinstance(response, Response):
            raise TypeError(
                f"{type(actor.instance).__name__}.fetch() must return a "
                f"pyobjects.Response, not {type(response).__name__}"
            )
        return response.copy()

    def __repr__(self) -> str:
        return f"<DurableObjectStub {self._namespace._binding_name} {self.id!r}>"


def _typed_name(cls: type, method: FunctionType) -> str:
    """The name of the ``@rpc`` method *method* of *cls*, checked."""
    if getattr(method, "__pyobjects_rpc__", None) is None:
        raise TypeError(
            f"stub.call() takes a method marked with @pyobjects.rpc, and "
            f"{method.__qualname__} is not; mark it, or call "
            f"stub.{method.__name__}(...)"
        )
    name = method.__name__
    # Defined by the object's class or a base of it; an override in the
    # class is what the call reaches, as with stub.add_item(...).
    if not any(vars(klass).get(name) is method for klass in cls.__mro__):
        raise TypeError(
            f"stub.call({method.__qualname__}): that is not a method of "
            f"{cls.__name__}, the class of this stub's object"
        )
    return name


# str and bytes go through copy_value, which checks the 32 MiB limit.
_IMMUTABLE = frozenset({type(None), bool, int, float})
