"""Settings of the streaming side: Kafka connection and topics, event-time windowing, the archive.

Plain pydantic models (no environment reading here); `serving.config.Settings` nests them and owns the
`SENSORCAST_` environment prefix and the optional TOML layer. Secrets are `SecretStr`: they never appear in
`repr`, logs or error messages.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator


class KafkaSettings(BaseModel):
    """Where the readings come from and where bad input goes."""

    bootstrap: str | None = Field(
        default=None, description="host:port[,host:port]; None = start the embedded Tansu broker"
    )
    readings_topic: str = "sensorcast.readings"
    dead_letter_topic: str = "sensorcast.dead-letter"
    partitions: int = Field(default=4, ge=1, description="partitions when sensorcast creates the topic")
    create_topics: bool = Field(
        default=True,
        description="create missing topics at start; false: they must exist (no CREATE ACL needed then)",
    )
    replication_factor: int = Field(
        default=1, ge=1, description="replicas per partition of the topics sensorcast creates (managed: 3)"
    )
    topic_configs: dict[str, str] = Field(
        default_factory=dict,
        description="topic configs of the topics sensorcast creates, e.g. retention.ms, min.insync.replicas; "
        "keys not given take the broker's defaults",
    )
    group_id: str = "sensorcast-ingest"
    session_timeout_ms: int = Field(default=6000, ge=1000)
    max_poll_records: int = Field(default=2000, ge=1)
    bootstrap_timeout_ms: int = Field(
        default=30_000, ge=100, description="how long a client waits at start for a broker to answer"
    )
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None

    @field_validator("topic_configs", mode="before")
    @classmethod
    def _config_values_as_text(cls, value: Any) -> Any:
        """TOML and JSON write `retention.ms = 604800000` as a number; the Kafka protocol carries text."""
        if not isinstance(value, dict):
            return value
        return {k: _config_text(v) for k, v in value.items()}

    @model_validator(mode="after")
    def _min_insync_fits(self) -> KafkaSettings:
        min_isr = self.topic_configs.get("min.insync.replicas", "")
        if min_isr.isdigit() and int(min_isr) > self.replication_factor:
            raise ValueError(
                f"kafka.topic_configs min.insync.replicas={min_isr} exceeds kafka.replication_factor="
                f"{self.replication_factor}: the broker would refuse every acks=all write"
            )
        return self

    def client_options(self) -> dict[str, Any]:
        """Keyword arguments for kafka-python clients (bootstrap excluded)."""
        opts: dict[str, Any] = {
            "security_protocol": self.security_protocol,
            "bootstrap_timeout_ms": self.bootstrap_timeout_ms,
        }
        if self.sasl_mechanism:
            opts["sasl_mechanism"] = self.sasl_mechanism
            opts["sasl_plain_username"] = self.sasl_username
            opts["sasl_plain_password"] = (
                self.sasl_password.get_secret_value() if self.sasl_password else None
            )
        for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
            value = getattr(self, name)
            if value is not None:
                opts[name] = str(value)
        return opts


class WindowSettings(BaseModel):
    """Event-time windowing: how late a reading may be and how steps are assembled."""

    window: int = Field(default=12, ge=1, description="input steps per forecast window")
    horizon: int = Field(default=12, ge=1, description="output steps per forecast")
    allowed_lateness_ms: int = Field(default=60_000, ge=0)
    idle_timeout_ms: int = Field(
        default=30_000, ge=0, description="a silent partition stops holding the watermark"
    )
    agg: Literal["mean", "last", "max", "min", "median"] = "mean"
    max_open_steps: int | None = Field(
        default=None,
        ge=1,
        description="unsealed steps held before the oldest are sealed early (default: 64 MB of cells)",
    )


class ArchiveSettings(BaseModel):
    """Where sealed steps (Parquet) and the late log are kept."""

    root: str = Field(
        default="sensorcast-data/archive",
        description="a local folder (one machine only) or a URI every node can read: s3://bucket/prefix, gs://…",
    )


class StorageSettings(BaseModel):
    """How `s3://` locations are reached (archive, registry, checkpoints, Ray Train storage).

    Credentials left unset come from the AWS chain of each process (AWS_* variables, profile, instance
    role). Set here, they travel with the Ray calls that open storage (never logged: `SecretStr`).
    """

    endpoint: str | None = Field(
        default=None, description="http(s)://host:port of an S3-compatible store (MinIO); None = AWS"
    )
    region: str | None = Field(default=None, description="bucket region, e.g. us-east-1")
    access_key_id: SecretStr | None = None
    secret_access_key: SecretStr | None = None
    session_token: SecretStr | None = None
    connect_timeout_s: float = Field(default=5.0, gt=0)
    request_timeout_s: float = Field(default=20.0, gt=0)
    retries: int = Field(default=3, ge=1, description="attempts per request inside the S3 client")


def _config_text(value: Any) -> Any:
    """A topic config value as the text Kafka expects (`true`, `604800000`); other types are left to fail."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return value
