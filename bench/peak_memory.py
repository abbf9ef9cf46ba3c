"""Peak resident memory of the current process, for the benchmarks.

`getrusage(RUSAGE_SELF).ru_maxrss` is not enough on Linux: a child started with fork + exec keeps the
parent's high-water mark, so a small child of a big parent reports the parent's size. `VmHWM` in
/proc/self/status belongs to the process's own address space and starts afresh at exec.
"""

from __future__ import annotations

import resource
import sys
from pathlib import Path

STATUS = Path("/proc/self/status")


def peak_rss_mib() -> float:
    """Peak resident set size of this process since it started (exec), in MiB."""
    if STATUS.is_file():
        for line in STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)  # bytes on macOS, KiB elsewhere
