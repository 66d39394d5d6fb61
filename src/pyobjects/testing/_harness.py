"""Helpers that reach inside objects, as ``cloudflare:test`` does."""

from __future__ import annotations

import copy
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, TypeVar, cast

from pyobjects._core._alarms import AlarmInfo
from pyobjects._core._events import RunIn, accepted_arity, find_handler
from pyobjects._core._namespace import DurableObjectNamespace
from pyobjects._core._runtime import Runtime
from pyobjects._core._stub import DurableObjectStub
from pyobjects._errors import RuntimeClosedError, StorageError

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Coroutine

    from pyobjects._core._state import DurableObjectState
    from pyobjects._ids import DurableObjectId
    from pyobjects.storage._base import ObjectStore, WriteBatch

__all__ = [
    "MakeRuntime",
    "crash_and_restart",
    "evict",
    "fail_next_commits",
    "list_durable_object_ids",
    "run_durable_object_alarm",
    "run_in_durable_object",
]

T = TypeVar("T")

# The type of the ``make_runtime`` pytest fixture: ``await make_runtime(bindings,
# **options)`` returns an entered Runtime. Defined here, not in the plugin, so
# that ``pyobjects.testing`` imports without pytest.
MakeRuntime = Callable[..., Awaitable[Runtime]]


def _check_stub(stub: object, helper: str) -> DurableObjectStub[Any]:
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
    stub: DurableObjectStub[Any], fn: Callable[[Any, DurableObjectState], Awaitable[T]]
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
    return await stub._bind().deliver(RunIn(fn))  # type: ignore[no-any-return]


async def run_durable_object_alarm(stub: DurableObjectStub[Any]) -> bool:
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
        handler = find_handler(instance, "alarm")
        if handler is None:
            raise TypeError(f"{type(instance).__name__} has no alarm() handler")
        info = AlarmInfo(retry_count=0, is_retry=False, scheduled_time=scheduled)
        cache = stub._namespace._runtime._method_cache
        await handler(*(info,)[: accepted_arity(handler, 1, cache)])
        return True

    return await run_in_durable_object(stub, fire)


async def evict(stub: DurableObjectStub[Any]) -> None:
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
    actor = namespace._runtime._catalog.live(namespace, stub.id)
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
    stub: DurableObjectStub[Any], count: int = 1, *, error: Exception | None = None
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
    runtime = namespace._runtime
    fault = _CommitFault(count, error)
    runtime._commit_faults[(namespace._storage_name, str(stub.id))] = fault
    actor = runtime._catalog.live(namespace, stub.id)
    if actor is not None:  # the live instance commits through it from now on
        actor.output_gate.store = runtime._commit_store(actor)


class _CommitFault:
    """Commits that are to fail, installed where an instance commits."""

    __slots__ = ("error", "left")

    def __init__(self, count: int, error: Exception) -> None:
        self.left = count
        self.error = error

    def wrap(self, store: ObjectStore, done: Callable[[], object]) -> ObjectStore:
        return _FailingStore(store, self, done)


class _FailingStore:
    """An object store whose next commits fail (then it commits normally)."""

    __slots__ = ("_done", "_fault", "_inner")

    def __init__(
        self, inner: ObjectStore, fault: _CommitFault, done: Callable[[], object]
    ) -> None:
        self._inner = inner
        self._fault = fault
        self._done = done

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def commit(self, batch: WriteBatch) -> Coroutine[Any, Any, None]:
        fault = self._fault
        if fault.left <= 0:
            return self._inner.commit(batch)
        fault.left -= 1
        if fault.left <= 0:
            self._done()
        return _raise(copy.copy(fault.error))


async def _raise(error: Exception) -> None:
    raise error


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
    namespace: DurableObjectNamespace[Any],
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
