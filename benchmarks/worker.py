"""Child process: `python -m benchmarks.worker '<spec json>'` runs one approach and prints
`BENCH_RESULT <json>` as its last line.

A fresh process per measurement: peak RSS is that run's alone, and Dagster's process start is
measured (spawn → definitions loaded) and kept apart from the run itself.
"""

from __future__ import annotations

import json
import resource
import sys
import time

MARKER = "BENCH_RESULT "


def hwm_bytes(pid: int | str = "self") -> int:
    """A live process's peak RSS since its exec (VmHWM), 0 if it is gone.

    Not getrusage's ru_maxrss: on Linux a child's ru_maxrss also counts the memory it shared
    with its parent between fork and exec, so a small process spawned by a large one reports
    the parent's size (measured: 413 MB for a bare `python -c` under a 400 MB parent; VmHWM
    13.5 MB).
    """
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


def main(argv: list[str]) -> int:
    spec = json.loads(argv[0])
    from benchmarks.approaches import APPROACHES

    approach = APPROACHES[spec["approach"]]
    result = approach(spec)
    result["approach"] = spec["approach"]
    result["process_start_seconds"] = round(result.pop("ready_at") - spec["spawned_at"], 4)
    result["process_start_cpu_seconds"] = round(result.pop("ready_cpu_seconds"), 4)
    # The kernel's high-water mark of this process's RSS (psutil has no peak on Linux).
    peak = hwm_bytes() or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    result.setdefault("peak_rss_bytes", peak)
    result["finished_at"] = time.time()
    print(MARKER + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
