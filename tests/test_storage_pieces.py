"""Files made of pieces (docs/architecture.md: Sharded exports): read, hashed and written locally in
bounded chunks, and published as one file, locally and on S3 (moto's server) by multipart upload."""

from __future__ import annotations

import hashlib
import os
import random
import tempfile
import threading
from pathlib import Path
from typing import Any

import boto3
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from export_pipeline.errors import ExportPipelineError
from export_pipeline.storage import FileRange, LocalFile, LocalStorage, Piece, S3Storage
from export_pipeline.storage.pieces import (
    read_pieces,
    sha256_of_pieces,
    size_of_pieces,
    write_pieces,
)
from export_pipeline.storage.s3_client import MIB, S3Options, make_client

PREFIX = "ns/exports/col/exp_1"


@st.composite
def files_and_pieces(draw: Any) -> tuple[list[bytes], list[tuple[int, int, int] | bytes]]:
    """Part files' contents, and pieces: (file index, offset, length) ranges or bytes."""
    contents = draw(st.lists(st.binary(max_size=300), min_size=1, max_size=4))
    ranges = st.integers(0, len(contents) - 1).flatmap(
        lambda i: st.integers(0, len(contents[i])).flatmap(
            lambda start: st.integers(0, len(contents[i]) - start).map(
                lambda length: (i, start, length)
            )
        )
    )
    return contents, draw(st.lists(st.one_of(ranges, st.binary(max_size=40)), max_size=8))


def materialise(folder: Path, contents: list[bytes], spec: list[Any]) -> list[Piece]:
    paths = []
    for index, content in enumerate(contents):
        paths.append(folder / f"part-{index}")
        paths[-1].write_bytes(content)
    return [p if isinstance(p, bytes) else FileRange(paths[p[0]], p[1], p[2]) for p in spec]


def expected_bytes(contents: list[bytes], spec: list[Any]) -> bytes:
    return b"".join(p if isinstance(p, bytes) else contents[p[0]][p[1] : p[1] + p[2]] for p in spec)


@pytest.mark.slow
@settings(max_examples=300, deadline=None)
@given(files_and_pieces(), st.integers(1, 70))
def test_pieces_read_hash_and_write_as_their_concatenation(
    case: tuple[list[bytes], list[Any]], chunk_size: int
) -> None:
    contents, spec = case
    expected = expected_bytes(contents, spec)
    with tempfile.TemporaryDirectory() as tmp:
        pieces = materialise(Path(tmp), contents, spec)
        chunks = list(read_pieces(pieces, chunk_size))
        assert b"".join(chunks) == expected
        assert all(len(chunk) == chunk_size for chunk in chunks[:-1])
        assert all(0 < len(chunk) <= chunk_size for chunk in chunks)
        assert sha256_of_pieces(pieces) == hashlib.sha256(expected).hexdigest()
        assert size_of_pieces(pieces) == len(expected)
        write_pieces(pieces, Path(tmp) / "assembled")
        assert (Path(tmp) / "assembled").read_bytes() == expected
        assert [(Path(tmp) / f"part-{i}").read_bytes() for i in range(len(contents))] == contents


@pytest.mark.parametrize("missing", [["copy_file_range"], ["copy_file_range", "sendfile"]])
def test_write_pieces_works_without_the_kernels_copy_calls(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, missing: list[str]
) -> None:
    """As on a platform without them (macOS has no copy_file_range): the bytes are the same."""
    content = random.Random(1).randbytes(3 * MIB + 17)
    (tmp_path / "part").write_bytes(content)
    for name in missing:
        monkeypatch.delattr(os, name, raising=False)
    pieces = [b"head", FileRange(tmp_path / "part", 5, 3 * MIB), b"tail"]
    write_pieces(pieces, tmp_path / "out")
    assert (tmp_path / "out").read_bytes() == b"head" + content[5 : 5 + 3 * MIB] + b"tail"


def test_a_range_past_the_end_of_its_part_raises(tmp_path: Path) -> None:
    """A part shorter than planned is a bug: never a silently shorter file."""
    (tmp_path / "part").write_bytes(b"0123456789")
    pieces = [b"x", FileRange(tmp_path / "part", 4, 7)]
    with pytest.raises(ExportPipelineError, match="holds 10 bytes"):
        list(read_pieces(pieces, 4))
    with pytest.raises(ExportPipelineError, match="holds 10 bytes"):
        write_pieces(pieces, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def csv_parts(folder: Path, sizes: list[int], seed: int = 0) -> list[Path]:
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"part-{i}.csv" for i in range(len(sizes))]
    for path, size in zip(paths, sizes, strict=True):
        path.write_bytes(rng.randbytes(size))
    return paths


def assembled(paths: list[Path], header: bytes = b"id,text\n") -> tuple[Piece, ...]:
    """A header, then each part but its first 3 bytes (ranges that start inside a file)."""
    sizes = [p.stat().st_size for p in paths]
    return (
        header,
        *(FileRange(p, min(s, 3), max(s - 3, 0)) for p, s in zip(paths, sizes, strict=True)),
    )


def content_of(pieces: tuple[Piece, ...]) -> bytes:
    return b"".join(
        p if isinstance(p, bytes) else p.path.read_bytes()[p.offset : p.offset + p.length]
        for p in pieces
    )


def manifest(scratch: Path) -> LocalFile:
    (scratch / "manifest.json").write_text('{"files": []}')
    return LocalFile("manifest.json", scratch / "manifest.json", "application/json")


def test_local_publish_writes_the_pieces_and_leaves_the_parts(tmp_path: Path) -> None:
    scratch = tmp_path / "scratch"
    parts = csv_parts(scratch / "parts", [1000, 0, 70_000])
    pieces = assembled(parts)
    before = [p.read_bytes() for p in parts]
    documents = LocalFile("documents.csv", scratch / "documents.csv", "text/csv", pieces=pieces)
    storage = LocalStorage(tmp_path / "exports")
    storage.publish(PREFIX, [documents, manifest(scratch)])
    folder = tmp_path / "exports" / PREFIX
    assert (folder / "documents.csv").read_bytes() == content_of(pieces)
    assert sorted(p.name for p in folder.iterdir()) == ["documents.csv", "manifest.json"]
    assert [p.read_bytes() for p in parts] == before
    assert list((tmp_path / "exports" / ".staging").iterdir()) == []


def test_local_publish_of_a_short_part_publishes_nothing(tmp_path: Path) -> None:
    scratch = tmp_path / "scratch"
    parts = csv_parts(scratch / "parts", [5000, 5000])
    good = LocalFile("documents.csv", scratch / "d", "text/csv", pieces=assembled(parts[:1]))
    short = (FileRange(parts[1], 0, 6000),)
    bad = LocalFile("things_vectors.csv", scratch / "v", "text/csv", pieces=short)
    storage = LocalStorage(tmp_path / "exports")
    with pytest.raises(ExportPipelineError, match="holds 5000 bytes"):
        storage.publish(PREFIX, [good, bad, manifest(scratch)])
    assert not (tmp_path / "exports" / PREFIX).exists()
    staging = tmp_path / "exports" / ".staging"
    assert not staging.exists() or list(staging.iterdir()) == []
    assert [p.stat().st_size for p in parts] == [5000, 5000]


def test_local_publish_moves_a_file_that_is_one_whole_part(tmp_path: Path) -> None:
    """One shard: its part is the file, renamed rather than copied."""
    scratch = tmp_path / "scratch"
    (part,) = csv_parts(scratch / "parts", [4096])
    content, inode = part.read_bytes(), part.stat().st_ino
    whole = (FileRange(part, 0, 4096),)
    documents = LocalFile("documents.csv", scratch / "d", "text/csv", pieces=whole)
    LocalStorage(tmp_path / "exports").publish(PREFIX, [documents, manifest(scratch)])
    published = tmp_path / "exports" / PREFIX / "documents.csv"
    assert published.read_bytes() == content and published.stat().st_ino == inode


def s3_storage(bucket: str, journal: Path, concurrency: int = 3, **extra: Any) -> S3Storage:
    options = S3Options(part_size_bytes=5 * MIB, max_concurrency=concurrency, **extra)
    return S3Storage(bucket, "root", options, journal=journal, client=make_client(options))


def calls(storage: S3Storage) -> list[tuple[str, str]]:
    """The S3 operations the storage makes, in order, with the key each names."""
    seen: list[tuple[str, str]] = []

    def note(model: Any, params: dict[str, Any], **_: Any) -> None:
        seen.append((model.name, params.get("Key", "")))

    storage.client.meta.events.register("before-parameter-build.s3", note)
    return seen


def s3() -> Any:
    return boto3.session.Session().client("s3")


def left_in(bucket: str) -> tuple[list[str], list[str]]:
    """The objects and the incomplete multipart uploads in the bucket."""
    listed = s3().list_objects_v2(Bucket=bucket).get("Contents", [])
    uploads = s3().list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    return [o["Key"] for o in listed], [u["Key"] for u in uploads]


@pytest.mark.parametrize(
    ("sizes", "length", "parts"),
    [
        ([0, 0], 0, 0),  # only empty pieces
        ([700, 300_000, 11], 300_710, 0),  # under one part: one PutObject
        ([3 * MIB, 2 * MIB - 2], 5 * MIB, 0),  # exactly one part
        ([MIB, 6 * MIB, 3 * MIB + 1], 10 * MIB, 2),  # the parts' edge inside a piece
        ([MIB, 6 * MIB, 3 * MIB + 2], 10 * MIB + 1, 3),
    ],
)
def test_s3_publish_of_pieces_downloads_byte_for_byte(
    bucket: str, tmp_path: Path, sizes: list[int], length: int, parts: int
) -> None:
    """Each piece but the header starts 3 bytes into its part (header 8 bytes)."""
    paths = csv_parts(tmp_path / "parts", sizes)
    pieces = (b"", *assembled(paths, b"id,text\n"), b"")
    if sum(sizes) == 0:
        pieces = tuple(FileRange(p, 0, 0) for p in paths)
    content = content_of(pieces)
    assert len(content) == length
    sha = hashlib.sha256(content).hexdigest()
    documents = LocalFile("documents.csv", tmp_path / "d", "text/csv", sha, pieces)
    storage = s3_storage(bucket, tmp_path / "journal")
    storage.publish(PREFIX, [documents, manifest(tmp_path)])
    key = f"root/{PREFIX}/documents.csv"
    got = s3().get_object(Bucket=bucket, Key=key)
    assert got["Body"].read() == content
    assert got["Metadata"] == {"sha256": sha}
    assert got["ContentType"] == "text/csv"
    assert got["ContentDisposition"] == 'attachment; filename="documents.csv"'
    assert got["ETag"].strip('"').endswith(f"-{parts}") == bool(parts)
    assert left_in(bucket) == (sorted([key, f"root/{PREFIX}/manifest.json"]), [])


def test_s3_multipart_files_of_pieces_ask_for_server_side_encryption(
    bucket: str, tmp_path: Path
) -> None:
    pieces = assembled(csv_parts(tmp_path / "p", [4 * MIB, 2 * MIB]))
    storage = s3_storage(bucket, tmp_path / "journal", sse="AES256")
    documents = LocalFile("documents.csv", tmp_path / "d", "text/csv", pieces=pieces)
    storage.publish(PREFIX, [documents, manifest(tmp_path)])
    head = s3().head_object(Bucket=bucket, Key=f"root/{PREFIX}/documents.csv")
    assert head["ServerSideEncryption"] == "AES256" and head["ETag"].endswith('-2"')


def test_s3_publish_sends_every_part_before_anything_appears(bucket: str, tmp_path: Path) -> None:
    """The files become visible only once all bytes are sent, the manifest last."""
    docs = assembled(csv_parts(tmp_path / "d", [4 * MIB, 4 * MIB]))
    vectors = assembled(csv_parts(tmp_path / "v", [3 * MIB, 4 * MIB], seed=1))
    small = (b"id\n", b"1\n")
    files = [
        LocalFile("documents.json", tmp_path / "a", "application/json", pieces=docs),
        LocalFile("things_vectors.json", tmp_path / "b", "application/json", pieces=vectors),
        LocalFile("extra.json", tmp_path / "c", "application/json", pieces=small),
        manifest(tmp_path),
    ]
    storage = s3_storage(bucket, tmp_path / "journal")
    seen = calls(storage)
    storage.publish(PREFIX, files)
    ops = [op for op, _ in seen]
    visible = [i for i, op in enumerate(ops) if op in ("CompleteMultipartUpload", "PutObject")]
    assert max(i for i, op in enumerate(ops) if op == "UploadPart") < min(visible)
    assert [seen[i][1].rsplit("/", 1)[1] for i in visible] == [f.name for f in files]
    body = s3().get_object(Bucket=bucket, Key=f"root/{PREFIX}/things_vectors.json")["Body"]
    assert body.read() == content_of(vectors)


def test_s3_parts_in_flight_never_exceed_the_concurrency(bucket: str, tmp_path: Path) -> None:
    pieces = assembled(csv_parts(tmp_path / "p", [12 * MIB, 9 * MIB]))
    storage = s3_storage(bucket, tmp_path / "journal", concurrency=2)
    lock, flying, most = threading.Lock(), [0], [0]

    def start(**_: Any) -> None:
        with lock:
            flying[0] += 1
            most[0] = max(most[0], flying[0])

    def end(**_: Any) -> None:
        with lock:
            flying[0] -= 1

    storage.client.meta.events.register("before-call.s3.UploadPart", start)
    storage.client.meta.events.register("after-call.s3.UploadPart", end)
    documents = LocalFile("documents.csv", tmp_path / "d", "text/csv", pieces=pieces)
    storage.publish(PREFIX, [documents, manifest(tmp_path)])
    assert 1 <= most[0] <= 2


@pytest.mark.parametrize("accident", ["truncated", "deleted"])
@pytest.mark.parametrize("moment", ["UploadPart", "CompleteMultipartUpload"])
def test_s3_publish_failing_midway_leaves_nothing(
    bucket: str, tmp_path: Path, accident: str, moment: str
) -> None:
    """A part file changes under the publish: while parts are sent (a later file's part),
    or once the first file is completed (the small file, put at completion, cannot be read)."""
    docs = assembled(csv_parts(tmp_path / "d", [6 * MIB, 6 * MIB]))
    late = csv_parts(tmp_path / "v", [MIB] if moment != "UploadPart" else [7 * MIB], seed=2)
    files = [
        LocalFile("documents.csv", tmp_path / "a", "text/csv", pieces=docs),
        LocalFile("things_vectors.csv", tmp_path / "b", "text/csv", pieces=assembled(late)),
        manifest(tmp_path),
    ]
    storage = s3_storage(bucket, tmp_path / "journal", concurrency=1)

    def accident_happens(**_: Any) -> None:
        if accident == "deleted":
            late[0].unlink(missing_ok=True)
        else:
            os.truncate(late[0], 1000)

    storage.client.meta.events.register(f"after-call.s3.{moment}", accident_happens)
    seen = calls(storage)
    error = ExportPipelineError if accident == "truncated" else FileNotFoundError
    with pytest.raises(error):
        storage.publish(PREFIX, files)
    assert ("CompleteMultipartUpload" in [op for op, _ in seen]) == (moment != "UploadPart")
    assert left_in(bucket) == ([], [])
    assert not (tmp_path / "journal").exists() or not (tmp_path / "journal").read_text()


def test_s3_publish_of_a_part_shorter_than_planned_sends_nothing(
    bucket: str, tmp_path: Path
) -> None:
    (part,) = csv_parts(tmp_path / "p", [100])
    short = LocalFile(
        "documents.csv", tmp_path / "d", "text/csv", pieces=(FileRange(part, 0, 101),)
    )
    storage = s3_storage(bucket, tmp_path / "journal")
    seen = calls(storage)
    with pytest.raises(ExportPipelineError, match="holds 100 bytes"):
        storage.publish(PREFIX, [short, manifest(tmp_path)])
    assert [op for op, _ in seen if op != "ListMultipartUploads"] == []
    assert left_in(bucket) == ([], [])


@pytest.mark.slow
def test_local_publish_takes_the_first_part_as_the_start_of_the_file(tmp_path: Path) -> None:
    """Several shards: the first part becomes the file (renamed, not copied) and the others
    are copied after it."""
    scratch = tmp_path / "scratch"
    first, second = csv_parts(scratch / "parts", [4096, 3000])
    expected = first.read_bytes() + second.read_bytes()
    inode = first.stat().st_ino
    pieces = (FileRange(first, 0, 4096), FileRange(second, 0, 3000))
    documents = LocalFile("documents.csv", scratch / "d", "text/csv", pieces=pieces)
    LocalStorage(tmp_path / "exports").publish(PREFIX, [documents, manifest(scratch)])
    published = tmp_path / "exports" / PREFIX / "documents.csv"
    assert published.read_bytes() == expected and published.stat().st_ino == inode
    assert second.read_bytes() == expected[4096:]  # the others stay for the cleanup
