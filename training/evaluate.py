"""Evaluation by the field's protocol: forecasts through the serving `Predictor`, masked metrics per step.

Windows come from the protocol's test (or validation) part, inputs are last-observation filled exactly as
the stream delivers them, and metrics are computed in original units. Produces a JSON-ready report and a
rich per-horizon table; `DayOfYearClimatology` is the seasonal baseline for daily data. Both say which
zero convention scored them: the network's `zero_is_missing` (0 = no reading, excluded) or zeros as values.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from typing import Protocol as TypingProtocol

import numpy as np
from rich.table import Table

from stream.datasets import SensorDataset
from training.data import DAY_MS, Protocol, fill_forward, protocol_for, target_mask
from training.metrics import HorizonMetrics


class Forecaster(TypingProtocol):
    """What evaluation needs from a forecaster; `training.predictor.Predictor` is one."""

    window: int
    horizon: int
    version: str
    network_fingerprint: str
    out_features: tuple[str, ...]

    def predict(self, values: np.ndarray, mask: np.ndarray, step_ts: np.ndarray) -> np.ndarray: ...


def zeros_convention(zero_is_missing: bool) -> str:
    """How a score treated readings of exactly 0, as reports and tables state it."""
    if zero_is_missing:
        return "zeros are missing readings (network zero_is_missing = true): excluded from the metrics"
    return "zeros are real values (network zero_is_missing = false): scored like any value"


def _label(steps: int, step_ms: int) -> str:
    minutes = steps * step_ms / 60_000
    return f"{steps * step_ms / DAY_MS:g} d" if step_ms >= DAY_MS else f"{minutes:g} min"


def evaluate(
    forecaster: Forecaster,
    ds: SensorDataset,
    *,
    split: str = "test",
    protocol: Protocol | None = None,
    batch_size: int = 64,
) -> dict[str, Any]:
    """Score `forecaster` on every window of `split`; returns the report (see `render_table`)."""
    if forecaster.network_fingerprint != ds.network.fingerprint():
        raise ValueError(
            f"forecaster {forecaster.version} was built for another network than {ds.network.name!r} "
            "(sensors, features or step length differ)"
        )
    targets = tuple(ds.network.feature_index[name] for name in forecaster.out_features)
    protocol = protocol or protocol_for(
        ds, window=forecaster.window, horizon=forecaster.horizon, targets=targets
    )
    filled = fill_forward(ds.values, ds.mask)  # [T, N, F]
    y_mask = target_mask(ds, targets)  # [T, N, out]
    starts = protocol.starts(split)
    metrics = HorizonMetrics(protocol.horizon)
    for i in range(0, len(starts), batch_size):
        s = starts[i : i + batch_size, None]  # [B, 1]
        inp = s + np.arange(protocol.window)  # [B, W]
        out = s + protocol.window + np.arange(protocol.horizon)  # [B, H]
        pred = forecaster.predict(filled[inp], ds.mask[inp], ds.step_ts[inp])  # [B, H, N, out]
        metrics.update(pred, ds.values[out][..., list(targets)], y_mask[out])
    summary = metrics.summary(protocol.trajectory)
    step_ms = ds.network.step_ms
    return {
        "dataset": ds.network.name,
        "network_fingerprint": ds.network.fingerprint(),
        "model": forecaster.version,
        "protocol": protocol.name,
        "split": split,
        "split_steps": list(protocol.part(split)),
        "windows": len(starts),
        "window": protocol.window,
        "horizon": protocol.horizon,
        "targets": list(forecaster.out_features),
        "zero_is_missing": ds.zero_is_missing,
        "zeros": zeros_convention(ds.zero_is_missing),
        "step_ms": step_ms,
        "per_step": [{**row, "lead": _label(row["step"], step_ms)} for row in summary["per_step"]],
        "average": summary["average"],
        "trajectory": {
            _label(int(k), step_ms): {"steps": f"1-{k}", **v} for k, v in summary["trajectory"].items()
        },
    }


def render_table(report: dict[str, Any], baseline: dict[str, Any] | None = None) -> Table:
    """Per-horizon table: every step, the trajectory averages and the all-step average."""
    title = f"{report['model']} on {report['dataset']} ({report['protocol']}, {report['windows']} windows)"
    table = Table(title=title, caption=zeros_convention(report["zero_is_missing"]))
    for column in ("step", "lead", "MAE", "RMSE", "MAPE %"):
        table.add_column(column, justify="right")
    if baseline is not None:
        table.add_column(f"RMSE {baseline['model']}", justify="right")
    rows = [(str(r["step"]), r["lead"], r) for r in report["per_step"]]
    rows += [(f"1-{v['steps'].split('-')[1]}", f"traj {k}", v) for k, v in report["trajectory"].items()]
    rows.append(("all", "average", report["average"]))
    base_rows = (
        [*baseline["per_step"], *baseline["trajectory"].values(), baseline["average"]] if baseline else []
    )
    for i, (step, lead, r) in enumerate(rows):
        cells = [step, lead, f"{r['mae']:.3f}", f"{r['rmse']:.3f}", f"{r['mape']:.2f}"]
        if baseline is not None:
            cells.append(f"{base_rows[i]['rmse']:.3f}")
        table.add_row(*cells)
    return table


def write_json(report: dict[str, Any], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1, allow_nan=True))
    return path


class DayOfYearClimatology:
    """Seasonal baseline for daily data: each sensor's training mean on the same day of year (± 15 days)."""

    def __init__(self, ds: SensorDataset, protocol: Protocol, *, half_width: int = 15) -> None:
        start, end = protocol.train
        targets = list(protocol.targets)
        v = ds.values[start:end][..., targets].astype(np.float64)  # [T, N, out]
        keep = target_mask(ds, protocol.targets)[start:end] > 0  # [T, N, out]
        doy = self._doy(ds.step_ts[start:end])  # [T]
        sums = np.zeros((366, *v.shape[1:]))
        counts = np.zeros((366, *v.shape[1:]))
        np.add.at(sums, doy, np.where(keep, v, 0.0))
        np.add.at(counts, doy, keep)
        kernel = np.arange(-half_width, half_width + 1)
        sums = sum(np.roll(sums, k, axis=0) for k in kernel)
        counts = sum(np.roll(counts, k, axis=0) for k in kernel)
        overall = np.where(keep, v, 0).sum(0) / np.maximum(keep.sum(0), 1)  # [N, out]
        self.table = np.where(counts > 0, sums / np.maximum(counts, 1), overall).astype(np.float32)
        self.window, self.horizon = protocol.window, protocol.horizon
        self.step_ms = ds.network.step_ms
        self.version = "baseline-climatology"
        self.network_fingerprint = ds.network.fingerprint()
        self.out_features = tuple(ds.network.feature_names[i] for i in targets)

    @staticmethod
    def _doy(step_ts: np.ndarray) -> np.ndarray:
        ts = np.asarray(step_ts).astype("datetime64[ms]")
        return (ts.astype("datetime64[D]") - ts.astype("datetime64[Y]")).astype(np.int64)  # 0..365

    def predict(self, values: np.ndarray, mask: np.ndarray, step_ts: np.ndarray) -> np.ndarray:
        """[B, window, N, F] -> [B, horizon, N, out] from the day of year of each future step."""
        future = step_ts[:, -1:] + self.step_ms * np.arange(1, self.horizon + 1)  # [B, H]
        return self.table[self._doy(future)]  # [B, H, N, out]
