"""Request and response models: the seed plus docs/contract.md (R*, A1); the filter models
(F*) are `filter_models`."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    StrictBool,
    StrictInt,
    field_validator,
    model_serializer,
)

from export_pipeline.filter_models import INT64, LogicalOperator, check_filter_size
from export_pipeline.paths import FieldPath

Format = Literal["json", "csv", "parquet"]
ExportId = Annotated[str, Field(pattern=r"^exp_[a-z0-9]{16}$")]

MAX_SAMPLE_SIZE = 1_000_000  # R6
MIN_FILE_SIZE_BYTES = 5 * 1024 * 1024  # the smallest max_file_size_bytes (S3's smallest part)
# Response fields beyond the seed's (A1), each left out where it is None.
RESPONSE_EXTENSIONS = (
    "parts",
    "version",
    "deletes_download_url",
    "deletes_s3_path",
    "deleted_count",
)


class ExportRequest(BaseModel):
    """Request model for exporting collection data (R1-R8)."""

    model_config = ConfigDict(extra="forbid")

    format: Format = Field(
        "parquet",
        description="Export format: json (line-delimited), csv, or parquet (default).",
    )
    include_vectors: StrictBool = Field(
        False,
        description=(
            "Whether to include vectors in the export. Vectors are exported to a separate "
            "file due to their large size. This significantly increases export time and "
            "file size."
        ),
    )
    select_fields: list[FieldPath] | None = Field(
        None,
        min_length=1,
        max_length=100,
        description=(
            "Specific fields to include in the export. If not provided, all fields are "
            "exported. Supports dot notation for nested fields (e.g., 'metadata.title', "
            "'metadata.author')."
        ),
        examples=[["document_id", "metadata.title", "metadata.category"]],
    )
    filters: LogicalOperator | None = Field(
        None,
        description=(
            "Filter conditions to export only matching documents. Uses LogicalOperator "
            "format (AND/OR/NOT) same as document listing."
        ),
    )
    sample_size: StrictInt | None = Field(
        None,
        ge=1,
        le=MAX_SAMPLE_SIZE,
        description=(
            "Maximum number of documents to export. If not provided, exports all documents. "
            "Useful for testing exports or creating sample datasets."
        ),
    )
    sample_seed: StrictInt | None = Field(
        None,
        ge=0,
        le=INT64[1],
        description=(
            "Extension: seed for sample_size, making the sample reproducible. Without one a "
            "seed is drawn and reported in the manifest."
        ),
    )
    max_file_size_bytes: StrictInt | None = Field(
        None,
        ge=MIN_FILE_SIZE_BYTES,
        description=(
            "Extension: the largest file in bytes (at least 5 MiB). The documents and vectors "
            "are then written as numbered parts (documents-00000.{format}, ...), each a whole "
            "file of at most this size (a document larger than it alone in its part), the "
            "documents and vectors parts holding the same rows. Without it: one file each."
        ),
    )

    changed_since: Annotated[StrictInt, Field(ge=0)] | ExportId | None = Field(
        None,
        description=(
            "Extension: an incremental export. An export id of the same collection, or a "
            "collection version: the documents file then holds the documents inserted or "
            "updated since that match, and deletes.{format} the ids to remove (deleted "
            "since, or updated and no longer matching). Refused (422) where the history "
            "kept no longer reaches back so far."
        ),
    )

    @field_validator("filters", mode="before")
    @classmethod
    def _filter_size(cls, value: Any) -> Any:
        check_filter_size(value)
        return value


class ExportResponse(BaseModel):
    """Response model for collection export (A1)."""

    model_config = ConfigDict(extra="forbid")

    download_url: str = Field(
        description="Presigned URL for downloading the exported file. Valid for 1 hour."
    )
    s3_path: str = Field(
        description="Full S3 path where the export is stored (for internal reference)."
    )
    format: Format = Field(description="The format of the exported file.")
    document_count: int = Field(ge=0, description="Number of documents included in the export.")
    file_size_bytes: int = Field(ge=0, description="Size of the exported file in bytes.")
    exported_at: datetime = Field(description="Timestamp when the export was completed.")
    vectors_download_url: str | None = Field(
        None,
        description=(
            "Presigned URL for downloading the vectors file (if include_vectors=True). "
            "Vectors are exported separately due to their large size."
        ),
    )
    vectors_s3_path: str | None = Field(
        None, description="Full S3 path for the vectors file (if include_vectors=True)."
    )
    parts: list[ExportPart] | None = Field(
        None,
        description=(
            "Extension, only with max_file_size_bytes: every part file, the documents' in "
            "order, then the vectors'. download_url and s3_path name the first documents part."
        ),
    )

    deletes_download_url: str | None = Field(
        None, description="Extension, only with changed_since: the deletes file's link."
    )
    deletes_s3_path: str | None = Field(
        None, description="Extension, only with changed_since: the deletes file's path."
    )
    deleted_count: int | None = Field(
        None, ge=0, description="Extension, only with changed_since: ids in the deletes file."
    )
    version: int | None = Field(
        None,
        ge=0,
        description=(
            "Extension: the collection version the export reflects (its snapshot); pass it, "
            "or the export id, as a later request's changed_since."
        ),
    )

    # No return annotation: one would replace the response's schema in the OpenAPI document.
    @model_serializer(mode="wrap")
    def _seed_fields_only(self, handler: SerializerFunctionWrapHandler):  # type: ignore[no-untyped-def]
        # The seed's fields always; an extension only where it says something: no `parts`
        # key without max_file_size_bytes, no `version` for an export published before it.
        data = handler(self)
        if isinstance(data, dict):
            for name in RESPONSE_EXTENSIONS:
                if getattr(self, name) is None:
                    data.pop(name, None)
        return data


class ExportPart(BaseModel):
    """One part file of an export cut by max_file_size_bytes."""

    model_config = ConfigDict(extra="forbid")

    role: Literal["documents", "vectors", "deletes"] = Field(
        description="Which file this is a part of (deletes: never cut, one part)."
    )
    name: str = Field(description="The part's file name, e.g. documents-00000.parquet.")
    download_url: str = Field(description="Presigned URL for downloading the part.")
    s3_path: str = Field(description="Full S3 path of the part.")
    document_count: int = Field(ge=0, description="Documents (rows) in the part.")
    file_size_bytes: int = Field(ge=0, description="Size of the part in bytes.")
    sha256: str = Field(description="Hex SHA-256 of the part's bytes.")


ExportRequest.model_rebuild()
ExportResponse.model_rebuild()


# The seed's curl example, verbatim (tests check the copy): the API documents it.
SEED_REQUEST_EXAMPLE: dict[str, Any] = {
    "format": "parquet",
    "include_vectors": False,
    "select_fields": ["document_id", "metadata.title", "metadata.category"],
    "filters": {
        "AND": [
            {"field": "name", "operator": "eq", "value": "John"},
            {"field": "age", "operator": "gte", "value": 30},
        ],
        "OR": [
            {"field": "status", "operator": "eq", "value": "active"},
            {"field": "role", "operator": "eq", "value": "admin"},
        ],
        "NOT": [
            {"field": "department", "operator": "eq", "value": "HR"},
            {"field": "location", "operator": "eq", "value": "remote"},
        ],
        "case_sensitive": True,
    },
    "sample_size": 500000,
}
