"""Ray forecaster actors: each hosts one model (a registry checkpoint or a baseline) and forecasts whole
windows — one call per step or per micro-batch of steps, never per reading.

The actor uses CUDA when it sees a GPU (`num_gpus` > 0 on a GPU node), the CPU otherwise; on a CPU a learned
model runs in ONNX Runtime or eager torch by `ray.cpu_backend` (see `training.predictor`). Ray restarts a
crashed actor (`max_restarts`) from its small constructor arguments (no model) and retries the call
(`max_task_retries`); the dispatcher checks the version each answer carries and re-sends `load()` when a
restarted actor answers without the model, so a step's forecast is never silently lost or made by the
wrong model. `load()` swaps the model between calls (hot swap): calls are processed one at a time, so a
batch is forecast by exactly one version.

An actor may host one shard of a network's sensors (`ray.shards`): a model with sensor blocks is cut by
`Predictor.shard`, the actor reads the whole window and answers the forecasts of its own sensors with their
indices; the dispatcher puts the shards' answers together.

A checkpoint never reaches an actor as a path on the driver's disk (the actor may run on another node):
an object-store URI (`s3://…`) travels as the URI and the actor reads it; a checkpoint on the driver's
local disk travels as bytes through Ray's object store (`ship`). Either way the actor verifies the
sha256 the registry recorded, on its own node, before it serves.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import ray

from serving.config import RaySettings
from stream.config import StorageSettings
from stream.network import Network
from stream.storage import open_location

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelSpec:
    """What an actor hosts: `baseline:persistence`, `baseline:historical_average`, or a checkpoint (a
    local path or a URI) with the sha256 the registry recorded for it (None: the file's own check only)."""

    ref: str
    sha256: str | None = None

    @property
    def is_baseline(self) -> bool:
        return self.ref.startswith("baseline:")


@dataclass(frozen=True)
class Shipment:
    """A `ModelSpec` as it crosses to an actor: a URI the actor opens itself, or the checkpoint's bytes
    in Ray's object store (`blob`) when it lives on the driver's disk."""

    spec: ModelSpec
    blob: Any = None  # ray.ObjectRef of the checkpoint bytes, or None

    def args(self) -> tuple[str, str | None, Any]:
        return self.spec.ref, self.spec.sha256, self.blob


def ship(spec: ModelSpec, storage: StorageSettings) -> Shipment:
    """Prepare `spec` for actors anywhere on the cluster (see the module docstring)."""
    if spec.is_baseline:
        return Shipment(spec)
    loc = open_location(spec.ref, storage)
    return Shipment(spec, ray.put(loc.read_bytes()) if loc.is_local else None)


def build_predictor(
    spec: ModelSpec,
    network: Network,
    window: int,
    horizon: int,
    cpu_backend: str = "torch",
    *,
    blob: bytes | None = None,
    storage: StorageSettings | None = None,
    shard: tuple[int, int] = (0, 1),
) -> tuple[Any, Any]:
    """The predictor of `spec` and the part of it this `shard` = (index, count) serves: from `blob` when
    the bytes came along, else read from `spec.ref`. One shard: the same predictor twice; more: the whole
    model is built for eager torch and the shard's part (`Predictor.shard`; None: nothing to forecast)
    on the CPU engine."""
    from training.predictor import Predictor, default_device  # imported inside the actor process

    backend = cpu_backend if default_device() == "cpu" else "torch"  # the CPU engine; a GPU runs torch
    if spec.is_baseline:
        whole = Predictor.baseline(spec.ref.split(":", 1)[1], network, window=window, horizon=horizon)
    else:
        whole = Predictor.from_checkpoint(
            blob if blob is not None else spec.ref,
            network=network,
            backend="torch" if shard[1] > 1 else backend,  # type: ignore[arg-type]
            storage=storage,
            expected_sha256=spec.sha256,
        )
    part = whole.shard(*shard, backend=backend) if shard[1] > 1 else whole  # type: ignore[arg-type]
    return whole, part


class Forecaster:
    """The actor body (a plain class, so it is testable without Ray); `make_actor` starts it as a Ray actor.

    The constructor takes neither the model nor the network: its arguments stay small and inline, so Ray can
    always restart the actor from them (a checkpoint's bytes, or a large network's definition, in the object
    store as a constructor argument could be gone by then). Both come with `load()`, right after creation
    and again after a restart (the dispatcher sees the empty version a restarted actor answers with)."""

    def __init__(
        self,
        window: int,
        horizon: int,
        torch_threads: int = 1,
        cpu_backend: str = "torch",
        storage: StorageSettings | None = None,
        shard: tuple[int, int] = (0, 1),
    ) -> None:
        import torch

        torch.set_num_threads(max(1, torch_threads))
        self.network: Network | None = None  # comes with the first load(): it may be large
        self.window = window
        self.horizon = horizon
        self.cpu_backend = cpu_backend
        self.storage = storage
        self.shard = (int(shard[0]), int(shard[1]))  # (index, count): which of the network's sensors
        self.predictor: Any = None  # None in a loaded shard with nothing to forecast (see `version`)
        self.version = ""  # of the loaded model; "" until the first load()
        self.kind, self.targets, self.out_features = "", (), ()  # of the loaded model
        self.failed: BaseException | None = None  # why the first model did not load
        self.spec = ""
        self.calls = 0
        self.load_ms = 0.0

    def load(
        self,
        ref: str,
        sha256: str | None = None,
        blob: bytes | None = None,
        network: dict[str, Any] | None = None,
    ) -> str:
        """Hot swap: load a new model (bytes, or read from `ref`) for `network` (the first call's is kept);
        returns its version. The old one serves until this returns."""
        t0 = time.perf_counter()
        try:
            if network is not None and self.network is None:
                self.network = Network.from_dict(network)
            if self.network is None:
                raise RuntimeError("the first load() must bring the network")
            whole, predictor = build_predictor(
                ModelSpec(ref, sha256),
                self.network,
                self.window,
                self.horizon,
                self.cpu_backend,
                blob=blob,
                storage=self.storage,
                shard=self.shard,
            )
        except Exception as exc:
            if not self.version:
                self.failed = exc
            raise
        self.predictor, self.version, self.spec, self.failed = predictor, str(whole.version), ref, None
        self.kind, self.targets, self.out_features = whole.kind, whole.targets, whole.out_features
        self.load_ms = (time.perf_counter() - t0) * 1000
        return self.version

    def info(self) -> dict[str, Any]:
        if not self.version:
            raise RuntimeError(
                f"no model loaded: {self.failed}" if self.failed else "no model loaded yet: call load() first"
            )
        p = self.predictor
        own = None if p is None else p.own_sensors
        return {
            "version": self.version,
            "kind": self.kind,
            "device": str(p.device) if p is not None else "",
            "backend": p.backend if p is not None else "idle",
            "shard": list(self.shard),
            # sensors this actor forecasts, and the ones its model reads (own + halo)
            "sensors": 0 if p is None else len(own) if own is not None else p.network.n_sensors,
            "reads": 0 if p is None else p.network.n_sensors,
            "pid": os.getpid(),
            "calls": self.calls,
            "spec": self.spec,
            "node": ray.get_runtime_context().get_node_id() if ray.is_initialized() else "",
            "load_ms": self.load_ms,
            "targets": list(self.targets),
            "out_features": list(self.out_features),
        }

    def forecast(
        self, values: np.ndarray, mask: np.ndarray, step_ts: np.ndarray
    ) -> tuple[np.ndarray, str, float, np.ndarray | None]:
        """values, mask: [B, window, N, F]; step_ts: [B, window]. Returns ([B, H, n, out], version, ms,
        sensors): the forecasts of the n sensors this actor forecasts, at `sensors` (indices into the
        network; None: all N of them, in order). A restarted actor without a model answers version "" and
        no forecasts (the dispatcher reloads it); a shard with nothing to forecast answers none."""
        if self.predictor is None:
            return np.empty(0, np.float32), self.version, 0.0, np.empty(0, np.int64)
        t0 = time.perf_counter()
        out = self.predictor.predict(values, mask, step_ts)  # [B, H, n, out]
        self.calls += 1
        return out, self.version, (time.perf_counter() - t0) * 1000, self.predictor.own_sensors


def make_actor(
    settings: RaySettings,
    window: int,
    horizon: int,
    storage: StorageSettings,
    shard: tuple[int, int] = (0, 1),
) -> Any:
    """Start one forecaster actor (of `shard` = (index, count) of the network's sensors), without a model
    yet, with fractional resources and a deliberate restart/retry policy; `Dispatcher.start()` (or the
    caller) sends it its model with `load()`."""
    actor_cls = ray.remote(Forecaster).options(
        num_cpus=settings.actor_num_cpus,
        num_gpus=settings.actor_num_gpus,
        resources=dict(settings.actor_resources) or None,
        max_restarts=settings.actor_max_restarts,
        max_task_retries=settings.actor_max_task_retries,
    )
    return actor_cls.remote(
        window, horizon, settings.actor_torch_threads, settings.cpu_backend, storage, shard
    )


def make_actors(settings: RaySettings, window: int, horizon: int, storage: StorageSettings) -> list[Any]:
    """The forecaster actors of one network: `replicas` × `shards`, replica by replica (`Dispatcher`)."""
    return [
        make_actor(settings, window, horizon, storage, (j, settings.shards))
        for _ in range(settings.replicas)
        for j in range(settings.shards)
    ]
