"""Runtime statistics as Prometheus metrics (the ``pyobjects[metrics]`` extra).

The collector reads :meth:`Runtime.statistics` when Prometheus scrapes, so it
costs nothing on the event path. Names follow Prometheus' conventions
(``_total`` counters, base units in the name) and carry the binding name as
the ``namespace`` label.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, final

from ._errors import RuntimeClosedError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from ._statistics import NamespaceStatistics, RuntimeStatistics

    _Read = Callable[[NamespaceStatistics], float]

__all__ = ["PrometheusCollector"]

_ATTEMPTS = 5

# (metric name, help, kind, how to read it from one namespace's statistics)
_PER_NAMESPACE: tuple[tuple[str, str, str, _Read], ...] = (
    ("pyobjects_live_objects", "Live Durable Object instances.", "gauge",
     lambda s: s.live_objects),
    ("pyobjects_commits", "Write batches committed.", "counter", lambda s: s.commits),
    ("pyobjects_commit_failures", "Commits that failed (each reset its object).",
     "counter", lambda s: s.commit_failures),
    ("pyobjects_commit_duration_seconds", "Time spent in commits.", "counter",
     lambda s: s.commit_seconds),
    ("pyobjects_written_bytes", "Bytes of KV keys and values committed.", "counter",
     lambda s: s.bytes_written),
    ("pyobjects_evictions", "Idle instances evicted.", "counter",
     lambda s: s.evictions),
    ("pyobjects_resets", "Objects reset (abort, failed constructor or commit...).",
     "counter", lambda s: s.resets),
    ("pyobjects_pending_alarms", "Alarms set and not yet run.", "gauge",
     lambda s: s.pending_alarms),
    ("pyobjects_open_websockets", "Connected WebSockets.", "gauge",
     lambda s: s.open_websockets),
    ("pyobjects_hibernated_websockets",
     "Hibernatable WebSockets whose object has no live instance.", "gauge",
     lambda s: s.hibernated_websockets),
)  # fmt: skip


@final
class PrometheusCollector:
    """Expose a runtime's :meth:`~pyobjects.Runtime.statistics` to Prometheus.

    Register it with a ``prometheus_client`` registry::

        from prometheus_client import REGISTRY
        REGISTRY.register(pyobjects.PrometheusCollector(rt))

    *source* is a :class:`~pyobjects.Runtime`, or a function returning its
    statistics (for a runtime that starts later, such as an ASGI app's); a
    source that raises :class:`~pyobjects.RuntimeClosedError` gives no samples.
    ``pyobjects serve --metrics-port`` serves this collector.
    """

    def __init__(self, source: Any) -> None:
        statistics = getattr(source, "statistics", source)
        if not callable(statistics):
            raise TypeError(
                "PrometheusCollector() takes a Runtime or a function returning "
                f"RuntimeStatistics, not {type(source).__name__}"
            )
        self._statistics: Callable[[], RuntimeStatistics] = statistics

    def describe(self) -> list[Any]:
        """Nothing up front: the metrics exist once the runtime runs."""
        return []

    def collect(self) -> Iterator[Any]:
        """Build the metric families from a fresh statistics snapshot."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        stats = None
        for _ in range(_ATTEMPTS):
            try:
                stats = self._statistics()
                break
            except RuntimeClosedError:
                return
            except RuntimeError:
                # Scraped from another thread (pyobjects serve's endpoint)
                # while the event loop changed a dict being read: read again.
                continue
        if stats is None:
            return
        events = CounterMetricFamily(
            "pyobjects_events",
            "Events run by objects, by kind (call, fetch, alarm, websocket, run).",
            labels=["namespace", "kind"],
        )
        for name, ns in stats.namespaces.items():
            for kind, count in ns.events.items():
                events.add_metric([name, kind], count)
        yield events
        for metric, help_text, kind, read in _PER_NAMESPACE:
            family_type = (
                CounterMetricFamily if kind == "counter" else GaugeMetricFamily
            )
            family = family_type(metric, help_text, labels=["namespace"])
            for name, ns in stats.namespaces.items():
                family.add_metric([name], read(ns))
            yield family
        yield GaugeMetricFamily(
            "pyobjects_events_in_flight",
            "Events running right now.",
            value=stats.events_in_flight,
        )
