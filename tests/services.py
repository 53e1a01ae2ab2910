"""Real PostgreSQL and Redis servers for the tests: Debian's packages, each started in a
temporary folder on a free loopback port and stopped afterwards (nothing of the packages' own
system services is used). Where a package is missing the tests that need it skip with the
reason, except under CI=true, where they fail: CI installs both (.ci/run)."""

from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from helpers import free_port


def unavailable(reason: str) -> None:
    """Skip the test for want of a package; under CI a missing package is a failure."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (CI installs it: .ci/run)")
    pytest.skip(reason)


def _postgres_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"))
    return Path(found[-1]).parent if found else None


class PostgresServer:
    """A PostgreSQL cluster in a temporary folder, run as the `postgres` user (PostgreSQL
    refuses root), trusting loopback connections."""

    def __init__(self, bin_dir: Path, folder: Path) -> None:
        self.bin_dir, self.folder = bin_dir, folder
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def _as_postgres(self, *argv: str) -> list[str]:
        return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else list(argv)

    def start(self) -> None:
        data = self.folder / "data"
        self.folder.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.folder, "postgres", "postgres")
        subprocess.run(
            self._as_postgres(
                str(self.bin_dir / "initdb"), "-D", str(data), "--auth=trust", "-U", "postgres"
            ),
            check=True,
            capture_output=True,
        )
        self.process = subprocess.Popen(
            self._as_postgres(
                str(self.bin_dir / "postgres"),
                "-D",
                str(data),
                "-p",
                str(self.port),
                "-k",
                str(self.folder),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "fsync=off",
                "-c",
                "max_connections=200",
            ),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 60
        while not self._ready():
            if self.process.poll() is not None:
                raise RuntimeError(f"postgres exited with {self.process.returncode}")
            if time.monotonic() > deadline:
                raise RuntimeError("postgres did not become ready in 60 s")
            time.sleep(0.1)

    def _ready(self) -> bool:
        done = subprocess.run(
            [str(self.bin_dir / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port)],
            capture_output=True,
        )
        return done.returncode == 0

    def url(self, database: str = "postgres") -> str:
        """A connection URL for `database`."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self) -> str:
        """A new empty database; its URL."""
        import psycopg

        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url(), autocommit=True) as con:
            con.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            try:  # the postmaster itself (runuser would pass on SIGTERM, a smart shutdown
                # that waits for every client): SIGINT is the fast shutdown
                pid = int((self.folder / "data" / "postmaster.pid").read_text().split()[0])
                os.kill(pid, signal.SIGINT)
            except (OSError, ValueError, IndexError):
                self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class RedisServer:
    """redis-server on a loopback port, persisting nothing."""

    def __init__(self, binary: str, folder: Path) -> None:
        self.binary, self.folder = binary, folder
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.folder),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        import redis

        deadline = time.monotonic() + 30
        while True:
            try:
                redis.Redis(host="127.0.0.1", port=self.port).ping()
                return
            except redis.ConnectionError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.05)

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)


@contextmanager
def _running(server: PostgresServer | RedisServer, folder: Path) -> Iterator[Any]:
    """`server` started, then stopped and its folder removed."""
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)


@contextmanager
def postgres_server() -> Iterator[PostgresServer]:
    """A running PostgreSQL server, stopped and removed afterwards."""
    bin_dir = _postgres_bin()
    if bin_dir is None:
        unavailable("PostgreSQL is not installed (Debian package postgresql)")
    assert bin_dir is not None
    folder = Path(tempfile.mkdtemp(prefix="pg-"))
    folder.chmod(0o755)  # the postgres user reaches its cluster folder inside
    with _running(PostgresServer(bin_dir, folder / "cluster"), folder) as server:
        yield server


@contextmanager
def redis_server() -> Iterator[RedisServer]:
    """A running redis-server, stopped and removed afterwards."""
    binary = shutil.which("redis-server")
    if binary is None:
        unavailable("redis-server is not installed (Debian package redis-server)")
    assert binary is not None
    folder = Path(tempfile.mkdtemp(prefix="redis-"))
    with _running(RedisServer(binary, folder), folder) as server:
        yield server


class LocalS3:
    """moto's S3 server on a loopback port; it can be stopped and started again on that port
    (its buckets live in this process, so they survive a restart)."""

    def __init__(self) -> None:
        self.port = 0
        self.server: Any = None

    @property
    def endpoint(self) -> str:
        """The server's base URL."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Serve (again) on the same port."""
        from moto.server import ThreadedMotoServer

        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.server.start()
        self.port = self.server.get_host_and_port()[1]

    def stop(self) -> None:
        """Stop answering; connections are refused until start()."""
        self.server.stop()
