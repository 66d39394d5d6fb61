"""The catalog of live instances: exactly one per object, whatever the binding.

Owned by the runtime. Objects are keyed by (storage namespace, id), so two
bindings that resolve to the same namespace key share one instance per id
(the runtime refuses bindings that share a key but name different classes).
Hibernatable WebSocket hubs live here too: they outlive instances.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from pyobjects._statistics import NamespaceStatistics

from ._actor import Actor, visible_id
from ._events import EVENT_KINDS

if TYPE_CHECKING:
    from pyobjects._ids import DurableObjectId

    from ._hibernation import Hub
    from ._namespace import DurableObjectNamespace
    from ._runtime import Runtime

__all__ = ["Catalog", "Counters", "Key"]

Key = tuple[str, "DurableObjectId"]


class Counters:
    """Running totals of one storage namespace (read by ``statistics()``)."""

    __slots__ = (
        "bytes_written",
        "commit_failures",
        "commit_ns",
        "commits",
        "events",
        "evictions",
        "resets",
    )

    def __init__(self) -> None:
        self.events: dict[str, int] = dict.fromkeys(EVENT_KINDS, 0)
        self.commits: int = 0
        self.commit_failures: int = 0
        self.commit_ns: int = 0
        self.bytes_written: int = 0
        self.evictions: int = 0
        self.resets: int = 0


class Catalog:
    """Live instances and WebSocket hubs of one runtime (internal)."""

    __slots__ = ("_runtime", "actors", "counters", "hubs")

    def __init__(self, runtime: Runtime[Any]) -> None:
        self._runtime = runtime
        self.actors: dict[Key, Actor] = {}
        self.hubs: dict[Key, Hub] = {}
        self.counters: dict[str, Counters] = {}

    def actor(
        self, namespace: DurableObjectNamespace[Any], object_id: DurableObjectId
    ) -> Actor:
        """The live instance for *object_id*, created (not yet started) if needed."""
        key = (namespace._storage_name, object_id)
        actor = self.actors.get(key)
        if actor is not None:
            if object_id.name is not None and actor.id.name is None:
                actor.id = actor.ctx.id = visible_id(object_id)
            return actor
        self._runtime._check_running()
        counters = self.counters.get(key[0])
        if counters is None:
            counters = self.counters[key[0]] = Counters()
        cls = Actor if self._runtime._telemetry is None else traced_actor()
        actor = cls(self._runtime, namespace, object_id, counters)
        self.actors[actor.key] = actor  # that tuple, not a second one
        return actor

    def live(
        self, namespace: DurableObjectNamespace[Any], object_id: DurableObjectId
    ) -> Actor | None:
        """The live instance for *object_id*, or ``None``."""
        return self.actors.get((namespace._storage_name, object_id))

    def forget(self, actor: Actor) -> None:
        """Drop *actor* from the catalog (evicted or reset)."""
        if self.actors.get(actor.key) is actor:
            del self.actors[actor.key]

    def statistics(self, storage_name: str, pending_alarms: int) -> NamespaceStatistics:
        """A snapshot of one storage namespace."""
        counters = self.counters.get(storage_name) or Counters()
        live = sum(1 for key in self.actors if key[0] == storage_name)
        open_sockets = hibernated = 0
        for key, hub in self.hubs.items():
            if key[0] == storage_name:
                open_sockets += len(hub.sockets)
                if key not in self.actors:
                    hibernated += len(hub.sockets)
        for key, actor in self.actors.items():
            if key[0] == storage_name and actor.sockets:
                open_sockets += len(actor.sockets)
        return NamespaceStatistics(
            live_objects=live,
            events=MappingProxyType(dict(counters.events)),
            commits=counters.commits,
            commit_failures=counters.commit_failures,
            commit_seconds=counters.commit_ns / 1e9,
            bytes_written=counters.bytes_written,
            evictions=counters.evictions,
            resets=counters.resets,
            pending_alarms=pending_alarms,
            open_websockets=open_sockets,
            hibernated_websockets=hibernated,
        )


def traced_actor() -> type[Actor]:
    """The actor class of a runtime with telemetry on (imported on demand)."""
    from ._telemetry import TracedActor

    return TracedActor
