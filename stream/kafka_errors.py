"""Kafka start-up errors: the one line a client that cannot start raises, naming the setting to fix
(`kafka.bootstrap`, the SASL/TLS settings, the ACLs sensorcast needs). `stream.kafka_io` wraps each
client's construction and first requests in `starting(settings)`; the CLI prints these errors as they are.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator

from stream.config import KafkaSettings


class BrokerUnavailable(RuntimeError):
    """No Kafka broker answers at the configured bootstrap address."""


class KafkaAuthFailed(BrokerUnavailable):
    """A broker answers but refuses this client's credentials or security protocol."""


class TopicsUnavailable(BrokerUnavailable):
    """A topic sensorcast needs is missing and may not, or cannot, be created as configured."""


def bootstrap_of(settings: KafkaSettings) -> str:
    if not settings.bootstrap:
        raise BrokerUnavailable(
            "no Kafka bootstrap address configured (kafka.bootstrap) — pass --bootstrap HOST:PORT or use "
            "the demo"
        )
    return settings.bootstrap


def _listening(bootstrap: str) -> bool:
    """Whether any bootstrap address accepts a TCP connection (tells 'nobody there' from 'refused us')."""
    for address in bootstrap.split(","):
        host, _, port = address.strip().rpartition("://")[2].rpartition(":")
        with contextlib.suppress(OSError, ValueError):
            socket.create_connection((host.strip("[]"), int(port)), timeout=1.0).close()
            return True
    return False


def _one_line(exc: BaseException) -> str:
    text, name = str(exc), type(exc).__name__
    # kafka-python's errors start with their class name already
    return " ".join((text if text.startswith(name) else f"{name}: {text}").split())


def _credentials(s: KafkaSettings) -> str:
    if s.sasl_mechanism is None:
        return f"kafka.security_protocol ({s.security_protocol})"
    return (
        f"kafka.security_protocol ({s.security_protocol}), kafka.sasl_mechanism ({s.sasl_mechanism}), "
        f"kafka.sasl_username ({s.sasl_username}) and kafka.sasl_password"
    )


def _unavailable(s: KafkaSettings, exc: Exception) -> BrokerUnavailable:
    """The one-line start error for a client that could not reach a usable broker, naming what to fix."""
    from kafka.errors import AuthorizationError, SaslAuthenticationFailedError

    if isinstance(exc, SaslAuthenticationFailedError):
        return KafkaAuthFailed(
            f"Kafka at {s.bootstrap} refused the credentials ({_one_line(exc)}) — check {_credentials(s)}"
        )
    if isinstance(exc, AuthorizationError):
        return KafkaAuthFailed(
            f"Kafka at {s.bootstrap} refused this principal ({_one_line(exc)}) — it needs DESCRIBE, READ "
            f"and WRITE on topics {s.readings_topic} and {s.dead_letter_topic}, READ on group {s.group_id}"
            f"{', CREATE on the cluster (kafka.create_topics)' if s.create_topics else ''}; or check "
            f"{_credentials(s)}"
        )
    if s.bootstrap and _listening(s.bootstrap):
        return KafkaAuthFailed(
            f"a server listens at {s.bootstrap} (kafka.bootstrap) but Kafka requests to it fail "
            f"({_one_line(exc)}) — check that it is a Kafka listener and {_credentials(s)}"
        )
    return BrokerUnavailable(
        f"no Kafka broker at {s.bootstrap} (kafka.bootstrap): nothing accepts connections there "
        f"({_one_line(exc)}) — start one, or set kafka.bootstrap / pass --bootstrap"
    )


@contextlib.contextmanager
def starting(settings: KafkaSettings) -> Iterator[None]:
    """Around a client's construction and first requests: a Kafka error becomes one line naming a setting."""
    from kafka.errors import KafkaError

    try:
        yield
    except KafkaError as exc:
        raise _unavailable(settings, exc) from exc
