"""Shards' parts staged on S3 are assembled in the bucket (README: Scaling out): large ranges are
copied by the server (UploadPartCopy), only small pieces and the footers pass through the assembler,
and the files are the same bytes as an export assembled from local parts."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import boto3
import pytest
from helpers import make_collection, quick_first
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from export_pipeline.demo import DEMO_INDEXES, demo_documents
from export_pipeline.errors import ExportPipelineError
from export_pipeline.export import ExportLifecycle, ExportResult
from export_pipeline.settings import Settings
from export_pipeline.storage import LocalFile, S3Storage, StoredRange, open_storage
from export_pipeline.storage.base import FileRange, Piece
from export_pipeline.storage.s3_parts import COPY_PART, MIN_COPY, MIN_PART, planned_parts
from export_pipeline.store import Store

MIB = 1024 * 1024


# -- the plan of parts (no I/O) ---------------------------------------------------------------

sizes = st.one_of(
    st.integers(0, 64),
    st.integers(MIN_PART - 2, MIN_PART + 2),
    st.integers(MIN_COPY - 2, MIN_COPY + 2),
    st.integers(1, 3 * COPY_PART),
)
pieces_strategy = st.lists(
    st.tuples(st.sampled_from(["bytes", "file", "stored"]), sizes), min_size=1, max_size=12
)


def _pieces(spec: list[tuple[str, int]]) -> list[Piece]:
    out: list[Piece] = []
    for n, (kind, size) in enumerate(spec):
        if kind == "bytes":
            out.append(bytes([n % 256]) * min(size, 64))
        elif kind == "file":
            out.append(FileRange(Path(f"part-{n}"), 3, size))
        else:
            out.append(StoredRange(f"parts/{n}", 7, size))
    return out


def _cells(pieces: list[Piece]) -> list[tuple[Any, ...]]:
    """The file the pieces make, as spans: bytes joined, adjacent ranges of one source joined
    (so that where pieces were cut does not show)."""
    out: list[tuple[Any, ...]] = []
    for piece in pieces:
        if isinstance(piece, bytes):
            if out and out[-1][0] == "bytes":
                out[-1] = ("bytes", out[-1][1] + piece)
            elif piece:
                out.append(("bytes", piece))
            continue
        origin = piece.path if isinstance(piece, FileRange) else piece.key
        last = out[-1] if out else None
        if last and last[0] == origin and last[1] + last[2] == piece.offset:
            out[-1] = (origin, last[1], last[2] + piece.length)
        elif piece.length:
            out.append((origin, piece.offset, piece.length))
    return out


@pytest.mark.slow
@hypothesis_settings(max_examples=300, deadline=None)
@given(pieces_strategy, st.sampled_from([MIN_PART, 8 * MIB, 64 * MIB]))
def test_planned_parts_tile_the_file_and_copy_every_large_stored_range(
    spec: list[tuple[str, int]], part_size: int
) -> None:
    pieces = _pieces(spec)
    parts = planned_parts(pieces, part_size)
    flat: list[Piece] = []
    for part in parts:
        flat.extend([part] if isinstance(part, StoredRange) else part)
    assert _cells(flat) == _cells(pieces)  # the same bytes, in the same order
    lengths = [p.length if isinstance(p, StoredRange) else sum(_size(x) for x in p) for p in parts]
    assert all(length >= MIN_PART for length in lengths[:-1])  # S3's rule for all but the last
    for part, length in zip(parts, lengths, strict=True):
        assert length <= (COPY_PART if isinstance(part, StoredRange) else part_size)
    copied = sum(p.length for p in parts if isinstance(p, StoredRange))
    large = [p for p in pieces if isinstance(p, StoredRange) and p.length >= MIN_COPY]
    # of a large range, at most the bytes that top a run up to a least part are read
    assert copied >= sum(p.length - MIN_PART for p in large)


def _size(piece: Piece) -> int:
    return len(piece) if isinstance(piece, bytes) else piece.length


# -- publishing pieces of objects in the bucket ------------------------------------------------


def _traffic(storage: S3Storage) -> dict[str, int]:
    """Bytes sent in UploadPart bodies and UploadPartCopy calls made, counted by the client's
    own event hooks while the real requests go to the server."""
    seen = {"uploaded": 0, "copies": 0}

    def sent(params: dict[str, Any], **_: Any) -> None:
        body = params.get("Body", b"")
        seen["uploaded"] += len(body) if isinstance(body, bytes) else 0

    def copied(**_: Any) -> None:
        seen["copies"] += 1

    storage.client.meta.events.register("provide-client-params.s3.UploadPart", sent)
    storage.client.meta.events.register("provide-client-params.s3.PutObject", sent)
    storage.client.meta.events.register("provide-client-params.s3.UploadPartCopy", copied)
    return seen


def test_pieces_of_objects_in_the_bucket_are_copied_there(
    settings: Settings, bucket: str, tmp_path: Path
) -> None:
    storage = open_storage(settings, f"s3://{bucket}/root")
    assert isinstance(storage, S3Storage)
    blobs = {
        name: hashlib.sha256(name.encode()).digest() * (size // 32)
        for name, size in [("a", 12 * MIB), ("b", 3 * MIB), ("c", 11 * MIB)]
    }
    for name, blob in blobs.items():
        (tmp_path / name).write_bytes(blob)
        storage.put(f".parts/x/{name}", tmp_path / name)
    pieces: tuple[Piece, ...] = (
        b"id,text\n",
        StoredRange(".parts/x/a", 0, 12 * MIB),
        StoredRange(".parts/x/b", 0, 3 * MIB),
        StoredRange(".parts/x/c", 100, 11 * MIB - 200),
        b"tail",
    )
    expected = b"id,text\n" + blobs["a"] + blobs["b"] + blobs["c"][100 : 11 * MIB - 100] + b"tail"
    digest = hashlib.sha256(expected).hexdigest()
    traffic = _traffic(storage)
    file = LocalFile("documents.csv", tmp_path / "unused", "text/csv", digest, pieces=pieces)
    storage.publish("ns/exports/col/exp", [file])
    key = "root/ns/exports/col/exp/documents.csv"
    got = boto3.session.Session().client("s3").get_object(Bucket=bucket, Key=key)
    assert got["Body"].read() == expected
    assert got["Metadata"]["sha256"] == digest
    assert traffic["copies"] >= 2
    # only the header, b, the tail, and what tops a run up to 5 MiB went through this process
    assert traffic["uploaded"] <= 3 * MIB + 2 * MIN_PART + 64


def test_a_missing_part_fails_the_publish_and_leaves_nothing(
    settings: Settings, bucket: str, tmp_path: Path
) -> None:
    storage = open_storage(settings, f"s3://{bucket}/root")
    (tmp_path / "a").write_bytes(b"x" * (11 * MIB))
    storage.put(".parts/y/a", tmp_path / "a")
    pieces = (StoredRange(".parts/y/a", 0, 11 * MIB), StoredRange(".parts/y/gone", 0, 11 * MIB))
    file = LocalFile("documents.jsonl", tmp_path / "unused", "application/jsonl", pieces=pieces)
    with pytest.raises(ExportPipelineError, match="storage upload failed"):
        storage.publish("ns/exports/col/exp", [file])
    client = boto3.session.Session().client("s3")
    listed = client.list_objects_v2(Bucket=bucket, Prefix="root/ns/")
    assert not listed.get("Contents")
    assert not client.list_multipart_uploads(Bucket=bucket).get("Uploads")


# -- an export whose shards staged their parts on S3 -------------------------------------------


def _staged_export(
    settings: Settings, ns: str, col: str, body: dict[str, Any], *, stage: bool
) -> ExportResult:
    """The lifecycle's steps as a distributed run takes them: each shard on a machine of its
    own (its parts put on the storage), then assembly and publishing in another."""
    lifecycle = ExportLifecycle(settings)
    plan = lifecycle.plan(ns, col, body, shards=3, stage_parts=stage)
    lifecycle.begin(plan)
    try:
        selection = lifecycle.select(plan)
        parts = [lifecycle.write_shard(plan, selection, shard) for shard in plan.shards]
        if stage:  # the parts wait on the storage; none stays in the assembler's scratch
            assert all(part.key for shard in parts for part in shard.files())
            assert not (settings.scratch_dir / plan.export_id).exists()
        result = lifecycle.publish(plan, lifecycle.assemble(plan, selection, parts))
    except BaseException:
        lifecycle.abandon(plan.export_id)
        raise
    lifecycle.cleanup(plan)
    return result


def _downloads(settings: Settings, result: ExportResult) -> dict[str, bytes]:
    storage = open_storage(settings)
    return {entry["name"]: storage.read(entry["key"]) for entry in result.manifest["files"]}


@pytest.mark.parametrize(
    "body",
    quick_first(
        [
            {"format": "parquet", "include_vectors": True, "sample_size": 50, "sample_seed": 3},
            {"format": "json", "include_vectors": True},
            {"format": "csv", "select_fields": ["document_id", "metadata.title"]},
            {"format": "parquet", "max_file_size_bytes": 5 * MIB},
        ]
    ),
    ids=["parquet-sample", "json", "csv", "parquet-parts"],
)
def test_staged_parts_give_the_same_files_and_leave_nothing(
    settings: Settings, store: Store, bucket: str, body: dict[str, Any]
) -> None:
    ns, col = make_collection(store, list(demo_documents(120)), DEMO_INDEXES, name="staged")
    target = settings.model_copy(update={"storage": f"s3://{bucket}/exports"})
    staged = _staged_export(target, ns.id, col.id, body, stage=True)
    local = _staged_export(target, ns.id, col.id, body, stage=False)
    staged_files, local_files = _downloads(target, staged), _downloads(target, local)
    assert staged_files == local_files  # the same parts, assembled in two places
    assert [f["sha256"] for f in staged.manifest["files"]] == [
        hashlib.sha256(staged_files[f["name"]]).hexdigest() for f in staged.manifest["files"]
    ]
    client = boto3.session.Session().client("s3")
    left = client.list_objects_v2(Bucket=bucket, Prefix="exports/.parts/")
    assert not left.get("Contents")
    assert not client.list_multipart_uploads(Bucket=bucket).get("Uploads")
    assert not list(target.scratch_dir.glob(f"{staged.manifest['export_id']}*"))
