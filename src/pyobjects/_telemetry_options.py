"""Where a runtime sends OpenTelemetry spans and metrics (a value type)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, final

__all__ = ["OpenTelemetry"]


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class OpenTelemetry:
    """Turn on OpenTelemetry spans and metrics for a runtime's events.

    ``Runtime(opentelemetry=OpenTelemetry())`` uses the global tracer and
    meter providers (configure them with the OpenTelemetry SDK); pass
    *tracer_provider* or *meter_provider* to use others. Needs
    ``pip install 'pyobjects[otel]'`` (``opentelemetry-api``); without an SDK
    configured, the API's no-op providers record nothing.
    """

    tracer_provider: Any = None
    meter_provider: Any = None
