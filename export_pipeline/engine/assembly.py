"""One published file from the parts sharded writers left, never re-serialised.

Each shard writes its part of a file (same columns, its own document_id range); `assembled`
says which bytes make the whole file, as pieces the storage layer publishes (`Piece`: a range
of a part, in scratch space or on the export storage, or bytes made here), so the documents
are copied byte for byte, never decoded:

- json lines: the parts one after another.
- csv: the header (`csv_header`), then the parts, written without one.
- parquet: the parts' row groups under one new footer (`parquet_assembly`).
"""

from __future__ import annotations

from collections.abc import Sequence

from export_pipeline.engine.parquet_assembly import PartSource, parquet_pieces, range_of
from export_pipeline.storage.base import Piece
from export_pipeline.storage.pieces import ReadStored

__all__ = ["PartSource", "assembled"]


def assembled(
    fmt: str,
    parts: Sequence[PartSource],
    *,
    header: bytes = b"",
    read_stored: ReadStored | None = None,
) -> tuple[Piece, ...]:
    """The pieces of the one `fmt` file made of `parts` in order (csv: `header` first);
    `read_stored` reads the footers of parquet parts on the storage."""
    if not parts:
        raise ValueError("no parts to assemble")
    if fmt == "json":
        return _whole(parts)
    if fmt == "csv":
        return ((header,) if header else ()) + _whole(parts)
    if fmt == "parquet":
        return parquet_pieces(parts, read_stored)
    raise ValueError(f"cannot assemble {fmt!r} files")


def _whole(parts: Sequence[PartSource]) -> tuple[Piece, ...]:
    ranges = [range_of(part) for part in parts]
    return tuple(whole for whole in ranges if whole.length)
