"""file:// storage, the embedded default: one folder per export, renamed into place."""

from __future__ import annotations

import os
import shutil
import uuid
from dataclasses import replace
from pathlib import Path
from urllib.parse import unquote

from export_pipeline.errors import (
    PUBLISHED_NOTHING,
    ExportPipelineError,
    InvalidInput,
    NotFoundError,
    guard,
)
from export_pipeline.storage.base import (
    FileRange,
    LocalFile,
    Piece,
    PublishedObject,
    StoredRange,
    published,
)
from export_pipeline.storage.pieces import check_pieces, pieces_of, read_piece, write_pieces


class LocalStorage:
    """Publishes into a local folder; a rename makes each export's folder appear whole (W7)."""

    links_expire = False

    def __init__(self, root: Path) -> None:
        self.root = root.expanduser().resolve()

    @property
    def target(self) -> str:
        """The root as a file:// URI."""
        return self.root.as_uri()

    @classmethod
    def from_uri(cls, uri: str) -> LocalStorage:
        """`file:///abs/path` or a plain path (taken literally).

        A URI is percent-decoded, as `Path.as_uri()` encodes it. One holding what an encoded
        URI never holds (a space, `?`, `#`, a non-ASCII letter) was written by hand as the
        path itself, and is taken literally: its `%41` stays `%41`. A file URI has no query
        or fragment, so `?` and `#` are part of the path, not cut off as urlparse would.
        """
        if not uri.startswith("file:"):
            return cls(Path(uri))
        rest = uri.removeprefix("file:")
        if rest.startswith("//"):  # file://host/path: only the local host is ours
            host, slash, rest = rest[2:].partition("/")
            if host not in ("", "localhost"):
                raise InvalidInput(f"storage target {uri!r} names another host ({host})")
            rest = slash + rest
        if not rest.startswith("/"):
            raise InvalidInput(f"storage target {uri!r} is not file:///absolute/path")
        written = not rest.isascii() or any(char in rest for char in " ?#")
        return cls(Path(rest if written else unquote(rest)))

    def publish(self, prefix: str, files: list[LocalFile]) -> list[PublishedObject]:
        """Move the files (or write those made of pieces) into a staging folder beside the
        root, then rename it into place. Part files stay in scratch space (one that is a whole
        file is moved).

        A full or read-only exports folder fails with the path and cause, leaving nothing.
        """
        final = self.root / prefix
        if final.exists():
            raise ExportPipelineError(f"export folder {prefix} already exists")
        files = [self._resolved(file) for file in files]
        staging = self.root / ".staging" / f"{_flat(prefix)}.{uuid.uuid4().hex}"
        with guard(self.root, "exports folder", PUBLISHED_NOTHING):
            try:
                for file in files:  # a part shorter than planned fails before anything moves
                    check_pieces(pieces_of(file))
                staging.mkdir(parents=True)
                for file in files:
                    whole = _whole_file(file)
                    if whole is not None:
                        shutil.move(whole, staging / file.name)
                    elif (start := _own_start(file, files)) is not None:
                        # The first part becomes the file; only the rest is copied after it.
                        target = staging / file.name
                        shutil.move(start.path, target)
                        os.truncate(target, start.length)
                        write_pieces((file.pieces or ())[1:], target, append=True)
                    else:
                        write_pieces(file.pieces or (), staging / file.name)
                final.parent.mkdir(parents=True, exist_ok=True)
                os.rename(staging, final)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
        return published(self, prefix, files)

    def _resolved(self, file: LocalFile) -> LocalFile:
        """The file with its stored ranges (parts put under the root) as ranges of files."""
        if file.pieces is None or not any(isinstance(p, StoredRange) for p in file.pieces):
            return file
        return replace(file, pieces=tuple(self._file_range(p) for p in file.pieces))

    def _file_range(self, piece: Piece) -> Piece:
        if not isinstance(piece, StoredRange):
            return piece
        return FileRange(self.root / piece.key, piece.offset, piece.length)

    def read_range(self, piece: StoredRange) -> bytes:
        """The bytes of a range of a file under the root."""
        return read_piece(self._file_range(piece))

    def discard(self, prefix: str) -> tuple[int, int]:
        """Remove whatever an unfinished export put under `prefix`: the folder and its
        staging folders; returns (files removed, 0: local files have no pending uploads)."""
        removed = 0
        staging = self.root / ".staging"
        found = list(staging.glob(f"{_flat(prefix)}.*")) if staging.is_dir() else []
        for folder in [self.root / prefix, *found]:
            if folder.is_dir():
                removed += sum(1 for p in folder.rglob("*") if not p.is_dir())
                shutil.rmtree(folder, ignore_errors=True)
        return removed, 0

    def put(self, key: str, path: Path) -> None:
        """Copy the file under the root (a shard's part, for steps of another machine that
        mounts the same folder)."""
        with guard(self.root, "exports folder", PUBLISHED_NOTHING):
            target = self.root / key
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)

    def fetch(self, key: str, path: Path) -> None:
        """Copy the file at `key` under the root to `path`."""
        shutil.copyfile(self.root / key, path)

    def uri_of(self, key: str) -> str:
        """The published file's file:// URI."""
        return (self.root / key).as_uri()

    def download_url(self, key: str, ttl_seconds: int) -> str:
        """A file:// URL; local files do not expire."""
        return self.uri_of(key)

    def check(self) -> None:
        """The root exists (or can be made) and is writable."""
        self.root.mkdir(parents=True, exist_ok=True)
        if not os.access(self.root, os.W_OK):
            raise ExportPipelineError(f"storage folder {self.root} is not writable")

    def read(self, key: str) -> bytes:
        """The content of a published file."""
        path = self.root / key
        if not path.is_file():
            raise NotFoundError(f"no published file {key}")
        return path.read_bytes()


def _whole_file(file: LocalFile) -> Path | None:
    """The file to move as it is: a plain file, or pieces that are one whole part file."""
    if file.pieces is None:
        return file.path
    only = file.pieces[0] if len(file.pieces) == 1 else None
    if isinstance(only, FileRange) and only.offset == 0:
        return only.path if only.length == only.path.stat().st_size else None
    return None


def _own_start(file: LocalFile, files: list[LocalFile]) -> FileRange | None:
    """The range a file of pieces starts with, where it is the start of a part file that no
    other piece reads (so the part may become the file)."""
    first = file.pieces[0] if file.pieces else None
    if not isinstance(first, FileRange) or first.offset != 0:
        return None
    others = [p for f in files for p in (f.pieces or ()) if p is not first]
    if any(isinstance(p, FileRange) and p.path == first.path for p in others):
        return None
    if any(f.pieces is None and f.path == first.path for f in files):
        return None
    return first


def _flat(prefix: str) -> str:
    """A prefix as one folder name (its staging folder's name starts with it)."""
    return prefix.strip("/").replace("/", "~")
