"""Attention plots for one input window: where in time and across which sensors a model looks.

Writes `temporal.png` (heatmap of attention over input steps), `spatial.png` (a sensor's strongest
spatial neighbours; on a map when the network has coordinates) and `neighbours.json` (top-k attended
sensors of every sensor). Needs matplotlib (`pip install matplotlib`), imported only here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from stream.datasets import SensorDataset
from training.data import fill_forward, protocol_for
from training.predictor import Predictor

DENSE_PLOT = 2_000  # sensors up to which the whole spatial attention matrix is drawn


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise RuntimeError("explain writes PNG plots with matplotlib: pip install matplotlib") from exc
    return plt


def spatial_rows(maps: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray] | None:
    """The first window's spatial attention, mean over steps and heads: `rows [N, K]` (row = attending
    sensor) and `cols [N, K]`, the sensor each weight goes to — K = N for dense attention, the block size
    for a model with blocks (`spatial_columns`). None for a model without spatial attention."""
    if "spatial" not in maps:
        return None
    rows = maps["spatial"][0].mean(axis=(0, 1))  # [N, K]
    cols = maps.get("spatial_columns")
    if cols is None:
        cols = np.broadcast_to(np.arange(rows.shape[1]), rows.shape)
    return rows, np.asarray(cols)


def dense_row(rows: np.ndarray, cols: np.ndarray, sensor: int) -> np.ndarray:
    """`sensor`'s attention over every sensor `[N]` (zero outside its block)."""
    out = np.zeros(rows.shape[0], rows.dtype)
    out[cols[sensor]] = rows[sensor]
    return out


def top_neighbours(
    rows: np.ndarray, cols: np.ndarray, sensors: tuple[str, ...], k: int
) -> dict[str, list[dict[str, Any]]]:
    """`spatial_rows` -> each sensor's k most-attended other sensors."""
    out: dict[str, list[dict[str, Any]]] = {}
    for i, sensor in enumerate(sensors):
        row = rows[i].copy()
        row[cols[i] == i] = -np.inf  # a sensor attending to itself says nothing about its neighbours
        best = np.argsort(row)[::-1][:k]
        out[sensor] = [{"sensor": sensors[int(cols[i, j])], "weight": float(rows[i, j])} for j in best]
    return out


def explain(
    predictor: Predictor,
    ds: SensorDataset,
    out_dir: str | Path,
    *,
    window_index: int = 0,
    sensor: str | None = None,
    top_k: int = 5,
) -> dict[str, Any]:
    """Plot attention for test window `window_index` (0 = first test window) and `sensor` (default first)."""
    plt = _pyplot()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    protocol = protocol_for(ds, window=predictor.window, horizon=predictor.horizon)
    starts = protocol.starts("test")
    if not 0 <= window_index < len(starts):
        raise ValueError(f"window index {window_index} outside the {len(starts)} test windows")
    start = int(starts[window_index])
    steps = slice(start, start + predictor.window)
    values = fill_forward(ds.values, ds.mask)[steps][None]  # [1, T, N, F]
    maps = predictor.attention(values, ds.mask[steps][None], ds.step_ts[steps][None])
    sensors = ds.network.sensors
    s = ds.network.sensor_index[sensor] if sensor is not None else 0
    summary: dict[str, Any] = {
        "model": predictor.version,
        "window_start_ms": int(ds.step_ts[start]),
        "files": [],
    }

    temporal = maps["temporal"][0, s]  # seq2seq [H, T]; stformer [heads, T, T]
    temporal = temporal.mean(0) if temporal.ndim == 3 else temporal  # [rows, T]
    fig, ax = plt.subplots(figsize=(6, 5))
    image = ax.imshow(temporal, cmap="viridis", aspect="auto")
    ax.set_xlabel("input step (attended)")
    ax.set_ylabel("forecast step" if "spatial" not in maps else "input step (attending)")
    ax.set_title(f"temporal attention, sensor {sensors[s]}")
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    fig.savefig(out_dir / "temporal.png", dpi=100)
    plt.close(fig)
    summary["files"].append(str(out_dir / "temporal.png"))

    spatial = spatial_rows(maps)
    if spatial is not None:
        rows, cols = spatial
        neighbours = top_neighbours(rows, cols, sensors, top_k)
        (out_dir / "neighbours.json").write_text(json.dumps(neighbours, indent=1))
        summary["neighbours"] = neighbours[sensors[s]]
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
        best = neighbours[sensors[s]]
        axes[0].barh([b["sensor"] for b in best][::-1], [b["weight"] for b in best][::-1])
        axes[0].set_title(f"strongest spatial neighbours of {sensors[s]}")
        axes[0].set_xlabel("attention weight (mean over steps, heads)")
        if ds.network.coords is not None:
            xy = np.asarray(ds.network.coords)
            weights = dense_row(rows, cols, s)
            points = axes[1].scatter(xy[:, 0], xy[:, 1], c=weights, cmap="magma_r", s=25)
            axes[1].scatter(*xy[s], marker="*", s=200, c="tab:blue")
            axes[1].set_title(f"attention from {sensors[s]} (★)")
        elif rows.shape[1] == len(sensors) <= DENSE_PLOT:  # dense attention of a small network: all of it
            points = axes[1].imshow(rows, cmap="magma_r", aspect="auto")
            axes[1].set_title("spatial attention (row attends to column)")
        else:
            points = axes[1].imshow(dense_row(rows, cols, s)[None], cmap="magma_r", aspect="auto")
            axes[1].set_title(f"attention from {sensors[s]} over the sensors")
        fig.colorbar(points, ax=axes[1])
        fig.tight_layout()
        fig.savefig(out_dir / "spatial.png", dpi=100)
        plt.close(fig)
        summary["files"] += [str(out_dir / "spatial.png"), str(out_dir / "neighbours.json")]
    return summary
