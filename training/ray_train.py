"""Ray Train: `train_with_ray` runs `training.train.train_func` on N `TorchTrainer` workers (DDP; CPU or GPU),
each with a `RayReporter`, and returns the summary with the URI of the checkpoint rank 0 reported. Ray is
imported only inside these functions, so the plain training path never loads it.

Nothing handed to the workers is a path on the driver's disk, since Ray may place them on any node:
- data: an archive or dataset at a URI (`s3://…`) is read by each worker itself (the whole range: windows
  need every sensor and contiguous steps, and a retraining range is a few MB, so sharding the read would
  only save a few requests; each worker then trains on its own shard of the window starts); data on the
  driver's local disk is read once here and travels through Ray's object store;
- warm start: a URI is read by the workers, a local checkpoint travels as bytes;
- the result: rank 0 reports the checkpoint with `ray.train.report(checkpoint=…)` to `storage_path` (an
  object store on a cluster; a local folder is the one-machine default) and the driver reads it from there.
"""

from __future__ import annotations

import tempfile
import uuid
from pathlib import Path
from typing import Any

import torch
from torch import nn

from stream.config import StorageSettings
from stream.storage import Location, open_location
from training.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from training.train import TrainConfig, progress_line, read_data, train_func


def train_with_ray(
    config: dict[str, Any],
    *,
    num_workers: int = 2,
    use_gpu: bool = False,
    cpus_per_worker: float = 0.5,
    resources_per_worker: dict[str, float] | None = None,
    storage_path: str | Location | None = None,
    storage: StorageSettings | None = None,
) -> dict[str, Any]:
    """Run `train_func` on `num_workers` Ray Train workers (DDP). Returns the final summary with
    `checkpoint` (the reported checkpoint's URI) and `version`; with `config["out"]` the checkpoint is
    also copied there."""
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    storage = storage or StorageSettings()
    cfg = TrainConfig(**config)
    payload: dict[str, Any] = {"storage": storage, "dataset": None, "init": None}
    started_ray = not ray.is_initialized()
    if started_ray:
        ray.init(include_dashboard=False, configure_logging=False)
    try:
        if open_location(cfg.dataset, storage).is_local:
            payload["dataset"] = ray.put(read_data(cfg, storage))
        init = open_location(cfg.init_checkpoint, storage) if cfg.init_checkpoint else None
        if init is not None and init.is_local:
            payload["init"] = init.read_bytes()
        resources: dict[str, float] = {"CPU": cpus_per_worker, **(resources_per_worker or {})}
        if use_gpu:
            resources["GPU"] = 1
        where = open_location(storage_path or Path(tempfile.gettempdir()) / "sensorcast-ray-train", storage)
        run = RunConfig(
            name=f"sensorcast-{uuid.uuid4().hex[:12]}",
            storage_path=where.path,
            storage_filesystem=None if where.is_local else where.fs,
        )
        trainer = TorchTrainer(
            _ray_worker,
            train_loop_config={
                **config,
                "out": "",
                "_payload": payload,
                "threads": config.get("threads") or 1,
            },
            scaling_config=ScalingConfig(
                num_workers=num_workers, use_gpu=use_gpu, resources_per_worker=resources
            ),
            run_config=run,
        )
        result = trainer.fit()
    finally:
        if started_ray:
            ray.shutdown()
    if result.checkpoint is None:
        raise RuntimeError(f"Ray Train run {run.name} reported no checkpoint ({result.error!r})")
    uri = _uri(where, result.checkpoint.path) + "/model.pt"
    summary = {**result.metrics, "checkpoint": uri}
    if cfg.out:
        summary["checkpoint"] = save_checkpoint(load_checkpoint(uri, storage=storage), cfg.out, storage)
    return summary


def _uri(where: Location, path: str) -> str:
    """The URI of `path` inside the filesystem of `where` (Ray gives paths without a scheme)."""
    scheme = where.uri.split("://", 1)[0] + "://" if "://" in where.uri else ""
    return f"{scheme}{path}" if scheme else path


def _ray_worker(config: dict[str, Any]) -> None:
    import ray

    payload = config.pop("_payload")
    data = payload["dataset"]
    train_func(
        config,
        log=lambda row: print(progress_line(row), flush=True),
        report=RayReporter(),
        dataset=ray.get(data) if data is not None else None,
        init_weights=payload["init"],
        storage=payload["storage"],
    )


class RayReporter:
    """`train_func`'s reporter on a Ray Train worker: the worker's device and DDP wrapping, each epoch's
    metrics through `ray.train.report`, and the final summary, rank 0's with the checkpoint."""

    def prepare(self, model: nn.Module) -> tuple[nn.Module, torch.device]:
        import ray.train.torch

        device = ray.train.torch.get_device()
        return ray.train.torch.prepare_model(model), device

    def epoch(self, row: dict[str, Any]) -> None:
        import ray.train

        ray.train.report(row)

    def final(self, summary: dict[str, Any], ckpt: Checkpoint | None) -> None:
        """Every rank reports the summary; rank 0 attaches the checkpoint, which Ray copies to the run's
        storage (an object store on a cluster) — the driver takes it from there, never from this node."""
        import ray
        import ray.train

        with tempfile.TemporaryDirectory(prefix="sensorcast-ckpt-") as tmp:
            if ckpt is None:
                ray.train.report(dict(summary))
                return
            save_checkpoint(ckpt, Path(tmp) / "model.pt")
            metrics = {**summary, "version": ckpt.version, "node": ray.get_runtime_context().get_node_id()}
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
