"""Thin kafka-python adapters: topic creation, the readings producer, the dead-letter producer and the
ingest consumer. No windowing or validation here (that is `stream.ingest`); nothing touches the network
until `start()`.

Start-up: `ensure_topics` creates the missing topics with the configured replication factor and configs,
or, with `kafka.create_topics` false, requires them. A client that cannot start raises `BrokerUnavailable`
(or a subclass, `stream.kafka_errors`) with one line naming the setting to fix; the CLI prints it as it is.

Offsets: the consumer never auto-commits. The caller commits explicitly what `Ingestor.committable()`
allows after the data below it is durable (archived, dead-lettered, or in the late log).
Lag comes from `consumer.highwater()`, because Tansu answers `end_offsets()` too low.
"""

from __future__ import annotations

import importlib.util
import logging
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from stream.config import KafkaSettings
from stream.kafka_errors import TopicsUnavailable, bootstrap_of, starting
from stream.network import Network
from stream.schema import encode_batch, encode_reading

log = logging.getLogger(__name__)

# kafka-python verifies record-batch CRC32C in pure Python unless the `crc32c` C extension is installed,
# and that alone costs more than decoding and windowing the readings. Without the extension the consumer
# skips the check, as librdkafka does by default (`check.crcs=false`); the broker checks it on produce.
_FAST_CRC = importlib.util.find_spec("crc32c") is not None


class _RedactSecrets(logging.Filter):
    """kafka-python's admin client logs its whole configuration at DEBUG, SASL password included."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, dict) and args.get("sasl_plain_password") is not None:
            record.args = {**args, "sasl_plain_password": "**********"}
        return True


logging.getLogger("kafka.admin.client").addFilter(_RedactSecrets())


COMMIT_TIMEOUT_MS = 1_000  # an offset commit not acknowledged by then is skipped; the next cycle's covers it


def ensure_topics(settings: KafkaSettings, topics: Mapping[str, int]) -> None:
    """Make sure the topics (name -> partitions) exist before anything reads or writes them.

    Missing topics are created with `kafka.replication_factor` and `kafka.topic_configs`, or, with
    `kafka.create_topics` false, reported (a managed cluster where an operator creates the topics).
    """
    from kafka import KafkaAdminClient

    with starting(settings):
        admin = KafkaAdminClient(
            bootstrap_servers=bootstrap_of(settings), request_timeout_ms=10_000, **settings.client_options()
        )
        try:
            existing = set(admin.list_topics())
            missing = {name: parts for name, parts in topics.items() if name not in existing}
            if missing and not settings.create_topics:
                wanted = ", ".join(f"'{n}' with {p} partition{'s' * (p != 1)}" for n, p in missing.items())
                raise TopicsUnavailable(
                    f"topic '{next(iter(missing))}' does not exist (or this principal may not DESCRIBE it) "
                    f"and kafka.create_topics is false — create {wanted}; or set kafka.create_topics=true "
                    "and grant this principal CREATE on the cluster or on these topics"
                )
            if missing:
                _create(admin, settings, missing)
        finally:
            admin.close()


def _create(admin: Any, s: KafkaSettings, topics: Mapping[str, int]) -> None:
    from kafka import errors

    rf = s.replication_factor
    n_brokers = sum(not b.get("is_fenced") for b in admin.describe_cluster()["brokers"])
    if rf > n_brokers:  # Kafka refuses this itself; brokers with shared storage (Tansu) would accept it
        raise TopicsUnavailable(
            f"kafka.replication_factor is {rf} but the cluster has {n_brokers} broker(s) — set "
            f"kafka.replication_factor to at most {n_brokers}"
        )
    request = {
        name: {"num_partitions": parts, "replication_factor": rf, "configs": s.topic_configs}
        for name, parts in topics.items()
    }
    for topic in admin.create_topics(request, raise_errors=False)["topics"]:
        error = errors.for_code(topic["error_code"])
        if error in (errors.NoError, errors.TopicAlreadyExistsError):  # or created by another client
            continue
        name, why = topic["name"], " ".join(f"{error.__name__}: {topic['error_message'] or ''}".split())
        if issubclass(error, errors.AuthorizationError):
            fix = (
                f"grant this principal CREATE on the cluster or on topic '{name}', or create it and set "
                "kafka.create_topics=false"
            )
        elif issubclass(error, errors.InvalidReplicationFactorError):
            fix = f"set kafka.replication_factor (now {rf}) to what the cluster allows"
        elif issubclass(error, errors.InvalidConfigurationError):
            fix = f"fix kafka.topic_configs ({s.topic_configs})"
        else:  # a cluster policy (PolicyViolationError) usually requires a replication factor or configs
            fix = f"check kafka.replication_factor (now {rf}) and kafka.topic_configs ({s.topic_configs})"
        raise TopicsUnavailable(f"the broker refused to create topic '{name}' ({why}) — {fix}")


def producer_options(settings: KafkaSettings) -> dict[str, Any]:
    """What every sensorcast producer is built with. `acks=all`: a send is acknowledged once every in-sync
    replica has it, so with the topic's `min.insync.replicas` >= 2 an acknowledged reading or dead letter
    survives the loss of a broker. Idempotence: the producer's own retries neither drop nor double a batch
    (explicit, so a conflicting option fails at start instead of silently turning it off)."""
    return {
        "bootstrap_servers": bootstrap_of(settings),
        "acks": "all",
        "enable_idempotence": True,
        **settings.client_options(),
    }


def partition_of(sensor_index: int, n_partitions: int) -> int:
    """Which partition a sensor's readings go to: stable, independent of Python's hash seed."""
    return zlib.crc32(sensor_index.to_bytes(4, "little")) % n_partitions


class ReadingProducer:
    """Publishes readings in the v1 message format: single readings keyed by sensor, or batch messages
    (one per partition per timestamp, so every partition's watermark advances)."""

    def __init__(self, settings: KafkaSettings, network: Network, *, fmt: str = "batch") -> None:
        if fmt not in ("batch", "single"):
            raise ValueError(f"message format must be 'batch' or 'single', not {fmt!r}")
        self.settings = settings
        self.network = network
        self.fmt = fmt
        self.topic = settings.readings_topic
        self._producer: Any = None
        self._groups: list[np.ndarray] = []
        self.sent = 0  # readings (sensor x feature values) handed to the producer

    def start(self) -> ReadingProducer:
        from kafka import KafkaProducer

        with starting(self.settings):
            self._producer = KafkaProducer(
                **producer_options(self.settings), linger_ms=5, max_request_size=8 * 1024 * 1024
            )
            parts = self._producer.partitions_for(self.topic)
        n_parts = len(parts) if parts else 1
        owner = np.array([partition_of(i, n_parts) for i in range(self.network.n_sensors)])
        self._groups = [np.flatnonzero(owner == p) for p in range(n_parts)]
        return self

    def send_step(self, ts: int, values: np.ndarray, present: np.ndarray) -> None:
        """Publish one timestamp's readings: `values`, `present` are `[N, F]`; absent values are not sent."""
        feats = self.network.feature_names
        sensors = self.network.sensors
        if self.fmt == "single":
            for i in np.flatnonzero(present.any(axis=1)):
                vals = {feats[k]: float(values[i, k]) for k in range(len(feats)) if present[i, k]}
                self.send_raw(
                    encode_reading(sensors[i], ts, vals),
                    key=sensors[i].encode(),
                    partition=partition_of(int(i), len(self._groups)),
                )
                self.sent += len(vals)
            return
        for part, idx in enumerate(self._groups):
            idx = idx[present[idx].any(axis=1)]
            if idx.size == 0:
                continue
            cols = {
                feats[k]: [
                    float(v) if p else None for v, p in zip(values[idx, k], present[idx, k], strict=True)
                ]
                for k in range(len(feats))
            }
            self.send_raw(encode_batch(ts, [sensors[i] for i in idx], cols), partition=part)
            self.sent += int(present[idx].sum())

    def send_raw(
        self, value: bytes | None, *, key: bytes | None = None, partition: int | None = None
    ) -> None:
        """Send bytes as they are (replay of garbage for tests, or other producers' formats)."""
        self._producer.send(self.topic, value=value, key=key, partition=partition)

    def flush(self, timeout_s: float = 30.0) -> None:
        self._producer.flush(timeout=timeout_s)

    def close(self) -> None:
        if self._producer is not None:
            self._producer.flush()
            self._producer.close()
            self._producer = None

    def __enter__(self) -> ReadingProducer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


class DeadLetterProducer:
    """Writes dead-letter records (JSON, see `stream.ingest.DeadLetter.to_json`) and flushes them."""

    def __init__(self, settings: KafkaSettings) -> None:
        self.settings = settings
        self._producer: Any = None

    def start(self) -> DeadLetterProducer:
        from kafka import KafkaProducer

        with starting(self.settings):
            self._producer = KafkaProducer(**producer_options(self.settings), linger_ms=2)
        return self

    def send(self, records: Sequence[Any]) -> None:
        for rec in records:
            self._producer.send(self.settings.dead_letter_topic, value=rec.to_json(), key=rec.reason.encode())

    def flush(self) -> None:
        """Block until every dead letter sent is acknowledged: only then may offsets below them commit."""
        self._producer.flush()

    def close(self) -> None:
        if self._producer is not None:
            self._producer.close()
            self._producer = None


@dataclass(frozen=True)
class Record:
    partition: int
    offset: int
    value: bytes | None


class IngestConsumer:
    """A consumer-group member on the readings topic with explicit commits."""

    def __init__(self, settings: KafkaSettings, *, client_id: str = "sensorcast-ingest") -> None:
        self.settings = settings
        self.client_id = client_id
        self._consumer: Any = None

    def consumer_options(self) -> dict[str, Any]:
        """The `KafkaConsumer` keyword arguments this member uses (benchmarks reuse them for a baseline)."""
        s = self.settings
        return {
            "bootstrap_servers": bootstrap_of(s),
            "group_id": s.group_id,
            "client_id": self.client_id,
            "enable_auto_commit": False,
            "auto_offset_reset": "earliest",
            "session_timeout_ms": s.session_timeout_ms,
            "heartbeat_interval_ms": max(300, s.session_timeout_ms // 4),
            "max_poll_records": s.max_poll_records,
            "check_crcs": _FAST_CRC,
            # kafka-python keeps one fetch in flight per broker; when some partitions are caught up, the
            # broker holds that fetch up to this long and the partitions with a backlog wait behind it.
            "fetch_max_wait_ms": 100,
            "fetch_max_bytes": 16 * 1024 * 1024,
            "max_partition_fetch_bytes": 8 * 1024 * 1024,
            **s.client_options(),
        }

    def start(self) -> IngestConsumer:
        from kafka import KafkaConsumer

        with starting(self.settings):
            self._consumer = KafkaConsumer(self.settings.readings_topic, **self.consumer_options())
        return self

    def poll(self, timeout_ms: int = 200) -> Iterator[Record]:
        """One poll's messages one `Record` at a time; `poll_batches` is the cheaper form."""
        for partition, msgs in self.poll_batches(timeout_ms):
            for m in msgs:
                yield Record(partition, m.offset, m.value)

    def poll_batches(self, timeout_ms: int = 200) -> list[tuple[int, list[Any]]]:
        """One poll as `(partition, messages)` pairs, each message with `.offset` and `.value` (kafka-python's
        own records, in offset order): no per-message object to build on the hot path."""
        batches = self._consumer.poll(timeout_ms=timeout_ms)
        return [(tp.partition, msgs) for tp, msgs in batches.items()]

    def commit(self, offsets: Mapping[int, int]) -> bool:
        """Commit `partition -> next offset to read` for partitions this member still owns.

        A commit the broker does not take (unreachable, timed out, group rebalancing) is logged and
        skipped, not raised: the offsets are cumulative, so the next cycle's commit covers these, and a
        crash before it only replays what is already durable. Returns whether the commit went through.
        """
        from kafka.errors import KafkaError
        from kafka.structs import OffsetAndMetadata, TopicPartition

        owned = {tp.partition for tp in self._consumer.assignment()}
        todo = {
            TopicPartition(self.settings.readings_topic, p): OffsetAndMetadata(o, "", -1)
            for p, o in offsets.items()
            if p in owned
        }
        if not todo:
            return True
        try:  # bounded: a broker that does not answer must not stall the serving loop (skipped, redone)
            self._consumer.commit(todo, timeout_ms=COMMIT_TIMEOUT_MS)
        except KafkaError as exc:
            log.warning("offset commit failed; the next cycle retries it", extra={"error": repr(exc)})
            return False
        return True

    def assigned(self) -> list[int]:
        return sorted(tp.partition for tp in self._consumer.assignment())

    def lag(self) -> dict[int, int]:
        """Messages behind the high-water mark per assigned partition (-1 while unknown)."""
        out: dict[int, int] = {}
        for tp in self._consumer.assignment():
            hw = self._consumer.highwater(tp)
            out[tp.partition] = -1 if hw is None else max(0, hw - self._consumer.position(tp))
        return out

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close(autocommit=False)
            self._consumer = None
