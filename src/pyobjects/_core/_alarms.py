"""Alarms: one durable timer per object, delivered at least once.

The scheduler keeps one entry per object with an alarm on the runtime's timer
queue (a heap; never a sleeping task per object). It learns about alarms from
commits (an alarm change takes effect only once it is durable) and, when the
runtime starts, from the backend's index of pending alarms, so alarms survive
restarts and overdue ones fire at once.

Delivery follows Cloudflare: the handler runs as a normal event under the
input gate, never twice at once for one object; inside it ``get_alarm()``
returns ``None`` unless the handler sets a new alarm; the alarm is deleted only
after the handler succeeds; a failure (or a timeout) is retried 2 s, 4 s, 8 s,
... later, at most 6 times, unless the handler set a new alarm first. Each
failed attempt is recorded in the backend (if it offers
``record_alarm_retry()``), so a restarted runtime resumes the count and the
backoff instead of starting over.
"""

from __future__ import annotations

import functools
import inspect
import logging
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, final

from pyobjects._aliases import camel_aliases

from ._events import AlarmEvent, AlarmTimeoutError, accepted_arity, find_handler

if TYPE_CHECKING:
    from collections.abc import Sequence

    from pyobjects.storage._base import AlarmEntry

    from ._actor import Actor
    from ._namespace import DurableObjectNamespace
    from ._runtime import Runtime
    from ._timers import TimerHandle

__all__ = ["AlarmInfo", "AlarmScheduler", "AlarmTimeoutError"]

logger = logging.getLogger("pyobjects")

MAX_RETRIES = 6  # 7 attempts in all
FIRST_RETRY_MS = 2_000
MAX_JITTER = 0.25  # up to 25 % later, as workerd does locally

_Key = tuple[str, str]  # (namespace storage name, object id hex)


@final
@camel_aliases("retry_count", "is_retry", "scheduled_time")
@dataclass(frozen=True, slots=True, kw_only=True)
class AlarmInfo:
    """What ``alarm(alarm_info)`` receives (Cloudflare's ``AlarmInvocationInfo``).

    ``retry_count`` counts earlier failed attempts of this alarm,
    ``is_retry`` is ``retry_count > 0``, and ``scheduled_time`` is the time
    the alarm was set for, in epoch milliseconds.
    """

    retry_count: int = 0
    is_retry: bool = False
    scheduled_time: int = 0


class AlarmScheduler:
    """Schedules and delivers the alarms of one runtime (internal)."""

    def __init__(self, runtime: Runtime[Any], *, jitter: bool, timeout_ms: int) -> None:
        self._runtime = runtime
        self._jitter = jitter
        self._random = random.Random()
        self._timeout_ms = timeout_ms
        self._timers: dict[_Key, TimerHandle] = {}
        self._running: set[_Key] = set()
        # Alarm changes committed while the object's alarm was running.
        self._changed_while_running: dict[_Key, int | None] = {}

    @property
    def scheduled(self) -> int:
        """Number of objects with an alarm waiting to fire."""
        return len(self._timers)

    def set(
        self, namespace: DurableObjectNamespace[Any], object_id: str, at: int | None
    ) -> None:
        """A commit set (or, with ``None``, deleted) an object's alarm."""
        key = (namespace._storage_name, object_id)
        if key in self._running:
            self._changed_while_running[key] = at
            return
        self._arm(key, namespace, at, retry=0, scheduled=at)

    async def load(self) -> None:
        """Schedule every alarm the backend holds (on start, after a restart)."""
        self.adopt(await self._runtime.storage.pending_alarms())

    def adopt(self, entries: Sequence[AlarmEntry]) -> None:
        """Schedule these alarms (from the backend: at start, or claimed later)."""
        runtime = self._runtime
        namespaces = {ns._storage_name: ns for ns in runtime._namespaces}
        for entry in entries:
            if (entry.namespace, entry.object_id) in self._running:
                continue  # under way here already
            namespace = namespaces.get(entry.namespace)
            if namespace is None:
                continue  # a namespace no longer bound: keep its data, skip it
            # Failed attempts recorded before the restart (record_alarm_retry)
            # carry on: the next one at its due time, with its count.
            retry = getattr(entry, "retry_count", 0)
            retry_ms = getattr(entry, "retry_ms", None)
            at = entry.time_ms if not retry or retry_ms is None else retry_ms
            key = (namespace._storage_name, entry.object_id)
            self._arm(key, namespace, at, retry=retry, scheduled=entry.time_ms)

    def _arm(
        self,
        key: _Key,
        namespace: DurableObjectNamespace[Any],
        at: int | None,
        *,
        retry: int,
        scheduled: int | None,
    ) -> None:
        old = self._timers.pop(key, None)
        if old is not None:
            old.cancel()
        if at is None or scheduled is None:
            return

        def fire() -> None:
            self._timers.pop(key, None)
            self._running.add(key)
            self._runtime._spawn(self._run, key, namespace, retry, scheduled)

        self._timers[key] = self._runtime._timers.call_at(at, fire)

    async def _run(
        self,
        key: _Key,
        namespace: DurableObjectNamespace[Any],
        retry: int,
        scheduled: int,
    ) -> None:
        runtime = self._runtime
        failed: BaseException | None = None
        actor: Actor | None = None
        try:
            actor = runtime._catalog.actor(
                namespace, namespace._ids.from_string(key[1])
            )
            body = functools.partial(self._body, key, retry, scheduled)
            later = await actor.deliver(AlarmEvent(body, self._timeout_ms))
            if later is not None:
                # The object's own storage has the last word (the cross-object
                # index may hold a stale entry): follow an alarm moved later.
                self._arm(key, namespace, later, retry=0, scheduled=later)
        except Exception as exc:
            failed = exc
        finally:
            self._running.discard(key)
        changed = key in self._changed_while_running
        at = self._changed_while_running.pop(key, None)
        if changed:
            # The handler (or another event) set or deleted the alarm: that
            # wins over a retry, as in Cloudflare.
            self._arm(key, namespace, at, retry=0, scheduled=at)
        elif failed is not None and actor is not None and not actor.retry_alarm:
            # ctx.abort(retry_alarm=False) in the handler: Cloudflare's
            # abort({retryAlarm: false}) stops the retries.
            logger.info(
                "alarm() of %s %s called abort(retry_alarm=False): deleting "
                "the alarm without a retry: %r",
                namespace.object_class.__name__,
                key[1],
                failed,
            )
            await self._abandon(key, namespace)
        elif failed is not None:
            await self._failed(key, namespace, retry, scheduled, failed)

    async def _body(
        self, key: _Key, retry: int, scheduled: int, actor: Actor
    ) -> int | None:
        """The alarm event: check the stored alarm, run ``alarm()``, delete it.

        Returns the stored time when the alarm was moved later (not run).
        """
        storage = actor.storage
        handler = find_handler(actor.instance, "alarm")
        if handler is None:
            logger.warning(
                "Attempted to run a scheduled alarm without a handler, did you "
                "remember to export an alarm() function? (%s %s)",
                actor.namespace.object_class.__name__,
                key[1],
            )
            storage.delete_alarm()  # not retried
            return None
        stored = await storage.get_alarm()
        if stored is None:
            return None  # deleted meanwhile: a stale index entry
        if stored > self._runtime.clock.now_ms():
            return stored
        storage._alarm = None  # a running alarm is no longer "set"
        info = AlarmInfo(
            retry_count=retry, is_retry=retry > 0, scheduled_time=scheduled
        )
        writes = storage._alarm_writes
        args = (info,)[: accepted_arity(handler, 1, self._runtime._method_cache)]
        result = handler(*args)
        if inspect.isawaitable(result):
            await result
        if storage._alarm_writes == writes and key not in self._changed_while_running:
            # Deferred delete: only now that the handler succeeded (and did
            # not set or delete the alarm itself).
            storage.delete_alarm()
        return None

    async def _failed(
        self,
        key: _Key,
        namespace: DurableObjectNamespace[Any],
        retry: int,
        scheduled: int,
        error: BaseException,
    ) -> None:
        runtime = self._runtime
        object_id = namespace._ids.from_string(key[1])
        live = runtime._catalog.live(namespace, object_id)
        if live is not None:
            live.storage._forget_alarm()  # the stored alarm stays: read it again
        if retry < MAX_RETRIES:
            delay = FIRST_RETRY_MS << retry
            if self._jitter:
                delay += int(delay * MAX_JITTER * self._random.random())
            logger.warning(
                "alarm() of %s %s failed (attempt %d of %d), retrying in %d ms: %r",
                namespace.object_class.__name__,
                key[1],
                retry + 1,
                MAX_RETRIES + 1,
                delay,
                error,
            )
            at = runtime.clock.now_ms() + delay
            self._arm(key, namespace, at, retry=retry + 1, scheduled=scheduled)
            await self._record_retry(key, scheduled, retry + 1, at)
            return
        logger.error(
            "alarm() of %s %s failed %d times; giving up and deleting it: %r",
            namespace.object_class.__name__,
            key[1],
            MAX_RETRIES + 1,
            error,
        )
        await self._abandon(key, namespace)

    async def _abandon(self, key: _Key, namespace: DurableObjectNamespace[Any]) -> None:
        """Delete the object's alarm, in an event of its own: no more retries."""
        runtime = self._runtime
        object_id = namespace._ids.from_string(key[1])

        async def give_up(actor: Actor) -> None:
            actor.storage.delete_alarm()

        self._running.add(key)
        try:
            actor = runtime._catalog.actor(namespace, object_id)
            await actor.deliver(AlarmEvent(give_up, self._timeout_ms))
        except Exception:
            logger.exception("could not delete the abandoned alarm of %s", key[1])
        finally:
            self._running.discard(key)
            self._changed_while_running.pop(key, None)

    async def _record_retry(
        self, key: _Key, scheduled: int, retry: int, at: int
    ) -> None:
        """Make the count of failed attempts durable, if the backend can.

        Without it a restart would start the alarm over at retry 0 (and so
        retry a failing alarm forever across restarts).
        """
        record = getattr(self._runtime.storage, "record_alarm_retry", None)
        if record is None:
            return
        try:
            await record(*key, scheduled_ms=scheduled, retry_count=retry, retry_ms=at)
        except Exception:
            # The retry still happens in this process; only a restart before
            # it would start the count over.
            logger.exception("could not record the retry count of alarm %s", key[1])

    def pending_by_namespace(self) -> dict[str, int]:
        """Alarms waiting to fire or running, per storage namespace."""
        counts: dict[str, int] = {}
        for ns, _ in (*self._timers, *self._running):
            counts[ns] = counts.get(ns, 0) + 1
        return counts

    def cancel_all(self) -> None:
        """Forget every scheduled alarm (the runtime is stopping)."""
        for handle in self._timers.values():
            handle.cancel()
        self._timers.clear()
