"""``Runtime``: owns every live instance, the flusher, timers and eviction."""

from __future__ import annotations

import copy
import inspect
import logging
from collections import OrderedDict
from collections.abc import Callable, Coroutine, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Self, TypeVarTuple, Unpack, cast, final

import anyio
import anyio.lowlevel

from ._actor import Actor, visible_id
from ._alarms import AlarmScheduler
from ._clock import Clock, SystemClock
from ._errors import RuntimeClosedError
from ._hibernation import close_all as close_websockets
from ._ids import DurableObjectId
from ._namespace import DurableObjectBinding, DurableObjectNamespace
from ._object import HANDLER_NAMES, DurableObject
from ._stub import DurableObjectStub
from ._timers import Timers
from .storage.memory import MemoryBackend

if TYPE_CHECKING:
    from types import TracebackType

    from anyio.abc import TaskGroup

    from .storage._base import ObjectStore, StorageBackend

__all__ = ["Env", "Runtime"]

logger = logging.getLogger("pyobjects")

PosArgs = TypeVarTuple("PosArgs")


@final
class Env(Mapping[str, Any]):
    """The bindings and vars of a runtime: ``env.COUNTER`` or ``env["COUNTER"]``.

    The same object is the ``env`` every Durable Object receives.
    """

    __slots__ = ("_items",)

    def __init__(self, items: dict[str, Any]) -> None:
        object.__setattr__(self, "_items", items)

    def __getattr__(self, name: str) -> Any:
        try:
            return self._items[name]
        except KeyError:
            raise AttributeError(
                f"env has no binding or var named {name!r} "
                f"(it has: {', '.join(sorted(self._items)) or 'nothing'})"
            ) from None

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("env is read-only")

    def __getitem__(self, name: str) -> Any:
        return self._items[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"<Env {', '.join(sorted(self._items))}>"


def _check_class(binding: str, cls: object) -> type[DurableObject]:
    if not (isinstance(cls, type) and issubclass(cls, DurableObject)):
        raise TypeError(
            f"binding {binding!r} must be a DurableObject subclass or a "
            f"DurableObjectBinding, not {cls!r}"
        )
    return cls


@final
class Runtime:
    """Hosts Durable Objects: ``async with Runtime(bindings=...) as rt:``.

    Owns every live instance, the write flusher, the timers and idle
    eviction; leaving the ``async with`` flushes pending writes and stops them.
    Two runtimes in one process share nothing.

    Args:
        bindings: Binding name -> ``DurableObject`` subclass (or a
            :class:`DurableObjectBinding` with options).
        storage: A storage backend; ``None`` means a fresh ``MemoryBackend``.
        clock: The clock for eviction, timeouts and alarms (default: the
            system clock; use ``pyobjects.testing.ManualClock`` in tests).
        vars: Plain values added to ``env``.
        idle_timeout: Seconds of the runtime clock after which an idle
            instance is evicted; ``None`` disables eviction.
        block_concurrency_timeout: Seconds a ``block_concurrency_while``
            callback may run before the object is reset (Cloudflare: 30 s).
        max_queued_events: Events that may wait at one object's input gate
            before further calls fail with ``OverloadedError``; ``None``
            means no limit.
        alarm_timeout: Seconds an ``alarm()`` handler may run before it is
            cancelled and counted as a failure (Cloudflare: 15 minutes).
        alarm_retry_jitter: Add up to 25 % to alarm retry delays. ``None``
            (the default) means yes, unless the clock is deterministic (a
            ``ManualClock``), so that tests see exact retry times.
    """

    def __init__(
        self,
        *,
        bindings: Mapping[str, type[DurableObject] | DurableObjectBinding],
        storage: StorageBackend | None = None,
        clock: Clock | None = None,
        vars: Mapping[str, Any] | None = None,  # noqa: A002  # Cloudflare's name
        idle_timeout: float | None = 10.0,
        block_concurrency_timeout: float = 30.0,
        max_queued_events: int | None = None,
        alarm_timeout: float = 900.0,
        alarm_retry_jitter: bool | None = None,
    ) -> None:
        self._options: dict[str, Any] = {
            "bindings": bindings,
            "storage": storage,
            "clock": clock,
            "vars": vars,
            "idle_timeout": idle_timeout,
            "block_concurrency_timeout": block_concurrency_timeout,
            "max_queued_events": max_queued_events,
            "alarm_timeout": alarm_timeout,
            "alarm_retry_jitter": alarm_retry_jitter,
        }
        if idle_timeout is not None and idle_timeout <= 0:
            raise ValueError(
                f"idle_timeout must be > 0 seconds or None, got {idle_timeout}"
            )
        if block_concurrency_timeout <= 0:
            raise ValueError(
                "block_concurrency_timeout must be > 0 seconds, "
                f"got {block_concurrency_timeout}"
            )
        self.storage: StorageBackend = MemoryBackend() if storage is None else storage
        self.clock: Clock = SystemClock() if clock is None else clock
        self._idle_timeout_ms = (
            None if idle_timeout is None else round(idle_timeout * 1000)
        )
        self._bcw_timeout_ms = round(block_concurrency_timeout * 1000)
        self._max_queued_events = max_queued_events
        if alarm_timeout <= 0:
            raise ValueError(f"alarm_timeout must be > 0 seconds, got {alarm_timeout}")
        if alarm_retry_jitter is None:
            # Exact retry times under a deterministic (manual) clock.
            alarm_retry_jitter = not getattr(self.clock, "deterministic", False)
        self.timers = Timers(self.clock)
        self.alarms = AlarmScheduler(
            self, jitter=alarm_retry_jitter, timeout_ms=round(alarm_timeout * 1000)
        )
        self._task_scopes: set[anyio.CancelScope] = set()
        self._crashed = False
        # Commit failures injected by pyobjects.testing.fail_next_commits().
        self._commit_faults: dict[tuple[str, str], list[Any]] = {}
        self._passthrough: tuple[type, ...] = (DurableObjectId, DurableObjectStub)
        self._tg: TaskGroup | None = None
        self._running = False
        self._closed = False
        self._dirty: list[Actor] = []
        self._flush_wakeup: anyio.Event | None = None
        self._idle: OrderedDict[Actor, None] = OrderedDict()
        self._idle_armed = False
        self._calls = 0  # stub calls made; see _stub.YIELD_EVERY_MASK
        self._calls_in_flight = 0  # stub calls started and not finished
        self._method_cache: dict[tuple[type, str], Callable[..., Any] | str] = {}
        self._namespaces: list[DurableObjectNamespace] = []
        items: dict[str, Any] = dict(vars or {})
        for name, spec in bindings.items():
            if not isinstance(cast("object", name), str) or not name:
                raise TypeError(f"binding names must be non-empty str, got {name!r}")
            if name in items:
                raise ValueError(f"{name!r} is both a binding and a var")
            if isinstance(spec, DurableObjectBinding):
                cls = _check_class(name, spec.object_class)
                unique_key = name if spec.unique_key is None else spec.unique_key
            else:
                cls = _check_class(name, spec)
                unique_key = name
            ns = DurableObjectNamespace(self, name, cls, unique_key)
            self._namespaces.append(ns)
            items[name] = ns
        self.env = Env(items)

    # -- lifecycle -----------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._running or self._closed:
            raise RuntimeError("a Runtime can be entered only once")
        tg = anyio.create_task_group()
        await tg.__aenter__()
        self._tg = tg
        self._running = True
        use_clock = getattr(self.storage, "use_clock", None)
        if use_clock is not None:  # history timestamps (SQLiteBackend PITR)
            use_clock(self.clock.now_ms)
        self._spawn(self._flusher)
        self._spawn(self.timers.run)
        try:
            await self.alarms.load()
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        tg = self._tg
        assert tg is not None
        try:
            if not self._crashed:
                with anyio.CancelScope(shield=True):
                    await self._flush_all()
        finally:
            # Deliver what the flush made durable, then close every WebSocket
            # with 1001 ("going away"); after a crash they are already gone.
            close_websockets(self, clean=not self._crashed)
            self._running = False
            self._closed = True
            closed = RuntimeClosedError("the Runtime was closed")
            for ns in self._namespaces:
                for actor in list(ns._actors.values()):
                    actor.break_(closed)
            self.alarms.cancel_all()
            for scope in self._task_scopes:
                scope.cancel()
            tg.cancel_scope.cancel()
            try:
                await tg.__aexit__(None, None, None)
            finally:
                await self.storage.aclose()

    def _check_running(self) -> None:
        if not self._running:
            if self._closed:
                raise RuntimeClosedError("the Runtime was closed")
            raise RuntimeClosedError(
                "the Runtime is not running; use `async with Runtime(...) as rt:`"
            )

    def _spawn(
        self,
        fn: Callable[[Unpack[PosArgs]], Coroutine[Any, Any, Any]],
        *args: *PosArgs,
    ) -> None:
        """Run ``fn(*args)`` in the background, cancellable by a crash."""
        self._check_running()
        assert self._tg is not None
        self._tg.start_soon(self._scoped, fn, *args)

    async def _scoped(
        self,
        fn: Callable[[Unpack[PosArgs]], Coroutine[Any, Any, Any]],
        *args: *PosArgs,
    ) -> None:
        with anyio.CancelScope() as scope:
            self._task_scopes.add(scope)
            try:
                await fn(*args)
            finally:
                self._task_scopes.discard(scope)

    def _injected_fault(self, actor: Actor) -> None:
        key = (actor.namespace._storage_name, str(actor.id))
        fault = self._commit_faults.get(key)
        if fault is None:
            return
        fault[0] -= 1
        if fault[0] <= 0:
            del self._commit_faults[key]
        raise copy.copy(fault[1])

    async def _crash(self) -> None:
        """Stop as a killed process would: nothing pending is written.

        Every instance is dropped with its uncommitted writes, and every
        background task (flusher, timers, alarms, callbacks) is cancelled.
        What was committed stays in the backend. The ``async with`` block can
        still be left normally afterwards.
        """
        if not self._running:
            raise RuntimeClosedError("the Runtime is not running")
        self._running = False
        self._closed = True
        self._crashed = True
        close_websockets(self, clean=False)  # connections drop, no close frames
        crashed = RuntimeClosedError("the Runtime crashed (simulated)")
        for ns in self._namespaces:
            for actor in list(ns._actors.values()):
                actor.break_(crashed)
        self._dirty.clear()
        self.alarms.cancel_all()
        for scope in self._task_scopes:
            scope.cancel()
        await anyio.lowlevel.checkpoint()
        await self.storage.aclose()

    # -- instances -----------------------------------------------------------

    def _actor_for(
        self, namespace: DurableObjectNamespace, object_id: DurableObjectId
    ) -> Actor:
        """Return the live instance for an id, constructing it if needed."""
        actor = namespace._actors.get(object_id)
        if actor is not None:
            if object_id.name is not None and actor.id.name is None:
                actor.id = actor.ctx.id = visible_id(object_id)
            return actor
        self._check_running()
        actor = Actor(self, namespace, object_id)
        namespace._actors[object_id] = actor
        try:
            actor.construct()
        except Exception as exc:
            actor.break_(exc)
            exc.add_note(
                f"raised by the constructor of Durable Object "
                f"{namespace.object_class.__name__} ({object_id})"
            )
            raise
        return actor

    def open_store(self, namespace: DurableObjectNamespace, hex_id: str) -> ObjectStore:
        """Open an object's storage; reschedule its alarm if that restored it."""
        store = self.storage.open(namespace._storage_name, hex_id)
        restored = getattr(store, "restored_alarm", False)
        if restored is not False:
            # A point-in-time restore replaced the object's data, alarm included.
            self.alarms.set(namespace, hex_id, restored)
        return store

    async def _actor_for_alarm(
        self, namespace: DurableObjectNamespace, hex_id: str
    ) -> Actor:
        """The live instance for an alarm, built with its stored name if any."""
        object_id = namespace._ids.from_string(hex_id)
        actor = namespace._actors.get(object_id)
        if actor is not None:
            return actor
        store = self.open_store(namespace, hex_id)
        try:
            name = await store.get_name()
        finally:
            store.close()
        if name is not None:
            named = namespace._ids.from_name(name, jurisdiction=object_id.jurisdiction)
            if named == object_id:
                object_id = named
        return self._actor_for(namespace, object_id)

    def _forget(self, actor: Actor) -> None:
        actors = actor.namespace._actors
        if actors.get(actor.id) is actor:
            del actors[actor.id]
        self._idle.pop(actor, None)

    def _rpc_method(self, actor: Actor, name: str) -> Callable[..., Any]:
        cls = type(actor.instance)
        found = self._method_cache.get((cls, name))
        if found is None:
            found = self._method_cache[(cls, name)] = _resolve_rpc(cls, name)
        if isinstance(found, str):
            raise TypeError(found)
        return found.__get__(actor.instance, cls)  # type: ignore[no-any-return]

    def _handler(self, actor: Actor, name: str) -> Callable[..., Any]:
        instance = actor.instance
        handler = getattr(instance, name, None)
        if handler is None:
            handler = getattr(instance, HANDLER_NAMES[name], None)
        if handler is None:
            raise TypeError(f"{type(instance).__name__} has no {name}() handler")
        return handler  # type: ignore[no-any-return]

    # -- writes --------------------------------------------------------------

    def _schedule_flush(self, actor: Actor) -> None:
        self._dirty.append(actor)
        wakeup = self._flush_wakeup
        if wakeup is not None:
            self._flush_wakeup = None
            wakeup.set()

    async def _flusher(self) -> None:
        # Woken by the first write of a batch; it cannot run before the
        # writing task yields to the event loop, which is what makes every
        # write of that turn land in one commit.
        while True:
            if not self._dirty:
                self._flush_wakeup = anyio.Event()
                await self._flush_wakeup.wait()
            dirty, self._dirty = self._dirty, []
            for actor in dirty:
                actor.flush_queued = False
                await actor.flush()

    async def _flush_all(self) -> None:
        """Commit every pending write, including those of events still running."""
        while self._dirty:
            dirty, self._dirty = self._dirty, []
            for actor in dirty:
                actor.flush_queued = False
                await actor.flush()
        for actor in self._live_actors():
            if actor.flush_scheduled:
                await actor.flush()

    # -- eviction ------------------------------------------------------------

    def _became_idle(self, actor: Actor) -> None:
        # Hot path (every call ends here): one clock read, and a dict insert
        # only when the actor is not queued yet. The queue is ordered by the
        # time an actor was (re)queued, which is never later than its
        # idle_since, so the sweeper only ever looks at the front.
        if self._idle_timeout_ms is None or actor.evicted:
            return
        now = self.clock.now_ms()
        actor.idle_since = now
        if actor not in self._idle:
            actor.idle_queued_at = now
            self._idle[actor] = None
            if not self._idle_armed:
                self._idle_armed = True
                self.timers.call_at(now + self._idle_timeout_ms, self._evict_idle)

    def _evict_idle(self) -> None:
        self._idle_armed = False
        timeout = self._idle_timeout_ms
        assert timeout is not None
        now = self.clock.now_ms()
        idle = self._idle
        requeue: list[Actor] = []
        while idle:
            actor = next(iter(idle))
            if actor.idle_queued_at + timeout > now:
                break
            del idle[actor]
            if actor.active == 0 and actor.idle_since + timeout <= now:
                if actor.quiescent:
                    actor.evict()
                    continue
                actor.idle_since = now  # still writing or gated: look again later
            requeue.append(actor)
        for actor in requeue:
            actor.idle_queued_at = now if actor.active else actor.idle_since
            idle[actor] = None
        if idle:
            self._idle_armed = True
            first = next(iter(idle))
            self.timers.call_at(first.idle_queued_at + timeout, self._evict_idle)

    # -- introspection (used by pyobjects.testing) ---------------------------

    def _live_actors(self) -> list[Actor]:
        return [a for ns in self._namespaces for a in ns._actors.values()]


def _resolve_rpc(cls: type, name: str) -> Callable[..., Any] | str:
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
