"""Log hygiene without a server: control characters escaped, query values redacted."""

from __future__ import annotations

import logging

from service.logs import (
    AccessQueryFilter,
    DrainNoticeFilter,
    PlainFormatter,
    escape_controls,
    redact_query,
)


def test_control_characters_become_escapes():
    assert escape_controls("a\nb\r\tc") == "a\\nb\\r\\tc"
    assert escape_controls("\x1b[31mred\x7f") == "\\x1b[31mred\\x7f"
    assert escape_controls("line\u2028sep") == "line\\u2028sep"
    assert escape_controls("plain é ü 日本") == "plain é ü 日本"


def test_query_values_are_redacted_except_the_api_parameters():
    assert redact_query("/classify") == "/classify"
    assert redact_query("/classify?top_k=3&threshold=0.5") == "/classify?top_k=3&threshold=0.5"
    assert redact_query("/x?token=s3cret&top_k=2") == "/x?token=***&top_k=2"
    assert redact_query("/x?flag&a=1&a=2") == "/x?flag=***&a=***&a=***"


def _record(msg: str, args: tuple, level: int = logging.INFO) -> logging.LogRecord:
    return logging.LogRecord("uvicorn.access", level, __file__, 1, msg, args, None)


def test_access_record_is_redacted_and_kept_on_one_line():
    record = _record('%s - "%s %s HTTP/%s" %d', ("1.2.3.4:5", "GET", "/a\nb?key=k", "1.1", 200))
    assert AccessQueryFilter().filter(record)
    line = PlainFormatter("%(message)s").format(record)
    assert line == '1.2.3.4:5 - "GET /a\\nb?key=*** HTTP/1.1" 200'


def test_uvicorn_drain_notice_is_a_warning_other_errors_stay():
    notice = _record("Cancel %s running task(s), timeout graceful shutdown exceeded", (2,), 40)
    other = _record("Exception in ASGI application\n", (), logging.ERROR)
    assert DrainNoticeFilter().filter(notice) and DrainNoticeFilter().filter(other)
    assert (notice.levelno, notice.levelname) == (logging.WARNING, "WARNING")
    assert other.levelno == logging.ERROR
