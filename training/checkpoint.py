"""Self-describing checkpoints: one `torch.save` file holding everything needed to serve a model.

Contents: model kind + config, state_dict, scaler, network definition + fingerprint, target features,
window/horizon, training data range, metrics, code version, and a sha256 over all of it. A checkpoint is one
object at a path or URI (`stream.storage`: local, file://, s3://, gs://), written whole or not at all, or
the bytes themselves (what Ray carries between nodes). It loads with `torch.load(weights_only=True)` only;
foreign, tampered, truncated, replaced or mismatched checkpoints raise `CheckpointError`, never anything
that would let a bad model serve. No Ray and no registry logic here.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import pickle
import subprocess
import time
import zipfile
from dataclasses import dataclass, field
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from torch import nn

from stream.config import StorageSettings
from stream.network import Network, NetworkError
from stream.storage import Location, StorageError, open_location
from training.scaler import StandardScaler

FORMAT = "sensorcast-checkpoint"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint cannot be used; the message says why and what to do."""


def build_model(kind: str, config: dict[str, Any]) -> nn.Module:
    """Instantiate a model of `kind` from its config as stored in a checkpoint (lists become tuples)."""
    from training.model import MODEL_CLASSES

    if kind not in MODEL_CLASSES:
        raise CheckpointError(f"unknown model kind {kind!r}: expected one of {', '.join(MODEL_CLASSES)}")
    config_cls, model_cls = MODEL_CLASSES[kind]
    names = {f.name for f in dataclasses.fields(config_cls)}
    unknown = set(config) - names
    if unknown:
        raise CheckpointError(
            f"{kind} config has unknown fields {sorted(unknown)}; was it written by newer code?"
        )
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in config.items()}
    return model_cls(config_cls(**values))


def config_dict(model: nn.Module) -> dict[str, Any]:
    """A model's config as plain data (tuples as lists) for the checkpoint."""
    return json.loads(json.dumps(dataclasses.asdict(model.config)))  # type: ignore[arg-type]


@cache
def code_version() -> str:
    """The sensorcast package version, plus the git commit when running from a checkout."""
    try:
        version = metadata.version("sensorcast")
    except metadata.PackageNotFoundError:
        version = "unknown"
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        return f"{version}+g{sha}"
    except (OSError, subprocess.SubprocessError):
        return version


@dataclass
class Checkpoint:
    """Everything a checkpoint file holds, as Python objects."""

    kind: str
    config: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    scaler: StandardScaler
    network: Network
    targets: tuple[str, ...]  # names of the forecast features, in output order
    window: int
    horizon: int
    data_range: dict[str, Any] = field(default_factory=dict)  # dataset, start_ms, end_ms, steps
    metrics: dict[str, Any] = field(default_factory=dict)
    version: str = ""
    code_version: str = field(default_factory=code_version)
    created_ms: int = field(default_factory=lambda: int(time.time() * 1000))
    extra: dict[str, Any] = field(default_factory=dict)  # lineage and training notes, plain data
    sha256: str = ""

    @classmethod
    def from_model(cls, kind: str, model: nn.Module, **kw: Any) -> Checkpoint:
        state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        return cls(kind=kind, config=config_dict(model), state_dict=state, **kw)

    @classmethod
    def persistence(cls, network: Network, *, window: int, horizon: int, version: str) -> Checkpoint:
        """The persistence baseline over every feature of `network` as a checkpoint (identity scaler)."""
        from training.baselines import Persistence, PersistenceConfig

        model = Persistence(PersistenceConfig(horizon=horizon, targets=tuple(range(network.n_features))))
        return cls.from_model(
            "persistence",
            model,
            scaler=StandardScaler.identity(network.n_features),
            network=network,
            targets=network.feature_names,
            window=window,
            horizon=horizon,
            version=version,
        )

    @property
    def network_fingerprint(self) -> str:
        return self.network.fingerprint()

    @property
    def target_indices(self) -> tuple[int, ...]:
        return tuple(self.network.feature_index[name] for name in self.targets)

    def build_model(self) -> nn.Module:
        """The model with its weights loaded, in eval mode, on CPU."""
        model = build_model(self.kind, self.config)
        try:
            model.load_state_dict(self.state_dict)
        except RuntimeError as exc:
            raise CheckpointError(f"{self.kind} weights do not fit its config: {exc}") from exc
        return model.eval()

    def _meta(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "model": {"kind": self.kind, "config": self.config},
            "network": self.network.to_dict(),
            "network_fingerprint": self.network_fingerprint,
            "targets": list(self.targets),
            "window": self.window,
            "horizon": self.horizon,
            "data_range": self.data_range,
            "metrics": self.metrics,
            "version": self.version,
            "code_version": self.code_version,
            "created_ms": self.created_ms,
            "extra": self.extra,
        }


def _digest(meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256(json.dumps(meta, sort_keys=True, default=str).encode())
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _all_tensors(state: dict[str, torch.Tensor], scaler: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {**{f"state.{k}": v for k, v in state.items()}, **{f"scaler.{k}": v for k, v in scaler.items()}}


def checkpoint_bytes(ckpt: Checkpoint) -> bytes:
    """`ckpt` as one `torch.save` blob; fills in `ckpt.version` (if empty) and `ckpt.sha256`."""
    scaler = ckpt.scaler.state_dict()
    if not ckpt.version:
        ckpt.version = f"{ckpt.kind}-{_digest({}, ckpt.state_dict)[:10]}"
    meta = ckpt._meta()
    ckpt.sha256 = _digest(meta, _all_tensors(ckpt.state_dict, scaler))
    payload = {**meta, "state_dict": ckpt.state_dict, "scaler": scaler, "sha256": ckpt.sha256}
    buf = io.BytesIO()
    torch.save(payload, buf)
    return buf.getvalue()


def save_checkpoint(
    ckpt: Checkpoint, dest: str | Path | Location, storage: StorageSettings | None = None
) -> str:
    """Write `ckpt` whole (or not at all) to a path or URI; returns the object's URI. Fills in
    `ckpt.version` (if empty) and `ckpt.sha256`. Storage failures raise `StorageError`."""
    loc = open_location(dest, storage)
    loc.write_bytes(checkpoint_bytes(ckpt))
    return loc.uri


def load_checkpoint(
    source: str | Path | Location | bytes,
    *,
    network: Network | None = None,
    storage: StorageSettings | None = None,
    expected_sha256: str | None = None,
    name: str = "checkpoint bytes",
) -> Checkpoint:
    """Read and verify a checkpoint from a path, URI or the bytes themselves (`name` labels them in errors).

    With `network`, also refuse one trained on a different network; with `expected_sha256` (a registry
    record's), refuse an object that verifies but is not the one recorded (replaced after registration).
    """
    if isinstance(source, bytes | bytearray | memoryview):
        return _from_bytes(bytes(source), name, network, expected_sha256)
    try:
        loc = open_location(source, storage)
    except StorageError as exc:
        raise CheckpointError(str(exc)) from exc
    try:
        data = loc.read_bytes()
    except StorageError as exc:
        missing = isinstance(exc.__cause__, FileNotFoundError)
        raise CheckpointError(f"no checkpoint at {loc.uri}" if missing else str(exc)) from exc
    return _from_bytes(data, loc.uri, network, expected_sha256)


def _from_bytes(data: bytes, where: str, network: Network | None, expected_sha256: str | None) -> Checkpoint:
    try:
        payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{where} holds pickled Python objects, refused by weights_only loading; "
            f"only checkpoints written by sensorcast's save_checkpoint are accepted ({exc})"
        ) from exc
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as exc:
        raise CheckpointError(
            f"{where} is truncated or corrupt and cannot be read ({exc}); copy it again"
        ) from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(
            f"{where} is not a sensorcast checkpoint (no format={FORMAT!r} marker): a bare state_dict or "
            "another tool's file; export it with training.checkpoint.save_checkpoint"
        )
    if payload.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{where} has checkpoint format {payload.get('format_version')}, "
            f"this code reads {FORMAT_VERSION}; "
            "use the sensorcast version that wrote it"
        )
    try:
        ckpt = Checkpoint(
            kind=payload["model"]["kind"],
            config=payload["model"]["config"],
            state_dict=payload["state_dict"],
            scaler=StandardScaler.from_state(payload["scaler"]),
            network=Network.from_dict(payload["network"]),
            targets=tuple(payload["targets"]),
            window=int(payload["window"]),
            horizon=int(payload["horizon"]),
            data_range=payload["data_range"],
            metrics=payload["metrics"],
            version=payload["version"],
            code_version=payload["code_version"],
            created_ms=int(payload["created_ms"]),
            extra=payload["extra"],
            sha256=payload["sha256"],
        )
    except (KeyError, TypeError, NetworkError) as exc:
        raise CheckpointError(
            f"{where} lacks or mistypes a checkpoint field ({exc!r}); it is damaged"
        ) from exc
    actual = _digest(ckpt._meta(), _all_tensors(ckpt.state_dict, payload["scaler"]))
    if actual != ckpt.sha256:
        raise CheckpointError(
            f"{where} failed its integrity check: sha256 {actual[:16]}… differs from the recorded "
            f"{str(ckpt.sha256)[:16]}…; it was modified after saving — do not serve it"
        )
    if expected_sha256 is not None and ckpt.sha256 != expected_sha256:
        raise CheckpointError(
            f"{where} is not the checkpoint the registry recorded: its sha256 {ckpt.sha256[:16]}… differs "
            f"from the registered {expected_sha256[:16]}…; it was replaced after registration — do not serve it"
        )
    if payload["network_fingerprint"] != ckpt.network_fingerprint:
        raise CheckpointError(f"{where}: its network definition does not match its recorded fingerprint")
    if network is not None and network.fingerprint() != ckpt.network_fingerprint:
        raise CheckpointError(
            f"{where} was trained on network {ckpt.network.name!r} (fingerprint {ckpt.network_fingerprint}), "
            f"not on {network.name!r} ({network.fingerprint()}): sensors, features or step length differ"
        )
    return ckpt
