"""Input and output gates: the consistency model of one Durable Object.

The *input gate* decides when a new event (call, fetch, alarm, WebSocket
message) may start running in the object. It is closed while the object is
being started, while a ``block_concurrency_while`` callback or a transaction
runs, and while the object waits on a storage read that really suspends.
Waiting events are let in strictly first come, first served, one at a time,
so calls made on one stub are delivered in the order they were made on every
anyio backend (trio shuffles tasks woken together, so waking them all at once
would not do).

The *output gate* holds what leaves the object (a result, an exception, a
WebSocket message, a call to another object) until every write made before
it is durable, and it owns the commit pipeline that makes writes durable:
numbering writes, taking the pending batch from the storage front end,
scheduling the commit (inline, after one event-loop turn for group commit,
or on the runtime's flusher), the 30 s output-gate timeout, and resetting
the object when a commit fails. :class:`CommitQueue` is the runtime's
flusher: one task that commits batches of objects whose writes no event is
going to wait for.
"""

from __future__ import annotations

from collections import deque
from time import perf_counter_ns
from typing import TYPE_CHECKING, Any, Protocol

import anyio
import anyio.abc
import anyio.lowlevel

from pyobjects._errors import DurableObjectResetError, OverloadedError

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine, Generator

    from pyobjects._clock import Clock
    from pyobjects.storage._api import Storage
    from pyobjects.storage._base import ObjectStore, WriteBatch
    from pyobjects.storage._layers import _Layer

    from ._timers import Timers

__all__ = ["CommitQueue", "GateOwner", "InputGate", "OutputGate", "Resume"]

# A commit slower than this (EWMA, nanoseconds) makes events wait one event-loop
# turn before committing while other events are in flight, so concurrent events
# share one commit (group commit). Faster commits (the memory backend) are
# always done at once, and so is every commit when only one event is running.
GROUP_COMMIT_NS = 20_000
# A commit still waiting after this long resets the object (Cloudflare's
# output-gate timeout: "storage operation exceeded timeout").
OUTPUT_GATE_TIMEOUT_MS = 30_000


class InputGate:
    """FIFO admission of events into one object."""

    __slots__ = ("_broken", "_closed", "_max_queued", "_waiters", "is_open")

    def __init__(self, *, max_queued: int | None = None) -> None:
        self._closed = 0
        # Made by the first event that has to wait: most objects never need
        # one, and every object less to allocate is one less for the cyclic
        # garbage collector to scan (it dominates creating many objects).
        self._waiters: deque[anyio.Event] | None = None
        self._broken = False
        self._max_queued = max_queued
        # True when a new event may start at once, without queueing. A plain
        # attribute (every event reads it), kept equal to
        # ``_closed == 0 and not _waiters`` by every method that changes them.
        self.is_open: bool = True

    def _update(self) -> None:
        self.is_open = self._closed == 0 and not self._waiters

    @property
    def queued(self) -> int:
        """Number of events waiting to be let in."""
        return 0 if self._waiters is None else len(self._waiters)

    @property
    def broken(self) -> bool:
        """True once :meth:`fail_all` was called."""
        return self._broken

    def close(self) -> None:
        """Hold back new events until a matching :meth:`open`."""
        self._closed += 1
        self.is_open = False

    def open(self) -> None:
        """Undo one :meth:`close`; lets the first waiter in when fully open."""
        self._closed -= 1
        self._update()
        if self._closed == 0 and self._waiters:
            self._waiters[0].set()

    def fail_all(self) -> None:
        """Release every waiter (the object broke); they must check why."""
        self._broken = True
        if self._waiters is not None:
            for waiter in self._waiters:
                waiter.set()
            self._waiters.clear()
        self._update()

    async def enter(self) -> None:
        """Wait for this event's turn.

        Returns when the gate is open and every earlier waiter went in, or
        when the object broke (the caller checks for that).

        Raises:
            OverloadedError: If too many events are already queued.
        """
        waiters = self._waiters
        if waiters is None:
            waiters = self._waiters = deque()
        if self._max_queued is not None and len(waiters) >= self._max_queued:
            raise OverloadedError(
                "Durable Object is overloaded. Too many requests queued."
            )
        waiter = anyio.Event()
        waiters.append(waiter)
        self.is_open = False
        try:
            while not self._broken:
                if self._closed == 0 and waiters[0] is waiter:
                    break
                await waiter.wait()
                if self.broken:
                    return
                if self._closed or waiters[0] is not waiter:
                    # Closed again before we ran: queue again at the same place.
                    index = waiters.index(waiter)
                    waiter = anyio.Event()
                    waiters[index] = waiter
        except BaseException:
            self._leave(waiters, waiter)
            raise
        else:
            if not self._broken:
                waiters.popleft()
                self._update()
                # Wake the next one; it runs once this event yields, and by then
                # it re-checks whether the gate is still open.
                if waiters and self._closed == 0:
                    waiters[0].set()

    def _leave(self, waiters: deque[anyio.Event], waiter: anyio.Event) -> None:
        try:
            index = waiters.index(waiter)
        except ValueError:
            return
        del waiters[index]
        self._update()
        if index == 0 and waiters and self._closed == 0:
            waiters[0].set()


class GateOwner(Protocol):
    """What the output gate reports to the object it belongs to."""

    def commit_failed(self, error: BaseException, /) -> None:
        """A commit failed or timed out: reset the object with *error*."""
        ...

    def committed(self, batch: WriteBatch, elapsed_ns: int, /) -> None:
        """*batch* is durable (alarm changes take effect now); it took *elapsed_ns*."""
        ...


class CommitQueue:
    """The runtime's flusher: commits batches that no event will wait for.

    Woken by the first write of a batch made outside a running event step
    (a background task, a timer); it cannot run before the writing task
    yields to the event loop, which is what makes every write of that turn
    land in one commit. It also counts the events in flight, which is what
    group commit looks at.
    """

    __slots__ = ("_dirty", "_side", "_wakeup", "clock", "events_in_flight", "timers")

    def __init__(self, clock: Clock, timers: Timers) -> None:
        self.clock: Clock = clock
        self.timers: Timers = timers
        self.events_in_flight: int = 0
        self._dirty: list[OutputGate] = []
        self._wakeup: anyio.Event | None = None
        # Where commits of suspending stores run beside the flusher.
        self._side: anyio.abc.TaskGroup | None = None

    def schedule(self, gate: OutputGate) -> None:
        """Commit *gate*'s pending writes soon, on the flusher task."""
        if gate.flush_queued:
            return
        gate.flush_queued = True
        self._dirty.append(gate)
        wakeup = self._wakeup
        if wakeup is not None:
            self._wakeup = None
            wakeup.set()

    async def run(self) -> None:
        """Serve flush requests forever (cancel the task to stop)."""
        async with anyio.create_task_group() as tg:
            self._side = tg
            try:
                while True:
                    if not self._dirty:
                        self._wakeup = anyio.Event()
                        await self._wakeup.wait()
                    await self._drain()
            finally:
                self._side = None

    async def _drain(self) -> None:
        dirty, self._dirty = self._dirty, []
        side = self._side
        for gate in dirty:
            gate.flush_queued = False
            if gate.suspends and side is not None:
                # Its commit waits for a server: run it beside the flusher,
                # so that one object's round trip does not hold the other
                # objects' commits back (each gate still commits one batch
                # at a time, in order).
                side.start_soon(gate.flush)
            else:
                await gate.flush()

    async def flush_all(self, gates: list[OutputGate]) -> None:
        """Commit every pending write, including those of events still running."""
        while self._dirty:
            await self._drain()
        for gate in gates:
            if gate.flush_scheduled or gate.flushing:
                await gate.flush()  # waits for a commit under way first

    def discard(self) -> None:
        """Forget every queued flush (the runtime crashed)."""
        self._dirty.clear()


class OutputGate:
    """Which writes are durable, and the pipeline that makes them so.

    Writes are numbered as the storage front end records them
    (:meth:`wrote`). Output waits with :meth:`wait_durable` until the writes
    made before it are committed; whoever waits first commits (inline), so a
    lone event costs no context switch, and concurrent events share one
    commit when commits are slow (group commit).
    """

    __slots__ = (
        "_event",
        "_owner",
        "_queue",
        "_scope",
        "_store",
        "_sync_commit",
        "broken",
        "commit_ns",
        "durable_seq",
        "flush_queued",
        "flush_scheduled",
        "flushing",
        "flushing_seq",
        "storage",
        "suspends",
        "write_seq",
    )

    def __init__(
        self, owner: GateOwner, queue: CommitQueue, storage: Storage, store: ObjectStore
    ) -> None:
        self._owner = owner
        self._queue = queue
        self.storage: Storage = storage
        self._store = store
        self._sync_commit: Callable[[Any, WriteBatch], None] | None = None
        self.store = store
        self.write_seq: int = 0
        self.durable_seq: int = 0
        self.broken: bool = False
        self.flush_scheduled: bool = False  # pending writes not yet taken by a flush
        self.flush_queued: bool = False  # in the flusher's list
        self.flushing: bool = False
        self.flushing_seq: int = 0
        self.commit_ns: int = 0
        # Set once a commit suspended (a server-backed store): the flusher
        # then runs this gate's flushes beside the others' (see _drain).
        self.suspends: bool = False
        self._event: anyio.Event | None = None
        self._scope: anyio.CancelScope | None = None

    @property
    def store(self) -> ObjectStore:
        """The store commits go to.

        pyobjects.testing.fail_next_commits() puts a failing wrapper here
        (only here: reads use the storage's own store).
        """
        return self._store

    @store.setter
    def store(self, store: ObjectStore) -> None:
        self._store = store
        # A built-in local store also offers its commit as a plain function:
        # looked up on the type, so that a wrapper delegating attributes to
        # the store it wraps (``__getattr__``) keeps its own commit.
        self._sync_commit = getattr(type(store), "_commit_sync", None)

    @property
    def pending(self) -> bool:
        """True while some recorded write is not durable yet."""
        return self.durable_seq < self.write_seq

    def wrote(self) -> bool:
        """Number a new write; True if it starts a new batch (nothing scheduled)."""
        self.write_seq += 1
        if self.flush_scheduled:
            return False
        self.flush_scheduled = True
        return True

    def schedule_flush(self) -> None:
        """Have the runtime's flusher commit the pending writes soon."""
        if self.flush_scheduled and not self.broken:
            self._queue.schedule(self)

    def _confirmed(self, seq: int) -> None:
        if seq > self.durable_seq:
            self.durable_seq = seq
        event, self._event = self._event, None
        if event is not None:
            event.set()

    def fail(self) -> None:
        """Break the gate: nothing waits any more, waiters must check why.

        A commit in flight is cancelled, so that the task running it (often
        a caller, committing inline) is released at once.
        """
        self.broken = True
        if self._scope is not None:
            self._scope.cancel()
        event, self._event = self._event, None
        if event is not None:
            event.set()

    async def _wait(self, seq: int) -> None:
        while self.durable_seq < seq and not self.broken:
            if self._event is None:
                self._event = anyio.Event()
            await self._event.wait()

    async def wait_durable(self, target: int | None = None) -> None:
        """Wait until the writes made so far (or up to number *target*) are durable.

        Only writes made before the call count: writes other events make
        meanwhile are theirs to wait for, so a stream of events never keeps
        one of them waiting. Returns early if the gate breaks; the caller
        checks for that.
        """
        if target is None:
            target = self.write_seq
        while self.durable_seq < target and not self.broken:
            if self.flushing:
                # A (suspending) commit is under way: wait for it, then commit
                # whatever was written meanwhile.
                await self._wait(min(target, self.flushing_seq))
                continue
            if self.commit_ns > GROUP_COMMIT_NS and self._queue.events_in_flight > 1:
                # Commits are slow and other events are under way: let them add
                # their writes first, so one commit serves them all; whoever
                # resumes first commits. A lone event commits at once.
                await anyio.lowlevel.checkpoint()
                if self.durable_seq >= target or self.flushing:
                    continue
            await self.flush()

    def commit_now(self) -> bool:
        """Commit the pending writes inline, if that needs no waiting.

        The hot path of an event that wrote: a store whose commit is a plain
        function (the built-in local ones), no commit in flight, and no
        reason to wait for group commit. Returns False when the caller must
        ``await wait_durable()`` instead; True when the writes made so far
        are durable, or the gate broke (the caller checks for that).
        """
        sync = self._sync_commit
        if sync is None or self.flushing:
            return False
        if self.commit_ns > GROUP_COMMIT_NS and self._queue.events_in_flight > 1:
            return False  # see wait_durable
        self._flush_now(sync)
        return True

    async def flush(self) -> None:
        """Commit the pending writes as one batch (all or nothing)."""
        while self.flushing and not self.broken:
            # A (suspending) commit is under way: batches commit one at a
            # time, in order, so this one waits for it.
            await self._wait(self.flushing_seq)
        sync = self._sync_commit
        if sync is not None:
            self._flush_now(sync)
            return
        self.flush_scheduled = False
        if self.broken:
            return
        seq = self.write_seq
        taken = self.storage._take_batch()
        if taken is None:
            self._confirmed(seq)
            return
        batch, layer = taken
        self.flushing = True
        self.flushing_seq = seq
        started = perf_counter_ns()
        try:
            commit = self._store.commit(batch)
            try:
                # A store may finish here without suspending after all.
                first = commit.send(None)
            except StopIteration:
                pass
            else:
                self.suspends = True
                await self._commit_slowly(commit, first)
        except Exception as exc:
            self._commit_failed(exc)
            return
        finally:
            self.flushing = False
        if self._was_broken():
            return  # reset while the commit was in flight: nothing to deliver
        self._done(seq, batch, layer, perf_counter_ns() - started)

    def _flush_now(self, sync: Callable[[Any, WriteBatch], None]) -> None:
        """:meth:`flush` for a store whose commit is a plain function."""
        self.flush_scheduled = False
        if self.broken:
            return
        seq = self.write_seq
        self.flushing = True
        self.flushing_seq = seq
        started = perf_counter_ns()
        try:
            batch = self.storage._commit_pending(sync, self._store)
        except Exception as exc:
            self._commit_failed(exc)
            return
        finally:
            self.flushing = False
        if batch is not None:
            elapsed = perf_counter_ns() - started
            self.commit_ns = (self.commit_ns * 3 + elapsed) >> 2
            self._owner.committed(batch, elapsed)
        if seq > self.durable_seq:  # _confirmed(seq), inlined
            self.durable_seq = seq
        event = self._event
        if event is not None:
            self._event = None
            event.set()

    def _done(self, seq: int, batch: WriteBatch, layer: _Layer, elapsed: int) -> None:
        self.commit_ns = (self.commit_ns * 3 + elapsed) >> 2
        self.storage._batch_done(layer, batch)
        self._confirmed(seq)
        self._owner.committed(batch, elapsed)

    def _commit_failed(self, exc: Exception) -> None:
        error = DurableObjectResetError(
            f"Durable Object storage commit failed, so the object was reset: {exc}"
        )
        error.__cause__ = exc
        self._owner.commit_failed(error)

    async def _commit_slowly(
        self, commit: Coroutine[Any, Any, None], first: Any
    ) -> None:
        """Finish a commit that suspended (a server-backed store).

        Only such a commit gets the output-gate deadline, and a reset while
        it waits cancels it.
        """
        queue = self._queue
        timer = queue.timers.call_at(
            queue.clock.now_ms() + OUTPUT_GATE_TIMEOUT_MS, self._timed_out
        )
        with anyio.CancelScope() as scope:
            self._scope = scope
            try:
                await Resume(commit, first)
            finally:
                self._scope = None
                timer.cancel()

    def _was_broken(self) -> bool:
        # A method, not an inline test: type checkers keep `self.broken`
        # narrowed across an await, but another task may have set it.
        return self.broken

    def _timed_out(self) -> None:
        if not self.flushing:
            return
        error = DurableObjectResetError(
            "Durable Object storage operation exceeded timeout which caused object "
            "to be reset."
        )
        error.overloaded = True
        error.retryable = False
        self._owner.commit_failed(error)


class Resume:
    """Go on awaiting a coroutine whose first step already ran.

    ``first`` is what that step yielded (for the event loop); from there on
    this is ``await coro``, step for step: values and exceptions pass through
    to and from the event loop unchanged. Each time the coroutine yields,
    :meth:`yielded` runs (the event pipeline commits writes there).
    """

    __slots__ = ("_coro", "_first")

    def __init__(self, coro: Coroutine[Any, Any, Any], first: Any) -> None:
        self._coro = coro
        self._first = first

    def stepping(self, on: bool) -> None:
        """The coroutine starts (True) or stops (False) running a step."""

    def interrupt(self) -> BaseException | None:
        """An error to throw into the coroutine instead of resuming it, if any."""
        return None

    def __await__(self) -> Generator[Any, Any, Any]:
        coro = self._coro
        value = self._first
        while True:
            self.stepping(False)
            try:
                sent = yield value
            except GeneratorExit:
                self.stepping(True)
                coro.close()
                raise
            except BaseException as exc:  # passed on into coro
                self.stepping(True)
                try:
                    value = coro.throw(exc)
                except StopIteration as stop:
                    return stop.value
            else:
                self.stepping(True)
                error = self.interrupt()
                try:
                    value = coro.send(sent) if error is None else coro.throw(error)
                except StopIteration as stop:
                    return stop.value
