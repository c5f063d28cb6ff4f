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


def main(argv: list[str]) -> int:
    spec = json.loads(argv[0])
    from benchmarks.approaches import APPROACHES

    approach = APPROACHES[spec["approach"]]
    result = approach(spec)
    result["approach"] = spec["approach"]
    result["process_start_seconds"] = round(result.pop("ready_at") - spec["spawned_at"], 4)
    result["process_start_cpu_seconds"] = round(result.pop("ready_cpu_seconds"), 4)
    # The kernel's high-water mark of this process's RSS (KiB on Linux). psutil has no peak
    # on Linux (only the current RSS), so this stays getrusage.
    result.setdefault("peak_rss_bytes", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    result["finished_at"] = time.time()
    print(MARKER + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
