"""One live Durable Object instance, and the event pipeline that runs inside it.

:meth:`Actor.deliver` is the only way anything runs inside an object (RPC
calls, fetches, alarms, WebSocket events, ``run_in_durable_object``). It
starts the instance if needed, waits at the input gate, finds the handler,
runs it inline in the caller's task (that is what keeps a call to a few
microseconds), puts a deadline and the reset cancel scope around it when it
suspends, commits its writes when it yields or ends, and holds its outcome at
the output gate until those writes are durable. Consequence of running
inline: cancelling a caller cancels its handler at its next await.

Writes are committed "at the end of the turn", as workerd does: a write made
while an event's handler is running a step is committed when that step ends
(the handler yields to the event loop, or returns and waits at the output
gate); a write made anywhere else (a ``wait_until`` task, a
``block_concurrency_while`` callback, a timer) goes to the runtime's
flusher, which runs as soon as the writing task yields.
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
import inspect
import logging
from types import CoroutineType, MethodType
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import anyio
import anyio.lowlevel

from pyobjects._errors import DurableObjectResetError, RuntimeClosedError
from pyobjects._owner import current_owner
from pyobjects.storage._api import Storage
from pyobjects.storage._front import StorageOwner

from ._gates import InputGate, OutputGate, Resume
from ._state import BlockConcurrencyHandle, DurableObjectState

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Coroutine, Iterator

    from pyobjects._ids import DurableObjectId
    from pyobjects.storage._base import ObjectStore, WriteBatch

    from ._catalog import Counters
    from ._events import Event
    from ._namespace import DurableObjectNamespace
    from ._runtime import Runtime

logger = logging.getLogger("pyobjects")

T = TypeVar("T")

MAX_BCW_DEPTH = 64
# A handler is run without the reset cancel scope once it completed this many
# calls without suspending; one seen to suspend (SUSPENDS) always gets it.
TRUSTED_AFTER = 8
# An event that needs no waiting runs without a context switch (like a cached
# storage read): a full checkpoint costs more than the call itself. So that a
# loop of calls cannot starve other tasks, every 64th event yields anyway.
YIELD_EVERY_MASK = 63
SUSPENDS = -1
# Names longer than this are not shown to the object (workerd clears them).
MAX_VISIBLE_NAME_BYTES = 1024

_bcw_depth: contextvars.ContextVar[int] = contextvars.ContextVar(
    "pyobjects_bcw_depth", default=0
)


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


class _EventSteps(Resume):
    """Resume an event's handler; commit its writes each time it yields.

    Without a reset scope around it (see ``Actor._suspended``), it also
    fails the handler when it resumes after a reset or past its deadline.
    """

    __slots__ = ("_actor", "deadline", "event")

    def __init__(
        self, actor: Actor, coro: Coroutine[Any, Any, Any], first: Any
    ) -> None:
        super().__init__(coro, first)
        self._actor = actor
        self.event: Event | None = None
        self.deadline: int | None = None

    def interrupt(self) -> BaseException | None:
        event = self.event
        if event is None:
            return None
        actor = self._actor
        if actor.broken is not None:
            return actor.reset_error()
        if self.deadline is not None and actor.runtime.clock.now_ms() >= self.deadline:
            self.event = None
            return event.timed_out(actor)
        return None

    def stepping(self, on: bool) -> None:
        actor = self._actor
        if on:
            actor.stepping += 1
            return
        actor.stepping -= 1
        gate = actor.output_gate
        if gate.flush_scheduled and not gate.flush_queued:
            gate.schedule_flush()  # the step ended: its writes commit now


class Actor(StorageOwner):
    """A live instance of a Durable Object (internal)."""

    __slots__ = (
        "active",
        "broken",
        "constructing",
        "counters",
        "ctx",
        "evicted",
        "id",
        "idle_queued_at",
        "idle_since",
        "input_gate",
        "instance",
        "key",
        "namespace",
        "output_gate",
        "reset_scopes",
        "retry_alarm",
        "runtime",
        "sockets",
        "start_failed",
        "starting",
        "stepping",
        "storage",
        "store",
    )

    def __init__(
        self,
        runtime: Runtime,
        namespace: DurableObjectNamespace[Any],
        object_id: DurableObjectId,
        counters: Counters,
    ) -> None:
        self.runtime: Runtime = runtime
        self.namespace: DurableObjectNamespace[Any] = namespace
        self.id: DurableObjectId = visible_id(object_id)
        self.key: tuple[str, DurableObjectId] = (namespace._storage_name, object_id)
        self.counters: Counters = counters
        self.input_gate: InputGate = InputGate(max_queued=runtime._max_queued_events)
        self.store: ObjectStore = runtime._open_store(namespace, str(object_id))
        self.storage: Storage = Storage(self.store, self, name=self.id.name)
        self.output_gate: OutputGate = OutputGate(
            self, runtime._commits, self.storage, runtime._commit_store(self)
        )
        self.ctx: DurableObjectState = DurableObjectState(self)
        self.instance: Any = None
        self.broken: BaseException | None = None
        # False once ctx.abort(retry_alarm=False) was called (see _alarms).
        self.retry_alarm: bool = True
        self.evicted: bool = False
        self.constructing: bool = False
        self.starting: bool = False
        self.start_failed: bool = False
        self.active: int = 0
        # Steps of this object's event handlers running right now (nested
        # calls of an object to itself count twice); see _EventSteps.
        self.stepping: int = 0
        self.idle_since: int = 0
        self.idle_queued_at: int = 0
        # Cancel scopes a reset cancels (see _guarded), made at the first one:
        # an object less per instance for the cyclic garbage collector.
        self.reset_scopes: set[anyio.CancelScope] | None = None
        # Open plain (non-hibernatable) WebSockets accepted by this instance:
        # they keep it from being evicted.
        self.sockets: set[Any] | None = None

    # -- the event pipeline ----------------------------------------------------

    async def deliver(self, event: Event) -> Any:
        """Run *event* in the object and return its handler's result.

        The handler's exception propagates with a note naming the object;
        after a reset, the reset error (flagged ``durable_object_reset``).
        """
        runtime = self.runtime
        commits = runtime._commits
        # Counted from here, waiting included: group commit looks at it.
        commits.events_in_flight += 1
        try:
            runtime._events += 1
            if not runtime._events & YIELD_EVERY_MASK:
                await anyio.lowlevel.checkpoint()
            if self.instance is None:
                await self._start(event.needs_name)
            if not self.input_gate.is_open:
                await self.input_gate.enter()
            if self.broken is not None:
                raise self.reset_error()
            fn, args, kwargs = event.handler(self)
            counters = self.counters
            counters.events[event.kind] += 1
            self.active += 1
            token = current_owner.set(self)
            self.stepping += 1
            try:
                try:
                    result = fn(*args, **kwargs)
                    if type(result) is not CoroutineType and inspect.isawaitable(
                        result
                    ):
                        result = _await(result)
                    if type(result) is CoroutineType:
                        profile = self.runtime._suspends
                        key = fn.__func__ if type(fn) is MethodType else fn
                        seen = profile.get(key, 0)
                        if seen < TRUSTED_AFTER or event.timeout_ms is not None:
                            result = await self._scoped(event, result, key, seen)
                        else:
                            marker = self.runtime._scope_marker
                            before = marker()
                            try:
                                first = result.send(None)
                            except StopIteration as stop:
                                result = stop.value
                            else:
                                profile[key] = SUSPENDS
                                result = await self._suspended(
                                    event, result, first, before is marker()
                                )
                finally:
                    self.stepping -= 1
                    current_owner.reset(token)
            except Exception as exc:
                try:
                    await self.output_gate.wait_durable()
                finally:
                    self.end()
                if self._was_reset() and not getattr(
                    exc, "durable_object_reset", False
                ):
                    raise self.reset_error() from None
                exc.add_note(
                    f"raised by Durable Object {self.namespace.object_class.__name__} "
                    f"({self.id}) in {event.what}"
                )
                raise
            except BaseException:
                self.end()
                raise
            try:
                gate = self.output_gate
                # gate.pending, inlined: this runs once per event
                if gate.durable_seq < gate.write_seq and not gate.commit_now():
                    await self.wait_durable()
                elif self.broken is not None:
                    raise self.reset_error()
            finally:
                # self.end(), inlined: this runs once per event
                self.active -= 1
                if self.active == 0 and self.broken is None:
                    if gate.flush_scheduled:
                        gate.schedule_flush()  # nobody is left to commit these
                    runtime._idle.became_idle(self)
            return result
        finally:
            commits.events_in_flight -= 1

    @contextlib.contextmanager
    def _guarded(self, event: Event) -> Iterator[None]:
        """The reset cancel scope and the event's deadline, around its handler.

        A reset cancels the scope, so that an event in flight (awaiting a
        sleep, another object, ...) fails at once with the reset error, as in
        workerd; past the deadline the event fails with its timeout error.
        """
        scope = anyio.CancelScope()
        timed_out: list[BaseException] = []
        timer = None
        if event.timeout_ms is not None:

            def expire() -> None:
                timed_out.append(event.timed_out(self))
                scope.cancel()

            runtime = self.runtime
            timer = runtime._timers.call_at(
                runtime.clock.now_ms() + event.timeout_ms, expire
            )
        scopes = self._reset_scopes()
        scopes.add(scope)
        try:
            with scope:
                yield
        finally:
            scopes.discard(scope)
            if timer is not None:
                timer.cancel()
        if scope.cancelled_caught:
            if timed_out:
                raise timed_out[0]
            if self.broken is not None:
                raise self.reset_error()

    def _reset_scopes(self) -> set[anyio.CancelScope]:
        scopes = self.reset_scopes
        if scopes is None:
            scopes = self.reset_scopes = set()
        return scopes

    async def _scoped(
        self, event: Event, coro: Coroutine[Any, Any, Any], key: Any, seen: int
    ) -> Any:
        """Run a handler inside :meth:`_guarded` from its first step on.

        Handlers are run this way while they are new (their first few calls)
        and once they were seen to suspend; one that never suspended takes
        the fast path without a scope (a scope costs more than such a call).
        """
        with self._guarded(event):
            try:
                first = coro.send(None)
            except StopIteration as stop:
                if seen >= 0 and event.kind != "run":
                    self.runtime._suspends[key] = seen + 1
                return stop.value
            if event.kind != "run":
                self.runtime._suspends[key] = SUSPENDS
            return await _EventSteps(self, coro, first)
        raise AssertionError("unreachable")  # pragma: no cover - mypy

    async def _suspended(
        self, event: Event, coro: Coroutine[Any, Any, Any], first: Any, nests: bool
    ) -> Any:
        """Finish a fast-path handler that suspended after all.

        If its first step left no cancel scope of its own open (*nests*),
        the rest runs under :meth:`_guarded`; otherwise ours could not nest
        around it, and a reset fails the event at its next resumption
        instead (the handler is marked as suspending, so from its next call
        on it is guarded from the start).
        """
        if not nests:
            return await self._unscoped(event, coro, first)
        with self._guarded(event):
            return await _EventSteps(self, coro, first)
        raise AssertionError("unreachable")  # pragma: no cover - mypy

    async def _unscoped(
        self, event: Event, coro: Coroutine[Any, Any, Any], first: Any
    ) -> Any:
        deadline = None
        if event.timeout_ms is not None:
            deadline = self.runtime.clock.now_ms() + event.timeout_ms
        steps = _EventSteps(self, coro, first)
        steps.deadline = deadline
        steps.event = event
        return await steps

    async def _start(self, needs_name: bool) -> None:
        """Build the instance: activate its storage, then run the constructor.

        Runs with the input gate closed, so events that arrive meanwhile wait
        for it. A failure resets the object; the next call (even on the same
        stub) tries again with a fresh instance.
        """
        if self.starting:
            await self.input_gate.enter()
            return  # the instance exists now, or the object broke (checked next)
        if self.broken is not None:
            raise self.reset_error()
        self.starting = True
        self.input_gate.close()
        try:
            activate = getattr(self.store, "activate", None)
            if activate is not None:  # a server-backed store (may suspend)
                await activate()
                self.runtime._check_restored(self.namespace, str(self.id), self.store)
            if needs_name and self.id.name is None:  # ctx.id.name in alarm()
                name = await self.store.get_name()
                if name is not None:
                    self._learn_name(name)
            self.construct()
        except Exception as exc:
            self.start_failed = True
            self.break_(exc)
            exc.add_note(
                f"raised by the constructor of Durable Object "
                f"{self.namespace.object_class.__name__} ({self.id})"
            )
            raise
        finally:
            self.starting = False
            self.input_gate.open()

    def _was_reset(self) -> bool:
        # A method, not an inline test: type checkers keep `self.broken`
        # narrowed across an await, but another task may have set it.
        return self.broken is not None

    def _learn_name(self, name: str) -> None:
        """Show the stored name as ``ctx.id.name`` (an object reached by its id)."""
        ids = self.namespace._ids
        named = ids.from_name(name, jurisdiction=self.id.jurisdiction)
        if named == self.id:
            self.id = self.ctx.id = visible_id(named)

    def construct(self) -> None:
        """Run the user's constructor (synchronously)."""
        self.active += 1
        self.constructing = True
        self.stepping += 1  # its writes commit with the first event's output
        try:
            self.instance = self.namespace.object_class(self.ctx, self.runtime.env)
            if logger.isEnabledFor(logging.DEBUG):  # the label costs a few µs
                logger.debug("constructed %s", self._label())
        finally:
            self.stepping -= 1
            self.constructing = False
            self.end()

    # -- StorageOwner ----------------------------------------------------------

    def on_write(self) -> None:
        """Number the write and make sure a commit is coming."""
        gate = self.output_gate
        # gate.wrote(), inlined: this runs once per write
        gate.write_seq += 1
        if not gate.flush_scheduled:
            gate.flush_scheduled = True
            if not self.stepping:
                gate.schedule_flush()  # written outside an event step: commit soon

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
        """Wait until the writes made so far are durable, then check for a reset."""
        await self.output_gate.wait_durable(target)
        self.check_usable()

    def reset(self, error: BaseException) -> None:
        """Reset the object with *error* (the storage front end found it torn)."""
        self.break_(error)

    def sql_time_limit(self) -> float:
        """The runtime's ``sql_statement_timeout``, in seconds."""
        return self.runtime._sql_time_limit

    # -- GateOwner ---------------------------------------------------------------

    def commit_failed(self, error: BaseException) -> None:
        """A commit failed: reset with *error*."""
        self.counters.commit_failures += 1
        self.break_(error)

    def committed(self, batch: WriteBatch, elapsed_ns: int) -> None:
        """A batch is durable: count it, and let its alarm change take effect."""
        counters = self.counters
        counters.commits += 1
        counters.commit_ns += elapsed_ns
        written = 0
        for key, value in batch.writes.items():
            written += len(key) if key.isascii() else len(key.encode())
            if value is not None:
                written += len(value)
        counters.bytes_written += written
        if batch.alarm_changed:
            self.runtime._alarms.set(self.namespace, str(self.id), batch.alarm)

    # -- EventOwner (what WebSockets see) ---------------------------------------

    @property
    def is_reset(self) -> bool:
        """True once this instance was reset."""
        return self.broken is not None

    def output_mark(self) -> int:
        """The write output produced now waits for (0: none pending)."""
        gate = self.output_gate
        return gate.write_seq if gate.durable_seq < gate.write_seq else 0

    def is_durable(self, mark: int) -> bool:
        """True once writes up to *mark* are durable and the object is intact."""
        return self.broken is None and self.output_gate.durable_seq >= mark

    async def wait_output(self, mark: int) -> None:
        """Wait until writes up to *mark* are durable (raise after a reset)."""
        await self.wait_durable(mark)

    def spawn(self, fn: Callable[[], Coroutine[Any, Any, Any]]) -> None:
        """Run *fn()* on the runtime's task group."""
        self.runtime._spawn(fn)

    def socket_opened(self, ws: object) -> None:
        """A plain socket was accepted: it keeps this instance alive."""
        if self.sockets is None:
            self.sockets = set()
        self.sockets.add(ws)

    def socket_closed(self, ws: object) -> None:
        """A plain socket closed: start the idle time if nothing else runs."""
        if self.sockets is not None:
            self.sockets.discard(ws)
        if self.active == 0 and self.broken is None and not self.evicted:
            self.runtime._idle.became_idle(self)

    async def admit(self) -> None:
        """Wait at the input gate before handing a received message over."""
        if not self.input_gate.is_open:
            await self.input_gate.enter()
            self.check_usable()

    # -- lifecycle ---------------------------------------------------------------

    def begin(self) -> None:
        """Background work started (the idle collector skips busy actors)."""
        self.active += 1

    def end(self) -> None:
        """An event (or background work) finished."""
        self.active -= 1
        if self.active == 0 and self.broken is None:
            gate = self.output_gate
            if gate.flush_scheduled:
                gate.schedule_flush()  # nobody is left to commit these writes
            self.runtime._idle.became_idle(self)

    @property
    def quiescent(self) -> bool:
        """True when nothing runs, waits or remains to be written.

        Open plain WebSockets count as activity; hibernatable ones do not.
        """
        return (
            self.active == 0
            and self.input_gate.is_open
            and not self.output_gate.flush_scheduled
            and not self.storage._has_pending
            and not self.sockets
        )

    def _label(self) -> str:
        """How log lines name this object: class, id and name if known."""
        name = "" if self.id.name is None else f" {self.id.name!r}"
        return f"{self.namespace.object_class.__name__} {self.id}{name}"

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
        """Reset this instance: drop it, its uncommitted writes and its events.

        Events waiting at the gates are released with the reset error, and
        events in flight (awaiting a sleep, another object, ...) are
        cancelled at their await and fail with it too.
        """
        if self.broken is not None:
            return
        with contextlib.suppress(AttributeError):
            error.durable_object_reset = True  # type: ignore[attr-defined]
        self.broken = error
        if not isinstance(error, RuntimeClosedError):  # closing is no reset
            self.counters.resets += 1
            logger.info("reset %s: %s: %s", self._label(), type(error).__name__, error)
        self.runtime._forget(self)
        self.storage._discard()
        self.input_gate.fail_all()
        self.output_gate.fail()
        for scope in list(self.reset_scopes or ()):
            scope.cancel()
        self.store.close()
        self._drop_websockets()
        self.runtime._release_store(self.store)

    def _drop_websockets(self) -> None:
        """A reset disconnects the object's WebSockets, hibernatable ones too.

        As in workerd, where a broken actor takes its hibernation manager
        with it: peers see an abnormal close (1006), the object no events.
        """
        sockets, self.sockets = self.sockets, None
        for ws in sockets or ():
            ws._abort()
        hub = self.runtime._catalog.hubs.get(self.key)
        if hub is not None and not self.evicted:
            hub.reset()

    def evict(self) -> None:
        """Drop this (quiescent) instance; storage stays for the next one."""
        self.evicted = True
        self.counters.evictions += 1
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("evicted %s", self._label())
        self.runtime._forget(self)
        self.store.close()
        self.instance = None
        hub = self.runtime._catalog.hubs.get(self.key)
        if hub is not None:
            hub.instance_evicted()  # its sockets hibernate
        self.runtime._release_store(self.store)
        # Break the actor <-> ctx/storage cycles so that reference counting
        # frees the instance at once (a million evictions would otherwise be
        # left to the cyclic GC); stray references now fail with a clear error.
        gone = _Evicted(self.id)
        self.ctx._actor = gone  # type: ignore[assignment]
        self.storage._owner = gone  # type: ignore[assignment]

    # -- ctx -----------------------------------------------------------------------

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
        current_owner.set(self)
        scope = anyio.CancelScope()
        scopes = self._reset_scopes()
        scopes.add(scope)
        runtime = self.runtime
        timer = runtime._timers.call_at(
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
            scopes.discard(scope)
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

    def abort(self, reason: str | None, *, retry_alarm: bool = True) -> NoReturn:
        """Reset now, discarding uncommitted writes; raise the reset error."""
        if reason is not None and not isinstance(reason, str):
            raise TypeError(
                f"abort() reason must be a str, not {type(reason).__name__}"
            )
        if not isinstance(retry_alarm, bool):
            raise TypeError(
                f"abort() retry_alarm must be a bool, not {type(retry_alarm).__name__}"
            )
        # Read by the alarm scheduler when the alarm() this aborts fails.
        self.retry_alarm = retry_alarm
        self.break_(
            DurableObjectResetError(
                reason or "Application called abort() to reset Durable Object."
            )
        )
        raise self.reset_error()


async def _await(awaitable: Awaitable[T]) -> T:
    return await awaitable
