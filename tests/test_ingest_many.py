"""`Ingestor.ingest_many` (one poll's records of a partition at once, clean single readings decoded in
bulk) must give exactly what the reference gives, each message through the per-message `Decoder` and
windowed on its own: the same dead letters, late readings, ledger, sealed steps and committable offsets."""

from __future__ import annotations

import numpy as np
import pytest

from stream.datasets import load_dataset
from stream.ingest import DEAD_LETTER_RAW_MAX, DeadLetter, Ingestor, Message
from stream.replay import plan
from stream.window import LateReading


def one_by_one(
    ing: Ingestor, partition: int, recs: list[Message]
) -> tuple[list[DeadLetter], list[LateReading]]:
    """The reference, using only `ing`'s decoder, windower and ledger: each message decoded by the
    per-message `Decoder`, a dead letter per reject (counted as received and dead-lettered), the valid
    readings windowed message by message."""
    dead: list[DeadLetter] = []
    late: list[LateReading] = []
    counts = ing.ledger.partition(partition)
    for r in recs:
        decoded = ing.decoder.decode(r.value)
        for j in decoded.rejects:
            counts.received += j.n_readings
            counts.dead(j.reason, j.n_readings)
            body = (r.value or b"")[:DEAD_LETTER_RAW_MAX]
            dead.append(
                DeadLetter(j.reason, j.detail, ing.source_topic, partition, r.offset, body, j.n_readings)
            )
        offsets = np.full(decoded.n, r.offset, dtype=np.int64)
        cells = decoded.sensor.astype(np.int64) * ing.network.n_features + decoded.feature
        late += ing.windower.add_columns(
            partition, offsets, decoded.ts, cells, decoded.value, last_offset=r.offset
        )
    return dead, late


@pytest.mark.parametrize("gaps", [False, True], ids=["consecutive", "offset-gaps"])
@pytest.mark.parametrize("fmt", ["single", "batch"])
def test_ingest_many_equals_the_per_message_reference(datasets_dir, fmt: str, gaps: bool) -> None:  # type: ignore[no-untyped-def]
    ds = load_dataset(datasets_dir / "pems08-head")
    msgs, _ = plan(
        ds,
        n_partitions=2,
        n_steps=60,
        fmt=fmt,
        shuffle_ms=600_000,
        duplicate_rate=0.05,
        garbage_rate=0.05,
        late_readings=20,
        allowed_lateness_ms=300_000,
        seed=3,
    )
    parts: dict[int, list[Message]] = {0: [], 1: []}
    for m in sorted(msgs, key=lambda m: m.late):  # the late ones last, as a replay sends them
        n = len(parts[m.partition])  # with gaps: offsets a compacted topic or transaction markers leave
        parts[m.partition].append(Message(n + 3 * (n // 7) if gaps else n, m.value))
    polls = [
        [(p, recs[i : i + 37]) for p, recs in parts.items() if recs[i : i + 37]]
        for i in range(0, max(map(len, parts.values())), 37)
    ]
    t_end = int(ds.step_ts[60])
    one = Ingestor(ds.network, allowed_lateness_ms=300_000, idle_timeout_ms=10**9, now=lambda: t_end)
    many = Ingestor(ds.network, allowed_lateness_ms=300_000, idle_timeout_ms=10**9, now=lambda: t_end)
    sealed_one, sealed_many, dead_one, dead_many = [], [], [], []
    for poll in polls:
        late_one: list[LateReading] = []
        for p, recs in poll:
            dead, late = one_by_one(one, p, recs)
            dead_one += dead
            late_one += late
            dead_many += many.ingest_many(p, recs)
        sealed_one += one.seal()
        sealed_many += many.seal()
        assert late_one == many.take_late()
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
