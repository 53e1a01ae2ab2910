"""Run one piece of work in a child process and measure it: seconds, peak RSS, outputs.

Peak RSS is the child's `ru_maxrss` from `os.wait4`, read by the tiny launcher
(`benchmarks.launch`, which says why there is one) that sits between the harness and the
child (`python -m benchmarks.child`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]


class ChildFailed(RuntimeError):
    """A measured child failed: its traceback, a one-line summary and its peak RSS."""

    def __init__(self, message: str, error: str, summary: str, peak_rss_bytes: int) -> None:
        super().__init__(message)
        self.error = error
        self.summary = summary
        self.peak_rss_bytes = peak_rss_bytes


@dataclass
class Measurement:
    """What one side of one case (or the ingest) did."""

    seconds: float  # timed inside the child, around the work only (no interpreter start)
    process_seconds: float  # the whole child, interpreter start and imports included
    peak_rss_bytes: int  # the child's ru_maxrss
    rows: int
    files: list[dict[str, Any]] = field(default_factory=list)  # {"role", "path", "bytes"}
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def bytes(self) -> int:
        """Total bytes of the output files."""
        return sum(f["bytes"] for f in self.files)

    @property
    def rows_per_s(self) -> float:
        """Rows (documents) per second of `seconds`."""
        return self.rows / self.seconds if self.seconds > 0 else 0.0

    @property
    def mb_per_s(self) -> float:
        """Output megabytes (10^6 bytes) per second of `seconds`."""
        return self.bytes / 1e6 / self.seconds if self.seconds > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict including the derived rates."""
        out = asdict(self)
        out.update(bytes=self.bytes, rows_per_s=self.rows_per_s, mb_per_s=self.mb_per_s)
        out["peak_rss_mb"] = self.peak_rss_bytes / 2**20
        return out


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for children: the repository importable from any working directory,
    plus `extra` variables (settings such as EXPORT_PIPELINE_MAX_COLUMNS, which the child's
    Settings reads)."""
    env = {**os.environ, **(extra or {})}
    paths = [str(REPO_ROOT), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


def run_child(
    spec: dict[str, Any],
    workdir: Path,
    *,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
) -> Measurement:
    """Run `spec` in a fresh child (through the launcher) and return its measurement; `env`
    adds variables to the child's environment."""
    workdir.mkdir(parents=True, exist_ok=True)
    spec_path, result_path = workdir / "spec.json", workdir / "result.json"
    rusage_path = workdir / "rusage.json"
    spec_path.write_text(json.dumps(spec))
    for stale in (result_path, rusage_path):
        stale.unlink(missing_ok=True)
    command = [
        sys.executable,
        "-m",
        "benchmarks.launch",
        str(spec_path),
        str(result_path),
        str(rusage_path),
    ]
    process = subprocess.Popen(command, cwd=cwd or workdir, env=child_env(env))
    tree = _TreeMemory(process.pid)
    code = process.wait()
    tree.stop()
    result = json.loads(result_path.read_text()) if result_path.exists() else {}
    usage = json.loads(rusage_path.read_text()) if rusage_path.exists() else {}
    if code != 0 or "seconds" not in result:
        error = result.get("error") or f"exit code {code}, no result (killed?)"
        summary = result.get("summary") or error.strip().splitlines()[-1]
        raise ChildFailed(
            f"{spec.get('kind')} failed: {summary} (spec {spec_path})",
            error,
            summary,
            usage.get("maxrss_kb", 0) * 1024,
        )
    return Measurement(
        seconds=result["seconds"],
        process_seconds=usage["process_seconds"],
        peak_rss_bytes=usage["maxrss_kb"] * 1024,
        rows=result["rows"],
        files=result.get("files", []),
        extra={
            **result.get("extra", {}),
            "tree_peak_rss_bytes": tree.peak,
            "user_seconds": usage["user_seconds"],
            "system_seconds": usage["system_seconds"],
        },
    )


class _TreeMemory:
    """The peak of the summed resident memory of a process and all its descendants (the
    shards' processes of a sharded export), sampled every 20 ms from /proc. Pages shared
    between processes count once per process: an upper bound."""

    def __init__(self, root: int) -> None:
        self.root, self.peak = root, 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._done.set()
        self._thread.join()

    def _sample(self) -> None:
        while not self._done.wait(0.02):
            self.peak = max(self.peak, _tree_rss(self.root))


def _tree_rss(root: int) -> int:
    total, pending = 0, [root]
    while pending:
        pid = pending.pop()
        try:
            with open(f"/proc/{pid}/statm") as handle:
                total += int(handle.read().split()[1]) * _PAGE
            for task in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{task}/children") as handle:
                    pending += [int(child) for child in handle.read().split()]
        except (OSError, ValueError, IndexError):  # the process ended meanwhile
            continue
    return total


_PAGE = os.sysconf("SC_PAGE_SIZE")
