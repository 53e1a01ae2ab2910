"""How to talk to S3 (AWS or any S3-compatible endpoint): options, clients, `s3://` URIs and
what an error means to a user. Shared by the export storage, the drop prefix and segments.

Credentials, region and endpoint come from boto3's own chain (environment, profiles,
AWS_ENDPOINT_URL); only S3 behaviour is configured here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlparse

import boto3
from boto3.exceptions import S3UploadFailedError
from botocore.config import Config
from botocore.exceptions import ClientError, ConnectionError, HTTPClientError

from export_pipeline.errors import InvalidInput

MIB = 1024 * 1024
_MISSING_BUCKET = {"NoSuchBucket"}
_DENIED = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "AllAccessDisabled"}
_TRANSIENT = {
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "RequestTimeout",
    "RequestTimeTooSkewed",
    "InternalError",
    "ServiceUnavailable",
}


@dataclass(frozen=True)
class S3Options:
    """How to talk to S3: addressing, transfers, retries, encryption."""

    addressing_style: Literal["auto", "path", "virtual"] = "auto"  # "path": most S3-compatibles
    part_size_bytes: int = 64 * MIB
    max_concurrency: int = 4
    retry_mode: Literal["standard", "adaptive", "legacy"] = "standard"
    max_attempts: int = 5
    sse: str | None = None  # "AES256" (SSE-S3) or "aws:kms" (SSE-KMS)
    sse_kms_key_id: str | None = None

    def sse_args(self) -> dict[str, str]:
        """The server-side encryption every object written asks for, if any (PutObject,
        CreateMultipartUpload, and boto3's ExtraArgs take the same names)."""
        if not self.sse:
            return {}
        args = {"ServerSideEncryption": self.sse}
        if self.sse_kms_key_id:
            args["SSEKMSKeyId"] = self.sse_kms_key_id
        return args


def parse_s3_uri(uri: str, what: str) -> tuple[str, str]:
    """(bucket, key prefix) of `s3://bucket[/prefix]`; InvalidInput naming `what` else."""
    parsed = urlparse(uri)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise InvalidInput(f"{what} {uri!r} is not s3://bucket[/prefix]")
    return parsed.netloc, parsed.path.strip("/")


def s3_problem(exc: Exception, bucket: str, where: str, client: Any) -> tuple[str, bool]:
    """What an S3 error means to a user (bucket, access, endpoint; never credentials), and
    whether the same call may succeed later (throttling, 5xx, an unreachable endpoint)."""
    cause = root_cause(exc)
    if isinstance(cause, ClientError):
        code = cause.response.get("Error", {}).get("Code", "")
        status = cause.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        if code in _MISSING_BUCKET:
            return f"bucket {bucket!r} does not exist", False
        if code in _DENIED or status == 403:
            return f"access denied to {where} ({code or status})", False
        return f"{where}: {code or status}", code in _TRANSIENT or status >= 500
    if isinstance(cause, ConnectionError | HTTPClientError):
        return f"S3 endpoint {client.meta.endpoint_url} unreachable", True
    return f"{where}: {cause}", False


def root_cause(exc: BaseException) -> BaseException:
    """boto3's transfer manager wraps the ClientError it met; find the one that explains."""
    seen = exc
    while isinstance(seen, S3UploadFailedError):
        cause = seen.__cause__ or seen.__context__
        if cause is None:
            break
        seen = cause
    return seen


def make_client(options: S3Options) -> Any:
    """An S3 client from boto3's standard chain, signing SigV4 (custom endpoints too)."""
    config = Config(
        signature_version="s3v4",
        s3={"addressing_style": options.addressing_style},
        retries={"mode": options.retry_mode, "max_attempts": options.max_attempts},
    )
    return boto3.session.Session().client("s3", config=config)
