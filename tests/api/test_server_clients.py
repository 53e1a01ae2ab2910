"""Clients that send too little, too slowly or too deep, against the real server
(`export-pipeline serve` in a subprocess on a loopback port), spoken to over raw sockets.

A connection that never finishes its headers is not held open for good, one that hangs up mid-body
logs one INFO line and no traceback, and a body nested 10,000 levels is a 422 (README: The HTTP API,
slow clients; docs/contract.md H3). Each test checks the status and message a client sees, the log,
and that nothing was launched or published.
"""

from __future__ import annotations

import json
import os
import socket
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import pytest
from helpers import PEOPLE, files_under, running_server

from export_pipeline.orchestration.instance import local_instance
from export_pipeline.settings import Settings
from export_pipeline.store import Store

pytestmark = pytest.mark.slow  # a server with warm workers, and deadlines to wait out

TIMEOUT = 2  # seconds, for headers and bodies alike (the defaults are 10 and 30)
EXPORT = "/v1/collections/people/export"


@dataclass
class Served:
    url: str
    port: int
    home: Path
    key: str
    log: Path

    def connect(self) -> socket.socket:
        """A raw connection; reads give up after 30 s, so a server that never closes fails."""
        return socket.create_connection(("127.0.0.1", self.port), timeout=30)

    def request_head(self, length: int) -> bytes:
        """An authorised export request's headers, announcing a body of `length` bytes."""
        return (
            f"POST {EXPORT} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {self.key}\r\n"
            f"X-Namespace: team-a\r\nContent-Type: application/json\r\n"
            f"Content-Length: {length}\r\n\r\n"
        ).encode()

    def outcome(self) -> tuple[int, int]:
        """(Dagster runs recorded, files published) so far. Runs are counted in the instance:
        its folder also holds the event log each idle worker prepares for its next run."""
        runs = local_instance(Settings(home=self.home)).get_runs_count()
        return runs, len(files_under(self.home / "exports"))

    def log_size(self) -> int:
        return self.log.stat().st_size

    def log_since(self, offset: int) -> str:
        return self.log.read_bytes()[offset:].decode()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("clients")
    home = root / "home"
    env = {
        **os.environ,
        "EXPORT_PIPELINE_HOME": str(home),
        "EXPORT_PIPELINE_API_HEADER_TIMEOUT_SECONDS": str(TIMEOUT),
        "EXPORT_PIPELINE_API_BODY_TIMEOUT_SECONDS": str(TIMEOUT),
    }
    for name in ("DAGSTER_HOME", "EXPORT_PIPELINE_STORAGE"):
        env.pop(name, None)
    store = Store(Settings(home=home))
    namespace = store.catalog.create_namespace("team-a")
    people = store.catalog.create_collection(namespace, "people", [])
    source = root / "people.jsonl"
    source.write_text("".join(json.dumps(doc) + "\n" for doc in PEOPLE))
    store.ingest(namespace.id, people.id, source)
    key, _ = store.keys.create([namespace], "clients test")
    log = root / "server.log"
    with running_server(env, log) as url:
        yield Served(url, int(url.rsplit(":", 1)[1]), home, key, log)


def read_response(stream: BinaryIO) -> tuple[int, dict[str, str], Any]:
    """One HTTP response off a connection: status, headers (lower-case), JSON body."""
    status_line = stream.readline()
    assert status_line.startswith(b"HTTP/1.1 "), status_line
    headers = {}
    while (line := stream.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode().partition(":")
        headers[name.strip().lower()] = value.strip()
    body = stream.read(int(headers["content-length"]))
    return int(status_line.split()[1]), headers, json.loads(body)


def timeout_envelope(message: str) -> dict[str, Any]:
    """H3, as the 408s carry it."""
    error = {"message": message, "type": "RequestTimeoutError", "details": None}
    return {"success": False, "status": 408, "error": error}


def healthz(served: Served) -> int:
    with urllib.request.urlopen(served.url + "/healthz", timeout=10) as response:
        return response.status


def export(served: Served, body: bytes) -> tuple[int, Any]:
    request = urllib.request.Request(served.url + EXPORT, data=body, method="POST")
    request.add_header("Content-Type", "application/json")
    request.add_header("Authorization", f"Bearer {served.key}")
    request.add_header("X-Namespace", "team-a")
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_40_connections_that_never_finish_their_headers_get_408_and_are_closed(
    served: Served,
) -> None:
    runs, published = served.outcome()
    offset = served.log_size()
    started = time.monotonic()
    stalled = [served.connect() for _ in range(40)]
    for number, connection in enumerate(stalled):
        if number % 2:  # half start a request and stop before the blank line; half say nothing
            connection.sendall(f"POST {EXPORT} HTTP/1.1\r\nHost: 127.0.0.1\r\n".encode())
    # Meanwhile the server answers others, health and a real export alike.
    assert healthz(served) == 200
    assert time.monotonic() - started < TIMEOUT  # while all 40 were still held
    status, response = export(served, b'{"format": "json"}')
    assert status == 200 and response["document_count"] == len(PEOPLE), response
    answers = []
    for connection in stalled:
        with connection, connection.makefile("rb") as stream:
            answers.append(read_response(stream))
            assert stream.read() == b""  # and closed
    assert time.monotonic() - started >= TIMEOUT  # by the deadline, not at once
    message = f"request headers not received within {TIMEOUT} s"
    for status, headers, body in answers:
        assert (status, headers["connection"], body) == (408, "close", timeout_envelope(message))
    log = served.log_since(offset)
    assert log.count(f"{message}: answered 408, connection closed") == 40
    assert "Traceback" not in log and "ERROR" not in log
    assert served.outcome() == (runs + 1, published + 2)  # the export's file and manifest only


@pytest.mark.parametrize("pipelined", [False, True], ids=["after the answer", "pipelined"])
def test_a_late_next_request_on_a_kept_alive_connection_gets_408(
    served: Served, pipelined: bool
) -> None:
    first = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    unfinished = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    with served.connect() as connection, connection.makefile("rb") as stream:
        if pipelined:
            connection.sendall(first + unfinished)
        else:
            connection.sendall(first)
        assert read_response(stream)[::2] == (200, {"status": "ok"})
        if not pipelined:
            connection.sendall(unfinished)
        status, _, body = read_response(stream)
        assert stream.read() == b""
    assert (status, body) == (
        408,
        timeout_envelope(f"request headers not received within {TIMEOUT} s"),
    )


def test_a_body_that_never_completes_gets_408_and_launches_nothing(served: Served) -> None:
    before, offset = served.outcome(), served.log_size()
    with served.connect() as connection, connection.makefile("rb") as stream:
        connection.sendall(served.request_head(100) + b'{"format"')
        status, headers, body = read_response(stream)
        assert stream.read() == b""
    message = f"request body not received within {TIMEOUT} s (9 bytes arrived)"
    assert (status, headers["connection"], body) == (408, "close", timeout_envelope(message))
    log = served.log_since(offset)
    assert log.count(f"POST {EXPORT}: {message}; answered 408, connection closed") == 1
    assert "Traceback" not in log and "ERROR" not in log
    assert served.outcome() == before


def test_a_client_hanging_up_mid_body_is_one_log_line(served: Served) -> None:
    before, offset = served.outcome(), served.log_size()
    with served.connect() as connection:
        connection.sendall(served.request_head(100) + b'{"format"')
    line = f"POST {EXPORT}: disconnected before sending the whole request"
    deadline = time.monotonic() + 30
    while line not in served.log_since(offset):  # the log line is the only sign: poll it
        assert time.monotonic() < deadline, served.log_since(offset)
        time.sleep(0.05)
    log = served.log_since(offset)
    assert log.count(line) == 1 and len(log.splitlines()) == 1, log
    assert log.startswith("INFO:") and "Traceback" not in log
    assert served.outcome() == before


def test_a_body_nested_10000_levels_is_422_with_its_location(served: Served) -> None:
    before, offset = served.outcome(), served.log_size()
    deep = b'{"filters": ' * 10_000 + b"{}" + b"}" * 10_000
    status, body = export(served, deep)
    message = "nested deeper than 64 levels (at line 1, column 769)"
    assert (status, body["error"]["type"]) == (422, "ValidationError")
    assert body["error"]["message"] == f"the body is {message}"
    assert body["error"]["details"] == [{"loc": "(body)", "msg": message}]
    log = served.log_since(offset)
    assert f'"POST {EXPORT} HTTP/1.1" 422' in log
    assert "Traceback" not in log and "ERROR" not in log
    assert served.outcome() == before
