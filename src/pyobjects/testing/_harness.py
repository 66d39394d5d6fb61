"""Helpers that reach inside objects, as ``cloudflare:test`` does."""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, TypeVar, cast

from pyobjects._alarms import AlarmInfo
from pyobjects._errors import RuntimeClosedError, StorageError
from pyobjects._namespace import DurableObjectNamespace
from pyobjects._runtime import Runtime
from pyobjects._stub import DurableObjectStub

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

    from pyobjects._ids import DurableObjectId
    from pyobjects._state import DurableObjectState

__all__ = [
    "crash_and_restart",
    "evict",
    "fail_next_commits",
    "list_durable_object_ids",
    "run_durable_object_alarm",
    "run_in_durable_object",
]

T = TypeVar("T")


def _check_stub(stub: object, helper: str) -> DurableObjectStub:
    if not isinstance(stub, DurableObjectStub):
        raise TypeError(
            f"{helper}() takes a DurableObjectStub as its first argument, "
            f"not {type(stub).__name__}"
        )
    runtime = stub._namespace._runtime
    if not runtime._running:
        raise RuntimeClosedError(
            f"{helper}() was given a stub of a Runtime that is not running "
            "(closed, crashed or not entered yet); get a stub from the running "
            "runtime's env"
        )
    return stub


async def run_in_durable_object(
    stub: DurableObjectStub, fn: Callable[[Any, DurableObjectState], Awaitable[T]]
) -> T:
    """Run ``await fn(instance, ctx)`` inside the object, as one event.

    The object is constructed first if needed; the call waits at the input
    gate and its result waits at the output gate like any other event.
    Returns ``fn``'s result itself (not a copy); exceptions propagate.
    Mirrors ``runInDurableObject``.
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


async def run_durable_object_alarm(stub: DurableObjectStub) -> bool:
    """Run the object's pending alarm now, if it has one.

    Deletes the alarm, calls ``alarm(AlarmInfo(retry_count=0, is_retry=False))``
    inside the object and returns ``True``; returns ``False`` when no alarm is
    set. The scheduled time is ignored, nothing is retried, and an exception
    from the handler propagates. Mirrors ``runDurableObjectAlarm``.
    """
    stub = _check_stub(stub, "run_durable_object_alarm")

    async def fire(instance: Any, ctx: DurableObjectState) -> bool:
        scheduled = await ctx.storage.get_alarm()
        if scheduled is None:
            return False
        ctx.storage.delete_alarm()
        handler = getattr(instance, "alarm", None)
        if handler is None:
            raise TypeError(f"{type(instance).__name__} has no alarm() handler")
        await handler(
            AlarmInfo(retry_count=0, is_retry=False, scheduled_time=scheduled)
        )
        return True

    return await run_in_durable_object(stub, fire)


async def evict(stub: DurableObjectStub) -> None:
    """Drop the object's live instance as the platform would after idling.

    Pending writes are committed first; storage and the alarm stay, and the
    next call constructs a fresh instance from them. Hibernatable WebSockets
    stay connected (they hibernate); their next event builds the instance.

    Raises:
        RuntimeError: If the object has no live instance, is busy, or has
            open WebSockets that are not hibernatable (accepted with
            ``ws.accept()``).
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
    if actor.sockets:
        raise RuntimeError(
            f"cannot evict Durable Object {stub.id}: it has open WebSockets that "
            "are not hibernatable (accepted with ws.accept(), not "
            "ctx.accept_websocket())"
        )
    actor.evict()


def fail_next_commits(
    stub: DurableObjectStub, count: int = 1, *, error: Exception | None = None
) -> None:
    """Make the object's next *count* commits fail, as a broken disk would.

    Each failing commit writes nothing and resets the object: callers waiting
    on it get ``DurableObjectResetError`` (with *error*, by default a
    ``StorageError``, as its cause), and the next instance starts from what
    was committed before. Use it to test that your code survives storage
    failures.
    """
    stub = _check_stub(stub, "fail_next_commits")
    if (
        not isinstance(cast("object", count), int)
        or isinstance(count, bool)
        or count < 1
    ):
        raise ValueError(f"count must be a positive int, got {count!r}")
    if error is None:
        error = StorageError("injected commit failure (fail_next_commits)")
    namespace = stub._namespace
    key = (namespace._storage_name, str(stub.id))
    namespace._runtime._commit_faults[key] = [count, error]


@asynccontextmanager
async def crash_and_restart(runtime: Runtime) -> AsyncIterator[Runtime]:
    """Simulate a process crash, then yield a fresh runtime on the same storage.

    The crash drops every live instance with its uncommitted writes and stops
    every timer and background task of *runtime*, without flushing anything:
    what a caller was told succeeded is durable and survives; anything else
    may be lost. The new runtime has the same bindings, storage, clock and
    options, reloads pending alarms, and builds objects afresh on their
    first call::

        async with crash_and_restart(rt) as rt2:
            assert await rt2.env.COUNTER.get_by_name("a").value() == 1
    """
    if not isinstance(runtime, Runtime):
        raise TypeError(
            f"crash_and_restart() takes a Runtime, not {type(runtime).__name__}"
        )
    await runtime._crash()
    # The very same backend and clock (also when the runtime made its own).
    options = dict(runtime._options, storage=runtime.storage, clock=runtime.clock)
    async with Runtime(**options) as fresh:
        yield fresh


async def list_durable_object_ids(
    namespace: DurableObjectNamespace,
) -> list[DurableObjectId]:
    """Return the ids of the namespace's objects that hold stored data.

    Works on every backend (memory included). Mirrors
    ``listDurableObjectIds``.
    """
    if not isinstance(namespace, DurableObjectNamespace):
        raise TypeError(
            f"list_durable_object_ids() takes a DurableObjectNamespace, "
            f"not {type(namespace).__name__}"
        )
    hex_ids = await namespace._runtime.storage.list_object_ids(namespace._storage_name)
    return [namespace._ids.from_string(h) for h in hex_ids]
