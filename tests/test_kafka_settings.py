"""Managed-Kafka settings against real brokers: the topics sensorcast creates carry the configured
replication factor and configs; `kafka.create_topics=false` requires the topics and names a missing one;
producers acknowledge with `acks=all`; a broker that cannot be used stops the start with one line naming the
setting to fix (bootstrap, replication factor, credentials).

Tansu (the session broker) answers DescribeConfigs with the configs a topic was created with, though only
with `config_filter='all'` and every source reported as DEFAULT_CONFIG; it accepts any replication factor,
so the check against the broker count is sensorcast's own.
"""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from kafka import KafkaAdminClient
from kafka.admin import ConfigResource, ConfigResourceType
from kafka.errors import SaslAuthenticationFailedError, TopicAuthorizationFailedError
from pydantic import SecretStr, ValidationError

from serving.config import Settings
from serving.embedded import EmbeddedKafka
from stream.archive import Archive
from stream.config import KafkaSettings
from stream.consume import IngestService
from stream.kafka_errors import BrokerUnavailable, KafkaAuthFailed, TopicsUnavailable, _unavailable
from stream.kafka_io import DeadLetterProducer, IngestConsumer, ReadingProducer, ensure_topics
from stream.network import Network

NETWORK = Network.simple("kafka-settings", 3, step_ms=60_000)
SECRET = "Sup3r-s3cret-kafka"


def _admin(s: KafkaSettings) -> KafkaAdminClient:
    return KafkaAdminClient(bootstrap_servers=s.bootstrap, request_timeout_ms=5000)


def _topics(s: KafkaSettings) -> dict[str, int]:
    return {s.readings_topic: s.partitions, s.dead_letter_topic: 1}


def _kafka(s: Settings, **update: object) -> KafkaSettings:
    return KafkaSettings.model_validate({**s.kafka.model_dump(), **update})


def _listed(s: KafkaSettings) -> list[str]:
    admin = _admin(s)
    try:
        return list(admin.list_topics())
    finally:
        admin.close()


def _one_line(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text, text
    return text


def test_environment_names_and_validation(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SENSORCAST_KAFKA__REPLICATION_FACTOR", "3")
    monkeypatch.setenv(
        "SENSORCAST_KAFKA__TOPIC_CONFIGS", '{"retention.ms": 86400000, "min.insync.replicas": 2}'
    )
    monkeypatch.setenv("SENSORCAST_KAFKA__CREATE_TOPICS", "false")
    k = Settings().kafka
    assert (k.replication_factor, k.create_topics) == (3, False)
    assert k.topic_configs == {"retention.ms": "86400000", "min.insync.replicas": "2"}  # numbers as text
    with pytest.raises(ValidationError, match=r"min.insync.replicas=2 exceeds kafka.replication_factor=1"):
        KafkaSettings(topic_configs={"min.insync.replicas": "2"})


def test_created_topics_carry_replication_factor_and_configs(fresh_settings: Settings) -> None:
    configs = {"retention.ms": "3600000", "min.insync.replicas": "1", "cleanup.policy": "delete"}
    k = _kafka(fresh_settings, topic_configs=configs)
    ensure_topics(k, _topics(k))
    admin = _admin(k)
    try:
        described = {t["name"]: t for t in admin.describe_topics(list(_topics(k)))}
        reported = admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, name) for name in _topics(k)], config_filter="all"
        )["topic"]
    finally:
        admin.close()
    for name, parts in _topics(k).items():
        assert len(described[name]["partitions"]) == parts
        assert {len(p["replica_nodes"]) for p in described[name]["partitions"]} == {k.replication_factor}
        assert {key: reported[name][key]["value"] for key in configs} == configs


def test_create_topics_false_names_the_missing_topic(fresh_settings: Settings) -> None:
    k = _kafka(fresh_settings, create_topics=False)
    with pytest.raises(TopicsUnavailable) as exc:
        ensure_topics(k, _topics(k))
    text = _one_line(exc.value)
    assert f"topic '{k.readings_topic}' does not exist" in text
    assert "kafka.create_topics is false" in text and "CREATE on the cluster" in text
    assert f"create '{k.readings_topic}' with 2 partitions, '{k.dead_letter_topic}' with 1 partition;" in text
    assert k.readings_topic not in _listed(k)  # checked, not created


def test_create_topics_false_starts_on_existing_topics(fresh_settings: Settings, tmp_path: Path) -> None:
    k = _kafka(fresh_settings, create_topics=False)
    admin = _admin(k)  # the operator creates the topics; sensorcast only checks them
    try:
        admin.create_topics({name: {"num_partitions": parts} for name, parts in _topics(k).items()})
    finally:
        admin.close()
    svc = IngestService(k, fresh_settings.window, Archive(str(tmp_path / "archive"), NETWORK), NETWORK)
    svc.start().close()
    with ReadingProducer(k, NETWORK) as producer:
        producer.send_step(0, np.ones((3, 1)), np.ones((3, 1), dtype=bool))  # [N, F]
        producer.flush(10)
    assert producer.sent == NETWORK.n_sensors


def test_replication_factor_above_broker_count_is_refused(fresh_settings: Settings) -> None:
    k = _kafka(fresh_settings, replication_factor=3)
    with pytest.raises(TopicsUnavailable) as exc:
        ensure_topics(k, _topics(k))
    text = _one_line(exc.value)
    assert "kafka.replication_factor is 3 but the cluster has 1 broker" in text
    assert k.readings_topic not in _listed(k)


@pytest.fixture
def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize("client", ["topics", "readings", "dead-letters", "consumer"])
def test_unreachable_bootstrap_is_one_line(client: str, closed_port: int) -> None:
    k = KafkaSettings(bootstrap=f"127.0.0.1:{closed_port}", bootstrap_timeout_ms=500)
    start = {
        "topics": lambda: ensure_topics(k, _topics(k)),
        "readings": lambda: ReadingProducer(k, NETWORK).start(),
        "dead-letters": lambda: DeadLetterProducer(k).start(),
        "consumer": lambda: IngestConsumer(k).start(),
    }[client]
    with pytest.raises(BrokerUnavailable) as exc:
        start()
    assert type(exc.value) is BrokerUnavailable
    text = _one_line(exc.value)
    assert text.startswith(f"no Kafka broker at 127.0.0.1:{closed_port} (kafka.bootstrap)")


class _AuthenticatingTansu(EmbeddedKafka):
    """Tansu requiring SASL (SCRAM); with memory storage it knows no user, so every login fails."""

    name = "tansu-auth"

    def _command(self) -> list[str]:
        return [*super()._command(), "--authentication"]

    def _ready(self) -> bool:
        socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
        return True


@pytest.fixture
def authenticating_broker(tmp_path: Path) -> Iterator[str]:
    broker = _AuthenticatingTansu(tmp_path)
    broker.start()
    try:
        yield broker.bootstrap
    finally:
        broker.stop()


def test_refused_credentials_name_the_sasl_settings(authenticating_broker: str) -> None:
    """Tansu's SCRAM failure reaches kafka-python as a malformed final message (KeyError 'v'), not as
    SASL_AUTHENTICATION_FAILED, so the client only times out; the TCP check tells it from a missing broker."""
    k = KafkaSettings(
        bootstrap=authenticating_broker,
        bootstrap_timeout_ms=1000,
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="SCRAM-SHA-256",
        sasl_username=f"nobody-{uuid.uuid4().hex[:6]}",
        sasl_password=SecretStr(SECRET),
    )
    with pytest.raises(KafkaAuthFailed) as exc:
        ensure_topics(k, _topics(k))
    text = _one_line(exc.value)
    assert f"a server listens at {authenticating_broker} (kafka.bootstrap)" in text
    assert "kafka.sasl_mechanism (SCRAM-SHA-256)" in text and "kafka.sasl_password" in text
    assert SECRET not in text


def test_producers_acknowledge_with_all_in_sync_replicas(fresh_settings: Settings) -> None:
    k = fresh_settings.kafka
    ensure_topics(k, _topics(k))
    readings, dead_letters = ReadingProducer(k, NETWORK).start(), DeadLetterProducer(k).start()
    try:
        for producer in (readings, dead_letters):
            config = producer._producer.config
            assert (config["acks"], config["enable_idempotence"]) == (-1, True)  # -1 is kafka-python's "all"
    finally:
        readings.close()
        dead_letters.close()


@pytest.mark.parametrize(
    ("error", "names"),
    [
        (
            SaslAuthenticationFailedError("SASL_AUTHENTICATION_FAILED"),
            ["kafka.sasl_username", "kafka.sasl_password"],
        ),
        (
            TopicAuthorizationFailedError("TOPIC_AUTHORIZATION_FAILED"),
            ["READ on group", "kafka.create_topics"],
        ),
    ],
)
def test_refusals_from_a_kafka_broker_name_the_settings(error: Exception, names: list[str]) -> None:
    """What kafka-python raises at start when Apache Kafka refuses the login or the ACLs (Tansu has neither)."""
    k = KafkaSettings(
        bootstrap="kafka:9092", sasl_mechanism="PLAIN", sasl_username="sc", sasl_password=SecretStr(SECRET)
    )
    exc = _unavailable(k, error)
    assert isinstance(exc, KafkaAuthFailed)
    text = _one_line(exc)
    assert all(name in text for name in names) and SECRET not in text
