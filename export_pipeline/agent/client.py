"""The CLI's side: hand a command to a warm agent, or start one for the next command."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
from types import FrameType

from export_pipeline.agent import protocol
from export_pipeline.errors import ExportPipelineError

# Signals a user sends the CLI reach the child that does the work, as they would reach the
# CLI's own process without an agent.
_FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)


def run(argv: list[str]) -> int | None:
    """Run the command in the agent and return its exit code; None when no agent answers
    (the caller then runs the command itself)."""
    if not protocol.enabled():
        return None
    try:
        for fd in (0, 1, 2):  # a closed stdin or stdout: run in-process, as without an agent
            os.fstat(fd)
        path = protocol.socket_path()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(str(path))
    except OSError:
        return None
    with sock:
        request = {"argv": argv, "env": dict(os.environ), "cwd": os.getcwd(), "umask": _umask()}
        try:
            protocol.send_request(sock, request, [0, 1, 2])
        except OSError:
            return None
        started = protocol.receive_frame(sock)
        if started is None or started[0] != b"P":  # nothing ran yet: safe to run in-process
            return None
        return _wait(sock, started[1])


def _wait(sock: socket.socket, child: int) -> int:
    """Forward signals to the child until it reports its exit code."""
    received: list[int] = []

    def forward(signum: int, _frame: FrameType | None) -> None:
        received.append(signum)
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signum)

    for signum in _FORWARDED:
        signal.signal(signum, forward)
    finished = protocol.receive_frame(sock)
    if finished is not None and finished[0] == b"X":
        return finished[1]
    if received:  # the child died of the signal: so does the CLI, as it would have
        signal.signal(received[-1], signal.SIG_DFL)
        os.kill(os.getpid(), received[-1])
    message = "the export-pipeline agent's worker ended without an exit code"
    print(json.dumps({"error": ExportPipelineError(message).to_dict()}))
    return 1


def start() -> None:
    """Start an agent in the background for the commands that follow (best effort)."""
    if not protocol.enabled():
        return
    try:
        path = protocol.socket_path()
        if path.with_suffix(".failed").exists():  # this code's agent could not start: no retry
            return
        log = open(path.with_suffix(".log"), "ab")  # noqa: SIM115 - handed to the child
    except OSError:
        return
    with log:
        # -c with the import path spelled out: the agent imports the very modules this
        # process did, whatever folder it was started from.
        code = (
            "import sys, json; sys.path[:] = json.loads(sys.argv[2]); "
            "from export_pipeline.agent.server import main; main(sys.argv[1])"
        )
        subprocess.Popen(
            [sys.executable, "-c", code, str(path), json.dumps(protocol.search_path())],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=log,
            cwd="/",
            start_new_session=True,
            close_fds=True,
        )


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
