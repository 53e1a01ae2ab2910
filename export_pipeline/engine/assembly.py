"""Placeholder until the assembly branch lands: json and csv parts joined as they are."""

from __future__ import annotations

from pathlib import Path

from export_pipeline.storage.base import FileRange, Piece


def assembled(fmt: str, parts: list[Path], *, header: bytes = b"") -> tuple[Piece, ...]:
    """The pieces of the one file made of `parts`, in order."""
    if fmt == "parquet":
        raise NotImplementedError("parquet assembly lands with the assembly branch")
    pieces: list[Piece] = [header] if header else []
    for path in parts:
        size = path.stat().st_size
        if size:
            pieces.append(FileRange(path, 0, size))
    return tuple(pieces)
