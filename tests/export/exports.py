"""What every end-to-end export test uses: the job run as users run it, and what it leaves."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from helpers import export_job

from export_pipeline.orchestration.launch import ExportRun
from export_pipeline.settings import Settings
from export_pipeline.store import Collection, Namespace, Store

FORMATS = ["json", "csv", "parquet"]


def run(store: Store, ns: Namespace, col: Collection, request: Any = None) -> ExportRun:
    return export_job(ns.id, col.id, request, settings=store.settings)


def scratch_leftovers(settings: Settings) -> list[Path]:
    folder = settings.scratch_dir
    return list(folder.iterdir()) if folder.exists() else []


def export_dirs(settings: Settings) -> list[Path]:
    root = settings.home_dir / "exports"
    return sorted(p for p in root.glob("*/exports/*/*") if p.is_dir())
