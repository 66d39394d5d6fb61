"""The idle collector: evicts instances idle for longer than ``idle_timeout``.

One queue per runtime, ordered by the time an actor was (re)queued, which is
never later than its ``idle_since``, so a sweep only ever looks at the front;
one timer on the runtime's timer queue, never one per object.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pyobjects._clock import Clock

    from ._actor import Actor
    from ._timers import Timers

__all__ = ["IdleCollector"]


class IdleCollector:
    """Evicts quiescent instances once they have been idle long enough."""

    __slots__ = ("_armed", "_clock", "_queue", "_timeout_ms", "_timers")

    def __init__(self, clock: Clock, timers: Timers, timeout_ms: int | None) -> None:
        self._clock = clock
        self._timers = timers
        self._timeout_ms = timeout_ms
        self._queue: OrderedDict[Actor, None] = OrderedDict()
        self._armed = False

    def became_idle(self, actor: Actor) -> None:
        """*actor* has nothing running: its idle time starts now."""
        # Hot path (every event ends here): one clock read, and a dict insert
        # only when the actor is not queued yet.
        if self._timeout_ms is None or actor.evicted:
            return
        now = self._clock.now_ms()
        actor.idle_since = now
        queue = self._queue
        if actor not in queue:
            actor.idle_queued_at = now
            queue[actor] = None
            if not self._armed:
                self._armed = True
                self._timers.call_at(now + self._timeout_ms, self._sweep)

    def forget(self, actor: Actor) -> None:
        """*actor* is gone (evicted or reset)."""
        self._queue.pop(actor, None)

    def _sweep(self) -> None:
        self._armed = False
        timeout = self._timeout_ms
        assert timeout is not None
        now = self._clock.now_ms()
        queue = self._queue
        requeue: list[Actor] = []
        while queue:
            actor = next(iter(queue))
            if actor.idle_queued_at + timeout > now:
                break
            del queue[actor]
            if actor.active == 0 and actor.idle_since + timeout <= now:
                if actor.quiescent:
                    actor.evict()
                    continue
                actor.idle_since = now  # still writing or gated: look again later
            requeue.append(actor)
        for actor in requeue:
            actor.idle_queued_at = now if actor.active else actor.idle_since
            queue[actor] = None
        if queue:
            self._armed = True
            first = next(iter(queue))
            self._timers.call_at(first.idle_queued_at + timeout, self._sweep)
