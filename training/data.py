"""Model inputs from a `SensorDataset`: time features, windows and the field's chronological splits.

No I/O and no models; the readers live in `stream.datasets`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from stream.datasets import SensorDataset
from training.scaler import StandardScaler

DAY_MS = 86_400_000
YEAR_DAYS = 365.2425  # mean Gregorian year: the phase drifts by under a day per century


def time_features(step_ts: np.ndarray) -> np.ndarray:
    """`step_ts [...]` int64 epoch ms UTC -> `[..., 3]` float32.

    Feature 0 is the time of day in [0, 1), feature 1 the day of week 0..6 (Monday = 0), feature 2 the
    time of year in [0, 1) (0 at 1 January; what daily data is seasonal in).
    """
    ts = np.asarray(step_ts, dtype=np.int64)
    tod = (ts % DAY_MS) / DAY_MS
    dow = (ts // DAY_MS + 3) % 7  # 1970-01-01 was a Thursday
    toy = np.remainder(ts / DAY_MS, YEAR_DAYS) / YEAR_DAYS
    return np.stack([tod, dow, toy], axis=-1).astype(np.float32)


@dataclass(frozen=True)
class Protocol:
    """The field's evaluation protocol for one dataset: step ranges `[start, end)` of each chronological part.

    Windows (input `window` + `horizon` steps) lie wholly inside one part, so no target leaks across.
    """

    name: str
    window: int
    horizon: int
    train: tuple[int, int]
    val: tuple[int, int]
    test: tuple[int, int]
    targets: tuple[int, ...]  # forecast feature indices
    trajectory: tuple[int, ...] = (3, 6, 9, 12)  # T-GCN-style trajectory lengths reported

    def part(self, name: str) -> tuple[int, int]:
        if name == "train+val":  # adjacent parts: the refit of a recipe chosen on validation
            return self.train[0], self.val[1]
        if name not in ("train", "val", "test"):
            raise ValueError(f"unknown split {name!r}: expected train, val, train+val or test")
        return getattr(self, name)

    def starts(self, name: str, stride: int = 1) -> np.ndarray:
        """First input step of every window inside part `name`."""
        start, end = self.part(name)
        return np.arange(start, end - self.window - self.horizon + 1, stride, dtype=np.int64)


def protocol_for(
    ds: SensorDataset, *, window: int = 12, horizon: int | None = None, targets: tuple[int, ...] | None = None
) -> Protocol:
    """Los-loop / T-GCN: 80/20 train/test, last fifth of train as validation. PEMS: 6:2:2, target flow.

    Daily data (de-pm10): 7:1:2 with horizons 1–7. Anything else: 6:2:2, horizon 12, every feature forecast.
    """
    t = ds.n_steps
    daily = ds.network.step_ms >= DAY_MS
    horizon = horizon or (7 if daily else 12)
    if targets is None:
        targets = (0,) if ds.network.name.startswith("pems") else tuple(range(ds.network.n_features))
    if ds.network.name in ("los-loop", "sz-taxi"):
        name, test_start = "tgcn", int(0.8 * t)
        val_start = int(0.8 * test_start)
    elif daily:
        name, val_start, test_start = "daily-7:1:2", int(0.7 * t), int(0.8 * t)
    else:
        name, val_start, test_start = "6:2:2", int(0.6 * t), int(0.8 * t)
    trajectory = tuple(k for k in ((1, 3, 7) if daily else (3, 6, 9, 12)) if k <= horizon)
    return Protocol(
        name, window, horizon, (0, val_start), (val_start, test_start), (test_start, t), targets, trajectory
    )


def fill_forward(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Last-observation filling along steps, as the stream delivers windows: `[T, N, F]` -> `[T, N, F]`.

    Unobserved steps take the latest observed value before them; NaN where nothing was observed yet.
    """
    observed = (mask > 0) & np.isfinite(values)  # [T, N, F]
    t = np.arange(values.shape[0])[:, None, None]  # [T, 1, 1]
    last = np.maximum.accumulate(np.where(observed, t, -1), axis=0)  # [T, N, F] index of last observation
    filled = np.take_along_axis(values, np.maximum(last, 0), axis=0)  # [T, N, F]
    return np.where(last >= 0, filled, np.nan).astype(np.float32)


def target_mask(ds: SensorDataset, targets: tuple[int, ...]) -> np.ndarray:
    """`[T, N, out]` 1 where a target counts for metrics and loss: observed, finite, and non-zero when the
    network says `zero_is_missing` (zero is otherwise a real value, e.g. a count)."""
    v = ds.values[..., list(targets)]
    keep = (ds.mask[..., list(targets)] > 0) & np.isfinite(v)
    if ds.zero_is_missing:
        keep &= v != 0
    return keep.astype(np.float32)


@dataclass
class WindowData:
    """Model-ready arrays over all steps; windows are cut on demand by `batch(starts)`.

    x [T, N, F] scaled and last-observation filled (0 where never observed), mask [T, N, F],
    time_features [T, 3], y [T, N, out] scaled targets, y_mask [T, N, out].
    """

    x: torch.Tensor
    mask: torch.Tensor
    time_features: torch.Tensor
    y: torch.Tensor
    y_mask: torch.Tensor
    window: int
    horizon: int

    @classmethod
    def build(cls, ds: SensorDataset, protocol: Protocol, scaler: StandardScaler) -> WindowData:
        filled = fill_forward(ds.values, ds.mask)  # [T, N, F]
        x = np.nan_to_num(scaler.transform(filled))  # [T, N, F]
        mask = ((ds.mask > 0) & np.isfinite(ds.values)).astype(np.float32)  # [T, N, F]
        targets = list(protocol.targets)
        y = np.nan_to_num(scaler.transform(ds.values)[..., targets])  # [T, N, out]
        return cls(
            x=torch.from_numpy(x),
            mask=torch.from_numpy(mask),
            time_features=torch.from_numpy(time_features(ds.step_ts)),
            y=torch.from_numpy(y),
            y_mask=torch.from_numpy(target_mask(ds, protocol.targets)),
            window=protocol.window,
            horizon=protocol.horizon,
        )

    def batch(
        self, starts: np.ndarray | torch.Tensor, sensors: np.ndarray | torch.Tensor | None = None
    ) -> tuple[torch.Tensor, ...]:
        """Windows starting at `starts [B]`: x [B, W, N, F], tf [B, W, 3], mask [B, W, N, F],
        y [B, H, N, out], y_mask [B, H, N, out]; with `sensors [S]`, only those sensors (N = S), in that order."""
        s = torch.as_tensor(starts, dtype=torch.long)[:, None]  # [B, 1]
        inp = s + torch.arange(self.window)  # [B, W]
        out = s + self.window + torch.arange(self.horizon)  # [B, H]
        if sensors is None:
            return self.x[inp], self.time_features[inp], self.mask[inp], self.y[out], self.y_mask[out]
        n = torch.as_tensor(sensors, dtype=torch.long)  # [S]
        inp_n, out_n = inp[:, :, None], out[:, :, None]  # [B, W, 1], [B, H, 1]
        return (
            self.x[inp_n, n],
            self.time_features[inp],
            self.mask[inp_n, n],
            self.y[out_n, n],
            self.y_mask[out_n, n],
        )


def fit_scaler(ds: SensorDataset, protocol: Protocol) -> StandardScaler:
    """Standard scaler over the training part's observed values only (zeros excluded when the network says
    `zero_is_missing`)."""
    start, end = protocol.train
    values, mask = ds.values[start:end], ds.mask[start:end]
    if ds.zero_is_missing:
        mask = mask * (values != 0)
    return StandardScaler.fit(values, mask)
