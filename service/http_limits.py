"""HTTP/1.1 limits for uvicorn's httptools protocol, which has none of its own.

uvicorn's h11 protocol bounds the request head (``h11_max_incomplete_event_size``) but is pure
Python and slower; its httptools protocol (the C parser, chosen here deliberately) accepts heads
of any size, any number of header fields, and waits forever for a stalled head or body. This
subclass adds, from :class:`service.config.Settings`:

- ``max_header_bytes``: the request line and headers together; the bytes of a head are fed to
  the parser in slices that never pass the limit, so an oversized head is refused (431)
  before it is buffered;
- ``max_headers``: header fields per request (431);
- ``header_timeout_s``: a connection must deliver a complete head within this long after its
  first byte (or after connecting), however slowly it trickles in (408, closed);
- ``read_timeout_s``: the longest pause while a body is being received (408, closed); time
  in which the app is not reading (flow control) does not count;
- ``max_requests_per_connection``: then ``Connection: close``; idle keep-alive connections
  are closed after ``keepalive_timeout_s`` by uvicorn itself.

It also drains keep-alive connections without losing a request on SIGTERM (:meth:`shutdown`).

Refusals are JSON, like every error of the service. ``python -m service`` installs the protocol;
plain uvicorn needs ``--http service.http_limits:LimitedHttpToolsProtocol`` (limits then come
from the environment).
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from typing import Any, ClassVar

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from service.config import Settings, load_settings
from service.errors import error_body

log = logging.getLogger("oltr.service")


@dataclass(frozen=True)
class HttpLimits:
    max_header_bytes: int
    max_headers: int
    header_timeout_s: float
    read_timeout_s: float
    max_requests_per_connection: int

    @classmethod
    def from_settings(cls, settings: Settings) -> HttpLimits:
        return cls(
            max_header_bytes=settings.max_header_bytes,
            max_headers=settings.max_headers,
            header_timeout_s=settings.header_timeout_s,
            read_timeout_s=settings.read_timeout_s,
            max_requests_per_connection=settings.max_requests_per_connection,
        )


class _Refused(Exception):
    """Raised inside a parser callback to stop parsing (httptools wraps it)."""


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol plus :class:`HttpLimits` (see the module docstring)."""

    limits: ClassVar[HttpLimits | None] = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if LimitedHttpToolsProtocol.limits is None and type(self).limits is None:
            LimitedHttpToolsProtocol.limits = HttpLimits.from_settings(load_settings())
        self._limits: HttpLimits = type(self).limits  # type: ignore[assignment]
        self._in_head = True
        self._head_bytes = 0
        self._header_count = 0
        self._in_body = False
        self._served = 0
        self._refusal: tuple[int, str, str] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._last_data = 0.0
        self._draining = False

    # -- connection events -----------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._last_data = self.loop.time()
        self._arm(self._limits.header_timeout_s)

    def shutdown(self) -> None:
        """Graceful shutdown (SIGTERM) that leaves idle keep-alive connections open.

        uvicorn closes them at once, and a proxy that sends a request on one at that instant
        gets a reset it may not retry (nginx never retries a POST it has sent): a lost request.
        Here the next request on the connection is served with ``Connection: close``, and a
        connection that stays idle closes at ``keepalive_timeout_s`` as in normal service, by
        when a proxy whose own keep-alive timeout is shorter has dropped it.
        """
        self._draining = True
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.keep_alive = False

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._last_data = self.loop.time()
        limit = self._limits.max_header_bytes
        while data and self._in_head and not self.transport.is_closing():
            if self._timer is None:  # first byte of a request on a kept-alive connection
                self._arm(self._limits.header_timeout_s)
            room = limit - self._head_bytes
            if room <= 0:
                self._refuse(431, "header_too_large", f"request head over {limit} bytes")
                return
            piece, data = data[:room], data[room:]
            self._head_bytes += len(piece)
            super().data_received(piece)
        if data and not self.transport.is_closing():
            super().data_received(data)
        if self._in_body and self._timer is None:
            self._arm(self._limits.read_timeout_s)

    # -- parser callbacks ------------------------------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        if self._header_count > self._limits.max_headers:
            self._refusal = (
                431,
                "too_many_headers",
                f"more than {self._limits.max_headers} header fields",
            )
            raise _Refused
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        self._in_head, self._in_body = False, True
        self._disarm()
        self._served += 1
        cycle = self.cycle
        last = self._draining or self._served >= self._limits.max_requests_per_connection
        if last and cycle is not None:
            cycle.keep_alive = False

    def on_message_complete(self) -> None:
        self._in_head, self._in_body = True, False
        self._head_bytes = self._header_count = 0
        self._disarm()
        super().on_message_complete()

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to a parse error (or to a callback's refusal), as JSON."""
        status, code, message = self._refusal or (400, "bad_request", "invalid HTTP request")
        self._refuse(status, code, message)

    # -- timers ------------------------------------------------------------------------------
    def _arm(self, delay: float) -> None:
        self._disarm()
        self._timer = self.loop.call_later(delay, self._on_timer)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _on_timer(self) -> None:
        self._timer = None
        if self.transport.is_closing():
            return
        if self._in_body:
            idle = self.loop.time() - self._last_data
            app_holds_it = self.flow.read_paused or self.cycle.waiting_for_100_continue
            if app_holds_it or idle < self._limits.read_timeout_s:
                self._arm(self._limits.read_timeout_s - (0 if app_holds_it else idle))
                return
            limit = self._limits.read_timeout_s
            self._refuse(408, "request_timeout", f"request body stalled for {limit:g} s")
        elif self.cycle is not None and not self.cycle.response_complete:
            self._arm(self._limits.header_timeout_s)  # a pipelined head waits for a response
        else:
            limit = self._limits.header_timeout_s
            self._refuse(408, "request_timeout", f"no complete request head within {limit:g} s")

    # -- answers -----------------------------------------------------------------------------
    def _refuse(self, status: int, code: str, message: str) -> None:
        """Answer ``status`` with the JSON error body (when one fits) and close."""
        client = f"{self.client[0]}:{self.client[1]}" if self.client else "-"
        log.info("HTTP %d to %s: %s", status, client, message)
        if self._may_answer():
            body = json.dumps(error_body(code, message, "-")).encode()
            head = [
                STATUS_LINE[status],
                b"content-type: application/json\r\n",
                b"content-length: %d\r\n" % len(body),
                b"connection: close\r\n",
                b"\r\n",
            ]
            self.transport.write(b"".join(head) + body)
        self.transport.close()

    def _may_answer(self) -> bool:
        """Whether an error response fits now: inside a body, unless the app has started its
        own answer; between requests, unless a pipelined response is still being written."""
        cycle = self.cycle
        if self._in_body:
            return cycle is not None and not cycle.response_started
        return cycle is None or cycle.response_complete


def protocol_for(settings: Settings) -> type[LimitedHttpToolsProtocol]:
    """The protocol class uvicorn should use for ``settings`` (``uvicorn.run(http=...)``)."""
    limits = HttpLimits.from_settings(settings)
    return type("ConfiguredHttpProtocol", (LimitedHttpToolsProtocol,), {"limits": limits})
