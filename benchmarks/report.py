"""The printed table and build/bench.json."""

from __future__ import annotations

import json
import os
import platform
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

from benchmarks.cases import Case
from benchmarks.measure import Measurement

MB = 1e6
MIB = 2**20


@dataclass
class CaseResult:
    """Both sides of one case and whether they agreed; a side that failed holds its error.

    `reference` is None when the run skipped the reference (`--no-reference`).
    """

    case: Case
    request: dict[str, Any]
    ours: Measurement | str
    reference: Measurement | str | None
    agreement: dict[str, Any] = field(default_factory=dict)  # checked, ok, rows, problem

    @property
    def both(self) -> tuple[Measurement, Measurement] | None:
        """(ours, reference) when both sides succeeded."""
        if isinstance(self.ours, Measurement) and isinstance(self.reference, Measurement):
            return self.ours, self.reference
        return None

    @property
    def speed_ratio(self) -> float | None:
        """Ours rows/s over the reference's: reference seconds / our seconds (>1: ours faster)."""
        both = self.both
        return _divide(both[1].seconds, both[0].seconds) if both else None

    @property
    def size_ratio(self) -> float | None:
        """Our output bytes over the reference's."""
        both = self.both
        return _divide(both[0].bytes, both[1].bytes) if both else None

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        sides = {
            side: _side_json(value)
            for side, value in (("ours", self.ours), ("reference", self.reference))
        }
        ratios: dict[str, float | None] = {"speed": self.speed_ratio, "size": self.size_ratio}
        if self.both:
            ours, ref = self.both
            ratios["rows_per_s"] = _divide(ours.rows_per_s, ref.rows_per_s)
            ratios["peak_rss"] = _divide(ours.peak_rss_bytes, ref.peak_rss_bytes)
        return {
            "case": self.case.name,
            "format": self.case.fmt,
            "vectors": self.case.vectors,
            "variant": self.case.variant,
            "request": self.request,
            **sides,
            "ratios": ratios,
            "agreement": self.agreement,
        }

    @property
    def failed(self) -> bool:
        """A side that ran failed."""
        return isinstance(self.ours, str) or isinstance(self.reference, str)


def _side_json(side: Measurement | str | None) -> dict[str, Any]:
    if side is None:
        return {"skipped": True}
    return {"error": side} if isinstance(side, str) else side.to_json()


def _divide(a: float, b: float) -> float | None:
    return a / b if b else None


def machine() -> dict[str, Any]:
    """What ran the benchmark."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": model,
        "memory_bytes": memory,
        "memory_gib": round(memory / 2**30, 1),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "versions": {p: version(p) for p in ("duckdb", "pyarrow", "numpy", "orjson", "pydantic")},
    }


def _header() -> str:
    return (
        f"{'case':<19}{'rows':>11}{'ours s':>9}{'ref s':>9}{'speed x':>9}{'ours MB':>10}"
        f"{'ref MB':>10}{'size x':>8}{'ours RSS':>10}{'ref RSS':>9}  agree"
    )


def _cells(side: Measurement | str | None) -> tuple[str, str, str]:
    if side is None:
        return "skip", "-", "-"
    if isinstance(side, str):
        return "FAIL", "-", "-"
    return f"{side.seconds:.2f}", f"{side.bytes / MB:,.1f}", f"{side.peak_rss_bytes / MIB:,.0f}"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def row(result: CaseResult) -> str:
    """One table line: sizes in MB (10^6 bytes), RSS in MiB."""
    agreement = result.agreement
    agree = "-" if not agreement.get("checked") else ("ok" if agreement["ok"] else "NO")
    ours_s, ours_mb, ours_rss = _cells(result.ours)
    ref_s, ref_mb, ref_rss = _cells(result.reference)
    rows = result.ours.rows if isinstance(result.ours, Measurement) else "-"
    rows_text = f"{rows:,}" if isinstance(rows, int) else rows
    return (
        f"{result.case.name:<19}{rows_text:>11}{ours_s:>9}{ref_s:>9}"
        f"{_ratio(result.speed_ratio):>9}{ours_mb:>10}{ref_mb:>10}"
        f"{_ratio(result.size_ratio):>8}{ours_rss:>10}{ref_rss:>9}  {agree}"
    )


def table(results: list[CaseResult], dataset_line: str, ingest_line: str) -> str:
    """The whole printed report."""
    lines = [
        dataset_line,
        ingest_line,
        "speed x = reference s / ours s (rows/s ratio, >1: ours faster);"
        " size x = ours bytes / reference bytes; RSS in MiB",
        _header(),
        *(row(r) for r in results),
    ]
    return "\n".join(lines)


def ingest_line(meta: dict[str, Any]) -> str:
    """The ingest measurement (from this run, or cached from the run that built the data)."""
    ingest, generate = meta["ingest"], meta["generate"]
    cached = " (cached from the run that built the collection)" if meta.get("reused") else ""
    return (
        f"ingest: {ingest['rows']:,} docs in {ingest['seconds']:.1f} s ="
        f" {ingest['rows_per_s']:,.0f} docs/s, peak RSS {ingest['peak_rss_mb']:,.0f} MiB;"
        f" JSONL generated in {generate['seconds']:.1f} s"
        f" ({generate['bytes'] / MB:,.0f} MB){cached}"
    )


def write_json(path: Path, document: dict[str, Any]) -> None:
    """bench.json, with the machine and the date added."""
    path.parent.mkdir(parents=True, exist_ok=True)
    full = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "machine": machine()}
    full.update(document)
    path.write_text(json.dumps(full, indent=2) + "\n")
