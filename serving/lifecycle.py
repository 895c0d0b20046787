"""Which model serves: resolving `--model`, the registry's champion pointer, retraining decisions and the
hot swap between steps.

`--model` takes `baseline:persistence`, a checkpoint file, a registry folder (its champion) or
`REGISTRY:VERSION`. With retraining on, the registry is the source of truth: a baseline start is
registered as the first version and promoted, every challenger is registered with its gate figures, and
the serving process follows the champion pointer — so `sensorcast models promote|rollback` in another
shell swaps the serving model within `follow_s`. A swap happens between poll cycles: each step is
forecast by exactly one version, tagged in Redis with it.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from serving.forecaster import ModelSpec

log = logging.getLogger(__name__)


def _registry(root: Path) -> Any:
    from training.registry import Registry

    return Registry(root)


def resolve(ref: str) -> tuple[ModelSpec, Path | None]:
    """A model reference → (what the actors load, the registry it came from or None)."""
    if ref.startswith("baseline:"):
        return ModelSpec(ref), None
    path, _, version = ref.rpartition(":") if ":" in ref and not Path(ref).exists() else (ref, "", "")
    root = Path(path)
    if root.is_dir():
        reg = _registry(root)
        record = reg.show(version) if version else reg.champion()
        if record is None:
            raise ValueError(
                f"registry {root} has no champion yet: promote a version or start from a baseline"
            )
        return ModelSpec(record.path), root
    if not root.exists():
        raise ValueError(
            f"no model at {ref!r}: expected baseline:persistence, a checkpoint file or a registry folder"
        )
    return ModelSpec(str(root)), None


def bootstrap(registry_root: Path, spec: ModelSpec, network: Any, window: int, horizon: int) -> ModelSpec:
    """Make sure the registry has a champion; a baseline start is saved and promoted as the first version."""
    reg = _registry(registry_root)
    champion = reg.champion()
    if champion is not None and champion.network_fingerprint == network.fingerprint():
        return ModelSpec(champion.path)
    path = spec.ref
    if spec.is_baseline:
        from training.baselines import Persistence, PersistenceConfig
        from training.checkpoint import Checkpoint, save_checkpoint
        from training.scaler import StandardScaler

        kind = spec.ref.split(":", 1)[1]
        if kind != "persistence":
            raise ValueError(f"only baseline:persistence can seed a registry, not {spec.ref}")
        targets = tuple(range(network.n_features))
        ckpt = Checkpoint.from_model(
            "persistence", Persistence(PersistenceConfig(horizon=horizon, targets=targets)),
            scaler=StandardScaler.identity(network.n_features), network=network,
            targets=network.feature_names, window=window, horizon=horizon, version="baseline-persistence",
        )  # fmt: skip
        registry_root.mkdir(parents=True, exist_ok=True)
        path = str(save_checkpoint(ckpt, registry_root / "seed-persistence.pt"))
    record = reg.register(path, parent=None, reason="seed: the first champion")
    reg.promote(record.version, reason="seed: the first champion")
    return ModelSpec(record.path)


class Follower:
    """Checks the registry's champion every `follow_s` seconds; returns a new spec when it changed."""

    def __init__(self, registry_root: Path, follow_s: float = 2.0) -> None:
        self.root = registry_root
        self.follow_s = follow_s
        self._next = 0.0
        self._refused: str | None = None

    def changed(self, serving_path: str) -> ModelSpec | None:
        now = time.monotonic()
        if now < self._next:
            return None
        self._next = now + self.follow_s
        try:
            champion = _registry(self.root).champion()
        except Exception:  # a registry being written must not stop serving; try again next time
            log.exception("cannot read the registry")
            return None
        if champion is None or Path(champion.path) == Path(serving_path):
            return None
        # a champion whose file was spoiled after registration must not reach the actors: refused there, it
        # would stop serving; here it is refused with a clear error and the serving model stays
        from training.checkpoint import CheckpointError, load_checkpoint

        try:
            load_checkpoint(champion.path)
        except CheckpointError as exc:
            if self._refused != champion.path:
                log.error("refusing the registry's champion; the serving model stays",
                          extra={"version": champion.version, "error": str(exc)})  # fmt: skip
            self._refused = champion.path
            return None
        self._refused = None
        return ModelSpec(champion.path)
