"""Readers for benchmark sensor-network files, all returning one `SensorDataset`.

Pure numpy/pandas file readers: no torch, no windowing, no scaling (those live in `training.data`).
"""

from __future__ import annotations

from dataclasses import dataclass

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
