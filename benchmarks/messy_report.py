"""The printed table of `python -m benchmarks.messy`: messy and tidy side by side, and notes.

Sides are the JSON of `measure.Measurement.to_json()` (plus `warnings_count`), or
`{"error", "peak_rss_bytes"}` when the child failed. Sizes in MB (10^6 bytes), RSS in MiB;
`x` columns are messy / tidy (above 1: the messy collection took longer or more).
"""

from __future__ import annotations

from typing import Any

from benchmarks.measure import Measurement

MB = 1e6
MIB = 2**20
GIB = 2**30
SLOWER = 2.0  # a messy side this many times its twin's seconds gets a note with its steps
Side = dict[str, Any]


def _divide(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def ratios(messy: Side, tidy: Side) -> dict[str, float | None]:
    """messy / tidy for seconds, peak RSS and output bytes; None where a side failed."""
    return {
        key: _divide(messy.get(key), tidy.get(key)) if "error" not in messy | tidy else None
        for key in ("seconds", "peak_rss_bytes", "bytes")
    }


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _cells(side: Side, size_key: str) -> tuple[str, str, str]:
    """seconds, RSS, MB of one side ("FAIL" when it failed; its RSS still shows)."""
    rss = f"{side.get('peak_rss_bytes', 0) / MIB:,.0f}"
    if "error" in side:
        return "FAIL", rss, "-"
    return f"{side['seconds']:.2f}", rss, f"{side[size_key] / MB:,.1f}"


HEADER = (
    f"{'collection':<12}{'step':<15}{'rows':>9}{'messy s':>9}{'tidy s':>8}{'time x':>8}"
    f"{'messy RSS':>11}{'tidy RSS':>10}{'RSS x':>7}{'messy MB':>10}{'tidy MB':>9}{'warn':>7}"
)


def _row(kind: str, step: str, messy: Side, tidy: Side, size_key: str, warn: str) -> str:
    messy_s, messy_rss, messy_mb = _cells(messy, size_key)
    tidy_s, tidy_rss, tidy_mb = _cells(tidy, size_key)
    rows = {messy.get("rows"), tidy.get("rows")} - {None}
    rows_text = "/".join(f"{r:,}" for r in sorted(rows)) or "-"  # two numbers if they differ
    both = "error" not in messy | tidy
    time_x = _ratio(_divide(messy.get("seconds"), tidy.get("seconds")) if both else None)
    rss_x = _ratio(_divide(messy.get("peak_rss_bytes"), tidy.get("peak_rss_bytes")))
    return (
        f"{kind:<12}{step:<15}{rows_text:>9}{messy_s:>9}{tidy_s:>8}{time_x:>8}"
        f"{messy_rss:>11}{tidy_rss:>10}{rss_x:>7}{messy_mb:>10}{tidy_mb:>9}{warn:>7}"
    )


def _ingest_side(entry: dict[str, Any]) -> Side:
    return {**entry["ingest"], "input_bytes": entry["bytes"]}


def _ingest_pair(meta: dict[str, Any], kind: str) -> tuple[Side, Side]:
    found = meta["collections"]
    return _ingest_side(found[kind]), _ingest_side(found[f"{kind}-tidy"])


def ingest_row(name: str, size: int, measured: Measurement) -> str:
    """The progress line of one ingest."""
    return (
        f"ingested {name}: {measured.rows:,} docs ({size / MB:,.1f} MB of JSONL) in"
        f" {measured.seconds:.2f} s = {measured.rows_per_s:,.0f} docs/s,"
        f" peak RSS {measured.peak_rss_bytes / MIB:,.0f} MiB"
    )


def case_row(result: dict[str, Any]) -> str:
    """One export's line: messy and tidy side by side."""
    messy, tidy = result["messy"], result["tidy"]
    warn = f"{messy.get('warnings_count', '-')}/{tidy.get('warnings_count', '-')}"
    return _row(result["collection"], result["case"], messy, tidy, "bytes", warn)


def header_line(n: int, max_columns: int, meta: dict[str, Any]) -> str:
    """What was measured, in one line."""
    cached = " (ingest cached from the run that built the collections)" if meta["reused"] else ""
    return (
        f"{n:,} documents per collection; filter: rating < 0.75;"
        f" EXPORT_PIPELINE_MAX_COLUMNS={max_columns:,}{cached}"
    )


def table(header: str, meta: dict[str, Any], results: list[dict[str, Any]]) -> str:
    """The whole printed report: per collection its ingest, then every export."""
    lines = [
        header,
        "x = messy / tidy; MB: output bytes (ingest: the JSONL input), 10^6 bytes; RSS: peak,"
        " MiB; warn: manifest warnings, messy/tidy",
        HEADER,
    ]
    kinds = list(dict.fromkeys(result["collection"] for result in results))
    for kind in kinds:
        messy, tidy = _ingest_pair(meta, kind)
        lines.append(_row(kind, "ingest", messy, tidy, "input_bytes", "-"))
        lines += [case_row(r) for r in results if r["collection"] == kind]
    return "\n".join(lines)


def _steps(side: Side) -> str:
    steps = side.get("extra", {}).get("steps", {})
    return ", ".join(f"{step} {seconds:.2f} s" for step, seconds in steps.items()) or "-"


def notes(meta: dict[str, Any], results: list[dict[str, Any]]) -> list[str]:
    """What a reader should not miss: failures, sides over 1 GiB, messy sides far slower
    than their twins (with where the time went, from the child's step timings)."""
    found: list[str] = []
    kinds = list(dict.fromkeys(result["collection"] for result in results))
    labelled = [(kind, "ingest", *_ingest_pair(meta, kind)) for kind in kinds]
    labelled += [(r["collection"], r["case"], r["messy"], r["tidy"]) for r in results]
    for kind, step, messy, tidy in labelled:
        for side, values in (("messy", messy), ("tidy", tidy)):
            if "error" in values:
                found.append(f"FAILED {kind} {step} ({side}): {values['error']}")
            elif values["peak_rss_bytes"] > GIB:
                rss = values["peak_rss_bytes"] / MIB
                found.append(f"over 1 GiB: {kind} {step} ({side}) peaked at {rss:,.0f} MiB")
        slower = _divide(messy.get("seconds"), tidy.get("seconds"))
        if "error" not in messy | tidy and slower is not None and slower > SLOWER:
            found.append(
                f"{kind} {step}: {slower:.1f}x its tidy twin's time;"
                f" steps messy: {_steps(messy)}; tidy: {_steps(tidy)}"
            )
    return found
