"""train_func without Ray (plain loop) and one tiny Ray Train run, on a small synthetic T-GCN-layout dataset."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from training.checkpoint import load_checkpoint
from training.predictor import Predictor
from training.ray_train import train_with_ray
from training.train import train_func

torch.set_num_threads(1)

TINY = {"input_dim": 8, "tod_dim": 4, "dow_dim": 4, "adaptive_dim": 8, "heads": 2, "ffn_dim": 16}


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """6 sensors × 600 five-minute steps of daily-periodic speeds, in the T-GCN csv layout."""
    folder = tmp_path_factory.mktemp("tiny")
    rng = np.random.default_rng(0)
    t = np.arange(600)[:, None]
    speed = 50 + 10 * np.sin(2 * np.pi * t / 288 + np.arange(6)) + rng.normal(0, 1, (600, 6))
    header = ",".join(f"{100 + i}" for i in range(6))
    np.savetxt(folder / "tiny_speed.csv", speed, delimiter=",", header=header, comments="", fmt="%.3f")
    np.savetxt(folder / "tiny_adj.csv", np.eye(6) + np.eye(6, k=1), delimiter=",", fmt="%.1f")
    return folder


def _config(dataset: Path, out: Path, **kw: object) -> dict[str, object]:
    base = {"dataset": str(dataset), "out": str(out), "batch_size": 8, "max_batches": 4, "threads": 1}
    return {**base, **kw}


@pytest.mark.parametrize("model", ["stformer", "seq2seq"])
def test_train_func_without_ray_writes_a_servable_checkpoint(
    tiny_dataset: Path, tmp_path: Path, model: str
) -> None:
    overrides = TINY if model == "stformer" else {"hidden": 8}
    rows: list[dict[str, object]] = []
    summary = train_func(
        _config(tiny_dataset, tmp_path / "m.pt", model=model, epochs=2, overrides=overrides), log=rows.append
    )
    assert summary["epochs_run"] == 2 and len(rows) == 2 and summary["workers"] == 1
    assert np.isfinite(summary["val_mae"])
    ckpt = load_checkpoint(tmp_path / "m.pt")
    assert ckpt.kind == model and ckpt.data_range["train_steps"] == [0, 360]
    assert ckpt.metrics["val_mae"] == summary["val_mae"] and ckpt.extra["train"]["history"]
    p = Predictor.from_checkpoint(tmp_path / "m.pt", device="cpu")
    values = np.full((2, 12, 6, 1), 50.0, np.float32)
    step_ts = 1_330_560_000_000 + 300_000 * np.arange(12)[None].repeat(2, 0)
    assert p.predict(values, np.ones_like(values, np.uint8), step_ts).shape == (2, 12, 6, 1)


def test_early_stopping_and_time_budget(tiny_dataset: Path, tmp_path: Path) -> None:
    config = _config(tiny_dataset, tmp_path / "m.pt", model="seq2seq", overrides={"hidden": 8})
    summary = train_func({**config, "epochs": 50, "lr": 0.0, "patience": 2})
    assert summary["epochs_run"] == 3 and summary["best_epoch"] == 1  # lr 0: never improves after epoch 1
    summary = train_func({**config, "epochs": 50, "time_budget_s": 0.01})
    assert summary["epochs_run"] == 1


def test_refit_on_train_and_validation_keeps_the_final_weights(tiny_dataset: Path, tmp_path: Path) -> None:
    config = _config(tiny_dataset, tmp_path / "m.pt", model="seq2seq", overrides={"hidden": 8}, max_batches=2)
    held = train_func({**config, "epochs": 2})
    assert held["fit_on"] == "train" and held["train_windows"] == 360 - 23  # windows wholly in 0..360
    rows: list[dict[str, object]] = []
    # Patience 1 with nothing to validate on must not stop the run: the refit runs every epoch it was given.
    summary = train_func({**config, "epochs": 3, "patience": 1, "fit_on": "train+val"}, log=rows.append)
    assert summary["train_windows"] == 480 - 23  # the 6:2:2 training and validation parts, 0..480
    assert summary["epochs_run"] == summary["best_epoch"] == 3 and summary["val_mae"] is None
    assert all(np.isnan(row["val_mae"]) for row in rows)
    ckpt = load_checkpoint(tmp_path / "m.pt")
    assert ckpt.data_range["train_steps"] == [0, 480] and ckpt.data_range["val_steps"] is None
    assert "val_mae" not in ckpt.metrics
    # A time budget ends a refit early and still keeps the latest weights, not the untrained ones.
    summary = train_func({**config, "epochs": 50, "fit_on": "train+val", "time_budget_s": 0.01})
    assert summary["epochs_run"] == summary["best_epoch"] == 1


@pytest.mark.parametrize(
    ("bad", "error"),
    [
        ({"out": ""}, "needs `out`"),
        ({"model": "arima"}, "unknown model"),
        ({"preset": "huge"}, "unknown preset"),
        ({"loss": "l3"}, "unknown loss"),
        ({"schedule": "step"}, "unknown schedule"),
        ({"fit_on": "test"}, "unknown fit_on"),
        ({"model": "ha", "fit_on": "train+val"}, "is a baseline"),
    ],
)
def test_a_config_that_cannot_train_is_refused_before_any_data_is_read(
    tmp_path: Path, bad: dict[str, object], error: str
) -> None:
    with pytest.raises(ValueError, match=error):
        train_func({**_config(tmp_path / "no-such-dataset", tmp_path / "m.pt", model="seq2seq"), **bad})


def test_historical_average_trains_as_a_fitted_baseline(tiny_dataset: Path, tmp_path: Path) -> None:
    summary = train_func(_config(tiny_dataset, tmp_path / "ha.pt", model="ha"))
    assert summary["epochs_run"] == 0 and summary["val_mae"] < 3.0  # noise σ = 1, daily pattern learnt
    assert Predictor.from_checkpoint(tmp_path / "ha.pt", device="cpu").version.startswith(
        "historical_average"
    )


@pytest.mark.skipif(os.environ.get("SENSORCAST_SKIP_RAY") == "1", reason="SENSORCAST_SKIP_RAY=1")
def test_tiny_ray_train_run_two_workers(tiny_dataset: Path, tmp_path: Path) -> None:
    started = time.monotonic()
    summary = train_with_ray(
        _config(tiny_dataset, tmp_path / "ray.pt", model="stformer", epochs=1, overrides=TINY), num_workers=2
    )
    assert summary["workers"] == 2 and summary["epochs_run"] == 1
    assert load_checkpoint(tmp_path / "ray.pt").kind == "stformer"
    print(f"tiny Ray Train run: {time.monotonic() - started:.1f} s")


def test_cosine_schedule_with_warmup_and_weight_average(tiny_dataset: Path, tmp_path: Path) -> None:
    from training.train import TrainConfig, _lr

    cfg = TrainConfig(dataset="", out="", lr=1.0, schedule="cosine", warmup_epochs=2)
    assert [_lr(cfg, e, 0.0) for e in (1, 2)] == [0.5, 1.0]
    assert _lr(cfg, 3, 0.5) == pytest.approx(0.51) and _lr(cfg, 9, 1.0) == pytest.approx(0.02)
    summary = train_func(
        _config(
            tiny_dataset,
            tmp_path / "m.pt",
            epochs=4,
            schedule="cosine",
            warmup_epochs=2,
            ema=0.9,
            overrides={**TINY, "graph_bias": True},
        )
    )
    lrs = [row["lr"] for row in load_checkpoint(tmp_path / "m.pt").extra["train"]["history"]]
    assert summary["epochs_run"] == 4 and lrs[0] < lrs[1] and lrs[1] > lrs[2] > lrs[3]


def test_pems08_head_trains_and_evaluates_through_the_cli(datasets_dir: Path, tmp_path: Path) -> None:
    """The README's PEMS08 commands on the head of the real file: the PEMS path (npz + edge list), the
    6:2:2 protocol with flow as the target, one epoch of training, then `evaluate` writing its report."""
    import json

    from typer.testing import CliRunner

    from serving.cli import app

    data, ckpt, report = datasets_dir / "pems08-head", tmp_path / "pems08.pt", tmp_path / "pems08.json"
    sets = [arg for k, v in TINY.items() for arg in ("--set", f"{k}={v}")]
    runner = CliRunner()
    out = runner.invoke(
        app,
        [
            "train",
            "--dataset",
            str(data),
            "--model",
            "stformer",
            "--workers",
            "0",
            "--epochs",
            "1",
            "--threads",
            "1",
            *sets,
            "--out",
            str(ckpt),
        ],
    )
    assert out.exit_code == 0, out.output
    loaded = load_checkpoint(ckpt)
    assert (
        loaded.network.n_sensors == 170 and loaded.network.n_features == 3 and len(loaded.network.edges) > 0
    )
    assert loaded.target_indices == (0,) and loaded.data_range["protocol"] == "6:2:2"
    out = runner.invoke(app, ["evaluate", str(ckpt), "--dataset", str(data), "--json", str(report)])
    assert out.exit_code == 0, out.output
    rep = json.loads(report.read_text())
    steps = 1282  # the head of PEMS08; test = the last 20 %, windows of 12 + 12 wholly inside it
    assert rep["protocol"] == "6:2:2" and rep["split_steps"] == [int(0.8 * steps), steps]
    assert rep["windows"] == steps - int(0.8 * steps) - 24 + 1 and rep["targets"] == ["flow"]
    assert len(rep["per_step"]) == 12 and all(
        np.isfinite(r["mae"]) and r["count"] > 0 for r in rep["per_step"]
    )
