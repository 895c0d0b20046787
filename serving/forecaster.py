"""Ray forecaster actors: each hosts one model (a registry checkpoint or a baseline) and forecasts whole
windows — one call per step or per micro-batch of steps, never per reading.

The actor uses CUDA when it sees a GPU (`num_gpus` > 0 on a GPU node), the CPU otherwise; on a CPU a learned
model runs in ONNX Runtime or eager torch by `ray.cpu_backend` (see `training.predictor`). Ray restarts a
crashed actor (`max_restarts`) with its constructor's model and retries the call (`max_task_retries`); the
dispatcher checks the version each answer carries and re-sends `load()` if a restart reverted a hot swap,
so a step's forecast is never silently lost or made by the wrong model. `load()` swaps the model
between calls (hot swap): calls are processed one at a time, so a batch is forecast by exactly one version.
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
from stream.network import Network

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelSpec:
    """What an actor hosts: `baseline:persistence`, `baseline:historical_average` or a checkpoint path."""

    ref: str

    @property
    def is_baseline(self) -> bool:
        return self.ref.startswith("baseline:")


def build_predictor(
    spec: ModelSpec, network: Network, window: int, horizon: int, cpu_backend: str = "torch"
) -> Any:
    from training.predictor import Predictor, default_device  # imported inside the actor process

    if spec.is_baseline:
        return Predictor.baseline(spec.ref.split(":", 1)[1], network, window=window, horizon=horizon)
    backend = cpu_backend if default_device() == "cpu" else "torch"  # the CPU engine; a GPU runs torch
    return Predictor.from_checkpoint(spec.ref, network=network, backend=backend)  # type: ignore[arg-type]


class Forecaster:
    """The actor body (plain class, so it is testable without Ray); `ForecasterActor` is its Ray form."""

    def __init__(
        self,
        spec: str,
        network: dict[str, Any],
        window: int,
        horizon: int,
        torch_threads: int = 1,
        cpu_backend: str = "torch",
    ) -> None:
        import torch

        torch.set_num_threads(max(1, torch_threads))
        self.network = Network.from_dict(network)
        self.window = window
        self.horizon = horizon
        self.cpu_backend = cpu_backend
        self.predictor = build_predictor(ModelSpec(spec), self.network, window, horizon, cpu_backend)
        self.spec = spec
        self.calls = 0

    def load(self, spec: str) -> str:
        """Hot swap: load a new model; returns its version. The old one serves until this returns."""
        predictor = build_predictor(
            ModelSpec(spec), self.network, self.window, self.horizon, self.cpu_backend
        )
        self.predictor, self.spec = predictor, spec
        return str(predictor.version)

    def info(self) -> dict[str, Any]:
        return {
            "version": self.predictor.version,
            "device": str(self.predictor.device),
            "backend": self.predictor.backend,
            "pid": os.getpid(),
            "calls": self.calls,
            "spec": self.spec,
            "targets": list(self.predictor.targets),
            "out_features": list(self.predictor.out_features),
        }

    def forecast(
        self, values: np.ndarray, mask: np.ndarray, step_ts: np.ndarray
    ) -> tuple[np.ndarray, str, float]:
        """values, mask: [B, window, N, F]; step_ts: [B, window]. Returns ([B, H, N, out], version, ms)."""
        t0 = time.perf_counter()
        out = self.predictor.predict(values, mask, step_ts)  # [B, H, N, out]
        self.calls += 1
        return out, str(self.predictor.version), (time.perf_counter() - t0) * 1000


def make_actor(settings: RaySettings, spec: ModelSpec, network: Network, window: int, horizon: int) -> Any:
    """Start one forecaster actor with fractional resources and deliberate restart/retry policy."""
    actor_cls = ray.remote(Forecaster).options(
        num_cpus=settings.actor_num_cpus,
        num_gpus=settings.actor_num_gpus,
        max_restarts=settings.actor_max_restarts,
        max_task_retries=settings.actor_max_task_retries,
    )
    return actor_cls.remote(
        spec.ref, network.to_dict(), window, horizon, settings.actor_torch_threads, settings.cpu_backend
    )
