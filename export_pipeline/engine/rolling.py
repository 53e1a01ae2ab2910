"""Files of bounded size: one shard's documents (and vectors) cut into parts, row for row.

With `max_file_size_bytes`, a shard's writers hand their converted tables to one `PartRoller`
instead of one file each. The roller writes rows as chunk files and joins a part's chunks as
the assembly joins shards (`engine/assembly.py`: csv after its header, parquet by row groups),
so it knows a part's exact size before it keeps a chunk: rows that would push the documents
part or the vectors part past the limit start the next part of both, and a row that exceeds
the limit alone has a part of its own. Each part is a whole file of its format.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from export_pipeline.engine.assembly import assembled
from export_pipeline.engine.sinks import Sink, TableWriter, Written, csv_header
from export_pipeline.storage.pieces import size_of_pieces, write_pieces

# A sink for a path: what `csv_sink`, `parquet_sink` and a LineSink's lambda are, per path.
SinkFactory = Callable[[Path], Callable[[pa.Schema], Sink]]


@dataclass(frozen=True)
class RolledPart:
    """One finished part file of one role and its rows."""

    path: Path
    rows: int


class PartRoller:
    """Cuts a shard's rows into parts of at most `limit` bytes per file; every role (the
    documents, the vectors) is cut at the same rows."""

    def __init__(self, fmt: str, limit: int, folder: Path, roles: list[str]) -> None:
        """`roles`: the files cut together ("documents", then "vectors" if any)."""
        self.fmt, self.limit, self.folder, self.roles = fmt, limit, folder, roles
        self.sinks: dict[str, SinkFactory] = {}
        self.headers: dict[str, bytes] = dict.fromkeys(self.roles, b"")
        self.pending: dict[str, pa.Table] = {}
        self.empty: dict[str, pa.Table] = {}
        self.chunks: dict[str, list[Path]] = {role: [] for role in self.roles}
        self.rows = 0  # in the current part
        self.parts: dict[str, list[RolledPart]] = {role: [] for role in self.roles}
        self.row_bytes: list[float] = []  # per role, in the last chunk written
        self._numbered = 0

    def writer(
        self, role: str, path: Path, make_sink: SinkFactory, **shaping: Any
    ) -> RollingTableWriter:
        """The TableWriter of one role, feeding this roller."""
        self.sinks[role] = make_sink
        return RollingTableWriter(self, role, path, make_sink(path), **shaping)

    def offer(self, role: str, table: pa.Table) -> None:
        """One role's converted batch; the batch is cut once every role has given its own."""
        self.pending[role] = table
        if len(self.pending) == len(self.roles):
            tables = [self.pending.pop(role) for role in self.roles]
            self._take(tables)

    def close(self, role: str, empty: pa.Table) -> None:
        """One role is done; once all are, the last part is finished (a shard that wrote no
        rows leaves one empty part: an empty json file, a header, a schema-only parquet)."""
        self.empty[role] = empty
        self._header(role, empty)
        if len(self.empty) < len(self.roles):
            return
        if self.rows or not self.parts[self.roles[0]]:
            if not self.chunks[self.roles[0]]:
                self._commit(self._probe([self.empty[r] for r in self.roles], 0, 0)[1])
            self._finish_part()

    def _header(self, role: str, table: pa.Table) -> None:
        if self.fmt == "csv" and not self.headers[role]:
            self.headers[role] = csv_header(table.column_names)

    def _take(self, tables: list[pa.Table]) -> None:
        for role, table in zip(self.roles, tables, strict=True):
            self._header(role, table)
        start, total = 0, tables[0].num_rows
        while start < total:
            rows, chunks = self._fitting(tables, start, total - start)
            if rows == 0 and self.rows:  # nothing more fits: the next part begins
                self._finish_part()
                continue
            alone = rows == 0
            if alone:  # one row over the limit on its own: a part of its own
                rows, chunks = 1, self._probe(tables, start, 1)[1]
            self._commit(chunks, rows)
            start += rows
            if alone:
                self._finish_part()

    def _fitting(self, tables: list[pa.Table], start: int, rows: int) -> tuple[int, list[Path]]:
        """The most rows from `start` (up to `rows`) that fit the current part, with their
        chunk files. Each guess comes from the bytes a row took in the last chunk written,
        every other one halves the range left, so a cut costs a few chunks, never more than
        a bisection's."""
        base = [self._size(role, self.chunks[role]) for role in self.roles]
        kept: list[Path] = []
        low, high = 0, rows + 1  # `low` rows fit, `high` do not (rows + 1: unknown)
        guess, step = self._guess(base, rows), 0
        while high - low > 1:
            middle = min(max(guess, low + 1), high - 1)
            fits, chunks, sizes = self._probe(tables, start, middle)
            self.row_bytes = [
                max(1.0, (size - now) / middle) for size, now in zip(sizes, base, strict=True)
            ]
            if fits:
                self._drop(kept)
                low, kept = middle, chunks
            else:
                self._drop(chunks)
                high = middle
            step += 1
            halved = (low + high) // 2 if high <= rows else rows
            guess = self._guess(base, rows) if step % 2 else halved
        return low, kept

    def _guess(self, base: list[int], rows: int) -> int:
        """The rows that fill the current part, at the bytes per row seen last (all of them
        before any chunk was written)."""
        if not self.row_bytes:
            return rows
        room = min(
            (self.limit - now) / per_row for now, per_row in zip(base, self.row_bytes, strict=True)
        )
        return min(rows, int(room))

    def _probe(
        self, tables: list[pa.Table], start: int, rows: int
    ) -> tuple[bool, list[Path], list[int]]:
        """Write rows [start, start + rows) of each role as a chunk; whether every role's part
        stays within the limit with it, the chunks, and the parts' sizes with them."""
        chunks, sizes = [], []
        for role, table in zip(self.roles, tables, strict=True):
            self._numbered += 1
            chunk = self.folder / f".chunk-{self._numbered:06d}"
            writer = TableWriter(chunk, self.sinks[role](chunk))
            writer.write(table.slice(start, rows))
            writer.close(table.slice(0, 0))
            chunks.append(chunk)
            sizes.append(self._size(role, [*self.chunks[role], chunk]))
        return all(size <= self.limit for size in sizes), chunks, sizes

    def _size(self, role: str, chunks: list[Path]) -> int:
        if not chunks:
            return 0
        if self.fmt == "parquet" and len(chunks) == 1:
            return chunks[0].stat().st_size
        return size_of_pieces(assembled(self.fmt, chunks, header=self.headers[role]))

    def _commit(self, chunks: list[Path], rows: int = 0) -> None:
        for role, chunk in zip(self.roles, chunks, strict=True):
            self.chunks[role].append(chunk)
        self.rows += rows

    def _finish_part(self) -> None:
        """Join the current part's chunks into its file (a lone json or parquet chunk is
        the file already)."""
        for role in self.roles:
            chunks = self.chunks[role]
            path = self.folder / f"{role}-{len(self.parts[role]):05d}.{self.fmt}"
            if len(chunks) == 1 and self.fmt != "csv":
                chunks[0].replace(path)
            else:
                write_pieces(assembled(self.fmt, chunks, header=self.headers[role]), path)
                self._drop(chunks)
            self.parts[role].append(RolledPart(path=path, rows=self.rows))
            self.chunks[role] = []
        self.rows = 0

    @staticmethod
    def _drop(chunks: list[Path]) -> None:
        for chunk in chunks:
            chunk.unlink(missing_ok=True)


class RollingTableWriter(TableWriter):
    """A TableWriter whose tables go to a PartRoller (in the caller's thread) instead of a
    file of its own."""

    def __init__(
        self,
        roller: PartRoller,
        role: str,
        path: Path,
        open_sink: Callable[[pa.Schema], Sink],
        **shaping: Any,
    ) -> None:
        super().__init__(path, open_sink, **shaping)
        self.roller, self.role = roller, role

    def write(self, table: pa.Table) -> None:
        """Hand the rows of one converted table to the roller."""
        table = self._shaped(table)
        self._noted(table)
        self.roller.offer(self.role, table)

    def close(self, empty: pa.Table) -> Written:
        """This role is done; the roller finishes the last part once every role is."""
        empty = self._shaped(empty)
        if self._target is None:
            self._target = empty.schema
        self.roller.close(self.role, empty)
        columns = [{"name": f.name, "type": str(f.type)} for f in self._target]
        return Written(path=self.path, rows=self.rows, columns=columns, head=self.head)

    def abort(self) -> None:
        """Nothing is being written in the background; the chunks go with the scratch space."""


def table_writer(
    path: Path, make_sink: SinkFactory, rolling: PartRoller | None, role: str, **shaping: Any
) -> TableWriter:
    """The file's TableWriter, or, with a roller, the one that hands its tables to it."""
    if rolling is None:
        return TableWriter(path, make_sink(path), **shaping)
    return rolling.writer(role, path, make_sink, **shaping)
