"""``@rpc``: declare a method callable through a typed stub.

Python has no mapped types, so a type checker cannot turn ``Cart``'s methods
into the awaitable methods of a ``DurableObjectStub[Cart]`` by itself (what
TypeScript's ``DurableObjectStub<Cart>`` does). What it can do is follow a
reference to a method: ``Cart.add_item`` carries the method's parameters
(a ``ParamSpec``), its result and the class it belongs to. ``@rpc`` marks a
method as part of the object's RPC interface and gives it a type that says
so, and ``stub.call(Cart.add_item, *args)`` checks a call against it.

At run time ``@rpc`` returns the very function it was given (with one marker
attribute), so the object calls its own methods as before and
``stub.add_item(...)`` keeps working.
"""

from __future__ import annotations

import inspect
from typing import (
    TYPE_CHECKING,
    Any,
    Concatenate,
    Literal,
    ParamSpec,
    Protocol,
    Self,
    TypeVar,
    overload,
)

from ._object import RESERVED_NAMES

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine

__all__ = ["AsyncRpcMethod", "RpcMethod", "rpc"]

_S = TypeVar("_S")
_S_contra = TypeVar("_S_contra", contravariant=True)
_P = ParamSpec("_P")
_R = TypeVar("_R")
_R_co = TypeVar("_R_co", covariant=True)


class RpcMethod(Protocol[_S_contra, _P, _R_co]):
    """The type of a sync method marked with :func:`rpc`.

    ``RpcMethod[Cart, (sku: str), int]`` is a method of ``Cart`` taking a
    ``str`` and returning an ``int``. Read through the class
    (``Cart.total``) it is itself, the reference :meth:`DurableObjectStub.call`
    takes; read through an instance (``self.total``) it is the usual bound
    method.
    """

    @property
    def __pyobjects_rpc__(self) -> Literal["sync"]: ...

    @property
    def __name__(self) -> str: ...

    @overload
    def __get__(self, instance: None, owner: type[Any], /) -> Self: ...
    @overload
    def __get__(
        self, instance: _S_contra, owner: type[Any] | None = None, /
    ) -> Callable[_P, _R_co]: ...

    def __call__(
        self, instance: _S_contra, /, *args: _P.args, **kwargs: _P.kwargs
    ) -> _R_co: ...


class AsyncRpcMethod(Protocol[_S_contra, _P, _R_co]):
    """The type of an ``async`` method marked with :func:`rpc`.

    As :class:`RpcMethod`, for a coroutine function returning ``_R_co``.
    """

    @property
    def __pyobjects_rpc__(self) -> Literal["async"]: ...

    @property
    def __name__(self) -> str: ...

    @overload
    def __get__(self, instance: None, owner: type[Any], /) -> Self: ...
    @overload
    def __get__(
        self, instance: _S_contra, owner: type[Any] | None = None, /
    ) -> Callable[_P, Coroutine[Any, Any, _R_co]]: ...

    def __call__(
        self, instance: _S_contra, /, *args: _P.args, **kwargs: _P.kwargs
    ) -> Coroutine[Any, Any, _R_co]: ...


# mypy calls these overloads unsafe because a coroutine function also matches
# the second one; the first wins, which is the point.
@overload
def rpc(  # type: ignore[overload-overlap]
    method: Callable[Concatenate[_S, _P], Coroutine[Any, Any, _R]], /
) -> AsyncRpcMethod[_S, _P, _R]: ...
@overload
def rpc(method: Callable[Concatenate[_S, _P], _R], /) -> RpcMethod[_S, _P, _R]: ...
def rpc(method: Callable[..., Any], /) -> Any:
    """Mark *method* as callable through a typed stub.

    ``stub.call(Cart.add_item, "sku", 2)`` then type-checks the arguments
    against ``add_item``'s parameters and types the awaited result as its
    return type (sync methods too). Nothing changes at run time: the
    function is returned as it is, so ``self.add_item(...)`` inside the
    object and the untyped ``stub.add_item(...)`` work as before.

    Raises:
        TypeError: If *method* is not a plain function (``staticmethod``,
            ``classmethod`` and properties are not RPC methods), or its name
            is private (``_x``) or an event handler or reserved name
            (``fetch``, ``alarm``, ``ctx``, ...), which no stub can call.
    """
    if not inspect.isfunction(method):
        raise TypeError(
            f"@rpc marks a method defined with def or async def, "
            f"not {type(method).__name__}"
        )
    name = method.__name__
    if name.startswith("_"):
        raise TypeError(
            f"@rpc cannot mark {method.__qualname__}: names starting with '_' "
            "are private and cannot be called over RPC"
        )
    if name in RESERVED_NAMES:
        raise TypeError(
            f"@rpc cannot mark {method.__qualname__}: {name}() is an event "
            "handler or reserved name, not an RPC method"
        )
    kind = "async" if inspect.iscoroutinefunction(method) else "sync"
    method.__pyobjects_rpc__ = kind  # type: ignore[attr-defined]
    return method
