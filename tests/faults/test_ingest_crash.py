"""SIGKILL of the ingest process mid-stream, then a restart: the archive ends identical to an uninterrupted
run over the same topic, every on-time reading is in it exactly once, and every malformed message is in the
dead-letter topic (dead letters of the uncommitted tail are produced again by the restart: they are
counted once per (partition, offset, reason), the key a dead-letter consumer deduplicates on)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from kafka import KafkaConsumer
from kafka.structs import TopicPartition

from serving.config import Settings
from stream.archive import Archive
from stream.consume import IngestService
from stream.datasets import load_dataset
from stream.ingest import DeadLetter
from stream.kafka_io import ReadingProducer, ensure_topics
from stream.replay import plan, send
from tests.conftest import wait_for
from tests.faults.conftest import Reliability
from tests.test_crash import _committed_behind, assert_same_archive

pytestmark = [pytest.mark.faults, pytest.mark.slow]  # the default suite runs tests/test_crash.py instead

LATENESS = 300_000
STEPS = 300


def _dead_letters(s: Settings) -> list[DeadLetter]:
    c = KafkaConsumer(bootstrap_servers=s.kafka.bootstrap, enable_auto_commit=False)
    tp = TopicPartition(s.kafka.dead_letter_topic, 0)
    c.assign([tp])
    c.seek_to_beginning(tp)
    out: list[DeadLetter] = []
    try:
        for _ in range(20):
            got = [DeadLetter.from_json(m.value) for ms in c.poll(500).values() for m in ms]
            if not got and out:
                break
            out += got
    finally:
        c.close()
    return out


def test_ingest_sigkill_and_restart(fault_settings: Settings, datasets_dir: Path, tmp_path: Path,
                                    reliability: Reliability) -> None:  # fmt: skip
    s = fault_settings
    ds = load_dataset(datasets_dir / "pems08-head")
    net_file = tmp_path / "network.toml"
    ds.network.save(net_file)
    ensure_topics(s.kafka, {s.kafka.readings_topic: s.kafka.partitions, s.kafka.dead_letter_topic: 1})
    msgs, exp = plan(ds, n_partitions=s.kafka.partitions, n_steps=STEPS, fmt="single", shuffle_ms=LATENESS,
                     duplicate_rate=0.01, garbage_rate=0.005, allowed_lateness_ms=LATENESS, seed=5)  # fmt: skip
    with ReadingProducer(s.kafka, ds.network) as producer:
        send(msgs, producer, step_ms=ds.network.step_ms)
    group = f"crash-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "SENSORCAST_KAFKA__READINGS_TOPIC": s.kafka.readings_topic,
           "SENSORCAST_KAFKA__DEAD_LETTER_TOPIC": s.kafka.dead_letter_topic, "SENSORCAST_KAFKA__GROUP_ID": group,
           "SENSORCAST_KAFKA__PARTITIONS": str(s.kafka.partitions), "SENSORCAST_KAFKA__SESSION_TIMEOUT_MS": "3000",
           "SENSORCAST_KAFKA__MAX_POLL_RECORDS": "300", "SENSORCAST_WINDOW__ALLOWED_LATENESS_MS": str(LATENESS),
           "SENSORCAST_WINDOW__IDLE_TIMEOUT_MS": "600000"}  # fmt: skip
    crashed = tmp_path / "crashed"
    cmd = [sys.executable, "-m", "serving.cli", "ingest", "--network", str(net_file), "--archive", str(crashed),
           "--until-idle", "4", "--bootstrap", str(s.kafka.bootstrap), "--log-level", "warning"]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        steps_dir = crashed / "steps"
        wait_for(lambda: steps_dir.exists() and len(list(steps_dir.rglob("*.parquet"))) >= 3, timeout_s=120,
                 what="the first archived steps", interval_s=0.01)  # fmt: skip
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    t_kill = time.monotonic()
    partial = Archive(crashed, ds.network).last_step()
    assert partial is not None and partial < int(ds.step_ts[STEPS - 1]), (
        "the kill came after the stream was done"
    )
    assert _committed_behind(s, group), "nothing was left to replay: the kill was not mid-stream"
    time.sleep(3.5)  # the broker expires the killed member's session (3 s) before the restart rejoins
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    recovery = time.monotonic() - t_kill
    restarted = json.loads(out.stdout[out.stdout.index("{") :])
    led = restarted["ledger"]
    assert led["received"] == sum(
        led[k] for k in ("windowed", "dead_lettered", "late", "duplicates", "replayed")
    )

    ref_kafka = s.kafka.model_copy(update={"group_id": f"ref-{group}", "dead_letter_topic": f"ref-{group}"})
    window = s.window.model_copy(update={"allowed_lateness_ms": LATENESS, "idle_timeout_ms": 600_000})
    ref = IngestService(ref_kafka, window, Archive(tmp_path / "reference", ds.network), ds.network).start()
    try:
        wait_for(lambda: ref.poll_once(500) is not None and ref.ingestor.ledger.total().received >= exp.received,
                 timeout_s=180, what="the reference run to consume everything")  # fmt: skip
        ref.drain()
        t = ref.ingestor.ledger.total()
        assert (t.received, t.windowed, t.duplicates, t.late, t.dead_by_reason) == (
            exp.received,
            exp.readings,
            exp.duplicates,
            0,
            exp.dead_by_reason,
        )
    finally:
        ref.close()
    a_mask = assert_same_archive(Archive(crashed, ds.network), ref.archive, steps=STEPS)
    lost = exp.readings - int(a_mask.sum())
    assert lost == 0
    # the crashed + restarted pair dead-lettered every malformed message (some twice: replayed, same key)
    letters = _dead_letters(s)
    unique = {
        (d.partition, d.offset, d.reason): d.n_readings for d in letters if d.topic == s.kafka.readings_topic
    }
    by_reason: dict[str, int] = {}
    for (_, _, reason), n in unique.items():
        by_reason[reason] = by_reason.get(reason, 0) + n
    again = len(letters) - len(unique)
    assert by_reason == exp.dead_by_reason
    reliability.record(
        "ingest SIGKILL mid-stream + restart", survived=True, lost=lost, recovery_s=recovery,
        detail=f"killed after step {(partial - int(ds.step_ts[0])) // ds.network.step_ms + 1} of {STEPS}; archive "
        f"identical to an uninterrupted run; {exp.readings} readings archived once, {led['replayed']} replayed, "
        f"{sum(exp.dead_by_reason.values())} dead letters ({again} produced again after the restart)",
    )  # fmt: skip
