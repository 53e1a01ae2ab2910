"""S3 storage (README: Publishing to S3) against a real S3-compatible server on loopback (moto,
server mode).

Every link is downloaded with a plain HTTP client. moto checks neither signatures nor expiry,
so the signing parameters are checked on the URL itself.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, urlparse

import boto3
import pyarrow.parquet as pq
import pytest
from helpers import DEMO_COUNT, export_job, files_under, free_port, make_collection, quick_first
from services import LocalS3

from export_pipeline.demo import DEMO_INDEXES, demo_documents
from export_pipeline.errors import ExportPipelineError
from export_pipeline.links import fresh_links
from export_pipeline.settings import Settings
from export_pipeline.storage import TransientStorageError, open_storage
from export_pipeline.storage import s3 as s3_module
from export_pipeline.store import Collection, Namespace, Store, VectorIndex

MIB = 1024 * 1024
BIG = [VectorIndex(name="text_embedding", dimensions=384), DEMO_INDEXES[1]]

SECRET = "testing-secret-key-do-not-leak"


def s3_settings(settings: Settings, bucket: str, **extra: Any) -> Settings:
    return settings.model_copy(update={"storage": f"s3://{bucket}/team-a/exports", **extra})


def s3() -> Any:
    """A client from the current environment (boto3's default session would keep stale keys)."""
    return boto3.session.Session().client("s3")


def fetch(url: str) -> tuple[bytes, dict[str, str]]:
    """GET with a plain HTTP client, as a user's browser or curl would."""
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.read(), dict(response.headers)


def objects(bucket: str, prefix: str = "") -> list[str]:
    listed = s3().list_objects_v2(Bucket=bucket, Prefix=prefix)
    return sorted(item["Key"] for item in listed.get("Contents", []))


def incomplete_uploads(bucket: str) -> list[str]:
    return [u["Key"] for u in s3().list_multipart_uploads(Bucket=bucket).get("Uploads", [])]


@pytest.mark.parametrize("fmt", ["json", "csv", "parquet"])
@pytest.mark.parametrize("vectors", quick_first([False, True]))
def test_W6_A1_export_to_s3_downloads_match_the_manifest(
    settings: Settings,
    store: Store,
    demo: tuple[Namespace, Collection],
    bucket: str,
    fmt: str,
    vectors: bool,
) -> None:
    ns, col = demo
    target = s3_settings(settings, bucket)
    result = export_job(ns.id, col.id, {"format": fmt, "include_vectors": vectors}, settings=target)
    response, manifest = result.response, result.manifest
    prefix = f"team-a/exports/{ns.id}/exports/{col.id}/{manifest['export_id']}"
    names = [
        f"documents.{fmt}",
        *([f"{col.name}_vectors.{fmt}"] if vectors else []),
        "manifest.json",
    ]
    assert objects(bucket) == sorted(f"{prefix}/{name}" for name in names)
    assert response.s3_path == f"s3://{bucket}/{prefix}/documents.{fmt}"
    assert (response.vectors_s3_path is not None) == vectors

    links = [(response.download_url, "documents")]
    if vectors:
        assert response.vectors_s3_path == f"s3://{bucket}/{prefix}/{col.name}_vectors.{fmt}"
        links.append((response.vectors_download_url, "vectors"))
    files = {entry["role"]: entry for entry in manifest["files"]}
    for url, role in links:
        body, headers = fetch(url)
        entry = files[role]
        assert hashlib.sha256(body).hexdigest() == entry["sha256"]
        assert len(body) == entry["bytes"]
        assert headers["Content-Disposition"] == f'attachment; filename="{entry["name"]}"'
        head = s3().head_object(Bucket=bucket, Key="team-a/exports/" + entry["key"])
        assert head["Metadata"]["sha256"] == entry["sha256"]
        assert head["ContentType"] == entry["content_type"]
    assert response.file_size_bytes == files["documents"]["bytes"]
    if fmt == "parquet":
        body, _ = fetch(response.download_url)
        assert pq.read_table(io.BytesIO(body)).num_rows == DEMO_COUNT
    stored = json.loads(
        s3().get_object(Bucket=bucket, Key=f"{prefix}/manifest.json")["Body"].read()
    )
    assert stored == manifest
    assert not files_under(settings.scratch_dir)


def test_download_urls_are_sigv4_with_the_configured_expiry(
    settings: Settings, store: Store, demo: tuple[Namespace, Collection], bucket: str
) -> None:
    ns, col = demo
    target = s3_settings(settings, bucket, url_ttl_seconds=900)
    before = datetime.now(UTC).replace(microsecond=0)
    response = export_job(ns.id, col.id, {"format": "csv"}, settings=target).response
    query = {k: v[0] for k, v in parse_qs(urlparse(response.download_url).query).items()}
    assert query["X-Amz-Algorithm"] == "AWS4-HMAC-SHA256"
    assert query["X-Amz-Expires"] == "900"
    key_id, day, region, service, terminator = query["X-Amz-Credential"].split("/")
    assert (key_id, region, service, terminator) == (
        "testing-key-id",
        "us-east-1",
        "s3",
        "aws4_request",
    )
    signed_at = datetime.strptime(query["X-Amz-Date"], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    assert before <= signed_at <= datetime.now(UTC) and day == signed_at.strftime("%Y%m%d")
    assert query["X-Amz-SignedHeaders"] == "host"
    assert len(query["X-Amz-Signature"]) == 64
    assert SECRET not in response.download_url


def test_url_ttl_is_capped_at_seven_days() -> None:
    with pytest.raises(ValueError):
        Settings(url_ttl_seconds=604_801)
    assert Settings(url_ttl_seconds=604_800).url_ttl_seconds == 604_800


def test_path_addressing_puts_the_bucket_in_the_path(settings: Settings, s3_env: str) -> None:
    storage = open_storage(
        settings.model_copy(update={"s3_addressing_style": "path"}), "s3://my-bucket/p"
    )
    url = urlparse(storage.download_url("ns/exports/c/e/documents.csv", 60))
    assert url.netloc == urlparse(s3_env).netloc
    assert url.path == "/my-bucket/p/ns/exports/c/e/documents.csv"


@pytest.mark.slow
def test_large_files_upload_in_parts(settings: Settings, store: Store, bucket: str) -> None:
    ns, col = make_collection(store, list(demo_documents(2500, dimensions=384)), BIG, name="big")
    target = s3_settings(settings, bucket, s3_part_size_mb=5)
    body = {"format": "json", "include_vectors": True}
    result = export_job(ns.id, col.id, body, settings=target)
    vectors = next(f for f in result.manifest["files"] if f["role"] == "vectors")
    assert vectors["bytes"] > 5 * MIB
    key = "team-a/exports/" + vectors["key"]
    etag = s3().head_object(Bucket=bucket, Key=key)["ETag"].strip('"')
    assert etag.endswith(f"-{-(-vectors['bytes'] // (5 * MIB))}")  # one part per 5 MiB
    downloaded, _ = fetch(result.response.vectors_download_url)
    assert hashlib.sha256(downloaded).hexdigest() == vectors["sha256"]
    assert not incomplete_uploads(bucket)


def test_missing_bucket_fails_clearly_and_leaves_nothing(
    settings: Settings, store: Store, demo: tuple[Namespace, Collection], s3_env: str
) -> None:
    ns, col = demo
    target = settings.model_copy(update={"storage": "s3://no-such-bucket-here/x"})
    with pytest.raises(
        ExportPipelineError, match="bucket 'no-such-bucket-here' does not exist"
    ) as info:
        export_job(ns.id, col.id, {"format": "csv"}, settings=target)
    assert SECRET not in str(info.value)
    assert not files_under(settings.scratch_dir)


@pytest.mark.slow
def test_server_stopped_mid_upload_fails_as_unreachable_and_is_cleaned_after(
    settings: Settings,
    store: Store,
    bucket: str,
    s3_server: LocalS3,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The endpoint dies after the first part; the publish step's retries find it away and
    the export fails; once it is back, nothing of the export is left."""
    ns, col = make_collection(store, list(demo_documents(2500, dimensions=384)), BIG, name="big")
    target = s3_settings(
        settings, bucket, s3_part_size_mb=5, s3_max_attempts=1, s3_max_concurrency=1
    )
    made = s3_module.make_client

    def make_client(options: Any) -> Any:  # the storage the job's resource opens
        client = made(options)
        client.meta.events.register("after-call.s3.UploadPart", lambda **_: s3_server.stop())
        return client

    monkeypatch.setattr(s3_module, "make_client", make_client)
    body = {"format": "json", "include_vectors": True}
    try:
        with pytest.raises(ExportPipelineError, match=r"kept failing.*unreachable") as info:
            export_job(ns.id, col.id, body, settings=target)
    finally:
        s3_server.start()
    assert SECRET not in str(info.value)
    assert [p.name for p in files_under(settings.scratch_dir)] == ["s3-cleanup.jsonl"]
    assert incomplete_uploads(bucket)  # the server was away: the abort could not be sent
    open_storage(target).sweep()  # what the next publish does first
    assert not incomplete_uploads(bucket)
    assert objects(bucket) == []
    assert (settings.scratch_dir / "s3-cleanup.jsonl").read_text() == ""


def test_url_command_signs_fresh_links_from_the_manifest(
    settings: Settings, store: Store, demo: tuple[Namespace, Collection], bucket: str
) -> None:
    ns, col = demo
    target = s3_settings(settings, bucket)
    first = export_job(
        ns.id, col.id, {"format": "parquet", "include_vectors": True}, settings=target
    )
    later = target.model_copy(update={"url_ttl_seconds": 120})
    links = fresh_links(store, later, ns.name, first.manifest["export_id"])
    assert links.s3_path == first.response.s3_path
    assert links.vectors_s3_path == first.response.vectors_s3_path
    assert links.document_count == DEMO_COUNT and links.format == "parquet"
    assert parse_qs(urlparse(links.download_url).query)["X-Amz-Expires"] == ["120"]
    assert links.urls_expire_at is not None
    assert fetch(links.download_url)[0] == fetch(first.response.download_url)[0]
    assert fetch(links.vectors_download_url)[0] == fetch(first.response.vectors_download_url)[0]


@pytest.fixture(scope="module")
def strict_s3() -> Iterator[str]:
    """A second moto server that checks credentials and IAM policies (moto's auth mode).

    Its first four calls go unchecked: they create the bucket and a user that may only read.
    """
    import subprocess
    import sys
    import time

    port = free_port()
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "4"}
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(endpoint + "/moto-api/", timeout=1)
            break
        except OSError:
            if time.monotonic() > deadline:
                server.kill()
                raise
            time.sleep(0.1)
    yield endpoint
    server.terminate()
    server.wait(10)


def test_access_denied_fails_clearly_and_leaves_nothing(
    settings: Settings,
    store: Store,
    demo: tuple[Namespace, Collection],
    strict_s3: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    admin = {"endpoint_url": strict_s3, "region_name": "us-east-1"}
    admin |= {"aws_access_key_id": "admin", "aws_secret_access_key": "admin"}
    boto3.session.Session().client("s3", **admin).create_bucket(Bucket="locked")
    iam = boto3.session.Session().client("iam", **admin)
    iam.create_user(UserName="reader")
    key = iam.create_access_key(UserName="reader")["AccessKey"]
    read_only = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Action": ["s3:GetObject", "s3:ListBucket", "s3:ListBucketMultipartUploads"],
                "Resource": "*",
            }
        ],
    }
    iam.put_user_policy(UserName="reader", PolicyName="ro", PolicyDocument=json.dumps(read_only))
    monkeypatch.setenv("AWS_ENDPOINT_URL", strict_s3)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    ns, col = demo
    target = settings.model_copy(update={"storage": "s3://locked/exports"})
    with pytest.raises(
        ExportPipelineError, match=r"access denied to s3://locked/exports \(AccessDenied\)"
    ) as info:
        export_job(ns.id, col.id, {"format": "csv"}, settings=target)
    assert key["SecretAccessKey"] not in str(info.value)
    assert not files_under(settings.scratch_dir)
    reader = s3()
    assert reader.list_objects_v2(Bucket="locked").get("Contents", []) == []
    assert reader.list_multipart_uploads(Bucket="locked").get("Uploads", []) == []


def test_demo_and_url_commands_work_against_s3(
    settings: Settings,
    bucket: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`make demo` with EXPORT_PIPELINE_STORAGE set: the job publishes to S3, links download."""
    from export_pipeline.cli import main

    monkeypatch.setenv("EXPORT_PIPELINE_HOME", str(settings.home_dir))
    monkeypatch.setenv("EXPORT_PIPELINE_STORAGE", f"s3://{bucket}/demo-exports")
    monkeypatch.setenv("EXPORT_PIPELINE_URL_TTL_SECONDS", "600")
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    assert main(["demo"]) == 0
    demo_out = json.loads(capsys.readouterr().out)
    response = demo_out["response"]
    assert response["s3_path"].startswith(f"s3://{bucket}/demo-exports/")
    documents = fetch(response["download_url"])[0].decode()
    assert len(documents.splitlines()) == response["document_count"] == 5
    export_id = response["s3_path"].split("/")[-2]

    assert main(["url", export_id, "-n", "demo"]) == 0
    links = json.loads(capsys.readouterr().out)
    assert links["s3_path"] == response["s3_path"]
    assert parse_qs(urlparse(links["download_url"]).query)["X-Amz-Expires"] == ["600"]
    assert fetch(links["vectors_download_url"])[0] == fetch(response["vectors_download_url"])[0]
    assert main(["namespace", "create", "other-ns"]) == 0
    capsys.readouterr()
    assert main(["url", export_id, "-n", "other-ns"]) == 3  # namespaces do not see each other
    assert "not found in namespace 'other-ns'" in capsys.readouterr().out


def test_server_side_encryption_is_requested_when_configured(
    settings: Settings, store: Store, demo: tuple[Namespace, Collection], bucket: str
) -> None:
    ns, col = demo
    target = s3_settings(settings, bucket, s3_sse="AES256")
    result = export_job(ns.id, col.id, {"format": "csv"}, settings=target)
    key = "team-a/exports/" + result.manifest["files"][0]["key"]
    assert s3().head_object(Bucket=bucket, Key=key)["ServerSideEncryption"] == "AES256"


@pytest.mark.parametrize(
    ("code", "status", "transient", "message"),
    [
        ("SlowDown", 503, True, "SlowDown"),
        ("InternalError", 500, True, "InternalError"),
        ("RequestTimeout", 400, True, "RequestTimeout"),
        ("NoSuchBucket", 404, False, "bucket 'b' does not exist"),
        ("AccessDenied", 403, False, "access denied to s3://b/p"),
        ("InvalidAccessKeyId", 403, False, "access denied"),
        ("EntityTooLarge", 400, False, "EntityTooLarge"),
    ],
)
def test_storage_errors_are_told_apart_transient_or_not(
    s3_env: str, code: str, status: int, transient: bool, message: str
) -> None:
    """moto cannot be made to throttle; the classification of S3's answers is checked here."""
    from botocore.exceptions import ClientError

    storage = open_storage(Settings(), "s3://b/p")
    answer = {"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}
    explained = storage._explain(ClientError(answer, "PutObject"), "upload")
    assert isinstance(explained, TransientStorageError) is transient
    assert message in str(explained)
