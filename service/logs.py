"""Logging: plain or JSON lines, every record tagged with the current request id."""

from __future__ import annotations

import contextvars
import json
import logging
import logging.config
import time
from typing import Any

from service.config import Settings

REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("oltr_request_id", default="-")
PLAIN_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"


class RequestIdFilter(logging.Filter):
    """Adds ``record.request_id`` from the request context (``-`` outside requests)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = REQUEST_ID.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message, request_id (+ exc_info)."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", "-"),
        }
        if record.exc_info:
            doc["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(doc, ensure_ascii=False)


def log_config(settings: Settings) -> dict[str, Any]:
    """dictConfig for our loggers and uvicorn's (``python -m service`` passes it to uvicorn)."""
    formatter = {"()": JsonFormatter} if settings.json_logs else {"format": PLAIN_FORMAT}
    level = settings.log_level.upper()
    handler = {
        "class": "logging.StreamHandler",
        "formatter": "default",
        "filters": ["request_id"],
        "stream": "ext://sys.stderr",
    }
    logger = {"handlers": ["default"], "level": level, "propagate": False}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"request_id": {"()": RequestIdFilter}},
        "formatters": {"default": formatter},
        "handlers": {"default": handler},
        "loggers": {
            "oltr": logger,
            "uvicorn": logger,
            "uvicorn.error": {"level": level},
            "uvicorn.access": logger,
            "py.warnings": logger,
        },
    }


def configure_logging(settings: Settings) -> None:
    """Apply :func:`log_config` (idempotent); Python warnings go through it too."""
    logging.config.dictConfig(log_config(settings))
    logging.captureWarnings(True)
