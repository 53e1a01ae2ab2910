"""A parquet file from parts: "PAR1", every part's column chunks (and its bloom filters and
page index) where they lie, then one new footer: the first part's, with every part's row
groups, their byte offsets moved to where the part now starts. Lossless: pages, encodings,
compression, statistics, dictionaries, bloom filters and the page index all stay what the
writer made; only offsets change. The offset index (the page index's page locations,
absolute offsets inside the part) is re-encoded with the moved offsets; everything else is
copied.

The footer is Thrift compact protocol, read by `thrift_decode` and written by `thrift`. The work is
proportional to the footers (and offset indexes), never to the data; a part on the export
storage is read by ranges (its footer, its offset indexes), never whole.
"""

from __future__ import annotations

import struct
from bisect import bisect_left
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from export_pipeline.engine.thrift import I16, I64, LIST, STRUCT, Seq, Shape, Struct, encode_struct
from export_pipeline.engine.thrift_decode import decode_struct, decode_structs, paused_gc
from export_pipeline.storage.base import FileRange, Piece, StoredRange
from export_pipeline.storage.pieces import ReadStored, cut_piece, read_piece

MAGIC = b"PAR1"

# parquet.thrift field ids (apache/parquet-format src/main/thrift/parquet.thrift).
FMD_SCHEMA, FMD_NUM_ROWS, FMD_ROW_GROUPS, FMD_ENCRYPTION = 2, 3, 4, 8
RG_COLUMNS, RG_NUM_ROWS, RG_FILE_OFFSET, RG_ORDINAL = 1, 3, 5, 7
CC_FILE_PATH, CC_FILE_OFFSET, CC_META_DATA = 1, 2, 3
CC_OFFSET_INDEX_OFFSET, CC_OFFSET_INDEX_LENGTH, CC_COLUMN_INDEX_OFFSET = 4, 5, 6
CC_CRYPTO, CC_ENCRYPTED_META_DATA = 8, 9
CMD_OFFSETS = (9, 10, 11, 14)  # data, index and dictionary page offsets; bloom filter offset
OI_PAGE_LOCATIONS, PL_OFFSET = 1, 1
SCHEMA_ELEMENT_FIELDS = {
    1: "type",
    2: "type_length",
    3: "repetition_type",
    4: "name",
    5: "num_children",
    6: "converted_type",
    7: "scale",
    8: "precision",
    9: "field_id",
    10: "logicalType",
}
PHYSICAL_TYPES = ("BOOLEAN", "INT32", "INT64", "INT96", "FLOAT", "DOUBLE", "BYTE_ARRAY", "FLBA")
# What an assembly reads of a footer: the schema, to compare parts, and every offset, which
# are scalar fields of row groups, column chunks and column metadata; the rest stays encoded.
FOOTER_SHAPE: Shape = {FMD_SCHEMA: None, FMD_ROW_GROUPS: {RG_COLUMNS: {CC_META_DATA: {}}}}
OFFSET_INDEX_SHAPE: Shape = {OI_PAGE_LOCATIONS: {}}
MAX_ORDINAL = 2**15 - 1  # RowGroup.ordinal is an i16


# A part to assemble: a file in scratch space, or a whole object on the export storage (its
# length the object's size), read through the storage's `read_range`.
PartSource = Path | StoredRange


def range_of(part: PartSource) -> FileRange | StoredRange:
    """The whole part as one range."""
    return part if isinstance(part, StoredRange) else FileRange(part, 0, part.stat().st_size)


@dataclass
class ParquetPart:
    """A part's footer, decoded, and where its column data ends."""

    source: FileRange | StoredRange  # the whole part
    footer_start: int
    meta: Struct
    read_stored: ReadStored | None = None

    @property
    def name(self) -> str:
        """The part's file name, for messages."""
        where = self.source
        return where.path.name if isinstance(where, FileRange) else where.key.rsplit("/", 1)[-1]

    @property
    def size(self) -> int:
        """The part's size in bytes."""
        return self.source.length

    def read(self, offset: int, length: int) -> bytes:
        """`length` bytes of the part from `offset`."""
        return read_piece(cut_piece(self.source, offset, length), self.read_stored)

    def piece(self, offset: int, length: int) -> Piece:
        """The range of the part from `offset`, as a piece of the assembled file."""
        return cut_piece(self.source, offset, length)

    @property
    def row_groups(self) -> list[Struct]:
        """The part's row groups that hold rows (a writer given no rows may leave an empty
        one, whose column chunks have no data page)."""
        groups = self.meta.get_value(FMD_ROW_GROUPS, Seq(0, [])).items
        return [group for group in groups if group.get_value(RG_NUM_ROWS)]


def read_part(source: PartSource, read_stored: ReadStored | None = None) -> ParquetPart:
    """The footer of the parquet part; ValueError if it is not one we can assemble."""
    part = ParquetPart(range_of(source), 0, Struct(), read_stored)
    size, name = part.size, part.name
    if size < 12:
        raise ValueError(f"{name} is not a parquet file: {size} bytes")
    # The footer's last bytes are read with the tail: one read (a GET) for most footers.
    tail = part.read(max(size - 64 * 1024, 4), size - max(size - 64 * 1024, 4))
    if part.read(0, 4) != MAGIC or tail[-4:] != MAGIC:
        raise ValueError(f"{name} is not a plaintext-footer parquet file")
    length = struct.unpack("<I", tail[-8:-4])[0]
    footer_start = size - 8 - length
    if footer_start < 4:
        raise ValueError(f"{name}: footer length {length} exceeds the file")
    held = len(tail) - 8
    footer = tail[held - length : held] if length <= held else part.read(footer_start, length)
    meta, end = decode_struct(footer, shape=FOOTER_SHAPE)
    if end != length:
        raise ValueError(f"{name}: footer is {end} bytes, its length says {length}")
    if FMD_ENCRYPTION in meta:
        raise ValueError(f"{name} is encrypted: cannot assemble it")
    return replace(part, footer_start=footer_start, meta=meta)


def parquet_pieces(
    sources: Sequence[PartSource], read_stored: ReadStored | None = None
) -> tuple[Piece, ...]:
    """The pieces of one parquet file holding the row groups of `sources`, in order."""
    with paused_gc():
        return _parquet_pieces(sources, read_stored)


def _parquet_pieces(
    sources: Sequence[PartSource], read_stored: ReadStored | None
) -> tuple[Piece, ...]:
    parts = [read_part(source, read_stored) for source in sources]
    for index, part in enumerate(parts[1:], start=1):
        _check_schema(parts[0], part, index)
    filled = [part for part in parts if part.row_groups]  # a part with no rows adds nothing
    if not filled:
        return (parts[0].source,)
    pieces: list[Piece] = [MAGIC]
    row_groups: list[Struct] = []
    start = len(MAGIC)
    for part in filled:
        moved, part_pieces = _moved_part(part, start)
        pieces.extend(part_pieces)
        start += sum(len(p) if isinstance(p, bytes) else p.length for p in part_pieces)
        row_groups.extend(moved)
    meta = Struct(parts[0].meta)
    ordinals = len(row_groups) <= MAX_ORDINAL + 1
    for ordinal, group in enumerate(row_groups):
        if RG_ORDINAL in group:
            if ordinals:
                group.set_value(RG_ORDINAL, I16, ordinal)
            else:  # more row groups than an i16 counts: no ordinals rather than wrong ones
                del group[RG_ORDINAL]
    meta.set_value(FMD_ROW_GROUPS, LIST, Seq(STRUCT, row_groups))
    rows = sum(part.meta.get_value(FMD_NUM_ROWS, 0) for part in parts)
    meta.set_value(FMD_NUM_ROWS, I64, rows)
    footer = encode_struct(meta)
    pieces.append(footer + struct.pack("<I", len(footer)) + MAGIC)
    joined = _joined(pieces)
    # The first part starts with the same magic: one range from its first byte lets a local
    # storage take that part's file as the start of the assembled one instead of copying it
    # (and S3 copy it whole).
    first = joined[1] if len(joined) > 1 else None
    if joined[0] == MAGIC and not isinstance(first, bytes | None) and first.offset == len(MAGIC):
        joined[:2] = [replace(first, offset=0, length=first.length + len(MAGIC))]
    return tuple(joined)


def _check_schema(first: ParquetPart, part: ParquetPart, index: int) -> None:
    ours = first.meta.get_value(FMD_SCHEMA, Seq(0, [])).items
    theirs = part.meta.get_value(FMD_SCHEMA, Seq(0, [])).items
    where = f"part {index} ({part.name}) has another schema than part 0 ({first.name})"
    for position, (a, b) in enumerate(zip(ours, theirs, strict=False)):
        if a == b:
            continue
        name = (a.get_value(4) or b"").decode("utf-8", "replace")
        for fid in sorted(set(a) | set(b)):
            if a.get(fid) != b.get(fid):
                what = SCHEMA_ELEMENT_FIELDS.get(fid, f"field {fid}")
                raise ValueError(
                    f"{where}: column {name!r} (schema element {position}) {what}: "
                    f"{_shown(fid, a.get_value(fid))} != {_shown(fid, b.get_value(fid))}"
                )
    if len(ours) != len(theirs):
        raise ValueError(f"{where}: {len(ours)} schema elements != {len(theirs)}")


def _shown(fid: int, value: object) -> str:
    if fid == 1 and isinstance(value, int) and 0 <= value < len(PHYSICAL_TYPES):
        return PHYSICAL_TYPES[value]
    if isinstance(value, bytes):
        return repr(value.decode("utf-8", "replace"))
    return repr(value)


def _moved_part(part: ParquetPart, start: int) -> tuple[list[Struct], list[Piece]]:
    """The part's row groups with offsets moved to a part that now starts at `start`, and the
    pieces of its bytes from after its magic to its footer (offset indexes re-encoded)."""
    chunks = [cc for group in part.row_groups for cc in group[RG_COLUMNS][1].items]
    for chunk in chunks:
        if CC_FILE_PATH in chunk or CC_CRYPTO in chunk or CC_ENCRYPTED_META_DATA in chunk:
            raise ValueError(f"{part.name}: column data elsewhere or encrypted")
    indexed = sorted(
        (chunk[CC_OFFSET_INDEX_OFFSET][1], chunk[CC_OFFSET_INDEX_LENGTH][1])
        for chunk in chunks
        if CC_OFFSET_INDEX_OFFSET in chunk and CC_OFFSET_INDEX_LENGTH in chunk
    )
    data_end = indexed[0][0] if indexed else part.footer_start
    shift = start - len(MAGIC)

    def data_moved(offset: int) -> int:
        if not len(MAGIC) <= offset < data_end:
            raise ValueError(f"{part.name}: a page at {offset} is outside the column data")
        return offset + shift

    rewrites = _offset_indexes(part, indexed, data_moved)
    starts = [offset for offset, _, _ in rewrites]
    grown = [0]
    for _, length, new in rewrites:
        grown.append(grown[-1] + len(new) - length)

    def moved(offset: int) -> int:
        return offset + shift + grown[bisect_left(starts, offset)]

    lengths = {offset: len(new) for offset, _, new in rewrites}
    groups = [_moved_group(group, moved, lengths) for group in part.row_groups]
    pieces: list[Piece] = []
    cursor = len(MAGIC)
    for offset, length, new in rewrites:
        if offset > cursor:
            pieces.append(part.piece(cursor, offset - cursor))
        pieces.append(new)
        cursor = offset + length
    if part.footer_start > cursor:
        pieces.append(part.piece(cursor, part.footer_start - cursor))
    return groups, pieces


def _offset_indexes(
    part: ParquetPart, indexed: list[tuple[int, int]], moved: Callable[[int], int]
) -> list[tuple[int, int, bytes]]:
    """Each offset index of the part (offset, length) re-encoded with its pages moved."""
    if not indexed:
        return []
    first, end = indexed[0][0], max(offset + length for offset, length in indexed)
    if end > part.footer_start:
        raise ValueError(f"{part.name}: an offset index overlaps the footer")
    region = part.read(first, end - first)
    decoded = decode_structs(region, [offset - first for offset, _ in indexed], OFFSET_INDEX_SHAPE)
    rewrites = []
    cursor = first
    for (offset, length), (index, end) in zip(indexed, decoded, strict=True):
        if offset < cursor or end != offset - first + length:
            raise ValueError(f"{part.name}: offset index at {offset} is not {length} bytes")
        for location in index[OI_PAGE_LOCATIONS][1].items:
            location.set_value(PL_OFFSET, I64, moved(location[PL_OFFSET][1]))
        rewrites.append((offset, length, encode_struct(index)))
        cursor = offset + length
    return rewrites


def _moved_group(group: Struct, moved: Callable[[int], int], lengths: dict[int, int]) -> Struct:
    """A copy of a row group with its offsets moved; `lengths`: the re-encoded offset indexes'
    lengths by their old offset (a moved page offset may take more varint bytes)."""
    group = _shifted(group, (RG_FILE_OFFSET,), moved)
    columns = group[RG_COLUMNS][1]
    chunks = []
    for chunk in columns.items:
        if CC_OFFSET_INDEX_OFFSET in chunk and CC_OFFSET_INDEX_LENGTH in chunk:
            length = lengths[chunk[CC_OFFSET_INDEX_OFFSET][1]]
            chunk = Struct(chunk)
            chunk[CC_OFFSET_INDEX_LENGTH] = (chunk[CC_OFFSET_INDEX_LENGTH][0], length)
        chunk = _shifted(chunk, (CC_OFFSET_INDEX_OFFSET, CC_COLUMN_INDEX_OFFSET), moved)
        if chunk.get_value(CC_FILE_OFFSET):  # 0 means "no column metadata outside the footer"
            chunk.set_value(CC_FILE_OFFSET, I64, moved(chunk[CC_FILE_OFFSET][1]))
        if CC_META_DATA in chunk:
            kind, meta = chunk[CC_META_DATA]
            chunk[CC_META_DATA] = (kind, _shifted(meta, CMD_OFFSETS, moved))
        chunks.append(chunk)
    group[RG_COLUMNS] = (group[RG_COLUMNS][0], Seq(columns.type, chunks, columns.is_set))
    return group


def _shifted(fields: Struct, ids: tuple[int, ...], moved: Callable[[int], int]) -> Struct:
    """A copy of `fields` with the offsets at `ids` (where present) moved."""
    copy = Struct(fields)
    for fid in ids:
        if fid in copy:
            kind, offset = copy[fid]
            copy[fid] = (kind, moved(offset))
    return copy


def _joined(pieces: list[Piece]) -> list[Piece]:
    """Adjacent bytes pieces as one (thousands of offset indexes in a row)."""
    out: list[Piece] = []
    run: list[bytes] = []
    for piece in pieces:
        if isinstance(piece, bytes):
            run.append(piece)
            continue
        if run:
            out.append(b"".join(run))
            run = []
        out.append(piece)
    if run:
        out.append(b"".join(run))
    return out
