"""One live Durable Object instance and everything that keeps it consistent.

An :class:`Actor` ties together the user's object, its ``ctx``, its storage
front end, its input and output gates, and its lifecycle: construction,
``block_concurrency_while``, flushing writes, reset and eviction.

Events (RPC calls, fetches) run *in the caller's task*: entering the input
gate, running the handler, then waiting at the output gate until every write
made so far is durable. That keeps a call down to a few microseconds; it
also means cancelling a caller cancels its handler at its next await.
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
import inspect
import logging
from time import perf_counter_ns
from types import CoroutineType
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import anyio
import anyio.lowlevel

from ._context import current_actor as current_actor
from ._errors import DurableObjectResetError
from ._gates import InputGate, OutputGate
from ._state import BlockConcurrencyHandle, DurableObjectState
from .storage._api import Storage, StorageOwner

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Coroutine, Generator

    from ._ids import DurableObjectId
    from ._namespace import DurableObjectNamespace
    from ._runtime import Runtime
    from ._websocket import WebSocket
    from .storage._base import ObjectStore

logger = logging.getLogger("pyobjects")

T = TypeVar("T")

MAX_BCW_DEPTH = 64
# Names longer than this are not shown to the object (workerd clears them).
MAX_VISIBLE_NAME_BYTES = 1024

_bcw_depth: contextvars.ContextVar[int] = contextvars.ContextVar(
    "pyobjects_bcw_depth", default=0
)
# A commit slower than this (EWMA, nanoseconds) makes events wait one event-loop
# turn before committing while other calls are in flight, so concurrent events
# share one commit (group commit). Faster commits (the memory backend) are
# always done at once, and so is every commit when only one call is running.
GROUP_COMMIT_NS = 20_000
# A commit still waiting after this long resets the object (Cloudflare's
# output-gate timeout: "storage operation exceeded timeout").
OUTPUT_GATE_TIMEOUT_MS = 30_000


def flag_reset(error: BaseException) -> BaseException:
    """Return a fresh copy of *error* marked ``durable_object_reset = True``.

    Every caller gets its own copy, so tracebacks of concurrent callers do
    not pile up on one exception object.
    """
    try:
        new = copy.copy(error)
        if type(new) is not type(error) or new.args != error.args:
            raise TypeError  # copy lost information
    except Exception:
        new = DurableObjectResetError(str(error))
    new.__cause__ = error.__cause__
    new.__traceback__ = None
    with contextlib.suppress(AttributeError):  # exceptions with __slots__
        new.durable_object_reset = True  # type: ignore[attr-defined]
    return new


def visible_id(object_id: DurableObjectId) -> DurableObjectId:
    """The id as the object sees it (very long names are not shown)."""
    name = object_id.name
    if name is not None and len(name.encode()) > MAX_VISIBLE_NAME_BYTES:
        return type(object_id)._make(
            bytes.fromhex(str(object_id)),
            name=None,
            jurisdiction=object_id.jurisdiction,
        )
    return object_id


class _Resume:
    """Go on awaiting a coroutine whose first step already ran.

    ``first`` is what that step yielded (for the event loop); from there on
    this is ``await coro``, step for step: values and exceptions pass through
    to and from the event loop unchanged.
    """

    __slots__ = ("_coro", "_first")

    def __init__(self, coro: Coroutine[Any, Any, Any], first: Any) -> None:
        self._coro = coro
        self._first = first

    def __await__(self) -> Generator[Any, Any, Any]:
        coro = self._coro
        value = self._first
        while True:
            try:
                sent = yield value
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:  # passed on into coro
                try:
                    value = coro.throw(exc)
                except StopIteration as stop:
                    return stop.value
            else:
                try:
                    value = coro.send(sent)
                except StopIteration as stop:
                    return stop.value


class _Evicted:
    """Stands in for an evicted instance behind its old ``ctx`` and storage."""

    __slots__ = ("_id",)

    def __init__(self, object_id: DurableObjectId) -> None:
        self._id = object_id

    def __getattr__(self, name: str) -> Any:
        raise RuntimeError(
            f"this instance of Durable Object {self._id} was evicted; its ctx and "
            "storage can no longer be used (a new call builds a fresh instance)"
        )


class Actor(StorageOwner):
    """A live instance of a Durable Object (internal)."""

    __slots__ = (
        "active",
        "broken",
        "commit_ns",
        "constructing",
        "ctx",
        "evicted",
        "flush_queued",
        "flush_scheduled",
        "flushing",
        "flushing_seq",
        "id",
        "idle_queued_at",
        "idle_since",
        "input_gate",
        "instance",
        "namespace",
        "output_gate",
        "reset_scopes",
        "runtime",
        "sockets",
        "storage",
        "store",
    )

    def __init__(
        self,
        runtime: Runtime,
        namespace: DurableObjectNamespace,
        object_id: DurableObjectId,
    ) -> None:
        self.runtime = runtime
        self.namespace = namespace
        self.id = visible_id(object_id)
        self.input_gate = InputGate(max_queued=runtime._max_queued_events)
        self.output_gate = OutputGate()
        self.store: ObjectStore = runtime.open_store(namespace, str(object_id))
        self.storage = Storage(self.store, self, name=self.id.name)
        self.ctx = DurableObjectState(self)
        self.instance: Any = None
        self.broken: BaseException | None = None
        self.evicted = False
        self.constructing = False
        self.active = 0
        self.flush_scheduled = False  # pending writes not yet taken by a flush
        self.flush_queued = False  # in the runtime flusher's list
        self.flushing = False
        self.flushing_seq = 0
        self.commit_ns = 0
        self.idle_since = 0
        self.idle_queued_at = 0
        self.reset_scopes: list[anyio.CancelScope] = []
        # Open plain (non-hibernatable) WebSockets accepted by this instance:
        # they keep it from being evicted.
        self.sockets: set[WebSocket] | None = None

    def construct(self) -> None:
        """Run the user's constructor (synchronously)."""
        self.active += 1
        self.constructing = True
        try:
            self.instance = self.namespace.object_class(self.ctx, self.runtime.env)
        finally:
            self.constructing = False
            self.end()

    # -- StorageOwner --------------------------------------------------------

    def on_write(self) -> None:
        """Number the write and make sure a commit is coming.

        While an event runs, the commit happens when that event (or another)
        produces output, or when the object goes idle; outside events the
        runtime's flusher is asked at once.
        """
        self.output_gate.write_seq += 1
        if not self.flush_scheduled:
            self.flush_scheduled = True
            if self.active == 0:
                self._queue_flush()

    def _queue_flush(self) -> None:
        if not self.flush_queued:
            self.flush_queued = True
            self.runtime._schedule_flush(self)

    def hold_input(self) -> None:
        """Close the input gate (storage wait or transaction)."""
        self.input_gate.close()

    def release_input(self) -> None:
        """Reopen the input gate."""
        self.input_gate.open()

    def check_usable(self) -> None:
        """Raise the reset error if this instance was reset."""
        if self.broken is not None:
            raise self.reset_error()

    def check_alarm_allowed(self) -> None:
        """Refuse set_alarm() on a class without alarm() (not while constructing)."""
        if self.constructing:
            return
        cls = self.namespace.object_class
        if getattr(cls, "alarm", None) is None:
            raise TypeError(
                "Your Durable Object class must have an alarm() handler in order "
                f"to call setAlarm() ({cls.__name__} has none)"
            )

    def now_ms(self) -> int:
        """The runtime clock's time."""
        return self.runtime.clock.now_ms()

    async def wait_durable(self, target: int | None = None) -> None:
        """Wait until the writes made so far are durable (then check for a reset).

        Only writes made before the call (or up to write number *target*)
        count: writes other events make meanwhile are theirs to wait for, so
        a stream of events never keeps one of them waiting.
        """
        gate = self.output_gate
        if target is None:
            target = gate.write_seq
        while gate.durable_seq < target and self.broken is None:
            if self.flushing:
                # A (suspending) commit is under way: wait for it, then commit
                # whatever was written meanwhile.
                await gate.wait(min(target, self.flushing_seq))
                continue
            if self.commit_ns > GROUP_COMMIT_NS and self.runtime._calls_in_flight > 1:
                # Commits are slow and other calls are under way: let them add
                # their writes first, so one commit serves them all; whoever
                # resumes first commits. A lone caller commits at once.
                await anyio.lowlevel.checkpoint()
                if gate.durable_seq >= target or self.flushing:
                    continue
            await self.flush()
        self.check_usable()

    # -- lifecycle -----------------------------------------------------------

    def begin(self) -> None:
        """An event (or background work) started.

        Nothing else to do: the eviction sweeper skips busy actors.
        """
        self.active += 1

    def end(self) -> None:
        """An event (or background work) finished."""
        self.active -= 1
        if self.active == 0 and self.broken is None:
            if self.flush_scheduled:
                self._queue_flush()  # nobody is left to commit these writes
            self.runtime._became_idle(self)

    @property
    def quiescent(self) -> bool:
        """True when nothing runs, waits or remains to be written.

        Open plain WebSockets count as activity; hibernatable ones do not.
        """
        return (
            self.active == 0
            and self.input_gate.is_open
            and not self.flush_scheduled
            and not self.storage._has_pending
            and not self.sockets
        )

    def reset_error(self) -> BaseException:
        """The error callers of a reset instance get (a fresh flagged copy)."""
        assert self.broken is not None
        error = flag_reset(self.broken)
        error.add_note(
            f"Durable Object {self.namespace.object_class.__name__} ({self.id}) "
            "was reset; get a new stub to reach a fresh instance"
        )
        return error

    def break_(self, error: BaseException) -> None:
        """Reset this instance: drop it, its uncommitted writes and its waiters."""
        if self.broken is not None:
            return
        with contextlib.suppress(AttributeError):
            error.durable_object_reset = True  # type: ignore[attr-defined]
        self.broken = error
        self.runtime._forget(self)
        self.storage._discard()
        self.input_gate.fail_all()
        self.output_gate.fail()
        for scope in self.reset_scopes:
            scope.cancel()
        self.store.close()
        if self.sockets or self.namespace._hubs:
            self._drop_websockets()

    def _drop_websockets(self) -> None:
        """A reset disconnects the object's WebSockets, hibernatable ones too.

        As in workerd, where a broken actor takes its hibernation manager
        with it: peers see an abnormal close (1006), the object no events.
        """
        sockets, self.sockets = self.sockets, None
        for ws in sockets or ():
            ws._abort()
        hub = self.namespace._hubs.get(self.id)
        if hub is not None and not self.evicted:
            hub.reset()

    def evict(self) -> None:
        """Drop this (quiescent) instance; storage stays for the next one."""
        self.evicted = True
        self.runtime._forget(self)
        self.store.close()
        self.instance = None
        if self.namespace._hubs:
            hub = self.namespace._hubs.get(self.id)
            if hub is not None:
                hub.instance_evicted()  # its sockets hibernate
        # Break the actor <-> ctx/storage cycles so that reference counting
        # frees the instance at once (a million evictions would otherwise be
        # left to the cyclic GC); stray references now fail with a clear error.
        gone = _Evicted(self.id)
        self.ctx._actor = gone  # type: ignore[assignment]
        self.storage._owner = gone  # type: ignore[assignment]

    async def flush(self) -> None:
        """Commit the pending writes as one batch (all or nothing)."""
        self.flush_scheduled = False
        if self.broken is not None:
            return
        gate = self.output_gate
        seq = gate.write_seq
        taken = self.storage._take_batch()
        if taken is None:
            gate.confirmed(seq)
            return
        batch, layer = taken
        self.flushing = True
        self.flushing_seq = seq
        started = perf_counter_ns()
        try:
            if self.runtime._commit_faults:
                self.runtime._injected_fault(self)
            commit = self.store.commit(batch)
            try:
                # Local backends finish here, without suspending: the hot path.
                first = commit.send(None)
            except StopIteration:
                pass
            else:
                await self._commit_slowly(commit, first)
        except Exception as exc:
            error = DurableObjectResetError(
                f"Durable Object storage commit failed, so the object was reset: {exc}"
            )
            error.__cause__ = exc
            self.break_(error)
            return
        finally:
            self.flushing = False
        if self._was_reset():
            return  # reset while the commit was in flight: nothing to deliver
        self.commit_ns = (self.commit_ns * 3 + perf_counter_ns() - started) >> 2
        self.storage._batch_done(layer, batch)
        gate.confirmed(seq)
        if batch.alarm_changed:
            self.runtime.alarms.set(self.namespace, str(self.id), batch.alarm)

    async def _commit_slowly(
        self, commit: Coroutine[Any, Any, None], first: Any
    ) -> None:
        """Finish a commit that suspended (a server-backed store).

        Only such a commit gets the output-gate deadline, and a reset while it
        waits cancels it, so that the task running it (often a caller,
        committing inline) is released at once.
        """
        runtime = self.runtime
        timer = runtime.timers.call_at(
            runtime.clock.now_ms() + OUTPUT_GATE_TIMEOUT_MS, self._commit_timed_out
        )
        with anyio.CancelScope() as scope:
            self.reset_scopes.append(scope)
            try:
                await _Resume(commit, first)
            finally:
                self.reset_scopes.remove(scope)
                timer.cancel()

    def _was_reset(self) -> bool:
        # A method, not an inline test: type checkers keep `self.broken`
        # narrowed across an await, but another task may have set it.
        return self.broken is not None

    def _commit_timed_out(self) -> None:
        if not self.flushing:
            return
        error = DurableObjectResetError(
            "Durable Object storage operation exceeded timeout which caused object "
            "to be reset."
        )
        error.overloaded = True
        error.retryable = False
        self.break_(error)

    # -- events --------------------------------------------------------------

    async def enter(self) -> None:
        """Wait at the input gate, then make sure the instance is still usable."""
        await self.input_gate.enter()
        self.check_usable()

    async def run(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        what: str,
    ) -> Any:
        """Run one event's handler and deliver its outcome through the output gate."""
        self.active += 1
        token = current_actor.set(self)
        try:
            result = fn(*args, **kwargs)
            if type(result) is CoroutineType or inspect.isawaitable(result):
                result = await result
        except Exception as exc:
            current_actor.reset(token)
            try:
                await self.wait_durable()
            finally:
                self.end()
            exc.add_note(
                f"raised by Durable Object {self.namespace.object_class.__name__} "
                f"({self.id}) in {what}"
            )
            raise
        except BaseException:
            current_actor.reset(token)
            self.end()
            raise
        current_actor.reset(token)
        try:
            if self.output_gate.pending or self.broken is not None:
                await self.wait_durable()
        finally:
            self.end()
        return result

    # -- ctx ----------------------------------------------------------------

    def block_concurrency_while(
        self, fn: Callable[..., Awaitable[T]], args: tuple[Any, ...]
    ) -> BlockConcurrencyHandle[T]:
        """Start *fn* on the runtime's task group with the input gate closed."""
        self.check_usable()
        depth = _bcw_depth.get() + 1
        if depth > MAX_BCW_DEPTH:
            raise RuntimeError("blockConcurrencyWhile() calls are nested too deeply.")
        handle: BlockConcurrencyHandle[T] = BlockConcurrencyHandle()
        self.input_gate.close()
        self.begin()
        self.runtime._spawn(self._run_bcw, fn, args, handle, depth)
        return handle

    async def _run_bcw(
        self,
        fn: Callable[..., Awaitable[T]],
        args: tuple[Any, ...],
        handle: BlockConcurrencyHandle[T],
        depth: int,
    ) -> None:
        _bcw_depth.set(depth)
        current_actor.set(self)
        scope = anyio.CancelScope()
        self.reset_scopes.append(scope)
        runtime = self.runtime
        timer = runtime.timers.call_at(
            runtime.clock.now_ms() + runtime._bcw_timeout_ms, self._bcw_timed_out
        )
        try:
            with scope:
                result = await fn(*args)
        except Exception as exc:
            self.break_(exc)
            handle._set(None, self.reset_error())
        else:
            if self.broken is not None:
                handle._set(None, self.reset_error())
            else:
                handle._set(result, None)
        finally:
            timer.cancel()
            self.reset_scopes.remove(scope)
            self.input_gate.open()
            self.end()

    def _bcw_timed_out(self) -> None:
        error = DurableObjectResetError(
            "A call to blockConcurrencyWhile() in a Durable Object waited for too "
            "long. The call was canceled and the Durable Object was reset."
        )
        error.overloaded = True  # Cloudflare: OVERLOADED, so do not retry at once
        error.retryable = False
        self.break_(error)

    def wait_until(self, awaitable: Awaitable[Any]) -> None:
        """Keep the instance alive (not idle) until *awaitable* finishes."""
        if not inspect.isawaitable(awaitable):
            raise TypeError(
                f"wait_until() takes an awaitable, not {type(awaitable).__name__}"
            )
        self.begin()
        self.runtime._spawn(self._wait_until, awaitable)

    async def _wait_until(self, awaitable: Awaitable[Any]) -> None:
        try:
            await awaitable
        except Exception:
            logger.exception("wait_until() task of %s failed", self.id)
        finally:
            self.end()

    def abort(self, reason: str | None) -> NoReturn:
        """Reset now, discarding uncommitted writes; raise the reset error."""
        if reason is not None and not isinstance(reason, str):
            raise TypeError(
                f"abort() reason must be a str, not {type(reason).__name__}"
            )
        self.break_(
            DurableObjectResetError(
                reason or "Application called abort() to reset Durable Object."
            )
        )
        raise self.reset_error()
