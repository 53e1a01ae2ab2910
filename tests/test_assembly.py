"""Shards' parts assembled into one file, never re-serialised: json and csv byte for
byte as one writer makes them, parquet lossless and readable by pyarrow and DuckDB."""

from __future__ import annotations

import datetime as dt
import struct
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from export_pipeline.engine.assembly import assembled
from export_pipeline.engine.parquet_assembly import FOOTER_SHAPE, read_part
from export_pipeline.engine.sinks import LineSink, csv_header, csv_sink, parquet_sink
from export_pipeline.engine.thrift import encode_struct
from export_pipeline.engine.thrift_decode import decode_struct
from export_pipeline.storage.base import FileRange, Piece

SLOW = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def write_pieces(pieces: tuple[Piece, ...], out: Path) -> Path:
    """What the storage layer publishes: the pieces, in order, as one file."""
    with open(out, "wb") as file:
        for piece in pieces:
            if isinstance(piece, FileRange):
                with open(piece.path, "rb") as part:
                    part.seek(piece.offset)
                    chunk = part.read(piece.length)
                assert len(chunk) == piece.length
                file.write(chunk)
            else:
                file.write(piece)
    return out


@contextmanager
def folder() -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as name:
        yield Path(name)


def cuts(draw: st.DrawFn, rows: int) -> list[tuple[int, int]]:
    """1..7 consecutive slices (offset, length) covering `rows`, some of them empty."""
    count = draw(st.integers(1, 7))
    bounds = sorted(draw(st.lists(st.integers(0, rows), min_size=count - 1, max_size=count - 1)))
    edges = [0, *bounds, rows]
    return [(edges[i], edges[i + 1] - edges[i]) for i in range(count)]


# ---- parquet -------------------------------------------------------------------------------

TEXT = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=12)
FLOATS = st.floats(allow_nan=False, width=32)
Column = tuple[pa.DataType, st.SearchStrategy[Any]]


def nullable(values: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.none() | values


TIME = st.datetimes(min_value=dt.datetime(1900, 1, 1), max_value=dt.datetime(2200, 1, 1))
COLUMNS: dict[str, Column] = {
    "i64": (pa.int64(), nullable(st.integers(-(2**63), 2**63 - 1))),
    "i8": (pa.int8(), nullable(st.integers(-128, 127))),
    "u32": (pa.uint32(), st.integers(0, 2**32 - 1)),
    "f64": (pa.float64(), nullable(st.floats(allow_nan=False))),
    "vector": (pa.list_(pa.float32()), nullable(st.lists(FLOATS, max_size=6))),
    "fixed_vector": (pa.list_(pa.float32(), 4), st.lists(FLOATS, min_size=4, max_size=4)),
    "text": (pa.string(), nullable(TEXT)),
    "label": (pa.dictionary(pa.int32(), pa.string()), nullable(st.sampled_from(["a", "ß", "猫"]))),
    "flag": (pa.bool_(), nullable(st.booleans())),
    "at": (pa.timestamp("us", tz="UTC"), nullable(TIME.map(lambda t: t.replace(tzinfo=dt.UTC)))),
    "at_ns": (pa.timestamp("ns"), nullable(TIME.filter(lambda t: 1700 < t.year < 2260))),
    "day": (pa.date32(), nullable(st.dates())),
    "price": (pa.decimal128(12, 3), nullable(st.decimals(-(10**8), 10**8, places=3))),
    "blob": (pa.binary(), nullable(st.binary(max_size=10))),
    "meta": (
        pa.struct([("title", pa.string()), ("n", pa.int32()), ("tags", pa.list_(pa.string()))]),
        nullable(
            st.fixed_dictionaries(
                {
                    "title": nullable(TEXT),
                    "n": nullable(st.integers(-(2**31), 2**31 - 1)),
                    "tags": nullable(st.lists(nullable(TEXT), max_size=3)),
                }
            )
        ),
    ),
    "nested": (
        pa.list_(pa.struct([("x", pa.float32()), ("ys", pa.list_(pa.int16()))])),
        nullable(
            st.lists(
                nullable(
                    st.fixed_dictionaries(
                        {"x": nullable(FLOATS), "ys": st.lists(st.integers(-5, 5), max_size=3)}
                    )
                ),
                max_size=3,
            )
        ),
    ),
}


@st.composite
def tables(draw: st.DrawFn) -> pa.Table:
    """A table of 0..40 rows with some of the column kinds above (always document_id)."""
    rows = draw(st.integers(0, 40))
    names = draw(st.lists(st.sampled_from(sorted(COLUMNS)), min_size=1, max_size=6, unique=True))
    arrays = {"document_id": pa.array([f"doc-{i:05d}" for i in range(rows)], pa.string())}
    for name in names:
        kind, values = COLUMNS[name]
        drawn = draw(st.lists(values, min_size=rows, max_size=rows))
        if name == "price":
            drawn = [None if v is None else Decimal(v) for v in drawn]
        arrays[name] = pa.array(drawn, kind)
    return pa.table(arrays)


def sink_writer(table: pa.Table, path: Path, rows_per_group: int) -> None:
    """A part as a shard writes it: our parquet_sink, one write per converted batch."""
    writer = parquet_sink(path)(table.schema)
    for start in range(0, max(table.num_rows, 1), rows_per_group):
        writer.write_table(table.slice(start, rows_per_group))
    writer.close()


def plain_writer(**options: Any) -> Callable[[pa.Table, Path, int], None]:
    def write(table: pa.Table, path: Path, rows_per_group: int) -> None:
        pq.write_table(table, path, row_group_size=rows_per_group, **options)

    return write


WRITERS = {
    "parquet_sink": sink_writer,
    "plain": plain_writer(),
    "page_index": plain_writer(write_page_index=True, data_page_size=64, compression="zstd"),
    "bloom": plain_writer(bloom_filter_options={"document_id": True}, write_page_index=True),
}


def column_bytes(path: Path, offset: int, length: int) -> bytes:
    with open(path, "rb") as file:
        file.seek(offset)
        return file.read(length)


def check_indexes(out: Path, parts: list[Path]) -> None:
    """Every page the assembled offset indexes name is the page the part's index named; column
    indexes and bloom filters are the parts' own bytes."""
    groups = [(path, g) for path in parts for g in read_part(path).row_groups]
    whole = read_part(out).row_groups
    assert len(groups) == len(whole)
    assert [group.get_value(7, i) for i, group in enumerate(whole)] == list(range(len(whole)))
    for (path, old), new in zip(groups, whole, strict=True):
        for old_chunk, new_chunk in zip(old[1][1].items, new[1][1].items, strict=True):
            if 4 in old_chunk:
                old_pages = decode_struct(column_bytes(path, old_chunk[4][1], old_chunk[5][1]))
                new_pages = decode_struct(column_bytes(out, new_chunk[4][1], new_chunk[5][1]))
                old_locs, new_locs = old_pages[0][1][1].items, new_pages[0][1][1].items
                assert len(old_locs) == len(new_locs) > 0
                for a, b in zip(old_locs, new_locs, strict=True):
                    size = a[2][1]
                    assert (a[2], a[3]) == (b[2], b[3])
                    assert column_bytes(path, a[1][1], size) == column_bytes(out, b[1][1], size)
            if 6 in old_chunk:
                size = old_chunk[7][1]
                old_index = column_bytes(path, old_chunk[6][1], size)
                assert old_index == column_bytes(out, new_chunk[6][1], size)
            old_meta, new_meta = old_chunk[3][1], new_chunk[3][1]
            if 14 in old_meta:
                size = old_meta[15][1]
                old_filter = column_bytes(path, old_meta[14][1], size)
                assert old_filter == column_bytes(out, new_meta[14][1], size)


def check_assembled(out: Path, parts: list[Path]) -> None:
    """What readers see of the assembled file is the parts, in order."""
    read_parts = [pq.read_table(part) for part in parts]
    whole = pq.read_table(out)
    assert whole.schema == read_parts[0].schema
    assert whole.to_pylist() == [row for part in read_parts for row in part.to_pylist()]

    metadata = pq.ParquetFile(out).metadata
    first = pq.ParquetFile(parts[0]).metadata
    assert (metadata.created_by, metadata.metadata) == (first.created_by, first.metadata)
    groups = [
        (meta.row_group(i), meta.row_group(i).num_rows)
        for meta in (pq.ParquetFile(part).metadata for part in parts)
        for i in range(meta.num_row_groups)
        if meta.row_group(i).num_rows  # a writer given no rows may leave an empty group
    ]
    assert metadata.num_rows == sum(t.num_rows for t in read_parts)
    if groups:
        assert metadata.num_row_groups == len(groups)
    else:
        assert out.read_bytes() == parts[0].read_bytes()
    for i, (group, rows) in enumerate(groups):
        new = metadata.row_group(i)
        assert new.num_rows == rows
        for j in range(group.num_columns):
            old_column, new_column = group.column(j), new.column(j)
            assert old_column.path_in_schema == new_column.path_in_schema
            assert old_column.encodings == new_column.encodings
            assert old_column.compression == new_column.compression
            assert old_column.total_compressed_size == new_column.total_compressed_size
            old_stats, new_stats = old_column.statistics, new_column.statistics
            assert (old_stats is None) == (new_stats is None)
            if old_stats is not None:
                assert old_stats.to_dict() == new_stats.to_dict()

    with duckdb.connect() as con:
        listed = ", ".join(f"'{part}'" for part in parts)
        expected = con.sql(f"SELECT * FROM read_parquet([{listed}])").fetchall()
        assert con.sql(f"SELECT * FROM read_parquet('{out}')").fetchall() == expected
    check_indexes(out, parts)


@given(table=tables(), data=st.data())
@SLOW
@pytest.mark.slow
def test_parquet_parts_assemble_into_their_concatenation(
    table: pa.Table, data: st.DataObject
) -> None:
    writer = data.draw(st.sampled_from(sorted(WRITERS)), label="writer")
    rows_per_group = data.draw(st.integers(1, 12), label="rows_per_group")
    with folder() as tmp:
        parts = []
        for k, (offset, length) in enumerate(cuts(data.draw, table.num_rows)):
            parts.append(tmp / f"part-{k}.parquet")
            WRITERS[writer](table.slice(offset, length), parts[-1], rows_per_group)
        out = write_pieces(assembled("parquet", parts), tmp / "documents.parquet")
        check_assembled(out, parts)


def test_vectors_file_of_many_shards_keeps_page_index_and_statistics(tmp_path: Path) -> None:
    vectors = pa.table(
        {
            "document_id": [f"d{i:04d}" for i in range(3000)],
            "vector": pa.array(
                [[i / 7, -i, 0.5, 1e-3] for i in range(3000)], pa.list_(pa.float32(), 4)
            ),
        }
    )
    parts = []
    for k in range(5):
        parts.append(tmp_path / f"vectors-{k}.parquet")
        pq.write_table(
            vectors.slice(k * 600, 600), parts[-1], row_group_size=128, write_page_index=True,
            data_page_size=512, use_byte_stream_split=["vector.list.element"],
        )  # fmt: skip
    out = write_pieces(assembled("parquet", parts), tmp_path / "vectors.parquet")
    check_assembled(out, parts)
    assert pq.read_table(out).equals(vectors)
    ids = pq.read_table(out, filters=[("document_id", ">=", "d2990")]).column("document_id")
    assert ids.to_pylist() == [f"d{i:04d}" for i in range(2990, 3000)]


def test_parts_without_rows_add_nothing_and_all_empty_is_the_first_part(tmp_path: Path) -> None:
    schema = pa.schema([("document_id", pa.string()), ("vector", pa.list_(pa.float32()))])
    empty = [tmp_path / "e0.parquet", tmp_path / "e1.parquet"]
    for path in empty:
        sink_writer(schema.empty_table(), path, 10)
    assert assembled("parquet", empty) == (FileRange(empty[0], 0, empty[0].stat().st_size),)

    full = tmp_path / "full.parquet"
    sink_writer(pa.table({"document_id": ["a", "b"], "vector": [[1.0], [2.0]]}, schema), full, 1)
    out = write_pieces(assembled("parquet", [empty[0], full, empty[1]]), tmp_path / "out.parquet")
    assert pq.read_table(out).to_pylist() == pq.read_table(full).to_pylist()
    assert pq.ParquetFile(out).metadata.num_row_groups == 2


@pytest.mark.parametrize(
    ("second", "named"),
    [
        (
            pa.schema([("document_id", pa.string()), ("age", pa.int32())]),
            "'age'.*type: INT64 != INT32",
        ),
        (
            pa.schema([("document_id", pa.string()), ("years", pa.int64())]),
            "'age'.*name: 'age' != 'years'",
        ),
        (pa.schema([("document_id", pa.string())]), "num_children: 2 != 1"),
        (pa.schema([("document_id", pa.string()), ("age", pa.int64(), False)]), "repetition_type"),
    ],
)
def test_parts_with_other_schemas_are_refused(
    tmp_path: Path, second: pa.Schema, named: str
) -> None:
    first = pa.schema([("document_id", pa.string()), ("age", pa.int64())])
    paths = [tmp_path / "a.parquet", tmp_path / "b.parquet"]
    for path, schema in zip(paths, [first, second], strict=True):
        pq.write_table(pa.table({f.name: pa.nulls(0, f.type) for f in schema}, schema), path)
    with pytest.raises(ValueError, match=named):
        assembled("parquet", paths)


def test_a_file_that_is_not_parquet_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"PAR1 not really a parquet file")
    with pytest.raises(ValueError, match=r"bad\.parquet"):
        assembled("parquet", [bad])


OPTIONS: list[dict[str, Any]] = [
    {},
    {"write_page_index": True},
    {"bloom_filter_options": {"document_id": True}},
    {"compression": "zstd", "use_dictionary": False, "write_statistics": False},
    {"version": "1.0", "data_page_version": "2.0", "store_schema": False},
    {"sorting_columns": [pq.SortingColumn(0)], "write_page_checksum": True},
]


@pytest.mark.parametrize("options", OPTIONS)
def test_footers_and_page_indexes_decode_and_encode_to_the_same_bytes(
    tmp_path: Path, options: dict[str, Any]
) -> None:
    table = pa.table({"document_id": ["a", "b", None, "d"]}).append_column(
        "meta",
        pa.array([{"x": 1.5, "ys": [1, 2]}, None, {"x": None, "ys": []}, {"x": -0.0, "ys": None}]),
    )
    table = table.append_column("vector", pa.array([[0.1, 0.2]] * 4, pa.list_(pa.float32(), 2)))
    path = tmp_path / "t.parquet"
    pq.write_table(table, path, row_group_size=3, **options)
    data = path.read_bytes()
    length = struct.unpack("<I", data[-8:-4])[0]
    footer = data[-8 - length : -8]
    meta, end = decode_struct(footer)
    assert end == length and encode_struct(meta) == footer
    shaped, end = decode_struct(footer, shape=FOOTER_SHAPE)
    assert end == length and encode_struct(shaped) == footer
    for group in meta[4][1].items:
        for chunk in group[1][1].items:
            for offset_id, length_id in ((4, 5), (6, 7)):
                if offset_id in chunk:
                    raw = data[chunk[offset_id][1] : chunk[offset_id][1] + chunk[length_id][1]]
                    assert encode_struct(decode_struct(raw)[0]) == raw


# ---- json lines and csv ----------------------------------------------------------------------

LINES = st.lists(
    st.text(st.characters(codec="utf-8", exclude_characters="\n"), max_size=20), max_size=30
)


@given(lines=LINES, data=st.data())
@settings(max_examples=100, deadline=None)
def test_json_parts_are_the_single_writer_file(lines: list[str], data: st.DataObject) -> None:
    column = pa.table({"line": pa.array(lines, pa.string())})
    with folder() as tmp:
        one = LineSink(tmp / "one.jsonl")
        one.write_table(column)
        one.close()
        parts = []
        for k, (offset, length) in enumerate(cuts(data.draw, len(lines))):
            parts.append(tmp / f"part-{k}.jsonl")
            sink = LineSink(parts[-1])
            sink.write_table(column.slice(offset, length))
            sink.close()
        out = write_pieces(assembled("json", parts), tmp / "documents.jsonl")
        assert out.read_bytes() == (tmp / "one.jsonl").read_bytes()
        assert all(isinstance(p, FileRange) and p.length for p in assembled("json", parts))


NAMES = st.lists(
    st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1, max_size=8)
    | st.sampled_from(["a,b", 'say "hi"', " spaced ", "line\nbreak", "x\r\ny", "é猫", ""]),
    min_size=1,
    max_size=5,
)
CSV_VALUES = st.none() | st.text(max_size=10) | st.sampled_from(['"', '""', "a\nb", ",", "\r\n"])


@pytest.mark.slow
@given(names=NAMES, data=st.data())
@settings(max_examples=100, deadline=None)
def test_csv_header_and_headerless_parts_are_the_single_writer_file(
    names: list[str], data: st.DataObject
) -> None:
    rows = data.draw(st.integers(0, 25), label="rows")
    columns = [data.draw(st.lists(CSV_VALUES, min_size=rows, max_size=rows)) for _ in names]
    numbers = data.draw(st.lists(st.integers(-(10**6), 10**6), min_size=rows, max_size=rows))
    table = pa.Table.from_arrays(
        [*(pa.array(c, pa.string()) for c in columns), pa.array(numbers, pa.int64())],
        names=[*names, 'n, "count"'],
    )
    with folder() as tmp:
        one = csv_sink(tmp / "one.csv")(table.schema)
        one.write_table(table)
        one.close()
        parts = []
        for k, (offset, length) in enumerate(cuts(data.draw, rows)):
            parts.append(tmp / f"part-{k}.csv")
            sink = csv_sink(parts[-1], header=False)(table.schema)
            sink.write_table(table.slice(offset, length))
            sink.close()
        pieces = assembled("csv", parts, header=csv_header(table.column_names))
        out = write_pieces(pieces, tmp / "documents.csv")
        assert out.read_bytes() == (tmp / "one.csv").read_bytes()


def test_an_unknown_format_is_refused(tmp_path: Path) -> None:
    part = tmp_path / "p"
    part.write_bytes(b"x")
    with pytest.raises(ValueError, match="xml"):
        assembled("xml", [part])


def test_parts_written_by_duckdb_assemble_too(tmp_path: Path) -> None:
    parts = []
    with duckdb.connect() as con:
        for k in range(3):
            parts.append(tmp_path / f"part-{k}.parquet")
            con.execute(
                f"COPY (SELECT i AS id, 'doc-' || i AS document_id, [i::FLOAT, 0.5] AS vector,"
                f" {{'a': i % 7, 'b': 'x'}} AS meta FROM range({k * 3000}, {(k + 1) * 3000}) t(i))"
                f" TO '{parts[-1]}' (FORMAT parquet, ROW_GROUP_SIZE 1024)"
            )
    for part in parts:
        data = part.read_bytes()
        footer = data[-8 - struct.unpack("<I", data[-8:-4])[0] : -8]
        assert encode_struct(decode_struct(footer)[0]) == footer
    out = write_pieces(assembled("parquet", parts), tmp_path / "documents.parquet")
    check_assembled(out, parts)
    assert pq.read_table(out).column("id").to_pylist() == list(range(9000))
