"""The benchmark matrix: format x vectors on/off x variant, and each case's export request."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from export_pipeline.contract import MAX_SAMPLE_SIZE

FORMATS = ("parquet", "json", "csv")
VARIANTS = ("full", "filter", "sample")
VECTOR_MODES = ("on", "off", "both")

# metadata.rating is uniform in [0, 5) rounded to 2 places, so `< 0.75` keeps ~15%.
RATING_LIMIT = 0.75
FILTER: dict[str, Any] = {
    "AND": [{"field": "metadata.rating", "operator": "lt", "value": RATING_LIMIT}]
}
# The same filter as a person writes it by hand against the stored `doc` JSON text.
HAND_FILTER_SQL = f"CAST(doc ->> '$.metadata.rating' AS DOUBLE) < {RATING_LIMIT}"
SAMPLE_SEED = 7


@dataclass(frozen=True)
class Case:
    """One cell of the matrix; both ours and the reference run it."""

    fmt: str
    vectors: bool
    variant: str

    @property
    def name(self) -> str:
        """Readable name, e.g. `parquet+vec/filter`."""
        return f"{self.fmt}{'+vec' if self.vectors else ''}/{self.variant}"

    @property
    def slug(self) -> str:
        """A file-name-safe name, e.g. `parquet-vec-filter`."""
        return f"{self.fmt}-{'vec' if self.vectors else 'novec'}-{self.variant}"

    @property
    def filtered(self) -> bool:
        """Whether the case applies the selective filter."""
        return self.variant == "filter"

    def sample_size(self, n: int) -> int | None:
        """Half the collection for the sample variant (at most R6's maximum), else none."""
        return min(max(1, n // 2), MAX_SAMPLE_SIZE) if self.variant == "sample" else None

    def request(self, n: int) -> dict[str, Any]:
        """The export request body our engine gets."""
        body: dict[str, Any] = {"format": self.fmt, "include_vectors": self.vectors}
        if self.filtered:
            body["filters"] = FILTER
        size = self.sample_size(n)
        if size is not None:
            body["sample_size"] = size
            body["sample_seed"] = SAMPLE_SEED
        return body


def parse_list(text: str, allowed: tuple[str, ...], what: str) -> list[str]:
    """A comma-separated option value, each item checked against `allowed`."""
    items = [item.strip() for item in text.split(",") if item.strip()]
    unknown = [item for item in items if item not in allowed]
    if unknown or not items:
        raise ValueError(f"{what}: expected a comma-separated subset of {', '.join(allowed)}")
    return items


def matrix(formats: list[str], vectors: str, variants: list[str]) -> list[Case]:
    """Every case to run, grouped by format, vectors on before off."""
    if vectors not in VECTOR_MODES:
        raise ValueError(f"--vectors: expected one of {', '.join(VECTOR_MODES)}")
    modes = {"on": [True], "off": [False], "both": [True, False]}[vectors]
    return [Case(f, v, variant) for f in formats for v in modes for variant in variants]
