"""What the CLI and its agent share: the socket's place, and the frames on it.

Kept to the standard library: the CLI imports this before deciding whether it needs anything
heavier.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import stat
import struct
import sys
from pathlib import Path
from typing import Any

import export_pipeline

#: Set to 0/off/false/no to run every command in the CLI's own process.
SWITCH = "EXPORT_PIPELINE_AGENT"
#: The agent exits after this many seconds without a request (default 900).
IDLE_SWITCH = "EXPORT_PIPELINE_AGENT_IDLE_SECONDS"
PACKAGE_DIR = Path(export_pipeline.__file__).resolve().parent

_FRAME = struct.Struct("!cq")  # kind, value: b"P" the child's pid, b"X" its exit code
_HEADER = struct.Struct("!I")
# A socket's path may have at most 107 bytes (sun_path); the names in the folder take 40.
_MAX_FOLDER = 64


def enabled(environ: dict[str, str] | os._Environ[str] = os.environ) -> bool:
    """Whether the CLI may use an agent (on unless EXPORT_PIPELINE_AGENT switches it off)."""
    return environ.get(SWITCH, "on").strip().lower() not in {"0", "off", "false", "no"}


def folder() -> Path:
    """This user's private folder for agent sockets, created 0700; refused if anyone else
    could reach into it."""
    path = (
        Path(os.environ.get("XDG_RUNTIME_DIR") or "/tmp") / f"export-pipeline-agent-{os.getuid()}"
    )
    if len(str(path)) > _MAX_FOLDER:
        path = Path("/tmp") / path.name
    path.mkdir(mode=0o700, exist_ok=True)
    info = path.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise PermissionError(f"{path} is not a private folder of this user")
    return path


def key(search_path: list[str]) -> str:
    """Names the agent for this interpreter, import path and code: an edited module, another
    virtualenv or another PYTHONPATH gets an agent of its own."""
    files = []
    for root, dirs, names in os.walk(PACKAGE_DIR):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for name in sorted(names):
            if name.endswith((".py", ".yaml")):
                info = os.stat(os.path.join(root, name))
                files.append((os.path.join(root, name), info.st_mtime_ns, info.st_size))
    text = json.dumps([sys.executable, search_path, str(PACKAGE_DIR), files])
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def socket_path() -> Path:
    """The agent's socket for this interpreter, import path and code."""
    return folder() / f"{key(search_path())}.sock"


def search_path() -> list[str]:
    """The import path an agent needs to import the same modules as this process."""
    # sys.path[0] is the script's folder (or the working directory): what the package
    # resolved to is pinned by PACKAGE_DIR's parent instead.
    return [str(PACKAGE_DIR.parent), *sys.path[1:]]


def send_request(sock: socket.socket, request: dict[str, Any], fds: list[int]) -> None:
    """The request as a length-prefixed JSON header, with the file descriptors attached."""
    body = json.dumps(request).encode()
    message = _HEADER.pack(len(body)) + body
    sent = socket.send_fds(sock, [message[:4096]], fds)
    sock.sendall(message[sent:])


def receive_request(sock: socket.socket) -> tuple[dict[str, Any], list[int]]:
    """The request and the file descriptors that came with it."""
    data, fds, _flags, _addr = socket.recv_fds(sock, 4096, 3)
    if len(data) < _HEADER.size:
        data += _read_exactly(sock, _HEADER.size - len(data))
    (length,) = _HEADER.unpack(data[: _HEADER.size])
    body = data[_HEADER.size :]
    body += _read_exactly(sock, length - len(body))
    return json.loads(body), list(fds)


def send_frame(sock: socket.socket, kind: bytes, value: int) -> None:
    """One frame: the child's pid (b"P") or its exit code (b"X")."""
    sock.sendall(_FRAME.pack(kind, value))


def receive_frame(sock: socket.socket) -> tuple[bytes, int] | None:
    """The next frame, or None if the other side is gone."""
    try:
        data = _read_exactly(sock, _FRAME.size)
    except ConnectionError:
        return None
    kind, value = _FRAME.unpack(data)
    return kind, value


def _read_exactly(sock: socket.socket, size: int) -> bytes:
    chunks = []
    while size > 0:
        chunk = sock.recv(size)
        if not chunk:
            raise ConnectionError("the other side closed the connection")
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)
