"""`export-pipeline serve`: uvicorn with a deadline for request headers, and our log lines.

uvicorn (0.55) has no header read timeout: a client that connects and never finishes its
headers holds its connection (and a file descriptor) until it goes away, and enough of them
exhaust the server (slowloris). `HeaderDeadlineProtocol` is uvicorn's h11 protocol with a
timer from the connection's start, or from the first byte of each later request on a
kept-alive connection, until the request's headers are in; when it fires the client gets a
408 in the H3 envelope and the connection is closed. The body has its own deadline in the
app (`app._body`), where the request is known.

h11 rather than httptools: h11 comes with uvicorn (httptools is only an optional extra),
and parsing speed does not matter next to a Dagster run per request.
"""

from __future__ import annotations

import asyncio
import copy
import json
from typing import Any

import h11
import uvicorn
from uvicorn.config import LOGGING_CONFIG
from uvicorn.protocols.http.h11_impl import H11Protocol

from export_pipeline.api.app import create_app
from export_pipeline.api.errors import RequestTimeoutError, envelope_body
from export_pipeline.settings import Settings


class HeaderDeadlineProtocol(H11Protocol):
    """uvicorn's h11 protocol, closing connections whose request headers are late."""

    header_timeout: float = 10.0  # set per server by `protocol_with_deadline`

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._start_deadline()  # a client that connects and says nothing is slow too

    def data_received(self, data: bytes) -> None:
        # The first byte of a later request on a kept-alive connection starts its clock (until
        # then uvicorn's keep-alive timeout closes an idle connection). h11 waits for a
        # request's headers in IDLE; not the rest of a body the app answered without reading.
        if self.conn.their_state is h11.IDLE:
            self._start_deadline()
        super().data_received(data)

    def handle_events(self) -> None:
        super().handle_events()
        # h11 leaves IDLE once a request's headers are parsed (or found invalid: ERROR, and
        # uvicorn answered 400); pipelined requests pass through here too.
        if self.conn.their_state is not h11.IDLE:
            self._cancel_deadline()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # Part of a pipelined request already in: its clock starts now, as no byte may follow.
        pending, _ = self.conn.trailing_data
        if self.conn.their_state is h11.IDLE and pending and not self.transport.is_closing():
            self._start_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_deadline()
        super().connection_lost(exc)

    def _start_deadline(self) -> None:
        if self._deadline is None:  # a running clock keeps running: it is per request
            self._deadline = self.loop.call_later(self.header_timeout, self._headers_late)

    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _headers_late(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        error = RequestTimeoutError(
            f"request headers not received within {self.header_timeout:g} s"
        )
        body = json.dumps(envelope_body(error.status, error.type_name, error.message)).encode()
        # Written directly: no request was parsed, so h11 has no response to send, and the
        # connection closes right after anyway.
        self.transport.write(
            b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body)
        )
        client = f"{self.client[0]}:{self.client[1]}" if self.client else "a client"
        self.logger.warning("%s - %s: answered 408, connection closed", client, error.message)
        self.transport.close()


def protocol_with_deadline(header_timeout: float) -> type[HeaderDeadlineProtocol]:
    """The protocol class uvicorn instantiates per connection, with this header timeout."""
    return type(
        "HeaderDeadlineProtocol", (HeaderDeadlineProtocol,), {"header_timeout": header_timeout}
    )


def log_config() -> dict[str, Any]:
    """uvicorn's logging, plus the API's own lines (disconnects, timeouts) in the same format."""
    config = copy.deepcopy(LOGGING_CONFIG)
    config["loggers"]["export_pipeline.api"] = {
        "handlers": ["default"],
        "level": "INFO",
        "propagate": False,
    }
    return config


def serve(host: str, port: int, settings: Settings) -> None:
    """Serve the API until interrupted; logs go to stderr, never keys or links."""
    config = uvicorn.Config(
        create_app(settings),
        host=host,
        port=port,
        http=protocol_with_deadline(settings.api_header_timeout_seconds),
        log_config=log_config(),
        log_level="info",
    )
    uvicorn.Server(config).run()
