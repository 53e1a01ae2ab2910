"""Pause points for the crash tests. `armed_environment(folder, POINT, MARKER)` is the
environment of a CLI whose every process (the launcher, the forkserver its step processes
fork from, the API's workers) arms POINT at start (a sitecustomize on PYTHONPATH). The first
process to reach it writes MARKER (its pid) and waits there to be killed with SIGKILL; any
other goes on. The test observes the marker, no sleeping."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

WORKTREE = Path(__file__).resolve().parents[1]


def armed_environment(folder: Path, point: str, marker: Path) -> dict[str, str]:
    """The variables that arm `point` in every Python process started with them."""
    plugin = folder / "pause-plugin"
    plugin.mkdir(exist_ok=True)
    (plugin / "sitecustomize.py").write_text(
        "import os, sys\n"
        "if os.environ.get('RECOVERY_TEST_PAUSE'):\n"
        f"    sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "    import kill_child\n"
        "    kill_child.arm(*os.environ['RECOVERY_TEST_PAUSE'].split('|'))\n"
    )
    return {
        "PYTHONPATH": f"{plugin}{os.pathsep}{WORKTREE}",
        "RECOVERY_TEST_PAUSE": f"{point}|{marker}",
    }


def pause(marker: str) -> None:
    """Say where we are, then wait for SIGKILL; only the first process to get here."""
    try:
        os.close(os.open(marker + ".claimed", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return
    Path(marker + ".tmp").write_text(str(os.getpid()))
    os.replace(marker + ".tmp", marker)
    while True:
        time.sleep(60)


def after(owner: Any, name: str, marker: str, when: Any = lambda *a, **k: True) -> None:
    """Pause after `owner.name(...)` returns where `when(*args)` holds."""
    original = getattr(owner, name)

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        result = original(*args, **kwargs)
        if when(*args, **kwargs):
            pause(marker)
        return result

    setattr(owner, name, wrapped)


def before(owner: Any, name: str, marker: str, when: Any = lambda *a, **k: True) -> None:
    """Pause before `owner.name(...)` runs where `when(*args)` holds."""
    original = getattr(owner, name)

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        if when(*args, **kwargs):
            pause(marker)
        return original(*args, **kwargs)

    setattr(owner, name, wrapped)


def arm(point: str, marker: str) -> None:
    """Install the pause at `point`."""
    from export_pipeline.engine import writers
    from export_pipeline.storage import local, s3
    from export_pipeline.store import documents, segments

    writer = segments.SegmentWriter
    if point == "ingest-staging":  # the staged file exists, partly written
        after(writer, "write", marker, lambda w, b: w.path.name == "staged.parquet")
    elif point == "ingest-segments":  # a new segment file exists, partly written
        after(writer, "write", marker, lambda w, b: w.path.parent.name == "segments")
    elif point == "ingest-swap":  # every file written, the catalog not yet changed
        before(documents.DocumentStore, "_swap", marker)
    elif point == "export-planning":  # planned and recorded; nothing read yet
        from export_pipeline import export

        before(export.ExportLifecycle, "select", marker)
    elif point == "export-writing":  # a shard's documents part written, not yet closed
        before(writers.DocumentsWriter, "close", marker)
    elif point == "export-assembly":  # local: the assembled documents file partly written
        from export_pipeline.storage import pieces

        after(pieces, "_copy_range", marker)
    elif point == "export-publish":  # local storage: a file moved into exports/.staging
        after(local.shutil, "move", marker, lambda source, target: ".staging" in str(target))
    elif point == "export-manifest":  # S3: documents at the final prefix, no manifest yet
        from export_pipeline.storage import s3_parts

        before(
            s3_parts.PartUploads,
            "complete",
            marker,
            lambda uploads, staged: staged.key.endswith("manifest.json"),
        )
    elif point == "export-multipart":  # S3: one part of a multipart upload sent
        made = s3.make_client

        def make_client(options: Any) -> Any:
            client = made(options)
            client.meta.events.register("after-call.s3.UploadPart", lambda **_: pause(marker))
            return client

        s3.make_client = make_client
    else:
        raise SystemExit(f"unknown pause point {point}")
