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

Workers print nothing: rank 0 sends each epoch's row to the driver through a Ray queue and the driver shows
it (`log`). Ray Train would otherwise echo a worker's `print` twice on the driver (its print patch writes to
the worker's stdout and to its logger on stderr, and Ray forwards both). `init_ray` keeps Ray's own output
(its loggers, every worker's output) in Ray's session log folder instead of the user's terminal.
"""

from __future__ import annotations

import logging
import logging.handlers
import sys
import tempfile
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from stream.config import StorageSettings
from stream.storage import Location, open_location
from training.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from training.train import TrainConfig, read_data, train_func

DRIVER_LOG = "sensorcast-driver.log"  # in Ray's session log folder: what Ray's loggers say in this process
_RAY_LOGGERS = ("ray", "ray.data", "ray.train", "ray.tune")


class _DriverLog(logging.FileHandler):
    """The file `init_ray` sends Ray's loggers to."""


def init_ray(address: str | None = None, *, verbose: bool = False) -> Path | None:
    """`ray.init` for a command line. Unless `verbose` (`--log-level debug`), Ray's own output stays off the
    terminal: its workers' output is not echoed here (it stays in their files in Ray's session log folder)
    and its Python loggers in this process write to `DRIVER_LOG` beside them — the path returned, for the
    caller to print once. Messages from before Ray's session folder exists are kept and written there too
    (or to stderr when `ray.init` fails, since they may say why)."""
    import ray

    # configure_logging (the default) sets the "ray" logger's level and format and keeps its handlers;
    # without it ray.init would remove them, and its messages would reach stderr through `logging.lastResort`
    options: dict[str, Any] = {"address": address, "include_dashboard": False}
    if verbose:
        ray.init(**options)
        return None
    loggers = [logging.getLogger(name) for name in _RAY_LOGGERS]
    saved = [(lg, lg.handlers[:], lg.propagate) for lg in loggers]
    early = logging.handlers.MemoryHandler(capacity=100_000, flushLevel=logging.CRITICAL + 1)
    _route(early)
    try:
        ctx = ray.init(**options, log_to_driver=False)
    except BaseException:
        for lg, handlers, propagate in saved:
            lg.handlers[:], lg.propagate = handlers, propagate
        early.setTarget(logging.StreamHandler(sys.stderr))
        early.close()
        raise
    session = getattr(ctx, "address_info", {}).get("session_dir")  # absent for ray:// clients
    folder = Path(session) / "logs" if session else Path(tempfile.mkdtemp(prefix="sensorcast-ray-"))
    folder.mkdir(parents=True, exist_ok=True)
    file = _DriverLog(folder / DRIVER_LOG, encoding="utf-8")
    file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    early.setTarget(file)
    early.close()
    _route(file)
    return folder / DRIVER_LOG


def _route(handler: logging.Handler) -> None:
    """Send what Ray's loggers say to `handler` only: no stream handlers, no propagation to the root's."""
    for name in _RAY_LOGGERS:
        lg = logging.getLogger(name)
        for old in lg.handlers:
            if isinstance(old, _DriverLog) and old is not handler:
                old.close()  # an earlier session's file
        lg.handlers[:] = [*(h for h in lg.handlers if not _replaced(h)), handler]
        lg.propagate = False


def _replaced(handler: logging.Handler) -> bool:
    """A handler `_route` takes out: one to the terminal, or one of ours (the same or an earlier one)."""
    if isinstance(handler, logging.FileHandler):
        return isinstance(handler, _DriverLog)
    return isinstance(handler, (logging.StreamHandler, logging.handlers.MemoryHandler))


def _route_again() -> None:
    """Ray Data sets up its logger, console included, when first imported (by Ray Train): after that
    import, route it like the others if `init_ray` routed them."""
    for handler in logging.getLogger("ray").handlers:
        if isinstance(handler, _DriverLog):
            _route(handler)


def train_with_ray(
    config: dict[str, Any],
    *,
    num_workers: int = 2,
    use_gpu: bool = False,
    cpus_per_worker: float = 0.5,
    resources_per_worker: dict[str, float] | None = None,
    storage_path: str | Location | None = None,
    storage: StorageSettings | None = None,
    log: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Run `train_func` on `num_workers` Ray Train workers (DDP). Returns the final summary with
    `checkpoint` (the reported checkpoint's URI) and `version`; with `config["out"]` the checkpoint is
    also copied there. `log` gets rank 0's epoch rows here, on the driver, as they come."""
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from ray.util.queue import Queue

    _route_again()
    storage = storage or StorageSettings()
    cfg = TrainConfig(**config)
    started_ray = not ray.is_initialized()
    if started_ray:
        init_ray()
    payload: dict[str, Any] = {"storage": storage, "dataset": None, "init": None, "rows": None}
    try:
        if log is not None:
            payload["rows"] = Queue(actor_options={"num_cpus": 0})
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
        result = trainer.fit() if log is None else _fit_showing(trainer, payload["rows"], log)
    finally:
        if payload["rows"] is not None:
            payload["rows"].shutdown(force=True)
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


def _fit_showing(trainer: Any, rows: Any, log: Callable[[dict[str, Any]], None]) -> Any:
    """`trainer.fit()` in a thread while this one hands each row rank 0 puts in `rows` to `log`. The
    thread is a daemon: Ctrl-C here ends the command without waiting for the run."""
    from ray.util.queue import Empty

    outcome: dict[str, Any] = {}

    def fit() -> None:
        try:
            outcome["result"] = trainer.fit()
        except BaseException as exc:  # re-raised in the calling thread
            outcome["error"] = exc

    thread = threading.Thread(target=fit, name="ray-train-fit", daemon=True)
    thread.start()
    while True:
        done = not thread.is_alive()  # read before draining: rows put before the end are all shown
        try:
            while True:
                log(rows.get_nowait() if done else rows.get(timeout=0.2))
        except Empty:
            pass
        if done:
            if "error" in outcome:
                raise outcome["error"]
            return outcome["result"]


def _ray_worker(config: dict[str, Any]) -> None:
    import ray

    payload = config.pop("_payload")
    data = payload["dataset"]
    rows = payload["rows"]
    train_func(
        config,
        log=rows.put if rows is not None else None,
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
