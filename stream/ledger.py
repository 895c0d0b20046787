"""The ledger: where every received reading went, per partition, so that nothing is lost silently.

Each reading that reaches the ingest core ends in exactly one bucket:

    received == windowed + dead_lettered + late + duplicates + replayed

`windowed` readings sit in a sealed or open step, `dead_lettered` ones were rejected by the decoder,
`late` ones arrived for an already-sealed step (kept in the late log), `duplicates` repeated an
earlier (sensor, feature, ts) and `replayed` ones belong to steps already durable before a restart.
Counting is in readings, not messages; an undecodable message counts as one reading.

Plain counters over in-memory data: no I/O, no metrics library (the serving side exports them).
"""

from __future__ import annotations

from typing import Any

BUCKETS = ("windowed", "dead_lettered", "late", "duplicates", "replayed")


class PartitionCounts:
    """The counters of one partition. Attributes are incremented directly on the hot path."""

    __slots__ = ("dead_by_reason", "dead_lettered", "duplicates", "late", "received", "replayed", "windowed")

    def __init__(self) -> None:
        self.received = 0
        self.windowed = 0
        self.dead_lettered = 0
        self.late = 0
        self.duplicates = 0
        self.replayed = 0
        self.dead_by_reason: dict[str, int] = {}

    def dead(self, reason: str, n_readings: int) -> None:
        """Count `n_readings` dead-lettered readings under `reason`."""
        self.dead_lettered += n_readings
        self.dead_by_reason[reason] = self.dead_by_reason.get(reason, 0) + n_readings

    def balanced(self) -> bool:
        return self.received == (
            self.windowed + self.dead_lettered + self.late + self.duplicates + self.replayed
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "received": self.received,
            "windowed": self.windowed,
            "dead_lettered": self.dead_lettered,
            "late": self.late,
            "duplicates": self.duplicates,
            "replayed": self.replayed,
            "dead_by_reason": dict(sorted(self.dead_by_reason.items())),
        }


class Ledger:
    """Counters per partition plus their total; `balanced()` checks the invariant everywhere."""

    def __init__(self) -> None:
        self._partitions: dict[int, PartitionCounts] = {}

    def partition(self, partition: int) -> PartitionCounts:
        """The counters of `partition`, created at zero on first use."""
        counts = self._partitions.get(partition)
        if counts is None:
            counts = self._partitions[partition] = PartitionCounts()
        return counts

    @property
    def partitions(self) -> list[int]:
        return sorted(self._partitions)

    def total(self) -> PartitionCounts:
        """The sum over partitions (a fresh object; changing it changes nothing)."""
        out = PartitionCounts()
        for c in self._partitions.values():
            out.received += c.received
            out.windowed += c.windowed
            out.dead_lettered += c.dead_lettered
            out.late += c.late
            out.duplicates += c.duplicates
            out.replayed += c.replayed
            for reason, n in c.dead_by_reason.items():
                out.dead_by_reason[reason] = out.dead_by_reason.get(reason, 0) + n
        return out

    def balanced(self) -> bool:
        return all(c.balanced() for c in self._partitions.values()) and self.total().balanced()

    def snapshot(self) -> dict[str, Any]:
        """JSON-ready: `{"total": {...}, "partitions": {"0": {...}}, "balanced": bool}`."""
        return {
            "total": self.total().as_dict(),
            "partitions": {str(p): self._partitions[p].as_dict() for p in self.partitions},
            "balanced": self.balanced(),
        }
