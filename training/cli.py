"""Training commands (`train`, `evaluate`, `explain`), merged by the lead into the `sensorcast` CLI.

Thin: parses options, calls `training.train` / `training.evaluate` / `training.explain`, prints rich tables.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

app = typer.Typer(help="Train, evaluate and explain sensorcast forecasting models.", no_args_is_help=True)
console = Console()


class ModelKind(str, Enum):
    seq2seq = "seq2seq"
    stformer = "stformer"
    persistence = "persistence"
    ha = "ha"


class Preset(str, Enum):
    small = "small"
    blocks = "blocks"
    full = "full"


DatasetOpt = Annotated[
    Path,
    typer.Option(
        "--dataset",
        help="a network file from `sensorcast network init`, a CSV/Parquet table, or a dataset folder or "
        "file (PEMS, T-GCN, wide CSV, .h5)",
    ),
]


@app.command()
def train(
    ctx: typer.Context,
    dataset: DatasetOpt,
    out: Annotated[Path, typer.Option("--out", help="checkpoint file to write")],
    model: Annotated[ModelKind, typer.Option("--model")] = ModelKind.stformer,
    preset: Annotated[
        Preset, typer.Option("--preset", help="small (CPU), blocks (CPU, large networks) or full (GPU)")
    ] = Preset.small,
    workers: Annotated[int, typer.Option("--workers", help="Ray Train workers; 0 = plain loop, no Ray")] = 2,
    gpu: Annotated[bool, typer.Option("--gpu", help="one GPU per Ray worker")] = False,
    cpus_per_worker: Annotated[float, typer.Option("--cpus-per-worker")] = 0.5,
    epochs: Annotated[int, typer.Option("--epochs")] = 100,
    time_budget_min: Annotated[float | None, typer.Option("--time-budget-min")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size")] = 16,
    lr: Annotated[float, typer.Option("--lr")] = 2e-3,
    loss: Annotated[str, typer.Option("--loss", help="mae, mse or huber")] = "mae",
    schedule: Annotated[str, typer.Option("--schedule", help="plateau or cosine")] = "plateau",
    warmup_epochs: Annotated[int, typer.Option("--warmup-epochs")] = 0,
    ema: Annotated[
        float, typer.Option("--ema", help="keep a moving average of the weights with this decay (0: off)")
    ] = 0.0,
    max_val_windows: Annotated[
        int | None, typer.Option("--max-val-windows", help="validate on the first windows only")
    ] = None,
    patience: Annotated[int, typer.Option("--patience")] = 10,
    fit_on: Annotated[
        str,
        typer.Option(
            "--fit-on",
            help="train: early-stop on validation; train+val: refit on both for --epochs (a recipe chosen "
            "on validation), keeping the final weights",
        ),
    ] = "train",
    seed: Annotated[int, typer.Option("--seed")] = 0,
    threads: Annotated[int | None, typer.Option("--threads", help="torch threads per worker")] = None,
    overrides: Annotated[
        list[str] | None, typer.Option("--set", help="model config field, e.g. --set residual=true")
    ] = None,
    log_level: Annotated[
        str, typer.Option("--log-level", help="debug: Ray's own logs here too, not only in their file")
    ] = "info",
) -> None:
    """Train a model by the dataset's protocol; prints progress, then the validation summary."""
    from dataclasses import fields

    from training.progress import EpochProgress
    from training.ray_train import init_ray, train_with_ray
    from training.train import TrainConfig, train_func

    # Options named like a TrainConfig field pass through as they are; the others are converted here.
    names = {f.name for f in fields(TrainConfig)}
    config: dict[str, Any] = {
        **{k: v.value if isinstance(v, Enum) else v for k, v in ctx.params.items() if k in names},
        "dataset": str(dataset),
        "out": str(out),
        "time_budget_s": time_budget_min * 60 if time_budget_min else None,
        "overrides": dict(_parse_override(o) for o in overrides or []),
    }
    baseline = model in (ModelKind.persistence, ModelKind.ha)
    progress = EpochProgress(console, epochs=epochs, time_budget_s=config["time_budget_s"])
    if workers > 0 and not baseline:
        import ray

        console.print(f"Ray Train: {workers} workers × {cpus_per_worker} CPU{' + 1 GPU' if gpu else ''}")
        ray_log = init_ray(verbose=log_level.lower() == "debug")
        if ray_log is not None:
            console.print(f"Ray logs: {ray_log} (its workers' beside it)", highlight=False, soft_wrap=True)
        try:
            with progress:
                summary = train_with_ray(
                    config, num_workers=workers, use_gpu=gpu, cpus_per_worker=cpus_per_worker, log=progress
                )
        finally:
            ray.shutdown()
    else:
        with progress:
            summary = train_func(config, log=progress)
    kept = (
        f"best val MAE {summary['val_mae']:.4f} at epoch {summary['best_epoch']} of {summary['epochs_run']}"
        if summary["val_mae"] is not None
        else f"refit on train+val, final epoch {summary['best_epoch']} kept"
    )
    console.print(
        f"[bold]{summary['version']}[/] → {out}: {kept}, {summary['train_seconds']:.0f} s, "
        f"{out.stat().st_size / 1e6:.2f} MB",
        soft_wrap=True,
    )


@app.command()
def evaluate(
    checkpoint: Annotated[str, typer.Argument(help="checkpoint file or URI (s3://bucket/key)")],
    dataset: DatasetOpt,
    json_out: Annotated[Path | None, typer.Option("--json", help="write the report here")] = None,
    split: Annotated[str, typer.Option("--split", help="test or val")] = "test",
    device: Annotated[str | None, typer.Option("--device")] = None,
) -> None:
    """Per-horizon MAE/RMSE/MAPE on the protocol's test part, beside persistence (and climatology for daily)."""
    from stream.datasets import load_dataset
    from stream.storage import StorageError, open_location
    from training.checkpoint import load_checkpoint
    from training.data import DAY_MS, protocol_for
    from training.evaluate import DayOfYearClimatology, evaluate, render_table, write_json
    from training.predictor import Predictor

    ds = load_dataset(dataset)
    try:  # read once: the checkpoint may be a remote object
        data = open_location(checkpoint).read_bytes()
    except StorageError as exc:
        raise typer.BadParameter(str(exc)) from None
    ckpt = load_checkpoint(data, network=ds.network, name=checkpoint)
    predictor = Predictor.from_checkpoint(data, device=device, network=ds.network)
    if split == "val" and ckpt.data_range.get("val_steps", []) is None:
        console.print(
            "[yellow]this checkpoint was refit on train+val: its validation scores are in-sample[/]"
        )
    report = evaluate(predictor, ds, split=split)
    persistence = Predictor.baseline(
        "persistence",
        ds.network,
        window=predictor.window,
        horizon=predictor.horizon,
        targets=predictor.out_features,
        device="cpu",
    )
    baselines = {"persistence": evaluate(persistence, ds, split=split)}
    if ds.network.step_ms >= DAY_MS:
        protocol = protocol_for(
            ds, window=predictor.window, horizon=predictor.horizon, targets=predictor.targets
        )
        baselines["climatology"] = evaluate(DayOfYearClimatology(ds, protocol), ds, split=split)
    console.print(render_table(report, baselines["persistence"]))
    for name, base in baselines.items():
        wins = sum(r["rmse"] < b["rmse"] for r, b in zip(report["per_step"], base["per_step"], strict=True))
        console.print(f"beats {name} (RMSE) at {wins} of {report['horizon']} steps")
    report["checkpoint"] = {
        "path": checkpoint,
        "sha256": ckpt.sha256,
        "kind": ckpt.kind,
        "bytes": len(data),
        "data_range": ckpt.data_range,
        "train": {k: v for k, v in ckpt.extra.get("train", {}).items() if k != "history"},
    }
    report["baselines"] = baselines
    if json_out:
        console.print(f"wrote {write_json(report, json_out)}")


def _parse_override(text: str) -> tuple[str, Any]:
    key, sep, raw = text.partition("=")
    if not sep:
        raise typer.BadParameter(f"--set expects field=value, got {text!r}")
    value: Any = {"true": True, "false": False}.get(raw.lower(), raw)
    if isinstance(value, str):
        for cast in (int, float):
            try:
                value = cast(raw)
                break
            except ValueError:
                continue
    return key.strip(), value


@app.command()
def explain(
    checkpoint: Annotated[str, typer.Argument(help="checkpoint file or URI (s3://bucket/key)")],
    dataset: DatasetOpt,
    out: Annotated[Path, typer.Option("--out", help="folder for the PNGs and neighbours.json")],
    window: Annotated[int, typer.Option("--window", help="index of the test window")] = 0,
    sensor: Annotated[str | None, typer.Option("--sensor", help="sensor id (default: the first)")] = None,
    top_k: Annotated[int, typer.Option("--top-k")] = 5,
) -> None:
    """Plot temporal and spatial attention of one test window."""
    from stream.datasets import load_dataset
    from training.explain import explain as run_explain
    from training.predictor import Predictor

    ds = load_dataset(dataset)
    predictor = Predictor.from_checkpoint(checkpoint, network=ds.network, device="cpu")
    summary = run_explain(predictor, ds, out, window_index=window, sensor=sensor, top_k=top_k)
    for file in summary["files"]:
        console.print(f"wrote {file}")
    for n in summary.get("neighbours", []):
        console.print(f"  neighbour {n['sensor']}: {n['weight']:.3f}")
