"""Replays of real sensor data through the real broker: messy input in, the dataset's own arrays out.

pems08-head: two days, three features, single-reading messages shuffled within the lateness bound, 1 %
duplicated messages, 1 % malformed messages of eight kinds, and 25 readings later than allowed. de-pm10:
daily air quality with 51 % real gaps, batch messages; the gaps must stay mask 0.
"""

from __future__ import annotations

import numpy as np
import orjson
from kafka import KafkaConsumer

from serving.config import Settings
from stream.archive import Archive
from stream.consume import IngestService
from stream.datasets import SensorDataset, load_dataset
from stream.kafka_io import ReadingProducer, ensure_topics
from stream.replay import Expectation, plan, send
from tests.conftest import wait_for

LATENESS = 300_000


def _replay_and_ingest(
    s: Settings, ds: SensorDataset, tmp_archive: str, **plan_kw: object
) -> tuple[IngestService, Expectation]:
    ensure_topics(s.kafka, {s.kafka.readings_topic: s.kafka.partitions, s.kafka.dead_letter_topic: 1})
    msgs, exp = plan(ds, n_partitions=s.kafka.partitions, allowed_lateness_ms=LATENESS, **plan_kw)  # type: ignore[arg-type]
    window = s.window.model_copy(update={"allowed_lateness_ms": LATENESS, "idle_timeout_ms": 600_000})
    archive = Archive(tmp_archive, ds.network)
    svc = IngestService(s.kafka, window, archive, ds.network, client_id="replay-test").start()

    def consumed(n: int) -> bool:
        svc.poll_once(500)
        return svc.ingestor.ledger.total().received >= n

    try:
        with ReadingProducer(s.kafka, ds.network) as producer:
            send([m for m in msgs if not m.late], producer, step_ms=ds.network.step_ms)
            n_on_time = exp.received - exp.late
            wait_for(
                lambda: consumed(n_on_time), timeout_s=180, what=f"{n_on_time} on-time readings consumed"
            )
            send([m for m in msgs if m.late], producer, step_ms=ds.network.step_ms)
        wait_for(lambda: consumed(exp.received), timeout_s=60, what=f"{exp.late} late readings consumed")
        svc.drain()
    finally:
        svc.close()
    return svc, exp


def _dead_letters(s: Settings, n: int) -> list[dict[str, object]]:
    consumer = KafkaConsumer(
        s.kafka.dead_letter_topic,
        bootstrap_servers=s.kafka.bootstrap,
        auto_offset_reset="earliest",
        consumer_timeout_ms=5000,
    )
    out = []
    for m in consumer:
        out.append(orjson.loads(m.value))
        if len(out) >= n:
            break
    consumer.close()
    return out


def test_pems08_two_days_messy_replay_is_exact(fresh_settings: Settings, datasets_dir, tmp_path) -> None:  # type: ignore[no-untyped-def]
    ds = load_dataset(datasets_dir / "pems08-head")
    steps = 576  # two days of 5-minute steps
    svc, exp = _replay_and_ingest(
        fresh_settings,
        ds,
        str(tmp_path / "arch"),
        n_steps=steps,
        fmt="single",
        shuffle_ms=LATENESS,
        duplicate_rate=0.01,
        garbage_rate=0.01,
        late_readings=25,
        seed=7,
    )
    tot = svc.ingestor.ledger.total()
    assert svc.ingestor.ledger.balanced()
    assert tot.received == exp.received
    assert tot.windowed == exp.readings
    assert tot.duplicates == exp.duplicates
    assert tot.late == exp.late == 25
    assert tot.dead_lettered == exp.dead_lettered
    assert tot.dead_by_reason == exp.dead_by_reason
    assert len(exp.dead_by_reason) == 8

    step_ts, values, mask = svc.archive.read()
    np.testing.assert_array_equal(step_ts, ds.step_ts[:steps])
    want_mask = ds.mask[:steps].astype(bool).copy()
    for t, i, k in exp.late_cells:
        want_mask[t, i, k] = False  # late readings are not in the sealed step...
    np.testing.assert_array_equal(mask.astype(bool), want_mask)
    np.testing.assert_array_equal(values[want_mask], ds.values[:steps].astype(np.float32)[want_mask])
    late_log = svc.archive.read_late()
    assert len(late_log) == 25  # ...but kept in the late log

    dead = _dead_letters(fresh_settings, exp.dead_lettered)
    assert len(dead) == exp.dead_lettered
    by_reason: dict[str, int] = {}
    for d in dead:
        by_reason[str(d["reason"])] = by_reason.get(str(d["reason"]), 0) + 1
        assert d["topic"] == fresh_settings.kafka.readings_topic and d["detail"]
        assert isinstance(d["offset"], int) and "raw_b64" in d
    assert by_reason == exp.dead_by_reason


def test_de_pm10_replay_keeps_real_gaps(fresh_settings: Settings, datasets_dir, tmp_path) -> None:  # type: ignore[no-untyped-def]
    ds = load_dataset(datasets_dir / "de-pm10")
    start, steps = 2000, 120
    svc, exp = _replay_and_ingest(
        fresh_settings, ds, str(tmp_path / "arch"), start_step=start, n_steps=steps, fmt="batch"
    )
    assert svc.ingestor.ledger.balanced() and exp.late == 0
    step_ts, values, mask = svc.archive.read()
    np.testing.assert_array_equal(step_ts, ds.step_ts[start : start + steps])
    want = ds.mask[start : start + steps].astype(bool)
    assert 0.2 < 1 - want.mean() < 0.9, "this slice should have real gaps"
    np.testing.assert_array_equal(mask.astype(bool), want)
    np.testing.assert_array_equal(values[want], ds.values[start : start + steps].astype(np.float32)[want])


def test_archive_reads_back_as_a_dataset_and_refuses_another_network(
    fresh_settings: Settings, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    import pytest

    from stream.archive import Archive as _Archive
    from stream.archive import ArchiveMismatch
    from stream.network import Network
    from stream.window import SealedStep

    net = Network.simple("arch", 3, ["speed"], step_ms=60_000)
    root = tmp_path / "arch"
    archive = _Archive(root, net).claim()
    steps = [
        SealedStep(60_000 * (1000 + t), np.full((3, 1), t, np.float32), np.ones((3, 1), np.uint8), 3)
        for t in range(5)
    ]
    archive.append(steps)
    ds = load_dataset(root)
    assert ds.network.fingerprint() == net.fingerprint()
    np.testing.assert_array_equal(ds.values[:, 0, 0], np.arange(5))
    other = Network.simple("other", 4, ["speed"], step_ms=60_000)
    with pytest.raises(ArchiveMismatch, match="belongs to network 'arch'"):
        _Archive(root, other).claim()
