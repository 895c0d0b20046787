"""Crash safety: SIGKILL the ingest process mid-stream, restart it, and the archive must end identical to an
uninterrupted run over the same topic (offsets are committed only after what they carry is durable)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
from kafka import KafkaConsumer
from kafka.structs import TopicPartition

from serving.config import Settings
from stream.archive import Archive
from stream.consume import IngestService
from stream.datasets import load_dataset
from stream.kafka_io import ReadingProducer, ensure_topics
from stream.replay import plan, send
from tests.conftest import wait_for

LATENESS = 300_000


def assert_same_archive(crashed: Archive, reference: Archive, *, steps: int) -> np.ndarray:
    """The crashed-and-restarted run archived exactly what the uninterrupted one did, `steps` steps of
    it; returns the mask."""
    a_ts, a_vals, a_mask = crashed.read()
    b_ts, b_vals, b_mask = reference.read()
    np.testing.assert_array_equal(a_ts, b_ts)
    np.testing.assert_array_equal(a_mask, b_mask)
    np.testing.assert_array_equal(a_vals, b_vals)
    assert len(a_ts) == steps
    return a_mask


def _committed_behind(s: Settings, group: str) -> bool:
    """True when the group's committed offsets are below the high-water marks (work was left undone)."""
    c = KafkaConsumer(bootstrap_servers=s.kafka.bootstrap, group_id=group, enable_auto_commit=False)
    try:
        tps = [TopicPartition(s.kafka.readings_topic, p) for p in range(s.kafka.partitions)]
        c.assign(tps)
        c.seek_to_end()  # only to learn positions; Tansu answers end offsets low, so compare per partition
        behind = False
        for tp in tps:
            committed = c.committed(tp) or 0
            c.poll(timeout_ms=200)
            hw = c.highwater(tp)
            behind |= hw is None or committed < hw
        return behind
    finally:
        c.close(autocommit=False)


def test_sigkill_mid_stream_then_restart_gives_identical_archive(
    fresh_settings: Settings, datasets_dir: Path, tmp_path: Path
) -> None:
    s = fresh_settings
    ds = load_dataset(datasets_dir / "pems08-head")
    net_file = tmp_path / "network.toml"
    ds.network.save(net_file)
    ensure_topics(s.kafka, {s.kafka.readings_topic: s.kafka.partitions, s.kafka.dead_letter_topic: 1})
    msgs, exp = plan(ds, n_partitions=s.kafka.partitions, n_steps=600, fmt="single", shuffle_ms=LATENESS,
                     duplicate_rate=0.01, garbage_rate=0.005, allowed_lateness_ms=LATENESS, seed=3)  # fmt: skip
    with ReadingProducer(s.kafka, ds.network) as producer:
        send(msgs, producer, step_ms=ds.network.step_ms)

    group = f"crash-{uuid.uuid4().hex[:8]}"
    env = {
        **os.environ,
        "SENSORCAST_KAFKA__READINGS_TOPIC": s.kafka.readings_topic,
        "SENSORCAST_KAFKA__DEAD_LETTER_TOPIC": s.kafka.dead_letter_topic,
        "SENSORCAST_KAFKA__GROUP_ID": group,
        "SENSORCAST_KAFKA__PARTITIONS": str(s.kafka.partitions),
        "SENSORCAST_KAFKA__SESSION_TIMEOUT_MS": "3000",
        "SENSORCAST_KAFKA__MAX_POLL_RECORDS": "500",  # small cycles: many commits to crash between
        "SENSORCAST_WINDOW__ALLOWED_LATENESS_MS": str(LATENESS),
        "SENSORCAST_WINDOW__IDLE_TIMEOUT_MS": "600000",
    }
    crashed = tmp_path / "crashed"
    cmd = [sys.executable, "-m", "serving.cli", "ingest", "--network", str(net_file), "--archive", str(crashed),
           "--until-idle", "4", "--bootstrap", str(s.kafka.bootstrap), "--log-level", "warning"]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        steps_dir = crashed / "steps"
        wait_for(
            lambda: steps_dir.exists() and len(list(steps_dir.rglob("*.parquet"))) >= 3,
            timeout_s=120,
            what="the first archived steps of the ingest process",
            interval_s=0.01,
        )
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    partial = Archive(crashed, ds.network).last_step()
    assert partial is not None and partial < int(ds.step_ts[599]), "the kill came after the stream was done"
    assert _committed_behind(s, group), "nothing was left to replay: the kill was not mid-stream"

    time.sleep(3.5)  # let the broker expire the killed member's session (3 s) before the restart rejoins
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    restarted = json.loads(out.stdout[out.stdout.index("{") :])
    assert restarted["ledger"]["replayed"] + restarted["ledger"]["windowed"] > 0

    # the uninterrupted reference run, same topic, its own group and archive
    ref_kafka = s.kafka.model_copy(update={"group_id": f"ref-{group}"})
    window = s.window.model_copy(update={"allowed_lateness_ms": LATENESS, "idle_timeout_ms": 600_000})
    ref = IngestService(ref_kafka, window, Archive(tmp_path / "reference", ds.network), ds.network).start()
    try:
        wait_for(
            lambda: ref.poll_once(500) is not None and ref.ingestor.ledger.total().received >= exp.received,
            timeout_s=180,
            what="the reference run to consume everything",
        )
        ref.drain()
        assert ref.ingestor.ledger.balanced()
    finally:
        ref.close()

    assert_same_archive(Archive(crashed, ds.network), ref.archive, steps=600)
