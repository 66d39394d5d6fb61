"""``Runtime``: owns the catalog of live instances, the flusher, timers and eviction."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Coroutine, Iterator, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Generic, Self, TypeVarTuple, Unpack, cast, final

import anyio
import anyio.lowlevel
import sniffio
from typing_extensions import TypeVar

from pyobjects._clock import Clock, SystemClock
from pyobjects._errors import RuntimeClosedError
from pyobjects._ids import DurableObjectId
from pyobjects._statistics import NamespaceStatistics, RuntimeStatistics
from pyobjects._telemetry_options import OpenTelemetry
from pyobjects.storage.memory import MemoryBackend

from ._alarms import AlarmScheduler
from ._catalog import Catalog
from ._cluster import Cluster
from ._events import EVENT_KINDS
from ._gates import CommitQueue
from ._hibernation import close_all as close_websockets
from ._idle import IdleCollector
from ._namespace import DurableObjectBinding, DurableObjectNamespace
from ._object import DurableObject
from ._scopes import UNKNOWN, marker_for
from ._stub import DurableObjectStub
from ._timers import Timers

if TYPE_CHECKING:
    from types import TracebackType

    from anyio.abc import TaskGroup

    from pyobjects._node import Node
    from pyobjects.storage._base import ObjectStore, StorageBackend

    from ._actor import Actor

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


# The declared type of rt.env: Runtime[AppEnv](...) for a typed env.
RuntimeEnvT = TypeVar("RuntimeEnvT", default=Env)


def _check_class(binding: str, cls: object) -> type[DurableObject]:
    if not (isinstance(cls, type) and issubclass(cls, DurableObject)):
        raise TypeError(
            f"binding {binding!r} must be a DurableObject subclass or a "
            f"DurableObjectBinding, not {cls!r}"
        )
    return cls


@final
class Runtime(Generic[RuntimeEnvT]):
    """Hosts Durable Objects: ``async with Runtime(bindings=...) as rt:``.

    Owns the catalog of live instances (one per id), the write flusher, the
    timers, the alarm scheduler and idle eviction; leaving the ``async with``
    flushes pending writes and stops them. Two runtimes in one process share
    nothing.

    Args:
        bindings: Binding name -> ``DurableObject`` subclass (or a
            :class:`DurableObjectBinding` with options). Bindings that share
            a namespace key share their objects; they must bind one class.
        storage: A storage backend; ``None`` means a fresh ``MemoryBackend``.
            The runtime owns it while it runs: entering a runtime on a
            ``SQLiteBackend`` directory that another running runtime uses
            (in this process or another) raises ``StorageInUseError``.
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
        sql_statement_timeout: Seconds one call into SQLite for an object's
            SQL (``sql.exec()``, reading a cursor) may run before SQLite
            interrupts it with ``SqlTimeoutError`` (default 30 s, Cloudflare's
            default CPU limit per request). Measured in real time, not on
            ``clock``: SQL runs on the event loop, so a long statement
            stalls every object until it ends.
        opentelemetry: An :class:`~pyobjects.OpenTelemetry` to trace every
            event (a span each) and measure event and commit durations;
            ``None`` (the default) costs nothing.
        node: A :class:`~pyobjects.Node` makes this runtime one node of a
            cluster: every runtime on the same ``PostgresBackend`` database
            (and schema) with a node answers calls for any object, running
            them or forwarding them to the node that holds the object.
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
        sql_statement_timeout: float = 30.0,
        opentelemetry: OpenTelemetry | None = None,
        node: Node | None = None,
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
            "sql_statement_timeout": sql_statement_timeout,
            "opentelemetry": opentelemetry,
            "node": node,
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
        if not sql_statement_timeout > 0:
            raise ValueError(
                "sql_statement_timeout must be > 0 seconds, "
                f"got {sql_statement_timeout}"
            )
        self._sql_time_limit = float(sql_statement_timeout)
        if alarm_timeout <= 0:
            raise ValueError(f"alarm_timeout must be > 0 seconds, got {alarm_timeout}")
        self._telemetry: Telemetry | None = None
        if opentelemetry is not None:
            if not isinstance(opentelemetry, OpenTelemetry):
                raise TypeError(
                    "opentelemetry takes a pyobjects.OpenTelemetry, not "
                    f"{type(opentelemetry).__name__}"
                )
            from ._telemetry import Telemetry

            self._telemetry = Telemetry(opentelemetry)
        self.storage: StorageBackend = MemoryBackend() if storage is None else storage
        self.clock: Clock = SystemClock() if clock is None else clock
        self._bcw_timeout_ms = round(block_concurrency_timeout * 1000)
        self._max_queued_events = max_queued_events
        if alarm_retry_jitter is None:
            # Exact retry times under a deterministic (manual) clock.
            alarm_retry_jitter = not getattr(self.clock, "deterministic", False)
        self._timers: Timers = Timers(self.clock)
        self._alarms: AlarmScheduler = AlarmScheduler(
            self, jitter=alarm_retry_jitter, timeout_ms=round(alarm_timeout * 1000)
        )
        self._catalog = Catalog(self)
        self._commits = CommitQueue(self.clock, self._timers)
        self._idle = IdleCollector(
            self.clock,
            self._timers,
            None if idle_timeout is None else round(idle_timeout * 1000),
        )
        self._task_scopes: set[anyio.CancelScope] = set()
        self._crashed = False
        # Commit failures injected by pyobjects.testing.fail_next_commits(),
        # keyed by (storage namespace, id hex): looked at only when an
        # instance starts, never on the commit path.
        self._commit_faults: dict[tuple[str, str], Any] = {}
        self._passthrough: tuple[type, ...] = (DurableObjectId, DurableObjectStub)
        self._cluster: Cluster | None = None if node is None else Cluster(self, node)
        self._tg: TaskGroup | None = None
        self._running = False
        self._closed = False
        self._events = 0  # events delivered; see _actor.YIELD_EVERY_MASK
        self._method_cache: dict[Any, Any] = {}
        # Per handler function: calls completed without suspending, or -1
        # once it suspended (see Actor._scoped).
        self._suspends: dict[Any, int] = {}
        self._scope_marker: Callable[[], Any] = _no_marker
        self._namespaces: list[DurableObjectNamespace[Any]] = []
        items: dict[str, Any] = dict(vars or {})
        classes: dict[str, tuple[str, type[DurableObject]]] = {}
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
            other = classes.setdefault(ns._storage_name, (name, cls))
            if other[1] is not cls:
                raise ValueError(
                    f"bindings {other[0]!r} and {name!r} resolve to the same "
                    f"namespace key {unique_key!r} (so they would share objects) "
                    f"but bind different classes ({other[1].__name__} and "
                    f"{cls.__name__}); give one of them another unique_key"
                )
            self._namespaces.append(ns)
            items[name] = ns
        # Always an Env; Runtime[AppEnv](...) only declares its type (a
        # class of bindings and vars, see the typing guide).
        self.env: RuntimeEnvT = cast("RuntimeEnvT", Env(items))

    # -- lifecycle -----------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._running or self._closed:
            raise RuntimeError("a Runtime can be entered only once")
        claim = getattr(self.storage, "claim", None)
        if claim is not None:
            # One owner per storage directory (SQLiteBackend): a second
            # runtime on it is refused here, before it touches anything. A
            # server-backed store connects here (it may suspend).
            claimed = claim()
            if inspect.isawaitable(claimed):
                await claimed
        self._scope_marker = marker_for(sniffio.current_async_library())
        tg = anyio.create_task_group()
        await tg.__aenter__()
        self._tg = tg
        self._running = True
        use_clock = getattr(self.storage, "use_clock", None)
        if use_clock is not None:  # history timestamps (SQLiteBackend PITR)
            use_clock(self.clock.now_ms)
        self._spawn(self._commits.run)
        self._spawn(self._timers.run)
        use_alarms = getattr(self.storage, "use_alarms", None)
        if use_alarms is not None:  # due alarms claimed later (PostgresBackend)
            use_alarms(
                self._alarms.adopt, [ns._storage_name for ns in self._namespaces]
            )
        maintain = getattr(self.storage, "maintain", None)
        if maintain is not None:  # lease renewal (PostgresBackend)
            self._spawn(maintain)
        if self._cluster is not None:
            try:
                await self._cluster.start(self._spawn)
            except BaseException:
                await self.__aexit__(None, None, None)
                raise
        try:
            await self._alarms.load()
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
        if self._cluster is not None:
            # Stop taking calls from other nodes before the last flush.
            with anyio.CancelScope(shield=True):
                await self._cluster.stop()
        try:
            if not self._crashed:
                with anyio.CancelScope(shield=True):
                    await self._commits.flush_all(
                        [a.output_gate for a in self._live_actors()]
                    )
        finally:
            # Deliver what the flush made durable, then close every WebSocket
            # with 1001 ("going away"); after a crash they are already gone.
            close_websockets(self, clean=not self._crashed)
            self._running = False
            self._closed = True
            self._drop_all(RuntimeClosedError("the Runtime was closed"))
            for scope in self._task_scopes:
                scope.cancel()
            tg.cancel_scope.cancel()
            try:
                await tg.__aexit__(None, None, None)
            finally:
                await self.storage.aclose()

    def _drop_all(self, error: RuntimeClosedError) -> None:
        for actor in self._live_actors():
            actor.break_(error)
        self._alarms.cancel_all()

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
        self._drop_all(RuntimeClosedError("the Runtime crashed (simulated)"))
        self._commits.discard()
        for scope in self._task_scopes:
            scope.cancel()
        await anyio.lowlevel.checkpoint()
        await self.storage.aclose()

    # -- statistics ------------------------------------------------------------

    def statistics(self) -> RuntimeStatistics:
        """Return a snapshot of what the runtime holds and has done.

        Live objects, events by kind, commits, evictions, resets, pending
        alarms and open/hibernated WebSockets, in total and per namespace.
        """
        per_ns: dict[str, NamespaceStatistics] = {}
        seen: set[str] = set()
        alarms = self._alarms.pending_by_namespace()
        for ns in self._namespaces:
            if ns._storage_name in seen:
                continue
            seen.add(ns._storage_name)
            per_ns[ns._binding_name] = self._catalog.statistics(
                ns._storage_name, alarms.get(ns._storage_name, 0)
            )
        parts = per_ns.values()
        events = {kind: sum(p.events[kind] for p in parts) for kind in EVENT_KINDS}
        return RuntimeStatistics(
            live_objects=sum(p.live_objects for p in parts),
            events=MappingProxyType(events),
            events_in_flight=self._commits.events_in_flight,
            commits=sum(p.commits for p in parts),
            commit_failures=sum(p.commit_failures for p in parts),
            commit_seconds=sum(p.commit_seconds for p in parts),
            bytes_written=sum(p.bytes_written for p in parts),
            evictions=sum(p.evictions for p in parts),
            resets=sum(p.resets for p in parts),
            pending_alarms=sum(p.pending_alarms for p in parts),
            open_websockets=sum(p.open_websockets for p in parts),
            hibernated_websockets=sum(p.hibernated_websockets for p in parts),
            namespaces=MappingProxyType(per_ns),
        )

    # -- instances (used by the core) ------------------------------------------

    def _open_store(
        self, namespace: DurableObjectNamespace[Any], hex_id: str
    ) -> ObjectStore:
        """Open an object's storage; reschedule its alarm if that restored it."""
        store = self.storage.open(namespace._storage_name, hex_id)
        self._check_restored(namespace, hex_id, store)
        return store

    def _check_restored(
        self, namespace: DurableObjectNamespace[Any], hex_id: str, store: ObjectStore
    ) -> None:
        """Reschedule the alarm of a store that opening (or activating) restored."""
        restored = getattr(store, "restored_alarm", False)
        if restored is not False:
            # A point-in-time restore replaced the object's data, alarm included.
            setattr(store, "restored_alarm", False)  # noqa: B010
            self._alarms.set(namespace, hex_id, restored)

    def _commit_store(self, actor: Actor) -> ObjectStore:
        """The store an instance commits to (a failing one, if a test asked)."""
        if not self._commit_faults:
            return actor.store
        key = (actor.key[0], str(actor.key[1]))
        fault = self._commit_faults.get(key)
        if fault is None:
            return actor.store
        store: ObjectStore = fault.wrap(
            actor.store, lambda: self._commit_faults.pop(key, None)
        )
        return store

    def _release_store(self, store: ObjectStore) -> None:
        """An instance is gone: let a server-backed store release (e.g. a lease)."""
        release = getattr(store, "release", None)
        if release is not None and self._running:
            self._spawn(release)

    def _forget(self, actor: Actor) -> None:
        self._catalog.forget(actor)
        self._idle.forget(actor)

    def _live_actors(self) -> list[Actor]:
        return list(self._catalog.actors.values())


def _no_marker() -> Any:
    return UNKNOWN
