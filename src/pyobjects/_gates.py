"""Input and output gates: the consistency model of one Durable Object, nothing else.

The *input gate* decides when a new event (call, fetch, alarm) may start
running in the object. It is closed while the object is being constructed,
while a ``block_concurrency_while`` callback or a transaction runs, and while
the object waits on a storage read that really suspends. Waiting events are
let in strictly first come, first served, one at a time, so calls made on one
stub are delivered in the order they were made on every anyio backend (trio
shuffles tasks woken together, so waking them all at once would not do).

The *output gate* holds what leaves the object (a call's result or exception)
until every write made before it is durable. Writes are numbered; the flusher
reports the highest durable number.
"""

from __future__ import annotations

from collections import deque

import anyio

from ._errors import OverloadedError


class InputGate:
    """FIFO admission of events into one object."""

    __slots__ = ("_broken", "_closed", "_max_queued", "_waiters")

    def __init__(self, *, max_queued: int | None = None) -> None:
        self._closed = 0
        self._waiters: deque[anyio.Event] = deque()
        self._broken = False
        self._max_queued = max_queued

    @property
    def is_open(self) -> bool:
        """True when a new event may start at once, without queueing."""
        return self._closed == 0 and not self._waiters

    @property
    def queued(self) -> int:
        """Number of events waiting to be let in."""
        return len(self._waiters)

    @property
    def broken(self) -> bool:
        """True once :meth:`fail_all` was called."""
        return self._broken

    def close(self) -> None:
        """Hold back new events until a matching :meth:`open`."""
        self._closed += 1

    def open(self) -> None:
        """Undo one :meth:`close`; lets the first waiter in when fully open."""
        self._closed -= 1
        if self._closed == 0 and self._waiters:
            self._waiters[0].set()

    def fail_all(self) -> None:
        """Release every waiter (the object broke); they must check why."""
        self._broken = True
        for waiter in self._waiters:
            waiter.set()
        self._waiters.clear()

    async def enter(self) -> None:
        """Wait for this event's turn.

        Returns when the gate is open and every earlier waiter went in, or
        when the object broke (the caller checks for that).

        Raises:
            OverloadedError: If too many events are already queued.
        """
        if self._max_queued is not None and len(self._waiters) >= self._max_queued:
            raise OverloadedError(
                "Durable Object is overloaded. Too many requests queued."
            )
        waiter = anyio.Event()
        self._waiters.append(waiter)
        try:
            while not self._broken:
                if self._closed == 0 and self._waiters[0] is waiter:
                    break
                await waiter.wait()
                if self.broken:
                    return
                if self._closed or self._waiters[0] is not waiter:
                    # Closed again before we ran: queue again at the same place.
                    index = self._waiters.index(waiter)
                    waiter = anyio.Event()
                    self._waiters[index] = waiter
        except BaseException:
            self._leave(waiter)
            raise
        else:
            if not self._broken:
                self._waiters.popleft()
                # Wake the next one; it runs once this event yields, and by then
                # it re-checks whether the gate is still open.
                if self._waiters and self._closed == 0:
                    self._waiters[0].set()

    def _leave(self, waiter: anyio.Event) -> None:
        try:
            index = self._waiters.index(waiter)
        except ValueError:
            return
        del self._waiters[index]
        if index == 0 and self._waiters and self._closed == 0:
            self._waiters[0].set()


class OutputGate:
    """Tracks which writes are durable, and lets results wait for them."""

    __slots__ = ("_event", "broken", "durable_seq", "write_seq")

    def __init__(self) -> None:
        self.write_seq = 0
        self.durable_seq = 0
        self.broken = False
        self._event: anyio.Event | None = None

    @property
    def pending(self) -> bool:
        """True while some recorded write is not durable yet."""
        return self.durable_seq < self.write_seq

    def wrote(self) -> int:
        """Number a new write and return its sequence number."""
        self.write_seq += 1
        return self.write_seq

    def confirmed(self, seq: int) -> None:
        """Record that every write up to *seq* is durable."""
        if seq > self.durable_seq:
            self.durable_seq = seq
        event, self._event = self._event, None
        if event is not None:
            event.set()

    def fail(self) -> None:
        """Break the gate: nothing waits any more, waiters must check why."""
        self.broken = True
        event, self._event = self._event, None
        if event is not None:
            event.set()

    async def wait(self, seq: int | None = None) -> None:
        """Wait until every write up to *seq* (default: all so far) is durable.

        Returns early if the gate breaks; the caller checks for that.
        """
        target = self.write_seq if seq is None else seq
        while self.durable_seq < target and not self.broken:
            if self._event is None:
                self._event = anyio.Event()
            await self._event.wait()
