"""Which model serves: resolving `--model`, the registry's champion pointer, retraining decisions and the
hot swap between steps (`ModelLifecycle`, owned by the running pipeline).

`--model` takes `baseline:persistence`, a checkpoint (a local file or a URI), a registry (a local folder
or a URI such as `s3://bucket/registry`: its champion) or `REGISTRY:VERSION`. With retraining on, the
registry is the source of truth: a baseline start is registered as the first version and promoted, every
challenger is registered with its gate figures, and the serving process follows the champion pointer —
so `sensorcast models promote|rollback` in another shell swaps the serving model within `follow_s`. A
swap happens between poll cycles: each step is forecast by exactly one version, tagged in Redis with it.

This module decides *which* version serves and *when* it changes; it never forecasts, reads Kafka or
scores (the pipeline and `serving.online` do).
"""

from __future__ import annotations

import logging
import re
import time
from typing import TYPE_CHECKING, Any

from serving.cluster import require_shared_storage
from serving.config import ConfigError, Settings
from serving.forecaster import ModelSpec, ship
from stream.config import StorageSettings
from stream.network import Network
from stream.storage import Location, check, open_location

if TYPE_CHECKING:
    from serving.dispatch import Dispatcher
    from serving.metrics import ServeMetrics
    from serving.online import OnlineEvaluator
    from serving.retrain import Retrainer
    from serving.sink import RedisSink

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


def serving_model(settings: Settings, spec: ModelSpec, network: Network) -> tuple[ModelSpec, Any]:
    """What serves at start, and the registry it is followed in (None: a checkpoint or a baseline served
    without retraining). With retraining on, the registry — `--model`'s or `retrain.registry` — is given a
    champion first (`bootstrap`) and that champion serves."""
    s = settings
    spec, registry = resolve(spec.ref, s.storage)
    if s.retrain.enabled:
        if registry is None:
            registry = open_registry(s.retrain.registry, s.storage)
            check(registry.root, "retrain.registry")
        require_shared_storage(s)
        spec = bootstrap(registry, spec, network, s.window.window, s.window.horizon)
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


class ModelLifecycle:
    """The serving model of a running pipeline: the version the actors host (`dispatcher.version`), hot swaps
    between cycles, the registry's champion followed (`follower`: when serving from a registry) and
    retraining's triggers and verdicts (`retrainer`: when retraining is on). Every change is an event."""

    def __init__(
        self,
        spec: ModelSpec,
        dispatcher: Dispatcher,
        sink: RedisSink,
        metrics: ServeMetrics,
        online: OnlineEvaluator,
        *,
        storage: StorageSettings,
        rolling_steps: int,
        follower: Follower | None,
        retrainer: Retrainer | None,
    ) -> None:
        self.spec = spec  # what the actors host now
        self.dispatcher = dispatcher
        self.sink = sink
        self.metrics = metrics
        self.online = online
        self.storage = storage
        self.rolling_steps = rolling_steps  # a rolling score this many steps long is a drift reference
        self.follower = follower
        self.retrainer = retrainer

    def swap(self, spec: ModelSpec, why: str) -> str:
        """Hot swap between cycles: the next sealed step is forecast by the new version."""
        old = self.dispatcher.version
        version = self.dispatcher.load(ship(spec, self.storage))
        self.spec = spec
        self.metrics.set_version(version)
        detail = {"previous": old, "why": why, "spec": spec.ref, **self.dispatcher.placement()}
        self.sink.add_event("serving", version, detail)
        log.info("model swapped", extra={"from": old, "to": version, "why": why})
        return version

    def poll(self) -> None:
        """Once per cycle: a finished job's verdict (promoted: swapped in), then the registry's champion."""
        if self.retrainer is not None:
            result = self.retrainer.poll()
            if isinstance(result, Exception):
                self.sink.add_event("retrain_failed", self.dispatcher.version, {"error": repr(result)})
            elif result is not None:
                kind = "promoted" if result.promoted else "rejected"
                self.sink.add_event(kind, result.version, {"reason": result.reason, **result.figures})
                if result.promoted:
                    record = self.retrainer.registry.show(result.version)
                    self.swap(ModelSpec(record.uri, record.sha256), "promoted")
        if self.follower is not None:
            new = self.follower.changed(self.spec)
            if new is not None:
                self.swap(new, "registry champion changed")

    def on_steps(self, n: int) -> None:
        """After `n` steps were sealed, forecast and scored: retraining's triggers (schedule, drift)."""
        if self.retrainer is None:
            return
        version = self.dispatcher.version
        steps = self.online.rolling(version)["steps"]
        full = isinstance(steps, int) and steps >= self.rolling_steps
        mae = self.online.mean_rolling_mae(version)
        trigger = self.retrainer.on_steps(n, version, mae, full)
        if trigger is None:
            return
        if trigger == "drift":
            ref = self.retrainer.reference(version)
            self.sink.add_event("drift", version, {"rolling_mae": mae, "reference_mae": ref})
        self.sink.add_event("retrain_started", version, self.retrainer.launch(trigger, self.spec))

    def close(self) -> None:
        if self.retrainer is not None:
            self.retrainer.close()
