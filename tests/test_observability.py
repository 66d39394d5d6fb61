"""What a runtime tells its operator: statistics, lifecycle logs (#17)."""

from __future__ import annotations

import json
import logging
import signal
import sys
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from pyobjects import (
    DurableObject,
    DurableObjectResetError,
    OpenTelemetry,
    PrometheusCollector,
    Request,
    Response,
    Runtime,
    Worker,
)
from pyobjects.asgi import App

from .helpers import serve_subprocess

if TYPE_CHECKING:
    from pathlib import Path

    from pyobjects import RuntimeStatistics
    from pyobjects.testing import ManualClock


class Writer(DurableObject):
    async def write(self, key: str, size: int) -> None:
        self.ctx.storage.put(key, b"x" * size)

    async def remove(self, key: str) -> None:
        self.ctx.storage.delete(key)

    async def quit(self) -> None:
        self.ctx.abort("operator test")


async def test_statistics_count_commit_time_and_bytes_written(
    manual_clock: ManualClock,
) -> None:
    async with Runtime(bindings={"W": Writer}, clock=manual_clock) as rt:
        assert rt.statistics().bytes_written == 0
        assert rt.statistics().commit_seconds == 0
        stub = rt.env.W.get_by_name("w")
        await stub.write("ab", 1_000)
        first = rt.statistics()
        # The value's msgpack encoding is a little longer than its 1,000 bytes.
        assert 1_002 < first.bytes_written < 1_020
        assert first.commit_seconds > 0
        await stub.remove("ab")
        second = rt.statistics()
        assert second.bytes_written == first.bytes_written + 2  # the key only
        assert second.commits == 2
        assert second.commit_seconds >= first.commit_seconds
        assert second.namespaces["W"].bytes_written == second.bytes_written
        await stub.write("é", 0)  # a key of two UTF-8 bytes
        third = rt.statistics()
        assert third.bytes_written - second.bytes_written == 2 + 2  # key + b""


async def test_lifecycle_events_are_logged(
    manual_clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="pyobjects")
    async with Runtime(
        bindings={"W": Writer}, clock=manual_clock, idle_timeout=1
    ) as rt:
        stub = rt.env.W.get_by_name("logged")
        await stub.write("k", 1)
        await manual_clock.advance(1_000)  # idle: evicted
        with pytest.raises(DurableObjectResetError):
            await stub.quit()
    lines = [
        (r.levelno, r.getMessage()) for r in caplog.records if r.name == "pyobjects"
    ]
    constructed = [m for level, m in lines if m.startswith("constructed Writer")]
    assert len(constructed) == 2  # before the eviction and after it
    assert "'logged'" in constructed[0]
    assert any(m.startswith("evicted Writer") for _, m in lines)
    resets = [(level, m) for level, m in lines if m.startswith("reset Writer")]
    assert len(resets) == 1
    assert resets[0][0] == logging.INFO
    assert "operator test" in resets[0][1]


def _samples(collector: object) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    registry = CollectorRegistry()
    registry.register(collector)  # type: ignore[arg-type]
    text = generate_latest(registry).decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def test_the_prometheus_collector_reads_the_statistics(
    manual_clock: ManualClock,
) -> None:
    async with Runtime(bindings={"W": Writer}, clock=manual_clock) as rt:
        stub = rt.env.W.get_by_name("w")
        await stub.write("k", 10)
        await stub.write("k", 10)
        samples = _samples(PrometheusCollector(rt))
        ns = (("namespace", "W"),)
        assert samples["pyobjects_events_total", (("kind", "call"), *ns)] == 2
        assert samples["pyobjects_events_total", (("kind", "alarm"), *ns)] == 0
        assert samples["pyobjects_commits_total", ns] == 2
        assert samples["pyobjects_live_objects", ns] == 1
        assert samples["pyobjects_written_bytes_total", ns] == (
            rt.statistics().bytes_written
        )
        assert samples["pyobjects_commit_duration_seconds_total", ns] > 0
        assert samples["pyobjects_events_in_flight", ()] == 0
        assert samples["pyobjects_pending_alarms", ns] == 0
    # A source that is not running (an App before its lifespan started)
    # gives no samples rather than failing the scrape.
    app = App(Worker(_not_found, bindings={"W": Writer}))
    assert _samples(PrometheusCollector(lambda: app.runtime.statistics())) == {}


async def _not_found(request: Request, env: object) -> Response:
    return Response("none", status=404)  # pragma: no cover - never served


def test_the_prometheus_collector_checks_its_source() -> None:
    with pytest.raises(TypeError, match="takes a Runtime or a function"):
        PrometheusCollector(42)


def test_serve_exposes_metrics(tmp_path: Path) -> None:
    process = serve_subprocess(
        "--memory",
        "--port",
        "0",
        "--metrics-port",
        "0",
        cwd=tmp_path,
    )
    try:
        assert process.stdout is not None
        url = process.stdout.readline().split(" at ")[1].split()[0]
        metrics_line = process.stdout.readline()
        assert metrics_line.startswith("pyobjects: metrics at http://127.0.0.1:")
        metrics_url = metrics_line.split(" at ")[1].strip()
        with httpx.Client(timeout=10) as client:
            assert client.get(url + "/m").text == "1"
            text = client.get(metrics_url).text
        assert 'pyobjects_events_total{kind="fetch",namespace="COUNTER"} 1.0' in text
        assert 'pyobjects_live_objects{namespace="COUNTER"} 1.0' in text
    finally:
        process.send_signal(signal.SIGINT)
        process.communicate(timeout=30)
    assert process.returncode == 0


async def test_the_collector_reads_again_when_a_dict_changed_under_it(
    manual_clock: ManualClock,
) -> None:
    async with Runtime(bindings={"W": Writer}, clock=manual_clock) as rt:
        await rt.env.W.get_by_name("w").write("k", 1)
        failures = [RuntimeError("dictionary changed size during iteration")] * 2

        def flaky() -> RuntimeStatistics:
            if failures:
                raise failures.pop()
            return rt.statistics()

        samples = _samples(PrometheusCollector(flaky))
        assert samples["pyobjects_commits_total", (("namespace", "W"),)] == 1

        def broken() -> RuntimeStatistics:
            raise RuntimeError("always")

        assert _samples(PrometheusCollector(broken)) == {}


def test_serve_logs_pyobjects_lifecycle_as_json_lines(tmp_path: Path) -> None:
    process = serve_subprocess(
        "--memory",
        "--port",
        "0",
        "--log-level",
        "debug",
        "--log-format",
        "json",
        cwd=tmp_path,
    )
    try:
        assert process.stdout is not None
        url = process.stdout.readline().split(" at ")[1].split()[0]
        with httpx.Client(timeout=10) as client:
            assert client.get(url + "/logged").text == "1"
    finally:
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    entries = [json.loads(line) for line in err.splitlines() if line.strip()]
    assert {"time", "level", "logger", "message"} <= entries[0].keys()
    lifecycle = [e for e in entries if e["logger"] == "pyobjects"]
    assert any(
        e["level"] == "DEBUG" and e["message"].startswith("constructed Counter")
        for e in lifecycle
    ), entries
    assert any(e["logger"] == "uvicorn.access" for e in entries)


def test_the_json_formatter_renders_exceptions() -> None:
    from pyobjects._logs import JsonFormatter

    try:
        raise ValueError("bad")
    except ValueError:
        record = logging.LogRecord(
            "pyobjects", logging.ERROR, __file__, 1, "failed %s", ("x",), sys.exc_info()
        )
    entry = json.loads(JsonFormatter().format(record))
    assert entry["message"] == "failed x"
    assert entry["level"] == "ERROR"
    assert "ValueError: bad" in entry["exc_info"]
    assert entry["time"].endswith("+00:00")


class Caller(DurableObject):
    async def relay(self, key: str) -> None:
        await self.env.W.get_by_name("callee").write(key, 3)

    async def boom(self) -> None:
        raise ValueError("boom")


def _providers() -> tuple[Any, Any, Any, Any]:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
        InMemorySpanExporter,
    )

    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    reader = InMemoryMetricReader()
    return tracer_provider, spans, MeterProvider(metric_readers=[reader]), reader


async def test_opentelemetry_traces_events_with_nested_calls(
    manual_clock: ManualClock,
) -> None:
    tracer_provider, spans, meter_provider, reader = _providers()
    telemetry = OpenTelemetry(
        tracer_provider=tracer_provider, meter_provider=meter_provider
    )
    async with Runtime(
        bindings={"W": Writer, "C": Caller},
        clock=manual_clock,
        opentelemetry=telemetry,
    ) as rt:
        await rt.env.C.get_by_name("caller").relay("k")
        with pytest.raises(ValueError, match="boom"):
            await rt.env.C.get_by_name("caller").boom()
    finished = {span.name: span for span in spans.get_finished_spans()}
    assert set(finished) == {"Caller/relay", "Writer/write", "Caller/boom"}
    outer, inner = finished["Caller/relay"], finished["Writer/write"]
    assert inner.parent is not None
    assert inner.parent.span_id == outer.context.span_id  # the call is a child
    assert outer.attributes is not None
    assert outer.attributes["rpc.system"] == "pyobjects"
    assert outer.attributes["rpc.service"] == "Caller"
    assert outer.attributes["rpc.method"] == "relay"
    assert outer.attributes["pyobjects.namespace"] == "C"
    assert outer.attributes["pyobjects.object.name"] == "caller"
    assert outer.attributes["pyobjects.event.kind"] == "call"
    failed = finished["Caller/boom"]
    assert not failed.status.is_ok
    assert failed.events[0].name == "exception"

    data = reader.get_metrics_data()
    points = {
        metric.name: metric.data.data_points
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        for metric in sm.metrics
    }
    events = {
        (p.attributes["pyobjects.namespace"], p.attributes.get("error.type")): p.count
        for p in points["pyobjects.event.duration"]
    }
    assert events == {("C", None): 1, ("W", None): 1, ("C", "ValueError"): 1}
    (commits,) = points["pyobjects.commit.duration"]
    assert commits.count == 1
    assert commits.attributes["pyobjects.namespace"] == "W"


def test_opentelemetry_takes_its_options_type() -> None:
    with pytest.raises(TypeError, match=r"takes a pyobjects\.OpenTelemetry"):
        Runtime(bindings={}, opentelemetry=True)  # type: ignore[arg-type]


async def test_without_opentelemetry_objects_are_not_traced(
    manual_clock: ManualClock,
) -> None:
    from pyobjects._core._telemetry import TracedActor
    from pyobjects.testing import run_in_durable_object

    async with Runtime(bindings={"W": Writer}, clock=manual_clock) as rt:
        stub = rt.env.W.get_by_name("w")
        traced = await run_in_durable_object(
            stub, lambda obj, ctx: _is_traced(ctx, TracedActor)
        )
        assert traced is False


async def _is_traced(ctx: Any, cls: type) -> bool:
    return isinstance(ctx._actor, cls)
