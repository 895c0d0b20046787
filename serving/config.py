"""All sensorcast settings in one pydantic-settings model: defaults < TOML file < environment < CLI flags.

Environment variables use the prefix `SENSORCAST_` and `__` for nesting, e.g.
`SENSORCAST_KAFKA__BOOTSTRAP=kafka:9092`, `SENSORCAST_REDIS__URL=redis://redis:6379/0`,
`SENSORCAST_RAY__ADDRESS=auto`. A TOML file (same structure, sections `[kafka]`, `[redis]`, ...) is read from
`SENSORCAST_CONFIG` or `--config`. The defaults run the embedded demo: no bootstrap and no Redis URL mean
"start the embedded broker and Redis server".
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, SecretStr, ValidationError
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from stream.config import ArchiveSettings, KafkaSettings, StorageSettings, WindowSettings


class RedisSettings(BaseModel):
    """The Redis (or Valkey) server forecasts are written to."""

    url: SecretStr | None = Field(
        default=None,
        description="redis[s]://[user:password@]host:port/db; redis[s]+cluster://host:port for a Redis "
        "Cluster (any node: the others are discovered); None = start an embedded server",
    )
    cluster: bool = Field(
        default=False,
        description="the server is a Redis Cluster (also implied by a redis+cluster:// URL): one network's "
        "keys share a hash tag, so they live in one slot",
    )
    username: str | None = None
    password: SecretStr | None = None
    ssl_ca_certs: Path | None = None
    key_prefix: str = Field(default="sc", description="every key starts with '<prefix>:{<network>}:'")
    ttl_s: int = Field(default=86_400, ge=1, description="expiry of forecast keys")
    stream_maxlen: int = Field(default=2_000, ge=1, description="approximate cap of the forecast stream")
    lease_ttl_s: float = Field(
        default=10.0,
        gt=0,
        description="a network's writer lease expires this long after its holder stopped renewing it; a "
        "second pipeline for the network waits this long for it, then is refused",
    )

    def client_options(self) -> dict[str, Any]:
        opts: dict[str, Any] = {}
        if self.username:
            opts["username"] = self.username
        if self.password is not None:
            opts["password"] = self.password.get_secret_value()
        if self.ssl_ca_certs is not None:
            opts["ssl_ca_certs"] = str(self.ssl_ca_certs)
        return opts


class RaySettings(BaseModel):
    """Where forecaster actors and training jobs run."""

    address: str | None = Field(
        default=None, description="None = start a local Ray; 'auto' or ray://host:port"
    )
    actor_num_cpus: float = Field(default=0.25, gt=0)
    pipeline_num_cpus: float = Field(
        default=0.25, gt=0, description="CPUs a network's pipeline actor reserves (serve --deployment)"
    )
    pipeline_resources: dict[str, float] = Field(
        default_factory=dict, description="custom Ray resources a pipeline actor requires (placement)"
    )
    actor_num_gpus: float = Field(default=0.0, ge=0, description="fraction of a GPU per forecaster actor")
    actor_resources: dict[str, float] = Field(
        default_factory=dict,
        description="custom Ray resources each forecaster actor requires (pins it to nodes)",
    )
    actor_torch_threads: int = Field(
        default=1, ge=1, description="torch CPU threads per forecaster actor (intra-op parallelism)"
    )
    actor_max_restarts: int = Field(default=5, ge=-1)
    actor_max_task_retries: int = Field(default=3, ge=-1)
    cpu_backend: Literal["auto", "onnx", "torch"] = Field(
        default="auto",
        description="engine of a learned model in a CPU actor: onnx (ONNX Runtime, checked against torch "
        "at load), torch (eager), auto (onnx when it loads, else torch with a warning)",
    )
    replicas: int = Field(default=1, ge=1, description="forecaster actors sharing the steps")
    shards: int = Field(
        default=1,
        ge=1,
        description="forecaster actors per replica that split the network's sensors: each forecasts "
        "its share of a model with sensor blocks (preset blocks) at once; a model without blocks is "
        "served whole by the first",
    )
    pipeline_windows: int = Field(
        default=8,
        ge=1,
        description="windows per replica per call when catching up: the next call computes while the "
        "previous one's steps are written to Redis",
    )


class OnlineSettings(BaseModel):
    """Online evaluation of live forecasts against the actuals that arrive later."""

    rolling_steps: int = Field(default=288, ge=1, description="sealed steps in the rolling scores")
    zero_is_missing: bool = Field(
        default=False,
        description="score a 0 reading as missing on every network (a network file's zero_is_missing sets it "
        "per network)",
    )
    health_interval_s: float = Field(default=1.0, gt=0, description="how often ingest health goes to Redis")


class RetrainSettings(BaseModel):
    """When and how to retrain; `enabled=False` turns the loop off."""

    enabled: bool = False
    registry: str = Field(
        default="sensorcast-data/registry",
        description="a local folder (one machine only) or a URI every node can read: s3://bucket/prefix",
    )
    storage_path: str | None = Field(
        default=None,
        description="Ray Train storage (checkpoints reported by the workers); None = <registry>/ray-train",
    )
    every_steps: int = Field(default=0, ge=0, description="retrain every K sealed steps (0 = off)")
    interval_s: float = Field(default=0.0, ge=0, description="retrain every so many seconds (0 = off)")
    drift_margin: float = Field(default=0.25, ge=0, description="rolling MAE above reference by this share")
    drift_patience: int = Field(default=3, ge=1, description="consecutive drifting steps before a trigger")
    min_steps: int = Field(default=200, ge=1, description="archived steps needed before a first job")
    history_steps: int = Field(default=2016, ge=1, description="sliding range of recent steps trained on")
    drift_history_steps: int = Field(
        default=0,
        ge=0,
        description="on a drift trigger, train on only this many recent steps so the new regime weighs "
        "more (0 = history_steps)",
    )
    holdout_steps: int = Field(
        default=48, ge=2, description="newest steps kept for the gate, never trained on"
    )
    promote_margin: float = Field(
        default=0.02, ge=0, description="challenger must beat champion by this share"
    )
    model: str = "stformer"
    preset: str = "small"
    epochs: int = Field(default=20, ge=1)
    time_budget_s: float = Field(default=120.0, gt=0)
    workers: int = Field(default=2, ge=0, description="Ray Train workers (0 = train in-process)")
    cpus_per_worker: float = Field(default=0.5, gt=0)
    use_gpu: bool = Field(default=False, description="one GPU per Ray Train worker")
    resources_per_worker: dict[str, float] = Field(
        default_factory=dict, description="custom Ray resources each training worker requires"
    )
    nice: int = Field(
        default=10,
        ge=0,
        le=19,
        description="CPU priority drop of training workers, so serving keeps its latency",
    )
    backoff_s: float = Field(default=30.0, ge=0, description="first wait after a failed job; doubles")
    warm_start: bool = True
    overrides: dict[str, Any] = Field(
        default_factory=lambda: {"residual": True},
        description="model config fields; residual: forecast the change from the last value, so a small "
        "model trained on little data starts from persistence instead of from nothing",
    )


class MetricsSettings(BaseModel):
    host: str = Field(default="127.0.0.1", description="bind address of /metrics; 0.0.0.0 in containers")
    port: int = Field(default=0, ge=0, description="Prometheus /metrics port; 0 = pick a free one")


class Settings(BaseSettings):
    """Root settings object; build it with `load_settings()`."""

    model_config = SettingsConfigDict(env_prefix="SENSORCAST_", env_nested_delimiter="__", extra="forbid")

    kafka: KafkaSettings = KafkaSettings()
    redis: RedisSettings = RedisSettings()
    ray: RaySettings = RaySettings()
    window: WindowSettings = WindowSettings()
    archive: ArchiveSettings = ArchiveSettings()
    storage: StorageSettings = StorageSettings()
    metrics: MetricsSettings = MetricsSettings()
    online: OnlineSettings = OnlineSettings()
    retrain: RetrainSettings = RetrainSettings()
    network_file: Path | None = Field(default=None, description="network TOML/JSON; None = the simulator's")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml = os.environ.get("SENSORCAST_CONFIG")
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if toml:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=Path(toml), deep_merge=True))
        return tuple(sources)


class ConfigError(ValueError):
    """The configuration cannot be used as given."""


def load_settings(config: Path | None = None, **overrides: Any) -> Settings:
    """Build settings; `overrides` are nested dicts from CLI flags (highest priority, None values ignored).
    A setting that does not validate, or a config file that does not parse, is one `ConfigError` naming
    it."""
    if config is not None:
        if not config.exists():
            raise ConfigError(f"config file {config} does not exist")
        os.environ["SENSORCAST_CONFIG"] = str(config)
    try:
        base = Settings()
        if not overrides:
            return base
        merged = base.model_dump()
        for section, values in overrides.items():
            if isinstance(values, dict):
                merged.setdefault(section, {}).update({k: v for k, v in values.items() if v is not None})
            elif values is not None:
                merged[section] = values
        return Settings.model_validate(merged)
    except ValidationError as exc:
        raise _invalid(exc) from None
    except ValueError as exc:  # the TOML parser's (tomllib/tomli) decode error
        toml = os.environ.get("SENSORCAST_CONFIG")
        if not toml:
            raise
        raise ConfigError(f"config file {toml} is not valid TOML: {exc}") from None


_SECRET_WORDS = ("password", "secret", "token", "key", "url")


def _invalid(exc: ValidationError) -> ConfigError:
    """One line for the first invalid setting: its dotted name, its environment variable, what is wrong
    (and the value given, unless the name says it may be a secret)."""
    errors = exc.errors()
    first = errors[0]
    loc = [str(p) for p in first["loc"] if not isinstance(p, int)]
    name = ".".join(loc) or "settings"
    env = "SENSORCAST_" + "__".join(p.upper() for p in loc)
    given = ""
    value = first.get("input")
    secret = any(word in name.lower() for word in _SECRET_WORDS)
    if not secret and not isinstance(value, dict) and len(repr(value)) <= 80:
        given = f" (got {value!r})"
    more = f"; {len(errors) - 1} more invalid setting(s)" if len(errors) > 1 else ""
    msg = first["msg"].removeprefix("Value error, ")
    return ConfigError(f"setting {name} ({env} or the config file): {msg}{given}{more}")
