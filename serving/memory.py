"""Memory of the long-running services: settle the heap once start-up is over, and read resident-set
sizes for reports and benchmarks. No policy lives here, only measurement and the one start-up step."""

from __future__ import annotations

import gc
import logging
import os
import time
from pathlib import Path

log = logging.getLogger("sensorcast")


def rss_mb(pid: int | None = None) -> float:
    """Resident set size of a process (default: this one) in MiB, from /proc; NaN where unreadable."""
    try:
        status = Path(f"/proc/{os.getpid() if pid is None else pid}/status").read_text()
    except OSError:
        return float("nan")
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def settle_heap() -> None:
    """Once a long-running command has started (imports, clients, model, Ray): collect, then freeze what
    survives into the permanent generation, so that full collections stop walking that long-lived heap.
    `benchmarks/ingest.py` measures the per-message CPU it saves."""
    t0 = time.perf_counter()
    gc.collect()
    gc.freeze()
    ms = round(1e3 * (time.perf_counter() - t0), 1)
    log.info("heap settled", extra={"frozen_objects": gc.get_freeze_count(), "ms": ms})
