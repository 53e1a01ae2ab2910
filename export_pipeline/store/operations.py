"""Operation records: what an export or ingest is about to create, recorded before creating it.

A crash (SIGKILL, a lost machine) then leaves a record beside its debris, and
`export_pipeline.recovery.sweep` reclaims the debris of every record whose owner is gone.

    record = store.operations.begin("export", export_id, paths=[scratch],
                                    storage=settings.storage_uri, storage_prefixes=[prefix])
    record.add(segments=[...])  # as more becomes known, before creating it
    record.end()                # after success, or after the owner cleaned up itself
    with store.operations.begin(...) as record:  # end() when the block succeeds; an
        ...                                      # exception leaves the record for the sweep

What a record may hold: `paths` (local folders or files: scratch, staging), `storage_prefixes`
(prefixes under the storage target `storage`, a URI as EXPORT_PIPELINE_STORAGE takes it) and
`segments` (absolute paths of segment files, or s3:// URIs of segments in S3, removed only
while no collection version lists them) and, for an export, `pins`: the segments of the
snapshot it reads, which no removal of retired segments takes while its owner lives
(store/pins.py, docs/contract.md D5). Its owner is (host name, pid, process start): the
start (the boot id and the start tick of /proc/<pid>/stat) keeps a reused pid from passing
for the owner. Records of another host cannot be checked: the sweep leaves them alone until
they are older than EXPORT_PIPELINE_RECOVERY_FOREIGN_MAX_AGE_SECONDS.
"""

from __future__ import annotations

import functools
import json
import os
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Literal

from export_pipeline.errors import ConflictError
from export_pipeline.settings import Settings
from export_pipeline.store.catalog import Catalog
from export_pipeline.store.database import Connection

# "removal": retired S3 segments forgotten by the catalog and not yet removed (store/pins.py)
Kind = Literal["export", "ingest", "removal"]


class StaleSnapshot(ConflictError):
    """A segment an export was about to pin was removed after it was planned (D5)."""


@functools.cache
def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def process_start(pid: int) -> str | None:
    """When process `pid` started ("<boot id>:<start tick>"); "" where /proc cannot say, None
    when there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    except OSError:
        return ""
    # The command name (field 2) may hold spaces and parentheses: fields follow the last ")".
    fields = stat[stat.rfind(")") + 2 :].split()
    return f"{_boot_id()}:{fields[19]}"  # field 22 of proc(5), starttime


@dataclass(frozen=True)
class Owner:
    """The process that owns a record or a run."""

    host: str
    pid: int
    started: str

    @classmethod
    def current(cls) -> Owner:
        """This process."""
        return cls.of(os.getpid())

    @classmethod
    def of(cls, pid: int) -> Owner:
        """A process of this host."""
        return cls(socket.gethostname(), pid, process_start(pid) or "")

    def alive(self) -> bool | None:
        """Whether the owner still runs; None for another host's process (it cannot tell)."""
        if self.host != socket.gethostname():
            return None
        started = process_start(self.pid)
        if started is None:
            return False
        if started and self.started:
            return started == self.started
        try:  # no /proc: the pid alone
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


def owner_gone(owner: Owner, started_at: float, settings: Settings) -> bool:
    """Whether a record's owner has ended: another host's only once the record is older than
    EXPORT_PIPELINE_RECOVERY_FOREIGN_MAX_AGE_SECONDS (it cannot be asked)."""
    alive = owner.alive()
    if alive is None:
        return time.time() - started_at > settings.recovery_foreign_max_age_seconds
    return not alive


@dataclass
class Operation:
    """One export's or ingest's record; `add` before creating more, `end` when done."""

    operations: Operations
    kind: Kind
    id: str
    owner: Owner
    started_at: float
    storage: str | None = None
    paths: list[str] = field(default_factory=list)
    storage_prefixes: list[str] = field(default_factory=list)
    segments: list[str] = field(default_factory=list)
    pins: list[str] = field(default_factory=list)

    def add(
        self,
        *,
        paths: Iterable[Path | str] = (),
        storage_prefixes: Iterable[str] = (),
        segments: Iterable[Path | str] = (),
    ) -> None:
        """Record more of what this operation is about to create (committed on return)."""
        self.paths += [str(p) for p in paths if str(p) not in self.paths]
        self.storage_prefixes += [p for p in storage_prefixes if p not in self.storage_prefixes]
        self.segments += [str(s) for s in segments if str(s) not in self.segments]
        self.operations.save(self)

    def end(self) -> None:
        """Forget the record: the operation succeeded, or removed what it created."""
        self.operations.end(self.id)

    def __enter__(self) -> Operation:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if kind is None:
            self.end()


class Operations:
    """The operations table of the catalog."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog

    def begin(
        self,
        kind: Kind,
        op_id: str,
        *,
        storage: str | None = None,
        paths: Iterable[Path | str] = (),
        storage_prefixes: Iterable[str] = (),
        segments: Iterable[Path | str] = (),
        pins: Iterable[str] = (),
        owner: Owner | None = None,
    ) -> Operation:
        """Record (committed) what an operation is about to create; `owner`: the process whose
        death makes it debris (default this one; a run's launcher when its steps run in
        processes of their own that end before the export does). `pins`: the segments (paths,
        URIs) an export reads; StaleSnapshot if one was removed already."""
        record = Operation(
            self,
            kind,
            op_id,
            owner or Owner.current(),
            time.time(),
            storage,
            [str(p) for p in paths],
            list(storage_prefixes),
            [str(s) for s in segments],
            list(pins),
        )
        from export_pipeline.store.pins import unavailable  # it imports this module

        with self.catalog.transaction() as db:
            self.insert(db, record)
            # Removers forget a segment in a write transaction before removing its file, and
            # skip what live records pin: checked in the transaction that pins, either they
            # saw the pin, or the segment is no longer listed nor retired here. Never both.
            gone = unavailable(db, self.catalog.home, record.pins)
            if gone:
                raise StaleSnapshot(f"segments removed after the export was planned: {gone}")
        return record

    def insert(self, db: Connection, record: Operation) -> None:
        """Write a new record in the caller's write transaction."""
        db.execute(
            "INSERT INTO operations (id, kind, host, pid, pid_started, started_at, storage,"
            " paths, storage_prefixes, segments, pins) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                record.id,
                record.kind,
                record.owner.host,
                record.owner.pid,
                record.owner.started,
                record.started_at,
                record.storage,
                *_lists(record),
                json.dumps(record.pins),
            ),
        )

    def save(self, record: Operation) -> None:
        """Write a record's lists (Operation.add)."""
        with self.catalog.transaction() as db:
            db.execute(
                "UPDATE operations SET paths = ?, storage_prefixes = ?, segments = ? WHERE id = ?",
                (*_lists(record), record.id),
            )

    def end(self, op_id: str) -> None:
        """Forget a record (none of that id: nothing happens)."""
        with self.catalog.transaction() as db:
            db.execute("DELETE FROM operations WHERE id = ?", (op_id,))

    def records(self) -> list[Operation]:
        """Every record, oldest first."""
        with self.catalog.reading() as db:
            rows = db.execute("SELECT * FROM operations ORDER BY started_at, id").fetchall()
        return [
            Operation(
                self,
                row["kind"],
                row["id"],
                Owner(row["host"], row["pid"], row["pid_started"]),
                row["started_at"],
                row["storage"],
                json.loads(row["paths"]),
                json.loads(row["storage_prefixes"]),
                json.loads(row["segments"]),
                json.loads(row["pins"]),
            )
            for row in rows
        ]


def _lists(record: Operation) -> tuple[str, str, str]:
    return (
        json.dumps(record.paths),
        json.dumps(record.storage_prefixes),
        json.dumps(record.segments),
    )
