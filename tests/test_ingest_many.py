"""`Ingestor.ingest_many` (one poll's records of a partition at once) must give exactly what `ingest()`
per message gives: the same dead letters, late readings, ledger, sealed steps and committable offsets."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pytest

from stream.datasets import load_dataset
from stream.ingest import Ingestor
from stream.replay import plan


class Rec(NamedTuple):
    offset: int
    value: bytes | None


@pytest.mark.parametrize("gaps", [False, True], ids=["consecutive", "offset-gaps"])
@pytest.mark.parametrize("fmt", ["single", "batch"])
def test_ingest_many_equals_ingest_per_message(datasets_dir, fmt: str, gaps: bool) -> None:  # type: ignore[no-untyped-def]
    ds = load_dataset(datasets_dir / "pems08-head")
    msgs, _ = plan(
        ds, n_partitions=2, n_steps=60, fmt=fmt, shuffle_ms=600_000, duplicate_rate=0.05,
        garbage_rate=0.05, late_readings=20, allowed_lateness_ms=300_000, seed=3,
    )  # fmt: skip
    parts: dict[int, list[Rec]] = {0: [], 1: []}
    for m in sorted(msgs, key=lambda m: m.late):  # the late ones last, as a replay sends them
        n = len(parts[m.partition])  # with gaps: offsets a compacted topic or transaction markers leave
        parts[m.partition].append(Rec(n + 3 * (n // 7) if gaps else n, m.value))
    polls = [
        [(p, recs[i : i + 37]) for p, recs in parts.items() if recs[i : i + 37]]
        for i in range(0, max(map(len, parts.values())), 37)
    ]
    t_end = int(ds.step_ts[60])
    one = Ingestor(ds.network, allowed_lateness_ms=300_000, idle_timeout_ms=10**9, now=lambda: t_end)
    many = Ingestor(ds.network, allowed_lateness_ms=300_000, idle_timeout_ms=10**9, now=lambda: t_end)
    sealed_one, sealed_many, dead_one, dead_many = [], [], [], []
    for poll in polls:
        for p, recs in poll:
            for r in recs:
                dead_one += one.ingest(p, r.offset, r.value)
            dead_many += many.ingest_many(p, recs)
        sealed_one += one.seal()
        sealed_many += many.seal()
        assert one.take_late() == many.take_late()
        assert one.committable() == many.committable()
    sealed_one += one.flush_all()
    sealed_many += many.flush_all()
    assert dead_one == dead_many
    for p in (0, 1):
        a, b = one.ledger.partition(p), many.ledger.partition(p)
        assert [getattr(a, k) for k in a.__slots__] == [getattr(b, k) for k in b.__slots__]
    assert many.ledger.balanced()
    total = one.ledger.total()
    assert total.windowed > 0 and total.late > 0 and total.duplicates > 0 and total.dead_lettered > 0
    assert [s.step_ts for s in sealed_one] == [s.step_ts for s in sealed_many]
    for a, b in zip(sealed_one, sealed_many, strict=True):
        np.testing.assert_array_equal(a.values, b.values)
        np.testing.assert_array_equal(a.mask, b.mask)
        assert a.n_readings == b.n_readings
