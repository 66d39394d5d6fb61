"""``DurableObjectStub``: the client handle through which objects are called."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, final

import anyio
import anyio.lowlevel

from pyobjects._errors import SerializationError
from pyobjects._http import HeadersInit, Request, Response
from pyobjects._owner import current_owner
from pyobjects._serialization import copy_args, copy_value

from ._events import Call, Fetch

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine

    from pyobjects._ids import DurableObjectId

    from ._actor import Actor
    from ._namespace import DurableObjectNamespace

__all__ = ["DurableObjectStub"]


@final
class _RpcMethod:
    """``stub.name``: calling it sends one RPC call."""

    __slots__ = ("_name", "_stub")

    def __init__(self, stub: DurableObjectStub, name: str) -> None:
        self._stub = stub
        self._name = name

    def __call__(self, *args: Any, **kwargs: Any) -> Coroutine[Any, Any, Any]:
        return self._stub._call(self._name, args, kwargs)

    def __repr__(self) -> str:
        return f"<RPC method {self._name!r} of {self._stub!r}>"


@final
class DurableObjectStub:
    """A handle on one Durable Object; ``await stub.method(...)`` calls it.

    Arguments and results are passed by value (copied through the storage
    codec), so caller and object never share mutable data; ids and stubs pass
    as they are. Calls made through one stub reach the object in the order
    they were made. Creating a stub does nothing: the object is constructed
    on the first call. Built by ``namespace.get()``; the constructor is
    private. Mirrors ``DurableObjectStub`` in Workers.
    """

    id: DurableObjectId

    def __init__(
        self, namespace: DurableObjectNamespace, object_id: DurableObjectId
    ) -> None:
        self._namespace = namespace
        self.id = object_id
        self._actor: Actor | None = None

    @property
    def name(self) -> str | None:
        """The name the id was made from, or ``None``."""
        return self.id.name

    def __getattr__(self, name: str) -> Callable[..., Coroutine[Any, Any, Any]]:
        if name.startswith("__"):
            raise AttributeError(name)
        method = _RpcMethod(self, name)
        self.__dict__[name] = method  # later lookups skip __getattr__
        return method

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
        args, kwargs = copy_args(args, kwargs, passthrough)
        caller = current_owner.get()
        if caller is not None:
            mark = caller.output_mark()
            if mark:
                await caller.wait_output(mark)  # output gate: the call leaves
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
        await anyio.lowlevel.checkpoint()
        caller = current_owner.get()
        if caller is not None:
            mark = caller.output_mark()
            if mark:
                await caller.wait_output(mark)
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


# str and bytes go through copy_value, which checks the 32 MiB limit.
_IMMUTABLE = frozenset({type(None), bool, int, float})
