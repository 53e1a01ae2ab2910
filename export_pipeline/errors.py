"""The error vocabulary shared by every entry point (CLI exit codes, HTTP statuses)."""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any


class ExportPipelineError(Exception):
    """Base error: carries a user-facing message, a type name and optional details."""

    type_name = "InternalServerError"
    exit_code = 1

    def __init__(self, message: str, details: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def to_dict(self) -> dict[str, Any]:
        """The `{"type", "message", "details"}` object every adapter prints."""
        return {"type": self.type_name, "message": self.message, "details": self.details}


class InvalidInput(ExportPipelineError):
    """The input is invalid; nothing was read or written."""

    type_name = "ValidationError"
    exit_code = 2


class NotFoundError(ExportPipelineError):
    """A namespace, collection or export does not exist."""

    type_name = "NotFoundError"
    exit_code = 3


class ConflictError(ExportPipelineError):
    """The request clashes with stored state (a name already taken)."""

    type_name = "ConflictError"
    exit_code = 1


class EnvironmentProblem(ExportPipelineError):
    """The machine, not the request, failed: a read-only folder, a missing permission, a
    folder gone. The message names the cause, the path and what was left undone, e.g.
    `Read-only file system at /srv/exports (exports folder): nothing was published`."""

    type_name = "EnvironmentError"
    exit_code = 1

    @classmethod
    def of(
        cls, cause: str, path: Path | str, code: int | None, place: str | None, outcome: str
    ) -> EnvironmentProblem:
        """The problem of `cause` at `path` (in `place`, one of the configured folders)."""
        kind = InsufficientStorage if code in _FULL else EnvironmentProblem
        where = f"{path} ({place})" if place else f"{path}"
        details = {
            "cause": cause,
            "path": str(path),
            "errno": errno.errorcode.get(code) if code else None,
            "place": place,
        }
        return kind(f"{cause} at {where}: {outcome}", details)

    @property
    def outcome(self) -> str:
        """What was left undone: the message's last part (a path may hold ': ', this never)."""
        return self.message.rsplit(": ", 1)[-1]

    def because(self, outcome: str) -> EnvironmentProblem:
        """The same problem, saying what the operation that met it left undone."""
        head = self.message[: len(self.message) - len(self.outcome)]
        return type(self)(head + outcome, self.details)

    def for_client(self) -> EnvironmentProblem:
        """The message without the server's paths (HTTP clients see no internals)."""
        details = self.details or {}
        place = details.get("place")
        where = f"in the server's {place}" if place else "on the server"
        shown = {key: details.get(key) for key in ("errno", "place", "run_id") if key in details}
        run = f" (run {details['run_id']})" if details.get("run_id") else ""
        return type(self)(f"{details.get('cause')} {where}: {self.outcome}{run}", shown)


class InsufficientStorage(EnvironmentProblem):
    """A disk or quota filled up (HTTP 507); freeing space and trying again may succeed."""

    type_name = "InsufficientStorageError"


class RunTimedOut(ExportPipelineError):
    """The export took longer than the time limit; its run was cancelled."""

    type_name = "GatewayTimeout"


class ServiceUnavailable(ExportPipelineError):
    """A service the export needs (the Dagster deployment's run queue) did not take it;
    nothing was launched."""

    type_name = "ServiceUnavailableError"


class TransientStorageError(Exception):
    """A storage failure worth retrying: a timeout, throttling, a server error.

    Backends raise it only where the same call may succeed later; anything else (a missing
    bucket, denied access, a full or read-only folder) is permanent and fails at once.
    """


PUBLISHED_NOTHING = "nothing was published"
INGESTED_NOTHING = "nothing was ingested"
CHANGED_NOTHING = "nothing was changed"

_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_WRITES = _FULL | {errno.EROFS}
# errno values that say the environment is at fault; anything else is left as it was raised.
_ENVIRONMENT = _FULL | {
    errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOENT, errno.ENOTDIR, errno.EISDIR,
    errno.EEXIST, errno.EIO, errno.EMFILE, errno.ENFILE,
}  # fmt: skip
# How libraries that raise no OSError (DuckDB, SQLite, pyarrow) word the same causes.
_WORDINGS = [
    ("no space left on device", errno.ENOSPC),
    ("database or disk is full", errno.ENOSPC),
    ("disk quota exceeded", errno.EDQUOT),
    ("max_temp_directory_size", errno.ENOSPC),  # DuckDB could not spill to its temp folder
    ("read-only file system", errno.EROFS),
    ("readonly database", errno.EROFS),
    ("permission denied", errno.EACCES),
    ("operation not permitted", errno.EPERM),
    ("no such file or directory", errno.ENOENT),
]
# SQLite's words when it cannot say why: the folder is examined instead.
_VAGUE = ("unable to open database file", "disk i/o error")
_QUOTED_PATH = (
    re.compile(r'(?:file|directory) \\?"(/[^"\\]+)\\?"'),  # DuckDB: Could not write file "/x"
    re.compile(r"local file '(/[^']+)'"),  # pyarrow: Failed to open local file '/x'
)


def environment_problem(
    exc: BaseException, where: Path, place: str | None, outcome: str
) -> EnvironmentProblem | None:
    """The EnvironmentProblem `exc` stands for, or None when it is something else.

    `where` is the configured folder the failing code was working in: the path named when
    the error names none, and labelled `place` when the failing path is inside it.
    """
    for seen in _chain(exc):
        if isinstance(seen, ExportPipelineError | TransientStorageError):
            return None
        code, path = _errno_of(seen), None
        if isinstance(seen, OSError) and seen.errno in _ENVIRONMENT:
            code, path = seen.errno, seen.filename
            if seen.filename2 and code in _WRITES:  # a copy or a move: the target is at fault
                path = seen.filename2
        text = str(seen).lower()
        if code is None and any(words in text for words in _VAGUE):
            code = diagnose(where) or -1
        if code is None:
            continue
        path = Path(os.fsdecode(path)) if path else _quoted_path(str(seen)) or where
        if code == errno.EEXIST and path.is_file():  # a folder was made where a file is
            code = errno.ENOTDIR
        cause = os.strerror(code) if code > 0 else str(seen).strip().split("\n")[0]
        label = place if _inside(path, where) else None
        return EnvironmentProblem.of(cause, path, code if code > 0 else None, label, outcome)
    return None


@contextmanager
def guard(where: Path, place: str | None, outcome: str | None = None) -> Iterator[None]:
    """Turn an environment failure in the block into an EnvironmentProblem naming the path;
    with `outcome`, problems met deeper down say that instead of what they said."""
    try:
        yield
    except EnvironmentProblem as exc:
        if outcome is None or exc.outcome == outcome:
            raise
        raise exc.because(outcome) from exc.__cause__
    except Exception as exc:
        problem = environment_problem(exc, where, place, outcome or CHANGED_NOTHING)
        if problem is None:
            raise
        raise problem from exc


def diagnose(path: Path) -> int | None:
    """Why nothing can be written at `path` (or its nearest existing folder), if it shows:
    EROFS, EACCES or ENOSPC."""
    probe = Path(path)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        stats = os.statvfs(probe)
    except OSError:
        return None
    if stats.f_flag & os.ST_RDONLY:
        return errno.EROFS
    folder = probe if probe.is_dir() else probe.parent
    if not os.access(folder, os.W_OK | os.X_OK):
        return errno.EACCES
    if stats.f_bavail == 0 or stats.f_favail == 0:
        return errno.ENOSPC
    return None


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """The exception, then what caused it (libraries wrap OSErrors and SQLite errors)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _errno_of(exc: BaseException) -> int | None:
    text = str(exc).lower()
    return next((code for words, code in _WORDINGS if words in text), None)


def _quoted_path(text: str) -> Path | None:
    for pattern in _QUOTED_PATH:
        found = pattern.search(text)
        if found:
            return Path(found.group(1))
    return None


def _inside(path: Path, folder: Path) -> bool:
    return Path(path) == Path(folder) or Path(folder) in Path(path).parents


def validation_details(exc: Any, prefix: tuple[str | int, ...] = ()) -> list[dict[str, Any]]:
    """Turn a pydantic (or FastAPI request) validation error into
    `[{"loc": "filters.AND.0.operator", "msg": ...}]`; a problem with the whole input has loc ""."""
    details = []
    for err in exc.errors():
        loc = [*prefix, *(part for part in err["loc"] if not _is_union_tag(part))]
        msg = err["msg"].removeprefix("Value error, ")
        details.append({"loc": ".".join(str(p) for p in loc), "msg": msg})
    return details


def _is_union_tag(part: str | int) -> bool:
    # Tagged unions add their tag to the location; users think in their own keys.
    return part in ("condition", "group")


def problems(details: list[dict[str, Any]], whole: str = "(body)") -> str:
    """Details in one line, `loc: msg; loc: msg`. A problem without a location is about the
    whole input, named `whole` ("(body)", "(file)"); with `whole=""` its message stands alone."""
    return "; ".join(
        f"{d['loc'] or whole}: {d['msg']}" if d["loc"] or whole else d["msg"] for d in details
    )


def from_pydantic(exc: Any, prefix: tuple[str | int, ...] = ()) -> InvalidInput:
    """A InvalidInput whose message lists every problem with its location."""
    details = validation_details(exc, prefix)
    return InvalidInput(f"invalid request: {problems(details)}", details)


def from_dict(error: Mapping[str, Any]) -> ExportPipelineError:
    """The error a `to_dict()` stands for (errors cross process and run boundaries as dicts)."""
    known = (InvalidInput, NotFoundError, ConflictError, EnvironmentProblem, InsufficientStorage)
    kinds = {cls.type_name: cls for cls in known}
    cls = kinds.get(error.get("type", ""), ExportPipelineError)
    return cls(error["message"], error.get("details"))
