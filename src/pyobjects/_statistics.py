"""Snapshots of what a runtime is doing: ``Runtime.statistics()`` (value types)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, final

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = ["NamespaceStatistics", "RuntimeStatistics"]


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class NamespaceStatistics:
    """What one namespace's objects did since the runtime started.

    ``events`` counts events by kind: ``"call"`` (RPC), ``"fetch"``,
    ``"alarm"``, ``"websocket"`` (message, close and error events of
    hibernatable sockets) and ``"run"`` (``run_in_durable_object``).
    ``commits`` counts committed write batches and ``commit_failures`` those
    that failed (each reset its object); ``commit_seconds`` is the time spent
    in those commits (divide by ``commits`` for the mean commit latency) and
    ``bytes_written`` the bytes of KV keys and values they wrote (SQL writes
    are not counted: they go to the database as they run). ``events["alarm"]``
    counts alarms fired, retries included. ``resets`` counts every reset
    (``abort()``, a failing ``block_concurrency_while`` or constructor, a
    failed commit, a timeout). ``open_websockets`` counts connected sockets
    (plain and hibernatable), ``hibernated_websockets`` the hibernatable ones
    whose object has no live instance right now.
    """

    live_objects: int
    events: Mapping[str, int]
    commits: int
    commit_failures: int
    commit_seconds: float
    bytes_written: int
    evictions: int
    resets: int
    pending_alarms: int
    open_websockets: int
    hibernated_websockets: int


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class RuntimeStatistics:
    """A snapshot of a runtime: totals, and the same per namespace.

    ``namespaces`` is keyed by binding name; bindings that share a namespace
    key (and so their objects) appear once, under the first binding's name.
    ``events_in_flight`` counts events running right now.
    """

    live_objects: int
    events: Mapping[str, int]
    events_in_flight: int
    commits: int
    commit_failures: int
    commit_seconds: float
    bytes_written: int
    evictions: int
    resets: int
    pending_alarms: int
    open_websockets: int
    hibernated_websockets: int
    namespaces: Mapping[str, NamespaceStatistics]
