"""The launcher between the harness and a measured child (standard library only, tiny).

`python -m benchmarks.launch SPEC RESULT RUSAGE` starts `python -m benchmarks.child SPEC
RESULT`, waits for it with `os.wait4` and writes the child's rusage to RUSAGE.

Why a launcher: Linux carries the high-water RSS of the process that *execs* into the new
program's `ru_maxrss`, so a child spawned straight from the harness (which holds numpy,
DuckDB and read-back data) would report at least the harness's own peak. Started from this
small launcher, a child's baseline is the launcher's ~10 MB instead.
"""

import json
import os
import sys
import time


def main(spec_path: str, result_path: str, rusage_path: str) -> int:
    """Run the child, wait for it with wait4, write its rusage; return its exit code."""
    started = time.perf_counter()
    argv = [sys.executable, "-m", "benchmarks.child", spec_path, result_path]
    pid = os.posix_spawn(sys.executable, argv, os.environ)
    _, status, usage = os.wait4(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    rusage = {
        "exit_code": code,
        "process_seconds": time.perf_counter() - started,
        "maxrss_kb": usage.ru_maxrss,
        "user_seconds": usage.ru_utime,
        "system_seconds": usage.ru_stime,
    }
    with open(rusage_path, "w") as out:
        json.dump(rusage, out)
    return code


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:4]))
