"""The attention model at scale: dense spatial attention (today's STFormer, preset "small") against block
attention (preset "blocks": blocks of 128 sensors, home + halo), every comparison in one run.

    python benchmarks/scale_model.py [--quick] [--parts forward,train,road,los-loop,pems08-head]

- forward: ms per one-window forward vs sensors (road networks of 200 … 8,600), torch eager and ONNX Runtime;
- train: training samples/s and sensor-windows/s at 675 sensors (the same hourly road network, same batch);
- road: the blocks model trained for a CPU budget on that 675-sensor network against persistence, per step;
- los-loop, pems08-head: dense and blocks trained with one recipe and the same CPU budget, scored by the
  field's protocol (`training.evaluate`), 60-min trajectory RMSE and its ratio.

Prints a table per part and merges its figures into benchmarks/results/scale.json under "model" (other
keys, e.g. "sink", are left as they are; parts not run keep their earlier figures). 2 torch threads.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from stream.datasets import datasets_root, load_dataset
from stream.network import Network
from stream.sensordata import SensorDataset
from stream.simulate import Simulator, road_network
from training.data import protocol_for
from training.evaluate import evaluate
from training.model import build_model
from training.onnx_backend import OnnxModel
from training.predictor import Predictor
from training.train import train_func

RESULTS = Path(__file__).resolve().parent / "results" / "scale.json"
THREADS = 2
HOUR_MS = 3_600_000
# One recipe for dense and blocks alike (the Los-loop sweep's, on a CPU clock): only block_size differs.
RECIPE: dict[str, Any] = {
    "batch_size": 16,
    "lr": 3e-3,
    "loss": "huber",
    "schedule": "cosine",
    "warmup_epochs": 1,
    "ema": 0.99,
    "epochs": 200,
    "patience": 200,
    "threads": THREADS,
    "max_val_windows": 96,
}
console = Console()


def _dataset(network: Network, steps: int, step_ms: int, seed: int = 0) -> SensorDataset:
    """`steps` simulated steps of `network` from 2026-01-01 UTC; missing readings are NaN."""
    sim = Simulator(network, seed=seed)
    ts = 1_767_225_600_000 + step_ms * np.arange(steps, dtype=np.int64)
    rows = [sim.step(int(t)) for t in ts]
    mask = np.stack([m for _, m in rows]).astype(np.uint8)  # [T, N, 1]
    values = np.where(mask > 0, np.stack([v for v, _ in rows]), np.nan).astype(np.float32)
    return SensorDataset(network, values, mask, ts)


def _ms(fn: Any, reps: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def forward_times(sizes: tuple[int, ...], reps: int, onnx_up_to: int) -> list[dict[str, Any]]:
    """Median ms of a one-window forward (inference) per network size, dense vs blocks."""
    rows = []
    for n in sizes:
        ds = _dataset(road_network(n, seed=0), 40, 300_000)
        protocol = protocol_for(ds)
        g = torch.Generator().manual_seed(0)
        x = torch.randn(1, 12, n, 1, generator=g)
        tf, mask = torch.rand(1, 12, 3, generator=g), torch.ones(1, 12, n, 1)
        inputs = (x, tf, mask)
        arrays = tuple(t.numpy() for t in inputs)
        row: dict[str, Any] = {"sensors": n}
        for name, preset in (("dense", "small"), ("blocks", "blocks")):
            torch.manual_seed(0)
            model = build_model("stformer", ds, protocol, preset, {"residual": True}).eval()
            big_dense = n >= 8000 and name == "dense"  # seconds per forward: one repetition
            with torch.inference_mode():
                row[f"{name}_ms"] = round(_ms(lambda m=model, i=inputs: m(*i), 1 if big_dense else reps), 2)
            if name == "blocks":
                row["blocks"] = model.config.n_blocks  # type: ignore[union-attr]
            if n <= onnx_up_to or name == "blocks":  # a dense export holds [T, heads, N, N] scores
                example = (x.repeat(2, 1, 1, 1), tf.repeat(2, 1, 1), mask.repeat(2, 1, 1, 1))
                onnx = OnnxModel(model, example, threads=THREADS)
                row[f"{name}_onnx_ms"] = round(_ms(lambda o=onnx, a=arrays: o(*a), reps), 2)
        row["dense_vs_blocks_ratio"] = round(row["dense_ms"] / row["blocks_ms"], 2)
        rows.append(row)
        console.print(row)
    return rows


def _road675(steps: int) -> SensorDataset:
    return _dataset(road_network(675, seed=0), steps, HOUR_MS)


def train_throughput(ds: SensorDataset, batches: int, out: Path) -> dict[str, Any]:
    """Training samples/s at 675 sensors: dense vs blocks, same data, batch and threads."""
    result: dict[str, Any] = {"sensors": ds.network.n_sensors, "batches": batches, "batch_size": 16}
    for name, preset in (("dense", "small"), ("blocks", "blocks")):
        summary = train_func(
            {
                "dataset": "road-675",
                "out": str(out / f"{name}.pt"),
                "preset": preset,
                "overrides": {"residual": True},
                "epochs": 1,
                "batch_size": 16,
                "max_batches": batches,
                "max_val_windows": 1,
                "threads": THREADS,
            },
            dataset=ds,
        )
        result[f"{name}_samples_per_s"] = round(summary["samples_per_s"], 2)
        result[f"{name}_sensor_windows_per_s"] = round(summary["sensor_windows_per_s"], 1)
    result["samples_ratio"] = round(result["blocks_samples_per_s"] / result["dense_samples_per_s"], 2)
    result["sensor_windows_ratio"] = round(
        result["blocks_sensor_windows_per_s"] / result["dense_sensor_windows_per_s"], 2
    )
    console.print(result)
    return result


def _train_and_score(
    ds: SensorDataset, preset: str, budget_s: float, overrides: dict[str, Any], out: Path
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Train `preset` with the recipe for `budget_s` (fit on train, best validation epoch kept); the test
    report by the field's protocol and the training summary."""
    summary = train_func(
        {
            **RECIPE,
            "dataset": ds.network.name,
            "out": str(out / f"{ds.network.name}-{preset}.pt"),
            "preset": preset,
            "overrides": overrides,
            "time_budget_s": budget_s,
        },
        dataset=ds,
    )
    torch.set_num_threads(THREADS)
    report = evaluate(Predictor.from_checkpoint(summary["checkpoint"], device="cpu"), ds)
    return report, summary


def _rmse_60(report: dict[str, Any]) -> float:
    return round(report["trajectory"][list(report["trajectory"])[-1]]["rmse"], 4)


def road_vs_persistence(ds: SensorDataset, budget_s: float, out: Path) -> dict[str, Any]:
    """The blocks model after `budget_s` of training against persistence, per horizon step."""
    report, summary = _train_and_score(ds, "blocks", budget_s, {"residual": True}, out)
    persistence = evaluate(Predictor.baseline("persistence", ds.network, device="cpu"), ds)
    steps = [
        {
            "step": m["step"],
            "rmse": round(m["rmse"], 4),
            "persistence_rmse": round(p["rmse"], 4),
            "mae": round(m["mae"], 4),
            "persistence_mae": round(p["mae"], 4),
        }
        for m, p in zip(report["per_step"], persistence["per_step"], strict=True)
    ]
    table = Table(
        title=f"blocks model, {budget_s:.0f} s of training, vs persistence: {ds.network.n_sensors} sensors"
    )
    for column in ("step", "RMSE", "persistence RMSE", "MAE", "persistence MAE"):
        table.add_column(column, justify="right")
    for s in steps:
        table.add_row(*(f"{v:g}" for v in s.values()))
    console.print(table)
    return {
        "sensors": ds.network.n_sensors,
        "steps": ds.n_steps,
        "step_ms": ds.network.step_ms,
        "budget_s": budget_s,
        "epochs_run": summary["epochs_run"],
        "train_samples": summary["train_windows"],
        "per_step": steps,
        "beats_persistence_every_step": all(s["rmse"] < s["persistence_rmse"] for s in steps),
    }


def accuracy(ds: SensorDataset, budget_s: float, out: Path) -> dict[str, Any]:
    """Dense and blocks with one recipe and the same budget on a real dataset: trajectory RMSE/MAE."""
    overrides = {"residual": True, "graph_bias": bool(ds.network.edges), "dow_dim": 0, "steps_per_day": 48}
    result: dict[str, Any] = {"budget_s": budget_s, "sensors": ds.network.n_sensors, "overrides": overrides}
    for name, preset in (("dense", "small"), ("blocks", "blocks")):
        report, summary = _train_and_score(ds, preset, budget_s, overrides, out)
        result[name] = {
            "trajectory": {
                k: {"rmse": round(v["rmse"], 4), "mae": round(v["mae"], 4)}
                for k, v in report["trajectory"].items()
            },
            "rmse_60": _rmse_60(report),
            "epochs_run": summary["epochs_run"],
            "best_epoch": summary["best_epoch"],
            "samples_per_s": round(summary["samples_per_s"], 2),
        }
    result["blocks_vs_dense_rmse_60_ratio"] = round(
        result["blocks"]["rmse_60"] / result["dense"]["rmse_60"], 4
    )
    console.print(result)
    return result


def run(
    quick: bool = False, parts: tuple[str, ...] = ("forward", "train", "road", "los-loop", "pems08-head")
) -> dict[str, Any]:
    """The figures of `parts` ({part: figures}); `quick` shrinks every part to a smoke run (< 2 min)."""
    torch.set_num_threads(THREADS)
    out = Path(tempfile.mkdtemp(prefix="sensorcast-scale-"))
    result: dict[str, Any] = {
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
        },
        "versions": {"torch": torch.__version__, "numpy": np.__version__},
        "parameters": {"threads": THREADS, "quick": quick, "block_size": 128, "recipe": RECIPE},
    }
    if "forward" in parts:
        sizes = (200, 1000) if quick else (200, 1000, 2000, 8600)
        result["forward"] = forward_times(sizes, reps=3 if quick else 10, onnx_up_to=2000)
    if "train" in parts or "road" in parts:
        road = _road675(300 if quick else 905)  # hourly; 905 steps: ~520 training windows
    if "train" in parts:
        result["train_675"] = train_throughput(road, 3 if quick else 20, out)
    if "road" in parts:
        result["road_675"] = road_vs_persistence(road, 15 if quick else 300, out)
    root = datasets_root()
    for name in ("los-loop", "pems08-head"):
        if (
            name in parts
            and root is not None
            and (root / name).exists()
            and not (quick and name != "los-loop")
        ):
            result[name] = accuracy(load_dataset(root / name), 10 if quick else 300, out)
    return result


def merge(figures: dict[str, Any], path: Path = RESULTS) -> None:
    """Merge `figures` into `path`'s "model" key; every other key is left as it is."""
    data = json.loads(path.read_text()) if path.exists() else {}
    data["model"] = {**data.get("model", {}), **figures}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--parts", default="forward,train,road,los-loop,pems08-head")
    args = parser.parse_args()
    figures = run(args.quick, tuple(args.parts.split(",")))
    if "forward" in figures:
        table = Table(title="one-window forward, ms (2 threads)")
        for column in ("sensors", "P blocks", "dense", "blocks", "dense ONNX", "blocks ONNX", "dense/blocks"):
            table.add_column(column, justify="right")
        for r in figures["forward"]:
            table.add_row(
                str(r["sensors"]),
                str(r["blocks"]),
                f"{r['dense_ms']:.1f}",
                f"{r['blocks_ms']:.1f}",
                f"{r['dense_onnx_ms']:.1f}" if "dense_onnx_ms" in r else "-",
                f"{r['blocks_onnx_ms']:.1f}",
                f"{r['dense_vs_blocks_ratio']:.2f}",
            )
        console.print(table)
    merge(figures)
    print(f"wrote {RESULTS} (key 'model')")


if __name__ == "__main__":
    main()
