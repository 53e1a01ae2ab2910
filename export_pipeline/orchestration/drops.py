"""Where the request drop sensor finds request files: a local folder or an S3 prefix.

EXPORT_PIPELINE_DROP_DIR=s3://bucket/prefix watches that prefix; anything else is a local
folder. Both work alike, file for object: `<name>.json` directly inside (names starting with
a dot ignored), oldest first, at most MAX_FILES_PER_TICK per tick; handled ones move into
accepted/, or into rejected/ beside `<name>.error.txt`. What to do with a request (`decide`:
parse, validate with `launch.prepare`, run key = sha256 of the bytes) is shared; a source only
lists, reads and moves, and moves only what it read (a folder compares the bytes, S3 the ETag).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Protocol

import dagster as dg
from botocore.exceptions import BotoCoreError, ClientError
from pydantic import BaseModel, ConfigDict
from pydantic import ValidationError as PydanticError

from export_pipeline.errors import (
    ExportPipelineError,
    InvalidInput,
    problems,
    validation_details,
)
from export_pipeline.jsontext import load_json
from export_pipeline.orchestration.launch import prepare
from export_pipeline.settings import Settings
from export_pipeline.storage import s3_options
from export_pipeline.storage.s3_client import S3Options, make_client, parse_s3_uri, s3_problem
from export_pipeline.store import Store

MAX_FILES_PER_TICK = 50  # the rest wait for the next tick, oldest first
ACCEPTED = "accepted"
REJECTED = "rejected"


class DroppedRequest(BaseModel):
    """The content of one request file."""

    model_config = ConfigDict(extra="forbid")

    namespace: str
    collection: str
    request: dict[str, Any]


@dataclass(frozen=True)
class Decision:
    """What to do with one request file: launch it (accepted) or reject it with a reason."""

    name: str
    run_key: str
    run_request: dg.RunRequest | None
    error: str | None = None


class DropUnavailable(Exception):
    """The source cannot be listed now: nothing is read or moved this tick."""


class DropSource(Protocol):
    """Lists, reads and moves request files; names are relative to the source."""

    @property
    def where(self) -> str:
        """The folder or s3:// URI, for messages."""
        ...

    def pending(self, limit: int = MAX_FILES_PER_TICK) -> list[str]:
        """The names to handle now, oldest first; raises DropUnavailable."""
        ...

    def read(self, name: str) -> bytes:
        """The bytes of one request; FileNotFoundError when gone, OSError when unreadable."""
        ...

    def file_away(self, decision: Decision) -> str:
        """Move it into accepted/ or rejected/ (with its error note); returns where to.

        Raises OSError when it cannot be moved."""
        ...


def drop_source(settings: Settings) -> DropSource:
    """The S3 prefix when EXPORT_PIPELINE_DROP_DIR is s3://..., else the local folder."""
    if settings.drop_dir is not None and settings.drop_is_s3:
        return S3DropPrefix.from_uri(settings.drop_dir, s3_options(settings))
    return LocalDropFolder(settings.drop_folder)


def is_request_name(name: str) -> bool:
    """`*.json` and not hidden: writers write to a temporary name and rename when done."""
    return name.endswith(".json") and not name.startswith(".")


def filed_name(decision: Decision, taken: Callable[[str], bool]) -> str:
    """The name in accepted/ or rejected/: earlier files of the same name are kept."""
    if not taken(decision.name):
        return decision.name
    return f"{decision.name.removesuffix('.json')}.{decision.run_key[:12]}.json"


def note_name(name: str) -> str:
    """`<name>.error.txt` beside a rejected `<name>.json`."""
    return f"{name.removesuffix('.json')}.error.txt"


def decide(store: Store, name: str, data: bytes) -> Decision:
    """Check one request file's bytes; no side effect."""
    run_key = hashlib.sha256(data).hexdigest()
    try:
        dropped = _parse(data)
        launch = prepare(
            store, dropped.namespace, dropped.collection, dropped.request, trigger="sensor"
        )
    except ExportPipelineError as exc:
        return Decision(name, run_key, None, f"{exc.type_name}: {exc.message}")
    return Decision(name, run_key, launch.run_request(run_key))


def _parse(data: bytes) -> DroppedRequest:
    raw = load_json(data, "the request file")
    try:
        return DroppedRequest.model_validate(raw)
    except PydanticError as exc:
        raise InvalidInput(
            f"invalid request file: {problems(validation_details(exc), whole='(file)')}"
            ' (expected {"namespace", "collection", "request"})'
        ) from None


@dataclass(frozen=True)
class LocalDropFolder:
    """A local folder, created when missing."""

    folder: Path

    @property
    def where(self) -> str:
        return str(self.folder)

    def pending(self, limit: int = MAX_FILES_PER_TICK) -> list[str]:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            entries = list(self.folder.iterdir())
        except OSError as exc:
            raise DropUnavailable(str(exc)) from None
        found = []
        for path in entries:
            if not is_request_name(path.name):
                continue
            try:
                if path.is_file():
                    found.append((path.stat().st_mtime_ns, path.name))
            except FileNotFoundError:  # taken away while we looked
                continue
        return [name for _, name in sorted(found)[:limit]]

    def read(self, name: str) -> bytes:
        return (self.folder / name).read_bytes()

    def file_away(self, decision: Decision) -> str:
        target_dir = self.folder / (ACCEPTED if decision.error is None else REJECTED)
        target_dir.mkdir(exist_ok=True)
        target = target_dir / filed_name(decision, lambda name: (target_dir / name).exists())
        if decision.error is not None:
            # The note first: a file in rejected/ always has its reason beside it.
            note = target_dir / note_name(target.name)
            note.write_text(decision.error + "\n", encoding="utf-8")
        source = self.folder / decision.name
        # A writer may have replaced the file since it was read: that content is decided anew.
        if hashlib.sha256(source.read_bytes()).hexdigest() != decision.run_key:
            raise OSError(f"{source} changed since it was read; it is read again next tick")
        os.replace(source, target)
        return str(target)


class S3DropPrefix:
    """Objects directly under `s3://bucket/prefix/`; moved by copy, then delete."""

    def __init__(self, bucket: str, prefix: str, options: S3Options, client: Any = None) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.options = options
        if client is not None:
            self.client = client
        self._etags: dict[str, str] = {}  # name -> ETag of the content read

    @classmethod
    def from_uri(cls, uri: str, options: S3Options) -> S3DropPrefix:
        """`s3://bucket` or `s3://bucket/prefix`."""
        return cls(*parse_s3_uri(uri, "drop folder"), options)

    @cached_property
    def client(self) -> Any:
        """Made on first use, so loading the definitions never touches S3."""
        return make_client(self.options)

    @property
    def where(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}".rstrip("/")

    def key(self, *parts: str) -> str:
        """The object key of a path under the prefix."""
        return "/".join([self.prefix, *parts]) if self.prefix else "/".join(parts)

    def pending(self, limit: int = MAX_FILES_PER_TICK) -> list[str]:
        base = self.key("")
        found = []
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=base, Delimiter="/"
            )
            for page in pages:
                for item in page.get("Contents", []):
                    name = item["Key"][len(base) :]
                    if "/" not in name and is_request_name(name):
                        found.append((item["LastModified"], name))
        except (BotoCoreError, ClientError) as exc:
            raise DropUnavailable(self._why(exc)) from None
        return [name for _, name in sorted(found)[:limit]]

    def read(self, name: str) -> bytes:
        try:
            found = self.client.get_object(Bucket=self.bucket, Key=self.key(name))
            self._etags[name] = found["ETag"]
            return found["Body"].read()
        except (BotoCoreError, ClientError) as exc:
            if _code(exc) in {"NoSuchKey", "404"}:
                raise FileNotFoundError(self.key(name)) from None
            raise OSError(self._why(exc)) from None

    def file_away(self, decision: Decision) -> str:
        folder = ACCEPTED if decision.error is None else REJECTED
        source = self.key(decision.name)
        encryption = self.options.sse_args()
        try:
            target = self.key(folder, filed_name(decision, lambda n: self._exists(folder, n)))
            if decision.error is not None:
                # The note first: an object in rejected/ always has its reason beside it.
                self.client.put_object(
                    Bucket=self.bucket,
                    Key=self.key(folder, note_name(target.rsplit("/", 1)[-1])),
                    Body=(decision.error + "\n").encode(),
                    ContentType="text/plain; charset=utf-8",
                    **encryption,
                )
            # Only the object read moves: the copy and the delete both require its ETag, so
            # a request rewritten meanwhile stays to be decided anew.
            read = self._etags.get(decision.name)
            if_match = {"CopySourceIfMatch": read} if read else {}
            self.client.copy_object(
                Bucket=self.bucket,
                Key=target,
                CopySource={"Bucket": self.bucket, "Key": source},
                **if_match,
                **encryption,
            )
            try:
                self.client.delete_object(
                    Bucket=self.bucket, Key=source, **({"IfMatch": read} if read else {})
                )
            except ClientError as exc:
                if _code(exc) != "PreconditionFailed":
                    raise
                # Changed between the copy and the delete (or a server that ignored the
                # copy's condition): the copy may hold the new content, which is not ours.
                self.client.delete_object(Bucket=self.bucket, Key=target)
                raise
        except (BotoCoreError, ClientError) as exc:
            if _code(exc) == "PreconditionFailed":
                raise OSError(f"{self.where}/{decision.name} changed since it was read") from None
            raise OSError(self._why(exc)) from None
        return f"s3://{self.bucket}/{target}"

    def _exists(self, *parts: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=self.key(*parts))
        except ClientError as exc:
            if _code(exc) in {"404", "NoSuchKey", "NotFound"}:
                return False
            raise
        return True

    def _why(self, exc: Exception) -> str:
        """What failed, naming the bucket or endpoint, never credentials."""
        return s3_problem(exc, self.bucket, self.where, self.client)[0]


def _code(exc: Exception) -> str:
    return exc.response.get("Error", {}).get("Code", "") if isinstance(exc, ClientError) else ""
