"""Logging: plain or JSON lines, every record tagged with the current request id.

Log lines are safe to parse whatever clients send: control characters in a message (a newline
in a URL path or a reload path) are escaped, so one record is one line, and the access log
keeps the names of query parameters but only the values of :data:`LOGGED_QUERY_PARAMS`
(a token or other secret put in a query string never reaches the log)."""

from __future__ import annotations

import contextvars
import json
import logging
import logging.config
import re
import time
from typing import Any
from urllib.parse import parse_qsl, quote

from service.config import Settings

REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("oltr_request_id", default="-")
PLAIN_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"
LOGGED_QUERY_PARAMS = frozenset({"threshold", "top_k"})
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def escape_controls(text: str) -> str:
    """``text`` with control characters written as escapes (``\\n``, ``\\x1b``, ...)."""
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


def redact_query(path: str) -> str:
    """``path?query`` with every value but those of LOGGED_QUERY_PARAMS replaced by ``***``."""
    base, sep, query = path.partition("?")
    if not sep:
        return path
    pairs = parse_qsl(query, keep_blank_values=True)
    shown = [f"{quote(k)}={quote(v) if k in LOGGED_QUERY_PARAMS else '***'}" for k, v in pairs]
    return f"{base}?{'&'.join(shown)}"


class AccessQueryFilter(logging.Filter):
    """Redacts query values in uvicorn's access records (args: client, method, path, ...)."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str):
            record.args = (*args[:2], redact_query(args[2]), *args[3:])
        return True


class DrainNoticeFilter(logging.Filter):
    """uvicorn reports requests it cancels at the end of the shutdown deadline at ERROR; that
    is the drain working as configured (each gets a JSON 503), so it becomes a WARNING."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.ERROR and str(record.msg).startswith("Cancel %s running"):
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


class PlainFormatter(logging.Formatter):
    """The plain format with control characters in the message escaped (one record, one line;
    tracebacks keep their lines)."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 -- logging API
        record.message = escape_controls(record.message)
        return super().formatMessage(record)


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
    formatter = (
        {"()": JsonFormatter}
        if settings.json_logs
        else {"()": PlainFormatter, "format": PLAIN_FORMAT}
    )
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
        "filters": {
            "request_id": {"()": RequestIdFilter},
            "access_query": {"()": AccessQueryFilter},
            "drain_notice": {"()": DrainNoticeFilter},
        },
        "formatters": {"default": formatter},
        "handlers": {"default": handler},
        "loggers": {
            "oltr": logger,
            "uvicorn": logger,
            "uvicorn.error": {"level": level, "filters": ["drain_notice"]},
            "uvicorn.access": {**logger, "filters": ["access_query"]},
            "py.warnings": logger,
        },
    }


def configure_logging(settings: Settings) -> None:
    """Apply :func:`log_config` (idempotent); Python warnings go through it too."""
    logging.config.dictConfig(log_config(settings))
    logging.captureWarnings(True)
