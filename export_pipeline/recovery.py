"""The sweep: reclaim what dead exports and ingests left (scratch, staging, objects, segments).

`sweep(settings, store, storage)` removes, for every operation record (store/operations.py)
whose owner process is gone, its paths, its storage prefixes (all objects and incomplete
multipart uploads under them; a prefix holding a manifest is a complete export and stays) and
its segments no collection version lists, then the record. It also removes debris no record
accounts for once nothing touched it for EXPORT_PIPELINE_RECOVERY_GRACE_SECONDS (default one
hour): `<scratch>/exp_*`, `<exports>/.staging/*`, `collections/*/*/staging/stg_*`, and segment
files no collection lists and no retention keeps. Live records protect what they list. It
also removes retired segments past EXPORT_PIPELINE_SEGMENT_RETENTION_SECONDS that no running
export pins (store/pins.py, docs/contract.md D5), as every change to a collection does.

It is safe beside live exports and ingests of other processes (their records are live, their
fresh files younger than the grace period) and beside another sweep (one at a time per home,
the other returns at once). `sweep_quietly` is the one line an entry point adds: it never
fails its caller and costs well under 5 ms on a home with nothing to reclaim.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from export_pipeline.errors import TransientStorageError
from export_pipeline.settings import Settings
from export_pipeline.storage import LocalStorage, Storage, open_storage
from export_pipeline.store import Store
from export_pipeline.store.catalog import catalog_path
from export_pipeline.store.operations import Operation, owner_gone
from export_pipeline.store.pins import expire_retired
from export_pipeline.store.segment_files import SHAPES_SUFFIX

log = logging.getLogger(__name__)
MANIFEST = "manifest.json"


@dataclass
class SweepReport:
    """What one sweep removed."""

    records: int = 0  # records of dead operations reclaimed and forgotten
    paths: int = 0  # folders and files removed (scratch, staging)
    objects: int = 0  # storage objects (or published files) removed
    multipart_uploads: int = 0  # incomplete multipart uploads aborted
    segments: int = 0  # segment files removed (their sidecars with them)
    kept: int = 0  # records left: live owners, or another host's not yet too old
    runs_failed: int = 0  # Dagster runs of dead processes marked failed (orchestration)
    skipped: str | None = None  # why nothing was done (another sweep is running)
    errors: list[str] = field(default_factory=list)  # records left for the next sweep

    def as_dict(self) -> dict[str, Any]:
        """The report as JSON-ready data."""
        return asdict(self)


def sweep(
    settings: Settings,
    store: Store | None = None,
    storage: Storage | None = None,
    *,
    grace_seconds: float | None = None,
) -> SweepReport:
    """Reclaim the leftovers of dead operations, and debris older than the grace period."""
    report = SweepReport()
    home = settings.home_dir
    if not (home.is_dir() if settings.catalog else catalog_path(home).exists()):
        return report  # nothing was ever recorded or created here
    with _exclusive(home / ".sweep.lock") as mine:
        if not mine:
            report.skipped = "another sweep is running"
            return report
        store = store or Store(settings)
        grace = settings.recovery_grace_seconds if grace_seconds is None else grace_seconds
        storages = _Storages(settings, storage)
        live: list[Operation] = []
        for record in store.operations.records():
            if _dead(record, settings):
                _reclaim(record, store, storages, report)
            else:
                live.append(record)
        report.kept = len(live)
        try:
            report.segments += expire_retired(
                store.catalog, store.documents.files, settings, time.time()
            )
        except Exception as exc:  # the next change or sweep tries again
            report.errors.append(f"retired segments: {type(exc).__name__}: {exc}")
        _orphans(settings, store, storages, live, time.time() - grace, report)
    return report


def reclaim(
    settings: Settings, store: Store, op_id: str, storage: Storage | None = None
) -> SweepReport:
    """Reclaim one operation that ended without cleaning up after itself, alive owner or not
    (a step process killed under a launcher that lives on): what it recorded, then its
    record."""
    report = SweepReport()
    storages = _Storages(settings, storage)
    for record in store.operations.records():
        if record.id == op_id:
            _reclaim(record, store, storages, report)
    return report


def sweep_quietly(
    settings: Settings, store: Store | None = None, storage: Storage | None = None
) -> SweepReport | None:
    """`sweep` for an entry point: logs instead of raising; None when it failed."""
    try:
        report = sweep(settings, store, storage)
    except Exception as exc:  # reclaiming must never fail the export or ingest asking
        log.warning("the recovery sweep failed: %s", exc)
        return None
    if report.records or report.paths or report.segments or report.objects:
        log.info("recovery sweep: %s", report.as_dict())
    return report


@dataclass
class _Storages:
    """Storages by target URI, opened when first needed (an S3 client costs ~0.1 s)."""

    settings: Settings
    configured: Storage | None
    opened: dict[str, Storage] = field(default_factory=dict)

    def of(self, uri: str | None) -> Storage:
        uri = uri or self.settings.storage_uri
        if uri not in self.opened:
            if self.configured is not None and uri == self.settings.storage_uri:
                self.opened[uri] = self.configured
            else:
                self.opened[uri] = open_storage(self.settings, uri)
        return self.opened[uri]


@contextmanager
def _exclusive(path: Path) -> Iterator[bool]:
    """Whether this process holds the home's sweep lock (never waits for it)."""
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True  # closing the file releases the lock


def _dead(record: Operation, settings: Settings) -> bool:
    return owner_gone(record.owner, record.started_at, settings)


def _reclaim(record: Operation, store: Store, storages: _Storages, report: SweepReport) -> None:
    """Remove what a dead operation recorded, then its record; a failure keeps the record."""
    try:
        for path in map(Path, record.paths):
            report.paths += _remove(path)
        for prefix in record.storage_prefixes:
            storage = storages.of(record.storage)
            if _complete(storage, prefix):
                continue  # a published export: the manifest, written last, is there
            objects, uploads = storage.discard(prefix)
            report.objects += objects
            report.multipart_uploads += uploads
        if record.segments:
            listed, retired = _listed_segments(store)
            for segment in record.segments:  # local paths, or S3 URIs
                if segment not in listed and segment not in retired:
                    report.segments += store.documents.files.remove([segment])
    except Exception as exc:
        report.errors.append(f"{record.kind} {record.id}: {type(exc).__name__}: {exc}")
        return
    store.operations.end(record.id)
    report.records += 1


def _complete(storage: Storage, prefix: str) -> bool:
    try:
        storage.read(f"{prefix}/{MANIFEST}")
    except TransientStorageError:
        raise  # cannot tell now: the record waits for the next sweep
    except Exception:  # not found (or unreadable, which removing will say)
        return False
    return True


def _orphans(
    settings: Settings,
    store: Store,
    storages: _Storages,
    live: list[Operation],
    before: float,
    report: SweepReport,
) -> None:
    """Debris no record accounts for, untouched since `before`."""
    kept = {Path(p) for record in live for p in record.paths}
    home = settings.home_dir
    folders = [settings.scratch_dir, home / "exports" / ".staging"]
    local = storages.configured
    if local is None and not settings.storage_uri.startswith("s3://"):
        local = storages.of(None)
    if isinstance(local, LocalStorage) and local.root / ".staging" not in folders:
        folders.append(local.root / ".staging")
    candidates = [p for folder in folders[1:] for p in _children(folder)]
    candidates += [p for p in _children(settings.scratch_dir) if p.name.startswith("exp_")]
    collections = home / "collections"
    for collection in (c for ns in _children(collections) for c in _children(ns)):
        candidates += [p for p in _children(collection / "staging") if p.name.startswith("stg_")]
    for path in candidates:
        if path not in kept and _untouched_since(path, before):
            report.paths += _remove(path)
    segment_files = [
        path
        for collection in (c for ns in _children(collections) for c in _children(ns))
        for path in _children(collection / "segments")
        if path.name.startswith("seg_")
    ]
    if not segment_files:
        return
    # The catalog and the records are read after the folders were listed: a segment swapped
    # in meanwhile is listed by then, one about to be made is recorded (before it exists).
    listed, retired = _listed_segments(store)
    recorded = {s for record in store.operations.records() for s in record.segments}
    for path in segment_files:
        segment = _segment_of(path)
        if str(segment) in listed or str(segment) in retired or str(segment) in recorded:
            continue
        if _untouched_since(path, before) and path.exists():
            path.unlink(missing_ok=True)
            if path == segment:
                report.segments += 1


def _listed_segments(store: Store) -> tuple[set[str], set[str]]:
    """Segment paths of every collection's current version, and those retention keeps."""
    return store.documents.listed_segments()


def _segment_of(path: Path) -> Path:
    """The segment a file belongs to: itself, or the segment of a shapes sidecar."""
    if path.name.endswith(SHAPES_SUFFIX):
        return path.with_name(path.name.removesuffix(SHAPES_SUFFIX) + ".parquet")
    return path


def _remove(path: Path) -> int:
    """Remove a folder or file; 1 if something was there."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
        return 1
    try:
        path.unlink()
    except FileNotFoundError:
        return 0
    return 1


def _children(folder: Path) -> list[Path]:
    try:
        return [Path(entry.path) for entry in os.scandir(folder)]
    except (FileNotFoundError, NotADirectoryError):
        return []


def _untouched_since(path: Path, before: float) -> bool:
    """Whether nothing in `path` (a file, or a folder and everything below) changed since."""
    try:
        if _changed(path.stat()) >= before:
            return False
        if not path.is_dir():
            return True
        for folder, dirs, files in os.walk(path):
            for name in dirs + files:
                if _changed(os.lstat(os.path.join(folder, name))) >= before:
                    return False
    except FileNotFoundError:
        return False  # removed meanwhile: its owner is at work, or another sweep was
    return True


def _changed(stat: os.stat_result) -> float:
    # ctime too: a file renamed into place (a staged segment) keeps its old mtime.
    return max(stat.st_mtime, stat.st_ctime)
