"""Helpers that reach inside objects, as ``cloudflare:test`` does."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeVar

from pyobjects._namespace import DurableObjectNamespace
from pyobjects._stub import DurableObjectStub

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from pyobjects._ids import DurableObjectId
    from pyobjects._state import DurableObjectState

__all__ = ["evict", "list_durable_object_ids", "run_in_durable_object"]

T = TypeVar("T")


def _check_stub(stub: object, helper: str) -> DurableObjectStub:
    if not isinstance(stub, DurableObjectStub):
        raise TypeError(
            f"{helper}() takes a DurableObjectStub as its first argument, "
            f"not {type(stub).__name__}"
        )
    return stub


async def run_in_durable_object(
    stub: DurableObjectStub, fn: Callable[[Any, DurableObjectState], Awaitable[T]]
) -> T:
    """Run ``await fn(instance, ctx)`` inside the object, as one event.

    The object is constructed first if needed; the call waits at the input
    gate and its result waits at the output gate like any other event.
    Returns ``fn``'s result itself (not a copy); exceptions propagate.
    """
    stub = _check_stub(stub, "run_in_durable_object")
    if not callable(fn):
        raise TypeError(
            f"run_in_durable_object() takes a callable as its second argument, "
            f"not {type(fn).__name__}"
        )
    actor = stub._bind()
    if not actor.input_gate.is_open:
        await actor.enter()
    return await actor.run(  # type: ignore[no-any-return]
        fn, (actor.instance, actor.ctx), {}, "run_in_durable_object()"
    )


async def evict(stub: DurableObjectStub) -> None:
    """Drop the object's live instance as the platform would after idling.

    Pending writes are flushed first; storage stays, and the next call
    constructs a fresh instance from it.

    Raises:
        RuntimeError: If the object has no live instance or is busy.
    """
    stub = _check_stub(stub, "evict")
    namespace = stub._namespace
    actor = namespace._actors.get(stub.id)
    if actor is None:
        raise RuntimeError(f"Durable Object {stub.id} has no live instance to evict")
    await actor.wait_durable()
    if actor.active or not actor.input_gate.is_open:
        raise RuntimeError(
            f"cannot evict Durable Object {stub.id}: it is still handling events"
        )
    actor.evict()


async def list_durable_object_ids(
    namespace: DurableObjectNamespace,
) -> list[DurableObjectId]:
    """Return the ids of the namespace's objects that hold stored data."""
    if not isinstance(namespace, DurableObjectNamespace):
        raise TypeError(
            f"list_durable_object_ids() takes a DurableObjectNamespace, "
            f"not {type(namespace).__name__}"
        )
    hex_ids = await namespace._runtime.storage.list_object_ids(namespace._storage_name)
    return [namespace._ids.from_string(h) for h in hex_ids]
