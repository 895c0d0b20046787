"""A deployment file: many networks served by one `sensorcast serve --deployment FILE`.

```toml
[defaults]                 # settings every network shares (the config file's sections)
kafka.bootstrap = "kafka:9092"
redis.url = "redis://redis:6379/0"
retrain.enabled = true

[[networks]]
name = "la"                # unique; names the Redis keys (`<prefix>:{la}:…`) and the pipeline actor
network = "networks/la.toml"   # a network file (relative to this file), or `simulate = 207` sensors
topic = "la.readings"      # default: sensorcast.<name>.readings; dead letters: <topic>.dead-letter
model = "baseline:persistence" # what serves until retraining promotes a model (or a registry/checkpoint)
archive = "s3://data/archive/la"       # default: <defaults archive.root>/<name>
registry = "s3://data/registry/la"     # default: <defaults retrain.registry>/<name>
[networks.settings]        # anything else for this network only, e.g. retrain.every_steps = 288
```

`load_deployment` turns it into one `NetworkPlan` per network — complete `Settings`, the `Network`
(read here, on the driver: what travels to a pipeline actor is its definition, never the file's path)
and the model — or one `ConfigError` naming the file, the entry and the field.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomllib
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from serving.config import ConfigError, Settings
from serving.forecaster import ModelSpec
from stream.network import Network, NetworkError
from stream.simulate import simulated_network
from stream.storage import is_uri


class NetworkEntry(BaseModel):
    """One `[[networks]]` entry."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.\-]+$")
    network: Path | None = Field(default=None, description="network TOML/JSON, relative to the file")
    simulate: int | None = Field(default=None, ge=2, description="or: a simulated network of so many sensors")
    step_minutes: int = Field(default=5, ge=1, description="grid step of a simulated network")
    topic: str | None = None
    dead_letter_topic: str | None = None
    group: str | None = Field(default=None, description="consumer group (default: sensorcast-<name>)")
    key_prefix: str | None = None
    archive: str | None = None
    registry: str | None = None
    model: str = "baseline:persistence"
    settings: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one_source(self) -> NetworkEntry:
        if (self.network is None) == (self.simulate is None):
            raise ValueError("give exactly one of `network` (a network file) and `simulate` (a sensor count)")
        return self


class DeploymentFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    defaults: dict[str, Any] = Field(default_factory=dict)
    networks: list[NetworkEntry] = Field(min_length=1)


@dataclass(frozen=True)
class NetworkPlan:
    """Everything one network's pipeline actor needs, resolved on the driver."""

    settings: Settings
    network: Network
    model: ModelSpec

    @property
    def name(self) -> str:
        return self.network.name


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _local(where: str, folder: Path) -> str:
    """A relative local path in the file is relative to the file; URIs and absolute paths stay."""
    return where if is_uri(where) or Path(where).is_absolute() else str(folder / where)


def load_deployment(path: Path, base: Settings | None = None) -> list[NetworkPlan]:
    """The networks of deployment file `path`; `base` (settings from the environment, the config file and
    the CLI flags) sits under the file's `[defaults]`."""
    if not path.exists():
        raise ConfigError(f"deployment file {path} does not exist")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"deployment file {path} is not valid TOML: {exc}") from None
    try:
        doc = DeploymentFile.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) if not isinstance(p, int) else f"[{p}]" for p in first["loc"])
        where = where.replace(".[", "[")
        raise ConfigError(f"deployment file {path}: {where}: {first['msg']}") from None
    folder = path.parent.resolve()
    names = [n.name for n in doc.networks]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(
            f"deployment file {path}: network names must be unique; repeated: {', '.join(dupes)}"
        )
    defaults = _merge((base or Settings()).model_dump(), doc.defaults)
    plans = [_plan(entry, i, defaults, folder, path) for i, entry in enumerate(doc.networks)]
    topics = [p.settings.kafka.readings_topic for p in plans]
    shared = sorted({t for t in topics if topics.count(t) > 1})
    if shared:
        raise ConfigError(
            f"deployment file {path}: networks share the topic {', '.join(shared)}: each network needs its "
            "own (two pipelines on one topic would each see part of the sensors)"
        )
    return plans


def _plan(entry: NetworkEntry, i: int, defaults: dict[str, Any], folder: Path, path: Path) -> NetworkPlan:
    where = f"deployment file {path}: networks[{i}] ({entry.name})"
    topic = entry.topic or f"sensorcast.{entry.name}.readings"
    shortcuts: dict[str, Any] = {
        "kafka": {
            "readings_topic": topic,
            "dead_letter_topic": entry.dead_letter_topic or f"{topic}.dead-letter",
            "group_id": entry.group or f"sensorcast-{entry.name}",
        },
        "archive": {"root": _local(entry.archive or f"{defaults['archive']['root']}/{entry.name}", folder)},
        "retrain": {
            "registry": _local(entry.registry or f"{defaults['retrain']['registry']}/{entry.name}", folder)
        },
    }
    if entry.key_prefix:
        shortcuts["redis"] = {"key_prefix": entry.key_prefix}
    data = _merge(_merge(defaults, shortcuts), entry.settings)
    data["network_file"] = None
    try:
        settings = Settings.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        name = ".".join(str(p) for p in first["loc"] if not isinstance(p, int))
        raise ConfigError(f"{where}: setting {name}: {first['msg']}") from None
    try:
        if entry.network is not None:
            network = Network.load(_local(str(entry.network), folder))
            if network.name != entry.name:  # the entry's name is the one the keys and the actor carry
                network = Network.from_dict({**network.to_dict(), "name": entry.name})
        else:
            network = simulated_network(
                entry.simulate or 2, name=entry.name, step_ms=entry.step_minutes * 60_000, seed=i
            )
    except (NetworkError, OSError) as exc:
        raise ConfigError(f"{where}: network: {exc}") from None
    model = entry.model
    if not model.startswith("baseline:") and not is_uri(model) and (folder / model).exists():
        model = str(folder / model)  # a checkpoint or registry beside the file
    return NetworkPlan(settings, network, ModelSpec(model))
