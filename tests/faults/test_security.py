"""Secrets never leave the settings objects: not in `repr`, not in logs of a failing connection, not in
exception text. And no code path that reads user files unpickles: checkpoints load with
`torch.load(..., weights_only=True)` only, and nothing calls `pickle.load(s)`."""

from __future__ import annotations

import logging
import re
import socket
from pathlib import Path

import pytest
import redis

from serving.config import RedisSettings, Settings
from serving.keys import Keys
from serving.sink import RedisSink, connect
from stream.config import KafkaSettings
from stream.kafka_io import ensure_topics

pytestmark = pytest.mark.faults

REPO = Path(__file__).resolve().parents[2]
KAFKA_SECRET = "kafka-Sup3r-s3cret"
REDIS_SECRET = "redis-Sup3r-s3cret"
URL_SECRET = "url-Sup3r-s3cret"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _settings(port: int) -> Settings:
    return Settings.model_validate(
        {
            "kafka": {
                "bootstrap": f"127.0.0.1:{port}",
                "security_protocol": "SASL_PLAINTEXT",
                "sasl_mechanism": "PLAIN",
                "sasl_username": "sensorcast",
                "sasl_password": KAFKA_SECRET,
            },
            "redis": {
                "url": f"redis://sensorcast:{URL_SECRET}@127.0.0.1:{port}/0",
                "username": "sensorcast",
                "password": REDIS_SECRET,
            },
        }
    )


def _clean(text: str) -> None:
    for secret in (KAFKA_SECRET, REDIS_SECRET, URL_SECRET):
        assert secret not in text, f"a secret leaked: …{text[max(0, text.find(secret) - 80) :][:200]}…"


def test_secrets_absent_from_repr_dump_and_env_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    s = _settings(_closed_port())
    _clean(repr(s) + str(s) + repr(s.kafka) + repr(s.redis) + s.model_dump_json() + str(s.model_dump()))
    monkeypatch.setenv("SENSORCAST_KAFKA__SASL_PASSWORD", KAFKA_SECRET)
    monkeypatch.setenv("SENSORCAST_REDIS__PASSWORD", REDIS_SECRET)
    monkeypatch.setenv("SENSORCAST_KAFKA__SASL_MECHANISM", "PLAIN")
    from_env = Settings()
    _clean(repr(from_env))
    assert from_env.kafka.client_options()["sasl_plain_password"] == KAFKA_SECRET  # the client still gets it


def test_secrets_absent_from_failing_connections(caplog: pytest.LogCaptureFixture) -> None:
    s = _settings(_closed_port())
    caplog.set_level(logging.DEBUG)
    texts: list[str] = []
    with pytest.raises(Exception) as kafka_exc:
        ensure_topics(s.kafka, {"t": 1})
    texts += [str(kafka_exc.value), repr(kafka_exc.value)]
    with pytest.raises(Exception) as redis_exc:
        connect(s.redis)  # checked at start: the closed port is a one-line error
    texts += [str(redis_exc.value), repr(redis_exc.value), repr(redis_exc.value.__cause__)]
    client = redis.Redis.from_url(s.redis.url.get_secret_value(), **s.redis.client_options())
    sink = RedisSink(
        client, Keys("sc", "sec"), sensors=("a",), features=("x",), step_ms=60_000, retry_deadline_s=0.5
    )
    with pytest.raises(Exception) as write_exc:
        sink.publish_network()  # and while serving, once the retries run out
    texts += [str(write_exc.value), repr(write_exc.value), repr(write_exc.value.__cause__), repr(client)]
    texts += [r.getMessage() + repr(r.__dict__) for r in caplog.records]
    assert (  # the errors still say what failed
        "no Kafka broker" in texts[0] and "Redis unreachable" in texts[2] and "Redis unreachable" in texts[5]
    )
    _clean("\n".join(texts))


def test_redis_options_carry_acl_user_password_and_tls() -> None:
    opts = RedisSettings(username="sc", password=REDIS_SECRET, ssl_ca_certs=Path("/ca.pem")).client_options()
    assert opts == {"username": "sc", "password": REDIS_SECRET, "ssl_ca_certs": "/ca.pem"}
    k = KafkaSettings(
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="sc",
        sasl_password=KAFKA_SECRET,
        ssl_cafile=Path("/ca.pem"),
    ).client_options()
    assert k["security_protocol"] == "SASL_SSL" and k["ssl_cafile"] == "/ca.pem"


UNSAFE = [
    (re.compile(r"\bpickle\.loads?\("), "pickle.load"),
    (re.compile(r"weights_only\s*=\s*False"), "weights_only=False"),
    (re.compile(r"\b(cloudpickle|dill|joblib)\.load"), "another unpickler"),
    (re.compile(r"\bnp\.load\([^)]*allow_pickle\s*=\s*True"), "np.load(allow_pickle=True)"),
]


def test_no_unpickling_on_any_path_that_reads_files() -> None:
    found = []
    sources = [p for d in ("stream", "serving", "training", "benchmarks") for p in (REPO / d).rglob("*.py")]
    assert len(sources) > 30
    for path in sources:
        text = path.read_text()
        for pattern, what in UNSAFE:
            found += [f"{path.relative_to(REPO)}: {what}" for _ in pattern.finditer(text)]
        for call in re.finditer(
            r"torch\.load\(([^()]|\([^()]*\))*\)", text
        ):  # every torch.load says weights_only=True
            if "weights_only=True" not in call.group(0):
                found.append(f"{path.relative_to(REPO)}: {call.group(0)[:60]}")
    assert not found, found
