"""The sensor network definition: the fixed, ordered sensors and features every other module indexes by.

A `Network` says which sensors exist (ids, optional coordinates), which features each reading may carry
(units and valid ranges), how long one grid **step** is, and optionally which sensors are neighbours.
Sealed steps, windows and models all use its order: sensor i is row i of every `[N, F]` array.

Loaded from a small TOML/JSON file or built by the dataset readers. This module does no I/O beyond
reading/writing that file, and knows nothing about Kafka, torch or Ray.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

try:  # Python 3.11+
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

import tomli_w


class NetworkError(ValueError):
    """A network definition is inconsistent or cannot be read."""


@dataclass(frozen=True)
class Feature:
    """One measured quantity, e.g. speed in mph, with the range outside which a value is invalid."""

    name: str
    unit: str = ""
    min: float = -math.inf
    max: float = math.inf

    def __post_init__(self) -> None:
        if not self.name:
            raise NetworkError("a feature needs a non-empty name")
        if not self.min <= self.max:
            raise NetworkError(f"feature {self.name!r}: min {self.min} is above max {self.max}")


@dataclass(frozen=True)
class Network:
    """Sensors × features on a grid of steps of `step_ms` milliseconds.

    `coords` (optional) holds one `(lon, lat)` or `(x, y)` pair per sensor; `edges` (optional) holds
    `(from_index, to_index, weight)` triples, e.g. road distances or adjacency weights.
    `zero_is_missing`: a reading of exactly 0 means "no reading" (loop detectors that report 0 when broken);
    metrics, losses and scalers then exclude zero targets. Off by default: for counts and most quantities
    zero is a real value.
    """

    name: str
    sensors: tuple[str, ...]
    features: tuple[Feature, ...]
    step_ms: int = 300_000
    coords: tuple[tuple[float, float], ...] | None = None
    edges: tuple[tuple[int, int, float], ...] = ()
    zero_is_missing: bool = False
    sensor_index: Mapping[str, int] = field(init=False, repr=False, compare=False)
    feature_index: Mapping[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.sensors:
            raise NetworkError(f"network {self.name!r} has no sensors")
        if not self.features:
            raise NetworkError(f"network {self.name!r} has no features")
        if self.step_ms <= 0:
            raise NetworkError(f"step_ms must be positive, got {self.step_ms}")
        if not isinstance(self.zero_is_missing, bool):
            raise NetworkError(f"zero_is_missing must be true or false, got {self.zero_is_missing!r}")
        sensors = tuple(str(s) for s in self.sensors)
        if len(set(sensors)) != len(sensors):
            raise NetworkError(f"network {self.name!r} has duplicate sensor ids")
        names = [f.name for f in self.features]
        if len(set(names)) != len(names):
            raise NetworkError(f"network {self.name!r} has duplicate feature names")
        if self.coords is not None and len(self.coords) != len(sensors):
            raise NetworkError(f"{len(self.coords)} coordinates for {len(sensors)} sensors")
        for a, b, _ in self.edges:
            if not (0 <= a < len(sensors) and 0 <= b < len(sensors)):
                raise NetworkError(f"edge ({a}, {b}) names a sensor index outside 0..{len(sensors) - 1}")
        object.__setattr__(self, "sensors", sensors)
        object.__setattr__(self, "sensor_index", {s: i for i, s in enumerate(sensors)})
        object.__setattr__(self, "feature_index", {n: i for i, n in enumerate(names)})

    @property
    def n_sensors(self) -> int:
        return len(self.sensors)

    @property
    def n_features(self) -> int:
        return len(self.features)

    @property
    def feature_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.features)

    def step_of(self, ts_ms: int) -> int:
        """Start (epoch ms) of the grid step that contains `ts_ms`."""
        return ts_ms - ts_ms % self.step_ms

    def subset(self, indices: Sequence[int], name: str | None = None) -> Network:
        """The network of the sensors at `indices` (in that order), with their coordinates and the edges
        between them, re-indexed; named `name` (default: this network's)."""
        idx = [int(i) for i in indices]
        pos = {s: k for k, s in enumerate(idx)}
        if len(pos) != len(idx) or not all(0 <= i < self.n_sensors for i in idx):
            raise NetworkError(
                f"a subset of {self.name!r} needs distinct sensor indices in 0..{self.n_sensors - 1}"
            )
        return replace(
            self,
            name=name or self.name,
            sensors=tuple(self.sensors[i] for i in idx),
            coords=None if self.coords is None else tuple(self.coords[i] for i in idx),
            edges=tuple((pos[a], pos[b], w) for a, b, w in self.edges if a in pos and b in pos),
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "step_ms": self.step_ms,
            "sensors": list(self.sensors),
            "features": [
                {"name": f.name, "unit": f.unit, "min": _num_out(f.min), "max": _num_out(f.max)}
                for f in self.features
            ],
        }
        # Only when set: definitions written before the field, and the checkpoints whose sha256 covers
        # them, read back and hash unchanged.
        if self.zero_is_missing:
            out["zero_is_missing"] = True
        if self.coords is not None:
            out["coords"] = [list(c) for c in self.coords]
        if self.edges:
            out["edges"] = [[a, b, w] for a, b, w in self.edges]
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Network:
        try:
            features = tuple(
                Feature(
                    name=str(f["name"]),
                    unit=str(f.get("unit", "")),
                    min=_num_in(f.get("min"), -math.inf),
                    max=_num_in(f.get("max"), math.inf),
                )
                for f in data["features"]
            )
            coords = data.get("coords")
            return cls(
                name=str(data.get("name", "network")),
                sensors=tuple(str(s) for s in data["sensors"]),
                features=features,
                step_ms=int(data.get("step_ms", 300_000)),
                zero_is_missing=data.get("zero_is_missing", False),
                coords=tuple((float(c[0]), float(c[1])) for c in coords) if coords is not None else None,
                edges=tuple(
                    (int(e[0]), int(e[1]), float(e[2]) if len(e) > 2 else 1.0) for e in data.get("edges", ())
                ),
            )
        except (KeyError, TypeError, IndexError) as exc:
            raise NetworkError(f"network definition is missing or mistypes a field: {exc!r}") from exc

    def fingerprint(self) -> str:
        """A stable hash of what a model depends on: sensor order, features and step length.

        Checkpoints store it; a model is refused on a network whose fingerprint differs.
        """
        core = {
            "sensors": list(self.sensors),
            "features": [f.name for f in self.features],
            "step_ms": self.step_ms,
        }
        return hashlib.sha256(json.dumps(core, sort_keys=True).encode()).hexdigest()[:16]

    def dumps(self, fmt: str = "toml") -> str:
        """The definition as TOML (or JSON) text: what `save` writes and `loads` reads."""
        return json.dumps(self.to_dict(), indent=1) if fmt == "json" else dumps_toml(self.to_dict())

    @classmethod
    def loads(cls, text: str, source: object, fmt: str = "toml") -> Network:
        """Parse a definition; errors name `source` (a path or URI)."""
        return cls.from_dict(parse_definition(text, source, fmt))

    def save(self, path: str | Path) -> None:
        path = Path(path)
        path.write_text(self.dumps("json" if path.suffix == ".json" else "toml"))

    @classmethod
    def load(cls, path: str | Path) -> Network:
        path = Path(path)
        if not path.exists():
            raise NetworkError(f"no network definition at {path}")
        return cls.loads(path.read_text(), path, "json" if path.suffix == ".json" else "toml")

    @classmethod
    def simple(
        cls,
        name: str,
        sensors: Sequence[str] | int,
        features: Sequence[str | Feature] = ("value",),
        step_ms: int = 300_000,
        **kw: Any,
    ) -> Network:
        """Convenience constructor: `Network.simple("ring", 20, ["speed"])`."""
        ids = tuple(f"s{i:04d}" for i in range(sensors)) if isinstance(sensors, int) else tuple(sensors)
        feats = tuple(f if isinstance(f, Feature) else Feature(f) for f in features)
        return cls(name=name, sensors=ids, features=feats, step_ms=step_ms, **kw)


_NUMBERS = re.compile(r"\[\n(?:[ ]+[-+0-9.eEinfa]+,\n)+[ ]*\]")  # an array of numbers, one per line


def dumps_toml(data: Mapping[str, Any]) -> str:
    """TOML text with each array of numbers on one line (`[13.2, 52.2]`, an edge `[0, 1, 1.5]`): one
    coordinate pair or edge per line rather than one number, so the file reads and edits by hand."""
    return _NUMBERS.sub(
        lambda m: "[" + ", ".join(m.group(0)[1:-1].replace(",", " ").split()) + "]", tomli_w.dumps(data)
    )


def parse_definition(text: str, source: object, fmt: str = "toml") -> dict[str, Any]:
    """The raw mapping of a TOML (or JSON) network file, tables the network does not read included (the
    `[source]` that `sensorcast network init` writes); errors name `source`."""
    try:
        data = json.loads(text) if fmt == "json" else tomllib.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        raise NetworkError(f"cannot parse network definition {source}: {exc}") from exc
    if not isinstance(data, dict):
        raise NetworkError(f"network definition {source} is not a table of fields")
    return data


def _num_out(x: float) -> float | str:
    return x if math.isfinite(x) else ("inf" if x > 0 else "-inf")


def _num_in(x: Any, default: float) -> float:
    return default if x is None else float(x)
