"""OpenTelemetry spans and metrics for events (``Runtime(opentelemetry=...)``).

When telemetry is on, the catalog builds :class:`TracedActor` instances
instead of plain :class:`Actor` ones: the one event pipeline gets a span and
a duration measurement around it, and commits a duration measurement. When
it is off nothing here runs, so the hot path pays nothing (not even a test).

Spans follow the RPC semantic conventions for calls (name
``Class/method``, ``rpc.system``, ``rpc.service``, ``rpc.method``) and name
other events ``Class fetch``, ``Class alarm``...; every span carries the
namespace (binding), the object id and, when known, its name. A call from
one object to another runs in the caller's task, so its span is a child of
the caller's span without any propagation code.
"""

from __future__ import annotations

from time import perf_counter_ns
from typing import TYPE_CHECKING, Any, cast

from pyobjects._version import __version__

from ._actor import Actor
from ._events import Call

if TYPE_CHECKING:
    from pyobjects._telemetry_options import OpenTelemetry
    from pyobjects.storage._base import WriteBatch

    from ._events import Event

__all__ = ["Telemetry", "TracedActor"]


class Telemetry:
    """The tracer and instruments of one runtime."""

    __slots__ = ("commit_duration", "event_duration", "span_kind", "tracer")

    def __init__(self, options: OpenTelemetry) -> None:
        try:
            from opentelemetry import metrics, trace
        except ModuleNotFoundError:
            raise RuntimeError(
                "Runtime(opentelemetry=...) needs opentelemetry-api: "
                "pip install 'pyobjects[otel]'"
            ) from None
        self.tracer = trace.get_tracer(
            "pyobjects", __version__, tracer_provider=options.tracer_provider
        )
        meter = metrics.get_meter(
            "pyobjects", __version__, meter_provider=options.meter_provider
        )
        self.event_duration = meter.create_histogram(
            "pyobjects.event.duration",
            unit="s",
            description="Time from an event's arrival at an object to its result "
            "(waiting at the gates and for durability included).",
        )
        self.commit_duration = meter.create_histogram(
            "pyobjects.commit.duration",
            unit="s",
            description="Time to commit one write batch to the storage backend.",
        )
        self.span_kind = trace.SpanKind.SERVER


class TracedActor(Actor):
    """An :class:`Actor` whose events and commits are traced and measured."""

    __slots__ = ()

    async def deliver(self, event: Event) -> Any:
        """Run *event* inside a span, and record its duration."""
        telemetry = cast("Telemetry", self.runtime._telemetry)
        cls = self.namespace.object_class.__name__
        attributes: dict[str, Any] = {
            "pyobjects.namespace": self.namespace._binding_name,
            "pyobjects.event.kind": event.kind,
            "pyobjects.object.id": str(self.id),
        }
        if self.id.name is not None:
            attributes["pyobjects.object.name"] = self.id.name
        if type(event) is Call:
            name = f"{cls}/{event.name}"
            attributes["rpc.system"] = "pyobjects"
            attributes["rpc.service"] = cls
            attributes["rpc.method"] = event.name
        else:
            name = f"{cls} {event.kind}"
        measured = {
            "pyobjects.namespace": attributes["pyobjects.namespace"],
            "pyobjects.event.kind": event.kind,
        }
        started = perf_counter_ns()
        try:
            with telemetry.tracer.start_as_current_span(
                name, kind=telemetry.span_kind, attributes=attributes
            ):
                return await super().deliver(event)
        except BaseException as exc:
            measured["error.type"] = type(exc).__qualname__
            raise
        finally:
            telemetry.event_duration.record(
                (perf_counter_ns() - started) / 1e9, measured
            )

    def committed(self, batch: WriteBatch, elapsed_ns: int) -> None:
        """Count the commit, and record how long it took."""
        super().committed(batch, elapsed_ns)
        telemetry = cast("Telemetry", self.runtime._telemetry)
        telemetry.commit_duration.record(
            elapsed_ns / 1e9, {"pyobjects.namespace": self.namespace._binding_name}
        )
