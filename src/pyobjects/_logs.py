"""Logging set-up of ``pyobjects serve``: text or JSON lines, one level for all.

The library itself only logs to the ``pyobjects`` logger (lifecycle events at
DEBUG and INFO, failures at WARNING and ERROR) and configures nothing; these
helpers are what the command line applies, through :mod:`logging.config`.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

__all__ = ["JsonFormatter", "serve_log_config"]

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message."""

    def format(self, record: logging.LogRecord) -> str:
        """Render *record*; an exception goes in ``exc_info`` as text."""
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def serve_log_config(level: str, *, json_lines: bool) -> dict[str, Any]:
    """A :func:`logging.config.dictConfig` for uvicorn's loggers and pyobjects'.

    *level* (``"debug"``, ``"info"``...) applies to all of them, so
    ``--log-level debug`` shows pyobjects' lifecycle events too.
    """
    formatter: dict[str, Any] = (
        {"()": f"{__name__}.JsonFormatter"} if json_lines else {"format": TEXT_FORMAT}
    )
    upper = level.upper()
    logger = {"handlers": ["stderr"], "level": upper, "propagate": False}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"default": formatter},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "default",
                "stream": "ext://sys.stderr",
            }
        },
        "loggers": {
            "pyobjects": logger,
            "uvicorn": logger,
            "uvicorn.error": {"level": upper},
            "uvicorn.access": logger,
        },
    }
