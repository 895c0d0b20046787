"""Which model serves: resolving `--model`, the registry's champion pointer, retraining decisions and the
hot swap between steps.

`--model` takes `baseline:persistence`, a checkpoint (a local file or a URI), a registry (a local folder
or a URI such as `s3://bucket/registry`: its champion) or `REGISTRY:VERSION`. With retraining on, the
registry is the source of truth: a baseline start is registered as the first version and promoted, every
challenger is registered with its gate figures, and the serving process follows the champion pointer —
so `sensorcast models promote|rollback` in another shell swaps the serving model within `follow_s`. A
swap happens between poll cycles: each step is forecast by exactly one version, tagged in Redis with it.
"""

from __future__ import annotations

import logging
import re
import time
from typing import Any

from serving.config import ConfigError
from serving.forecaster import ModelSpec
from stream.config import StorageSettings
from stream.storage import Location, open_location

log = logging.getLogger(__name__)

_VERSION = re.compile(r"^(.*):(v\d+)$")


def open_registry(root: str | Location, storage: StorageSettings) -> Any:
    from training.registry import Registry

    return Registry(open_location(root, storage), storage)


def is_registry(loc: Location) -> bool:
    return any((loc / d).exists() for d in ("versions", "champion"))


def resolve(ref: str, storage: StorageSettings) -> tuple[ModelSpec, Any]:
    """A model reference → (what the actors load, the registry it came from or None). A checkpoint that
    fails verification is refused here, in one line naming the cause, not inside every actor."""
    if ref.startswith("baseline:"):
        return ModelSpec(ref), None
    from training.checkpoint import load_checkpoint

    m = _VERSION.match(ref)
    root, version = (m.group(1), m.group(2)) if m else (ref, "")
    loc = open_location(root, storage)
    registry = None
    if is_registry(loc):
        registry = open_registry(loc, storage)
        record = registry.show(version) if version else registry.champion()
        if record is None:
            raise ConfigError(
                f"registry {loc} has no champion yet: promote a version or start from a baseline"
            )
        spec = ModelSpec(record.uri, record.sha256)
    elif version or not loc.is_file():
        raise ConfigError(
            f"no model at {ref!r}: expected baseline:persistence, a checkpoint (file or URI), a registry "
            "or REGISTRY:VERSION"
        )
    else:
        spec = ModelSpec(loc.uri)
    load_checkpoint(spec.ref, storage=storage, expected_sha256=spec.sha256)
    return spec, registry


def bootstrap(reg: Any, spec: ModelSpec, network: Any, window: int, horizon: int) -> ModelSpec:
    """Make sure the registry has a champion; a baseline start is registered and promoted first."""
    champion = reg.champion()
    if champion is not None and champion.network_fingerprint == network.fingerprint():
        return ModelSpec(champion.uri, champion.sha256)
    source: Any = spec.ref
    if spec.is_baseline:
        from training.checkpoint import Checkpoint, checkpoint_bytes

        if spec.ref != "baseline:persistence":
            raise ValueError(f"only baseline:persistence can seed a registry, not {spec.ref}")
        ckpt = Checkpoint.persistence(network, window=window, horizon=horizon, version="baseline-persistence")
        source = checkpoint_bytes(ckpt)
    record = reg.register(source, parent=None, reason="seed: the first champion")
    reg.promote(record.version, reason="seed: the first champion")
    return ModelSpec(record.uri, record.sha256)


class Follower:
    """Checks the registry's champion every `follow_s` seconds; returns a new spec when it changed."""

    def __init__(self, registry: Any, storage: StorageSettings, follow_s: float = 2.0) -> None:
        self.registry = registry
        self.storage = storage
        self.follow_s = follow_s
        self._next = 0.0
        self._refused: str | None = None

    def changed(self, serving: ModelSpec) -> ModelSpec | None:
        now = time.monotonic()
        if now < self._next:
            return None
        self._next = now + self.follow_s
        try:
            champion = self.registry.champion()
        except Exception:  # a registry being written or a store being down must not stop serving
            log.exception("cannot read the registry")
            return None
        if champion is None or champion.uri == serving.ref:
            return None
        # a champion whose object was spoiled after registration must not reach the actors: refused there, it
        # would stop serving; here it is refused with a clear error and the serving model stays
        from training.checkpoint import CheckpointError, load_checkpoint

        try:
            load_checkpoint(champion.uri, storage=self.storage, expected_sha256=champion.sha256)
        except CheckpointError as exc:
            if self._refused != champion.uri:
                extra = {"version": champion.version, "error": str(exc)}
                log.error("refusing the registry's champion; the serving model stays", extra=extra)
            self._refused = champion.uri
            return None
        self._refused = None
        return ModelSpec(champion.uri, champion.sha256)
