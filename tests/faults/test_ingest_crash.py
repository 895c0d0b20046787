"""SIGKILL of the ingest process mid-stream, then a restart: the archive ends identical to an uninterrupted
run over the same topic (offsets are committed only after what they carry is durable), every on-time reading
is in it exactly once, and every malformed message is in the dead-letter topic (dead letters of the
uncommitted tail are produced again by the restart: they are counted once per (partition, offset, reason),
the key a dead-letter consumer deduplicates on).

What is measured, recorded, then checked: readings lost, steps missing or doubled against the reference
run, dead letters missing by reason, and the recovery time from the restart to its first archived step.
"""

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
import pytest
from kafka import KafkaConsumer
from kafka.structs import TopicPartition

from serving.config import Settings
from stream.archive import Archive
from stream.consume import IngestService
from stream.datasets import load_dataset
from stream.ingest import DeadLetter
from stream.kafka_io import ReadingProducer, ensure_topics
from stream.ledger import BUCKETS
from stream.replay import plan, send
from tests.conftest import wait_for
from tests.faults.reliability import Reliability

pytestmark = pytest.mark.faults

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


def test_ingest_sigkill_and_restart(
    fault_settings: Settings, datasets_dir: Path, tmp_path: Path, reliability: Reliability
) -> None:
    s = fault_settings
    ds = load_dataset(datasets_dir / "pems08-head")
    net_file = tmp_path / "network.toml"
    ds.network.save(net_file)
    ensure_topics(s.kafka, {s.kafka.readings_topic: s.kafka.partitions, s.kafka.dead_letter_topic: 1})
    msgs, exp = plan(
        ds,
        n_partitions=s.kafka.partitions,
        n_steps=STEPS,
        fmt="single",
        shuffle_ms=LATENESS,
        duplicate_rate=0.01,
        garbage_rate=0.005,
        allowed_lateness_ms=LATENESS,
        seed=5,
    )
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
        "SENSORCAST_KAFKA__MAX_POLL_RECORDS": "300",  # small cycles: many commits to crash between
        "SENSORCAST_WINDOW__ALLOWED_LATENESS_MS": str(LATENESS),
        "SENSORCAST_WINDOW__IDLE_TIMEOUT_MS": "600000",
    }
    crashed = tmp_path / "crashed"
    cmd = [sys.executable, "-m", "serving.cli", "ingest", "--network", str(net_file)]
    cmd += ["--archive", str(crashed), "--until-idle", "4", "--log-level", "warning"]
    cmd += ["--bootstrap", str(s.kafka.bootstrap)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
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
    assert partial is not None and partial < int(ds.step_ts[STEPS - 1]), (
        "the kill came after the stream was done"
    )
    assert _committed_behind(s, group), "nothing was left to replay: the kill was not mid-stream"

    time.sleep(3.5)  # the broker expires the killed member's session (3 s) before the restart rejoins
    t_restart = time.monotonic()
    with (tmp_path / "restart.out").open("w") as out, (tmp_path / "restart.err").open("w") as err:
        restart = subprocess.Popen(cmd, env=env, stdout=out, stderr=err, text=True)  # files: no pipe to fill
        try:
            wait_for(
                lambda: (
                    (Archive(crashed, ds.network).last_step() or 0) > partial or restart.poll() is not None
                ),
                timeout_s=120,
                what="the restarted process's first archived step",
                interval_s=0.1,
            )
            recovery = time.monotonic() - t_restart
            restart.wait(300)
        finally:
            if restart.poll() is None:
                restart.kill()
    stdout, stderr = (tmp_path / "restart.out").read_text(), (tmp_path / "restart.err").read_text()
    assert restart.returncode == 0, stderr[-3000:]
    led = json.loads(stdout[stdout.index("{") :])["ledger"]

    # the uninterrupted reference run, same topic, its own group, archive and dead-letter topic
    ref_kafka = s.kafka.model_copy(update={"group_id": f"ref-{group}", "dead_letter_topic": f"ref-{group}"})
    window = s.window.model_copy(update={"allowed_lateness_ms": LATENESS, "idle_timeout_ms": 600_000})
    ref = IngestService(ref_kafka, window, Archive(tmp_path / "reference", ds.network), ds.network).start()
    try:
        wait_for(
            lambda: ref.poll_once(500) is not None and ref.ingestor.ledger.total().received >= exp.received,
            timeout_s=180,
            what="the reference run to consume everything",
        )
        ref.drain()
        ref_total = ref.ingestor.ledger.total()
    finally:
        ref.close()

    a_ts, a_vals, a_mask = Archive(crashed, ds.network).read()
    b_ts, b_vals, b_mask = ref.archive.read()
    identical = (
        np.array_equal(a_ts, b_ts)
        and np.array_equal(a_mask, b_mask)
        and np.array_equal(a_vals, b_vals, equal_nan=True)
    )
    lost = exp.readings - int(a_mask.sum())
    missing = len(set(b_ts.tolist()) - set(a_ts.tolist()))
    doubled = len(a_ts) - len(set(a_ts.tolist()))
    # the crashed + restarted pair dead-lettered every malformed message (some twice: replayed, same key)
    letters = _dead_letters(s)
    unique = {
        (d.partition, d.offset, d.reason): d.n_readings for d in letters if d.topic == s.kafka.readings_topic
    }
    by_reason: dict[str, int] = {}
    for (_, _, reason), n in unique.items():
        by_reason[reason] = by_reason.get(reason, 0) + n
    dead_missing = sum(n - by_reason.get(reason, 0) for reason, n in exp.dead_by_reason.items())
    killed_at = (partial - int(ds.step_ts[0])) // ds.network.step_ms + 1
    anomalies = [] if identical else ["archive differs from the uninterrupted run"]
    anomalies += [f"{dead_missing} dead-lettered readings missing"] if dead_missing else []
    anomalies += (
        [] if led["received"] == sum(led[k] for k in BUCKETS) else ["the restart's ledger unbalanced"]
    )
    reliability.record(
        "ingest SIGKILL mid-stream + restart",
        lost=lost,
        missing=missing,
        doubled=doubled,
        recovery_s=recovery,
        detail=f"killed after step {killed_at} of {STEPS}; the restart archived its first step {recovery:.1f} s "
        f"after starting; archive {'identical to' if identical else 'DIFFERENT from'} an uninterrupted run; "
        f"{int(a_mask.sum())} of {exp.readings} readings archived, {led['replayed']} replayed after the restart, "
        f"{sum(by_reason.values())} of {sum(exp.dead_by_reason.values())} dead-lettered readings in the "
        f"dead-letter topic ({len(letters) - len(unique)} letters produced again after the restart)",
        anomalies=anomalies,
    )
    assert (ref_total.received, ref_total.windowed, ref_total.duplicates, ref_total.late) == (
        exp.received,
        exp.readings,
        exp.duplicates,
        0,
    ), "the reference run itself is off"
    assert ref_total.dead_by_reason == exp.dead_by_reason
    assert identical and len(a_ts) == STEPS, f"{missing} steps missing, {doubled} doubled"
    assert lost == 0
    assert by_reason == exp.dead_by_reason
    assert not anomalies, anomalies
