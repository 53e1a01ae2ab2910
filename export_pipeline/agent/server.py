"""The agent: imports and warms the export path once, then forks a child per command.

Single-threaded by design: a fork copies only the calling thread, so the agent starts no
threads and every request's work happens in its child.
"""

from __future__ import annotations

import contextlib
import gc
import io
import json
import os
import signal
import socket
import struct
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import NoReturn

from export_pipeline.agent import protocol

_POLL_SECONDS = 1.0
# What the agent's own environment must not leak into its warm-up run (a user's real
# instance, store or bucket); each child runs with its client's environment instead.
_PRIVATE_PREFIXES = ("EXPORT_PIPELINE_", "DAGSTER_", "AWS_")


def main(socket_path: str) -> None:
    """Warm up, listen on `socket_path` until idle, serve each connection in a fork."""
    idle_seconds = float(os.environ.get(protocol.IDLE_SWITCH) or 900)
    path = Path(socket_path)
    try:
        _warm_up()
        listener = _listen(path)
    except BaseException:
        # Said once in the log beside the socket; the CLI stops starting agents for this code.
        path.with_suffix(".failed").touch()
        raise
    inode = path.stat().st_ino
    last_request = time.monotonic()
    while True:
        _reap()
        try:
            conn, _ = listener.accept()
        except TimeoutError:
            if time.monotonic() - last_request > idle_seconds or not _owns(path, inode):
                break
            continue
        last_request = time.monotonic()
        if _peer_uid(conn) != os.getuid():
            conn.close()
            continue
        if os.fork() == 0:
            _child(listener, conn)
        conn.close()
    if _owns(path, inode):
        path.unlink(missing_ok=True)


def _listen(path: Path) -> socket.socket:
    # Bound under a private name, then renamed into place: a client never connects to a
    # half-made agent, and of two agents started at once the later one simply wins.
    staging = path.with_name(f"{path.name}.{os.getpid()}")
    staging.unlink(missing_ok=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(staging))
    os.chmod(staging, 0o600)
    listener.listen(64)
    listener.settimeout(_POLL_SECONDS)
    os.rename(staging, path)
    return listener


def _owns(path: Path, inode: int) -> bool:
    try:
        return path.stat().st_ino == inode
    except OSError:
        return False


def _peer_uid(conn: socket.socket) -> int:
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)[1]


def _reap() -> None:
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass


def _child(listener: socket.socket, conn: socket.socket) -> NoReturn:
    """The forked child's whole life: whatever happens (a signal handler raising, say), it
    ends in os._exit, never in the agent's loop or the interpreter's shutdown, which would
    tear down objects inherited from the agent."""
    code = 1
    try:
        listener.close()
        code = _serve(conn)
    finally:
        os._exit(code)


def _serve(conn: socket.socket) -> int:
    """In the forked child: become the client's process and run its command."""
    for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGCHLD):
        signal.signal(signum, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    conn.settimeout(None)
    try:
        request, fds = protocol.receive_request(conn)
        for target, fd in zip((0, 1, 2), fds, strict=True):
            os.dup2(fd, target)
            os.close(fd)
        os.environ.clear()
        os.environ.update(request["env"])
        os.chdir(request["cwd"])
        os.umask(request["umask"])
        time.tzset()
        tempfile.tempdir = None  # cached from the agent's environment by the warm-up
        sys.argv = ["export-pipeline", *request["argv"]]
        protocol.send_frame(conn, b"P", os.getpid())
    except Exception:
        return 1  # the client sees no pid and runs the command itself
    done = threading.Event()
    threading.Thread(target=_exit_with_client, args=(conn, done), daemon=True).start()
    code = _run(request["argv"])
    done.set()
    protocol.send_frame(conn, b"X", code)
    return code


def _run(argv: list[str]) -> int:
    from export_pipeline import cli

    try:
        code = cli.main(argv, use_agent=False)
    except KeyboardInterrupt:
        code = 130
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    return code


def _exit_with_client(conn: socket.socket, done: threading.Event) -> None:
    # A client killed outright (SIGKILL) cannot forward anything: its closed connection is
    # the signal, and the child stops as the CLI's own process would have on SIGTERM.
    with contextlib.suppress(OSError):
        while conn.recv(1):
            pass
    if not done.is_set():  # else the client left after its exit code: nothing to stop
        os.kill(os.getpid(), signal.SIGTERM)


def _warm_up() -> None:
    """Run a tiny export end to end in a throwaway home, so every lazily imported module of
    the export path is loaded before the first fork."""
    from export_pipeline import cli, duck
    from export_pipeline.demo import DEMO_INDEXES, DEMO_REQUEST, demo_documents, write_jsonl

    for name in [name for name in os.environ if name.startswith(_PRIVATE_PREFIXES)]:
        del os.environ[name]
    with tempfile.TemporaryDirectory(prefix="export-pipeline-agent-") as folder:
        os.environ["EXPORT_PIPELINE_HOME"] = f"{folder}/home"
        source = write_jsonl(demo_documents(20), Path(folder) / "warm.jsonl")
        request = Path(folder) / "request.json"
        request.write_text(json.dumps(DEMO_REQUEST))
        indexes = [f"{i.name}:{i.dimensions}:{i.type}" for i in DEMO_INDEXES]
        commands = [
            ["namespace", "create", "warm"],
            ["collection", "create", "docs", "-n", "warm"],
            ["ingest", "docs", str(source), "-n", "warm"],
            ["export", "docs", "-n", "warm", "--request", str(request), "--include-vectors"],
            ["export", "docs", "-n", "warm", "--format", "csv", "--sample-size", "5"],
            ["export", "docs", "-n", "warm", "--format", "parquet"],
        ]
        commands[1] += [flag for spec in indexes for flag in ("--vector-index", spec)]
        with contextlib.redirect_stdout(io.StringIO()):
            for command in commands:
                if cli.main(command, use_agent=False) != 0:
                    raise RuntimeError(f"warm-up failed: export-pipeline {' '.join(command)}")
        del os.environ["EXPORT_PIPELINE_HOME"]
    duck.close_shared()  # a DuckDB connection must not cross a fork
    if threading.active_count() != 1:
        raise RuntimeError(f"threads left after warm-up: {threading.enumerate()}")
    gc.collect()
    gc.freeze()  # children share these pages instead of copying them on their first gc
