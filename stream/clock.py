"""The wall clock in epoch milliseconds (UTC), the unit every message and key uses. Components take
`now: Callable[[], int]` and default to `wall_ms`, so tests can drive time themselves."""

from __future__ import annotations

import time


def wall_ms() -> int:
    """Milliseconds since the Unix epoch, now."""
    return time.time_ns() // 1_000_000
