"""Dagster's sqlite files written without a disk sync per event while a run executes here.

Dagster's sqlite storages (WAL mode) open a new connection for every event they store and close
it straight after. SQLite syncs the WAL on every commit (`synchronous=FULL`, its default), and
the last connection to close a WAL database checkpoints it (syncing the WAL and the database)
and deletes the WAL. So each of a run's ~40 events cost several fsyncs: over 300 per export,
most of an in-process run's time on a busy disk.

While a run executes in this process (`quiet()`), two things change, both through SQLAlchemy's
public connection events, nothing of Dagster's:

- Dagster's connections to a WAL database use `synchronous=NORMAL`: commits no longer sync; the
  WAL is synced at checkpoints. SQLite keeps the database consistent whatever happens; a power
  cut (not a crash of the process) may lose the last events written before it.
- This process holds one idle connection to each of those files, so Dagster's own connections
  are never the last to close and do not checkpoint each time. The holders close when the run
  is done, or in an API worker once it has answered (one checkpoint per file per run); SQLite
  still checkpoints a WAL that grows past 1,000 pages by itself.

Dagster creates each run's event log database in the default rollback-journal mode and turns it
to WAL once its tables exist; a new, empty database file under the instance is put in WAL mode
from its first connection instead, so creating its tables costs no syncs either. Files outside
the instance folder, and databases in other modes, keep SQLite's defaults.

Storages that want it (sqlite_storage's) also take one pooled engine per file here (`engine`)
instead of a new engine per connection; `settle` disposes them too. A forked child forgets all
of this without closing anything: the connections are its parent's.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine, make_url

_lock = threading.Lock()
_roots: list[str] = []  # the instance folders of the runs executing here, inside quiet()
_holders: dict[str, sqlite3.Connection] = {}  # Dagster's files, by path
_held: dict[str, sqlite3.Connection] = {}  # other WAL files a run uses (`hold`), by path
_engines: OrderedDict[str, Engine] = OrderedDict()  # pooled engines (`engine`), by URL, LRU first
# A run uses three files (runs.db, the index shard, its own shard) and an API worker prepares
# the next run's: room for those and a few reads, while a reader of many shards keeps few open.
MAX_ENGINES = 8
_forgotten: list[object] = []  # a forked child's inherited connections, never closed or freed


def _on_connect(dbapi_connection: Any, _record: Any) -> None:
    """A new DBAPI connection of any SQLAlchemy engine (in this process: Dagster's)."""
    if not _roots or not isinstance(dbapi_connection, sqlite3.Connection):
        return
    rows = dbapi_connection.execute("PRAGMA database_list").fetchall()
    path = next((row[2] for row in rows if row[1] == "main"), "")
    if path not in _holders:  # else: a WAL file of the instance, held already
        if not path or not os.path.realpath(path).startswith(tuple(_roots)):
            return  # in memory, or not the instance's
        (mode,) = dbapi_connection.execute("PRAGMA journal_mode").fetchall()[0]
        if mode.lower() != "wal":
            if os.path.getsize(path) != 0:
                return
            (mode,) = dbapi_connection.execute("PRAGMA journal_mode=WAL").fetchall()[0]
            if mode.lower() != "wal":
                return
        with _lock:
            if _roots and path not in _holders:
                holder = sqlite3.connect(path, timeout=30, check_same_thread=False)
                # A read joins the WAL (and keeps its shared lock on the file); fetchall ends
                # the read transaction, so checkpoints are never held back by this connection.
                holder.execute("PRAGMA schema_version").fetchall()
                _holders[path] = holder
    dbapi_connection.execute("PRAGMA synchronous=NORMAL")


def _under_roots(path: str) -> bool:
    return bool(path) and os.path.realpath(path).startswith(tuple(_roots))


def engine(url: str, **kwargs: Any) -> Engine | None:
    """Inside `quiet`, the one engine of the sqlite file at `url` if it is under the instance,
    keeping one connection in its pool until `settle`; None elsewhere (make your own then)."""
    if not _roots:
        return None
    found = _engines.get(url)
    if found is None and not _under_roots(make_url(url).database or ""):
        return None
    dropped = None
    with _lock:
        if not _roots:
            return None
        found = _engines.get(url)
        if found is None:
            # QueuePool (SQLAlchemy's default for a file): one connection kept; more if a
            # caller nests connections, closed as they come back.
            found = create_engine(url, pool_size=1, max_overflow=-1, **kwargs)
            _engines[url] = found
            if len(_engines) > MAX_ENGINES:
                dropped = _engines.popitem(last=False)[1]
        else:
            _engines.move_to_end(url)
    if dropped is not None:
        dropped.dispose()
    return found


def install() -> None:
    """Listen to new connections (idempotent)."""
    if not event.contains(Engine, "connect", _on_connect):
        event.listen(Engine, "connect", _on_connect)


@contextmanager
def quiet(instance_dir: str) -> Iterator[None]:
    """While inside, the sqlite files under `instance_dir` are written as described above.

    Scopes nest; the held connections close when the outermost one ends (or at `settle`).
    """
    root = os.path.join(os.path.realpath(instance_dir), "")
    with _lock:
        _roots.append(root)
    try:
        yield
    finally:
        with _lock:
            _roots.remove(root)
        if not _roots:
            settle()


def hold(path: str | os.PathLike[str]) -> None:
    """Inside `quiet`, hold another WAL database the run uses (the store's catalog) open until
    `settle`, so that its connections do not checkpoint on every close either. Its own sync
    setting is left as it is. Nothing happens for a missing file, another journal mode or a
    file that cannot be read (the run's own connections then say why)."""
    name = os.fspath(path)
    with _lock:
        if not _roots or name in _held or not os.path.isfile(name):
            return
    try:
        holder = sqlite3.connect(name, timeout=30, check_same_thread=False)
    except (sqlite3.Error, OSError):
        return
    try:
        (mode,) = holder.execute("PRAGMA journal_mode").fetchall()[0]
        keep = mode.lower() == "wal"
        if keep:
            holder.execute("PRAGMA schema_version").fetchall()  # joins the WAL, as above
    except (sqlite3.Error, OSError):
        keep = False
    with _lock:
        if keep and _roots and name not in _held:
            _held[name] = holder
            return
    holder.close()


def settle() -> None:
    """Close the held connections now: each file is checkpointed once. A process serving runs
    calls this after answering, so that no request waits for it."""
    with _lock:
        engines = list(_engines.values())
        holders = [*_holders.values(), *_held.values()]
        _engines.clear()
        _holders.clear()
        _held.clear()
    for pooled in engines:  # before the holders: the last connection to close checkpoints
        pooled.dispose()
    for holder in holders:
        holder.close()


def _after_fork_in_child() -> None:
    """A child must neither use nor close its parent's connections: closing one may checkpoint
    (and delete) a WAL the parent still writes. They are dropped, unclosed and referenced."""
    global _lock
    _lock = threading.Lock()  # another thread of the parent may have held it at the fork
    # Not `dispose(close=False)`: that lets the garbage collector close the DBAPI connections,
    # and a sqlite3 connection closes its file for real. Engines kept here are never used.
    _forgotten.extend([*_engines.values(), *_holders.values(), *_held.values()])
    _engines.clear()
    _holders.clear()
    _held.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)
