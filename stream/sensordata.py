"""What every dataset reader returns and raises: `SensorDataset` (a whole recording on a network's grid of
steps) and `DatasetError`; `gaps` summarises where a recording has holes.

The readers live in `stream.table` (any sensor table) and `stream.datasets` (the shipped layouts, the
archive); `training.data` turns a `SensorDataset` into model inputs. No I/O here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from stream.network import Network


class DatasetError(ValueError):
    """A dataset file or folder is missing, has an unknown layout, or cannot be parsed."""


@dataclass(frozen=True)
class SensorDataset:
    """A whole recording on the network's grid of steps.

    `values [T, N, F]` float32 in original units (NaN where missing), `mask [T, N, F]` uint8 (1 = observed),
    `step_ts [T]` int64 epoch ms UTC of each step's start, `adjacency [N, N]` float32 if the files give one.
    """

    network: Network
    values: np.ndarray
    mask: np.ndarray
    step_ts: np.ndarray
    adjacency: np.ndarray | None = None

    def __post_init__(self) -> None:
        t, n, f = self.values.shape
        if (n, f) != (self.network.n_sensors, self.network.n_features):
            raise DatasetError(
                f"values have {n} sensors × {f} features, network {self.network.name!r} has "
                f"{self.network.n_sensors} × {self.network.n_features}"
            )
        if self.mask.shape != self.values.shape:
            raise DatasetError(f"mask shape {self.mask.shape} differs from values shape {self.values.shape}")
        if self.step_ts.shape != (t,):
            raise DatasetError(f"step_ts shape {self.step_ts.shape}, expected ({t},)")

    @property
    def n_steps(self) -> int:
        return int(self.values.shape[0])

    @property
    def zero_is_missing(self) -> bool:
        """The network's convention: a reading of exactly 0 means "no reading" (metrics exclude it)."""
        return self.network.zero_is_missing


def gaps(ds: SensorDataset, top: int = 5) -> dict[str, Any]:
    """Where the recording has holes: the missing share of sensor-steps (a sensor-step is missing when no
    feature was observed), steps with no reading at all, the sensors missing most, and the longest gap."""
    missing: np.ndarray = ds.mask.sum(axis=2) == 0  # [T, N]
    t, n = missing.shape
    per_sensor = missing.mean(axis=0)  # [N]
    worst = np.argsort(-per_sensor, kind="stable")[:top]
    edges = np.diff(np.pad(missing.T.astype(np.int8), ((0, 0), (1, 1))), axis=1)  # [N, T + 1]
    starts, ends = np.nonzero(edges == 1), np.nonzero(edges == -1)  # runs in sensor-major order
    lengths = ends[1] - starts[1]
    longest: dict[str, Any] | None = None
    if len(lengths):
        k = int(np.argmax(lengths))
        sensor, first = int(starts[0][k]), int(starts[1][k])
        longest = {
            "sensor": ds.network.sensors[sensor],
            "steps": int(lengths[k]),
            "from_ms": int(ds.step_ts[first]),
        }
    return {
        "steps": t,
        "sensors": n,
        "missing_share": float(missing.mean()) if missing.size else 0.0,
        "empty_steps": int(missing.all(axis=1).sum()),
        "never_observed": [ds.network.sensors[i] for i in np.flatnonzero(missing.all(axis=0))],
        "most_missing": [(ds.network.sensors[i], float(per_sensor[i])) for i in worst if per_sensor[i] > 0],
        "longest_gap": longest,
    }
