"""Training: one `train_func(config)` that runs plain (unit tests, benchmarks) or as a Ray Train worker.

`train_func` loads the dataset, applies the field's protocol (chronological split, scaler fitted on train
only), fits a baseline or trains a learned model with a masked loss, early-stops on validation MAE (never
on test), and has rank 0 write a self-describing checkpoint to `out` — or hand it to its `Reporter`, which
under Ray Train (`training.ray_train`, the only module that imports Ray) sends it to the run's storage."""

from __future__ import annotations

import copy
import math
import os
import time
import typing
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from stream.config import StorageSettings
from stream.datasets import SensorDataset, load_dataset, read_archive
from training.baselines import HistoricalAverage
from training.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from training.data import Protocol, WindowData, fit_scaler, protocol_for
from training.model import BASELINES, build_model, check_preset, model_kind
from training.scaler import StandardScaler
from training.shards import ShardSampler

# per-element losses on scaled values [B, H, N, out]; missing targets are masked out afterwards
LOSSES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "mae": lambda pred, y: (pred - y).abs(),
    "mse": lambda pred, y: (pred - y) ** 2,
    "huber": lambda pred, y: nn.functional.huber_loss(pred, y, reduction="none", delta=1.0),
}

VAL_SENSOR_WINDOWS = 16_384  # per validation forward: 64 windows of ~250 sensors, 1 of 8,600


@dataclass
class TrainConfig:
    dataset: str  # a dataset file or folder, or an archive (folder or URI)
    out: str = ""  # plain runs: where the checkpoint goes (path or URI); a reporter takes it instead
    start_ms: int | None = None  # archives: read only steps in [start_ms, end_ms)
    end_ms: int | None = None
    model: str = "stformer"  # seq2seq | stformer | persistence | ha
    preset: str = "small"
    overrides: dict[str, Any] = field(default_factory=dict)  # model config fields
    window: int = 12
    horizon: int | None = None  # None: the protocol's (12, or 7 for daily data)
    epochs: int = 100
    batch_size: int = 16
    lr: float = 2e-3
    weight_decay: float = 1e-4
    loss: str = "mae"  # mae | mse | huber, on scaled values, missing targets excluded
    schedule: str = "plateau"  # plateau (halve on stalled validation) | cosine (over epochs or time budget)
    warmup_epochs: int = 0  # linear warm-up of the learning rate
    ema: float = 0.0  # > 0: validate and keep an exponential moving average of the weights (e.g. 0.99)
    patience: int = 10  # epochs without validation improvement before stopping
    time_budget_s: float | None = None  # wall-clock limit for the training loop
    max_batches: int | None = None  # per epoch; for smoke tests and benchmarks
    max_val_windows: int | None = None  # validate on the first windows only; for benchmarks
    seed: int = 0
    threads: int | None = None  # torch threads per worker
    # > 0: lower this worker's CPU priority by so much (Linux: the calling thread and threads it starts),
    # so that a background retraining job yields the cores to serving instead of starving it
    nice: int = 0
    device: str | None = None  # plain runs only; Ray picks the worker's device
    init_checkpoint: str | None = None  # warm start: weights of a checkpoint of the same kind and shape
    # "train": fit on the training part, keep the epoch with the best validation MAE (early stopping).
    # "train+val": refit on training and validation parts together for exactly `epochs` epochs and keep the
    # final weights -- for a recipe whose epochs were chosen on validation; nothing is held out but test.
    fit_on: str = "train"
    # models with sensor blocks: each batch is one block's windows (`training.shards`); False: the network's
    shard_batches: bool = True

    def __post_init__(self) -> None:
        """Refuse a config that could not train, before any data is read."""
        check_preset(self.kind, self.preset)
        if self.loss not in LOSSES:
            raise ValueError(f"unknown loss {self.loss!r}: expected mae, mse or huber")
        if self.schedule not in ("plateau", "cosine"):
            raise ValueError(f"unknown schedule {self.schedule!r}: expected plateau or cosine")
        if self.fit_on not in ("train", "train+val"):
            raise ValueError(f"unknown fit_on {self.fit_on!r}: expected train or train+val")
        if self.kind in BASELINES and self.fit_on != "train":
            raise ValueError(
                f"{self.kind} is a baseline fitted on the training part: fit_on applies to learned models"
            )

    @property
    def kind(self) -> str:
        """The model kind `model` names (aliases resolved)."""
        return model_kind(self.model)


class Reporter(typing.Protocol):
    """Where a distributed worker's results go instead of `out` (Ray Train: `training.ray_train.RayReporter`)."""

    def prepare(self, model: nn.Module) -> tuple[nn.Module, torch.device]:
        """The model to train (wrapped for data-parallel training) and the device its batches go to."""
        ...

    def epoch(self, row: dict[str, Any]) -> None:
        """One epoch's metrics, from every worker."""
        ...

    def final(self, summary: dict[str, Any], ckpt: Checkpoint | None) -> None:
        """The run's summary from every worker; rank 0's comes with the checkpoint."""
        ...


@dataclass
class _Fit:
    """What fitting a model leaves besides its weights."""

    best_val: float  # masked validation MAE of the kept weights; NaN when nothing was held out
    best_epoch: int = 0
    train_windows: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)  # one row per epoch


def read_data(cfg: TrainConfig, storage: StorageSettings | None = None) -> SensorDataset:
    """The training data `cfg` names: an archive range when it has one, else any dataset layout."""
    if cfg.start_ms is not None or cfg.end_ms is not None:
        return read_archive(cfg.dataset, start_ms=cfg.start_ms, end_ms=cfg.end_ms, storage=storage)
    return load_dataset(cfg.dataset, storage)


def _warm_start(model: nn.Module, kind: str, source: str | bytes, storage: StorageSettings | None) -> bool:
    """Load a checkpoint's weights when it is the same kind of model with the same shapes; else start fresh
    (a baseline champion, or a resized network, cannot seed a learned model)."""
    ckpt = load_checkpoint(source, storage=storage)
    if ckpt.kind != kind:
        return False
    own = model.state_dict()
    if set(own) != set(ckpt.state_dict) or any(own[k].shape != v.shape for k, v in ckpt.state_dict.items()):
        return False
    model.load_state_dict(ckpt.state_dict)
    return True


def _loss(kind: str, pred: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (LOSSES[kind](pred, y) * mask).sum() / mask.sum().clamp(min=1)  # pred, y, mask [B, H, N, out]


class _Dist:
    """Rank, world size and collective ops; a single process when torch.distributed is not running."""

    def __init__(self) -> None:
        self.on = dist.is_available() and dist.is_initialized()
        self.rank = dist.get_rank() if self.on else 0
        self.world = dist.get_world_size() if self.on else 1

    def sum(self, values: list[float]) -> list[float]:
        t = torch.tensor(values, dtype=torch.float64)
        if self.on:
            dist.all_reduce(t)
        return t.tolist()


@torch.no_grad()
def _validate(
    model: nn.Module,
    data: WindowData,
    starts: np.ndarray,
    scaler: StandardScaler,
    targets: tuple[int, ...],
    device: torch.device,
    batch_size: int,
    d: _Dist,
) -> float:
    """Masked MAE in original units over `starts`, summed across workers; at most `batch_size` windows and
    `VAL_SENSOR_WINDOWS` sensor-windows per forward."""
    model.eval()
    batch_size = max(1, min(batch_size, VAL_SENSOR_WINDOWS // data.x.shape[1]))
    std = torch.tensor(scaler.std[list(targets)], dtype=torch.float32, device=device)
    err, count = 0.0, 0.0
    for i in range(0, len(starts), batch_size):
        x, tf, m, y, ym = (t.to(device) for t in data.batch(starts[i : i + batch_size]))
        pred = model(x, tf, m)  # [B, H, N, out]
        err += float(((pred - y).abs() * std * ym).sum())
        count += float(ym.sum())
    err, count = d.sum([err, count])
    model.train()
    return err / max(count, 1.0)


def fit_baseline(model: nn.Module, data: WindowData, protocol: Protocol) -> nn.Module:
    """Fit a baseline on the training part: the historical average's table from the raw targets (not the
    filled inputs); persistence has nothing to fit."""
    if not isinstance(model, HistoricalAverage):
        return model
    start, end = protocol.train
    x = data.x.numpy()[start:end].copy()  # [T, N, F]
    x[..., list(protocol.targets)] = data.y.numpy()[start:end]
    return model.fit(x, data.time_features.numpy()[start:end], data.mask.numpy()[start:end])


def train_func(
    config: dict[str, Any],
    log: Callable[[dict[str, Any]], None] | None = None,
    *,
    report: Reporter | None = None,
    dataset: SensorDataset | None = None,
    init_weights: bytes | None = None,
    storage: StorageSettings | None = None,
) -> dict[str, Any]:
    """Train one model per `TrainConfig` fields in `config`; returns a summary. `log` gets rank 0's epoch
    rows. Without `report` this is a plain run: rank 0 writes the checkpoint to `out`; with one (a Ray
    Train worker) the reporter places the model and takes the rows, the summary and rank 0's checkpoint.
    `dataset` / `init_weights` given in memory replace reading `config["dataset"]` / `init_checkpoint`;
    `storage` opens URIs."""
    cfg = TrainConfig(**config)
    if report is None and not cfg.out:
        raise ValueError("a plain training run needs `out`: where to write the checkpoint")
    if cfg.nice > 0:
        os.nice(cfg.nice)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    ds = dataset if dataset is not None else read_data(cfg, storage)
    protocol = protocol_for(ds, window=cfg.window, horizon=cfg.horizon)
    scaler = fit_scaler(ds, protocol)
    d = _Dist()
    started = time.monotonic()
    model = build_model(cfg.kind, ds, protocol, cfg.preset, cfg.overrides)
    data = WindowData.build(ds, protocol, scaler)
    if cfg.kind in BASELINES:
        fit_baseline(model, data, protocol)
        cpu = torch.device("cpu")
        fit = _Fit(_validate(model, data, protocol.starts("val"), scaler, protocol.targets, cpu, 64, d))
    else:
        if init_weights is not None or cfg.init_checkpoint:
            _warm_start(model, cfg.kind, init_weights or cfg.init_checkpoint, storage)  # type: ignore[arg-type]
        fit = _train(cfg, model, data, protocol, scaler, d, started, log=log, report=report)
    summary = {
        "model": cfg.kind,
        "fit_on": cfg.fit_on,
        "train_windows": fit.train_windows,
        "best_epoch": fit.best_epoch,
        "epochs_run": len(fit.history),
        "val_mae": None if math.isnan(fit.best_val) else fit.best_val,
        "train_seconds": round(time.monotonic() - started, 1),
        "samples_per_s": fit.history[-1]["samples_per_s"] if fit.history else 0.0,
        "sensor_windows_per_s": fit.history[-1]["sensor_windows_per_s"] if fit.history else 0.0,
        "workers": d.world,
    }
    ckpt = None
    if d.rank == 0:
        step_ts = ds.step_ts
        ckpt = Checkpoint.from_model(
            cfg.kind,
            model.cpu(),
            scaler=scaler,
            network=ds.network,
            targets=tuple(ds.network.feature_names[i] for i in protocol.targets),
            window=protocol.window,
            horizon=protocol.horizon,
            data_range={
                "dataset": Path(cfg.dataset).name,
                "protocol": protocol.name,
                "start_ms": int(step_ts[protocol.train[0]]),
                "end_ms": int(step_ts[protocol.val[1] - 1]),
                "train_steps": list(protocol.part(cfg.fit_on)),
                "val_steps": list(protocol.val) if cfg.fit_on == "train" else None,  # None: nothing held out
            },
            metrics={} if summary["val_mae"] is None else {"val_mae": fit.best_val},
            extra={"train": {**summary, "config": asdict(cfg), "history": fit.history}},
        )
    if report is not None:
        report.final(summary, ckpt)
    elif ckpt is not None:
        summary["checkpoint"] = save_checkpoint(ckpt, cfg.out, storage)
        summary["version"] = ckpt.version
    return summary


def _train(
    cfg: TrainConfig,
    model: nn.Module,
    data: WindowData,
    protocol: Protocol,
    scaler: StandardScaler,
    d: _Dist,
    started: float,
    *,
    log: Callable[[dict[str, Any]], None] | None,
    report: Reporter | None,
) -> _Fit:
    """Train a learned model on the `fit_on` part's windows (sharded over the workers), epoch by epoch until
    `epochs`, `patience` or the time budget runs out; leaves in `model` the weights of the best validation
    epoch, or the last epoch's when nothing is held out."""
    if report is not None:
        train_model, device = report.prepare(model)
    else:
        device = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        train_model = model.to(device)
    holdout = cfg.fit_on == "train"
    fit_starts = protocol.starts(cfg.fit_on)
    val_starts = protocol.starts("val")[: cfg.max_val_windows][d.rank :: d.world]
    opt = torch.optim.AdamW(train_model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=max(1, cfg.patience // 3))
    progress = 0.0  # fraction of the run done, for the cosine schedule
    # The average follows the unwrapped model, whose parameters DDP keeps equal on every rank.
    ema = (
        torch.optim.swa_utils.AveragedModel(
            model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(cfg.ema)
        )
        if cfg.ema
        else None
    )
    scored = ema.module if ema is not None else model  # what is validated and kept
    fit = _Fit(math.inf, train_windows=len(fit_starts))
    shards = ShardSampler.of(model) if cfg.shard_batches else None
    sensors = data.x.shape[1] if shards is None else shards.sensors  # per sample
    best_state, stale = copy.deepcopy(scored.state_dict()), 0
    train_s, samples = 0.0, 0
    for epoch in range(1, cfg.epochs + 1):
        t0 = time.monotonic()
        if cfg.schedule == "cosine" or epoch <= cfg.warmup_epochs:
            for group in opt.param_groups:
                group["lr"] = _lr(cfg, epoch, progress)
        rng = np.random.default_rng(cfg.seed + epoch)
        starts = rng.permutation(fit_starts)
        per_rank = len(starts) // d.world  # equal shards: DDP needs the same number of steps everywhere
        starts = starts[d.rank * per_rank : (d.rank + 1) * per_rank]
        batches = range(0, len(starts), cfg.batch_size)
        if cfg.max_batches:
            batches = batches[: cfg.max_batches]
        total, count = 0.0, 0
        train_model.train()
        for i in batches:
            if shards is None:
                window, kw = data.batch(starts[i : i + cfg.batch_size]), {}
            else:  # one block's sensors [B, T, S, F]
                window, block = shards.batch(data, starts[i : i + cfg.batch_size], rng)
                kw = {"block": block}
            x, tf, m, y, ym = (t.to(device) for t in window)
            loss = _loss(cfg.loss, train_model(x, tf, m, **kw), y, ym)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(train_model.parameters(), 5.0)
            opt.step()
            if ema is not None:
                ema.update_parameters(model)
            total += loss.item() * len(x)
            count += len(x)
        train_s += time.monotonic() - t0
        samples += count * d.world
        if holdout:
            val = _validate(scored, data, val_starts, scaler, protocol.targets, device, 64, d)
            if cfg.schedule == "plateau" and epoch > cfg.warmup_epochs:
                sched.step(val)
        else:  # refit on train+val: nothing is left to validate on, the latest weights are kept
            val = math.nan
        if not holdout or val < fit.best_val:
            fit.best_val, fit.best_epoch, stale = val, epoch, 0
            best_state = copy.deepcopy(scored.state_dict())
        else:
            stale += 1
        elapsed = time.monotonic() - started
        row = {
            "epoch": epoch,
            "train_loss": d.sum([total / max(count, 1)])[0] / d.world,
            "val_mae": val,
            "best_val_mae": fit.best_val,
            "lr": opt.param_groups[0]["lr"],
            "elapsed_s": round(elapsed, 1),
            "samples_per_s": samples / max(train_s, 1e-9),
            "sensor_windows_per_s": samples * sensors / max(train_s, 1e-9),
        }
        fit.history.append(row)
        if report is not None:
            report.epoch(row)
        if d.rank == 0 and log is not None:
            log(row)
        # Every worker must take the same decision, or DDP would wait forever for the missing ones.
        out_of_time = cfg.time_budget_s is not None and elapsed + elapsed / epoch > cfg.time_budget_s
        # Ranks must agree on the learning rate too, so the schedule follows their mean clock; the
        # progress is where the next epoch would end.
        progress = epoch / cfg.epochs
        if cfg.time_budget_s:
            mean_elapsed = d.sum([elapsed])[0] / d.world
            progress = max(progress, mean_elapsed * (epoch + 1) / epoch / cfg.time_budget_s)
        if d.sum([float(stale >= cfg.patience or out_of_time)])[0] > 0:
            break
    model.load_state_dict(best_state)
    return fit


def _lr(cfg: TrainConfig, epoch: int, progress: float) -> float:
    """Learning rate of `epoch` (1-based): linear warm-up, then constant (plateau schedule: halved on
    stalled validation by the scheduler) or cosine decay to 2 % over the run's progress in [0, 1]."""
    if epoch <= cfg.warmup_epochs:
        return cfg.lr * epoch / cfg.warmup_epochs
    if cfg.schedule == "cosine":
        return cfg.lr * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))
    return cfg.lr
