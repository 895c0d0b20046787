"""Ray Train: `train_with_ray` runs `training.train.train_func` on N `TorchTrainer` workers (DDP; CPU or GPU)
and returns the summary of the checkpoint that rank 0 wrote. Ray is imported only inside these functions,
so the plain training path never loads it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from training.checkpoint import load_checkpoint
from training.train import progress_line, train_func


def train_with_ray(
    config: dict[str, Any], *, num_workers: int = 2, use_gpu: bool = False, cpus_per_worker: float = 0.5
) -> dict[str, Any]:
    """Run `train_func` on `num_workers` Ray Train workers (DDP); returns the summary of the checkpoint."""
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    # Ray Train runs workers in their own working directory: relative paths would land there.
    config = {
        **config,
        "dataset": str(Path(config["dataset"]).resolve()),
        "out": str(Path(config["out"]).resolve()),
    }
    started_ray = not ray.is_initialized()
    if started_ray:
        ray.init(include_dashboard=False, configure_logging=False)
    try:
        resources: dict[str, float] = {"CPU": cpus_per_worker}
        if use_gpu:
            resources["GPU"] = 1
        trainer = TorchTrainer(
            _ray_worker,
            train_loop_config={**config, "_ray": True, "threads": config.get("threads") or 1},
            scaling_config=ScalingConfig(
                num_workers=num_workers, use_gpu=use_gpu, resources_per_worker=resources
            ),
            run_config=RunConfig(name=f"sensorcast-{Path(config['out']).stem}", storage_path=_ray_storage()),
        )
        trainer.fit()
    finally:
        if started_ray:
            ray.shutdown()
    ckpt = load_checkpoint(config["out"])
    return {**ckpt.extra["train"], "checkpoint": str(config["out"]), "version": ckpt.version}


def _ray_worker(config: dict[str, Any]) -> None:
    train_func(config, log=lambda row: print(progress_line(row), flush=True))


def _ray_storage() -> str:
    import tempfile

    return str(Path(tempfile.gettempdir()) / "sensorcast-ray-train")
