"""Baselines with the learned models' interface: persistence and historical average by time of week.

They sanity-check every evaluation and gate retraining (a new model must beat them). Like the models in
`training.model` they take scaled inputs and return scaled outputs; no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn


@dataclass
class PersistenceConfig:
    horizon: int = 12
    targets: tuple[int, ...] = (0,)  # input feature indices that are forecast


class Persistence(nn.Module):
    """Every horizon step repeats the last input step (the last-observation-filled value)."""

    def __init__(self, config: PersistenceConfig) -> None:
        super().__init__()
        self.config = config
        self.register_buffer("targets", torch.tensor(config.targets, dtype=torch.long), persistent=False)

    def forward(self, x: torch.Tensor, time_features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x [B, T, N, F], time_features [B, T, 3], mask [B, T, N, F] -> [B, H, N, out]."""
        last = x[:, -1:].index_select(-1, self.targets)  # [B, 1, N, out]
        return last.expand(-1, self.config.horizon, -1, -1).contiguous()  # [B, H, N, out]


@dataclass
class HistoricalAverageConfig:
    n_nodes: int
    steps_per_day: int = 288
    horizon: int = 12
    targets: tuple[int, ...] = (0,)


class HistoricalAverage(nn.Module):
    """The training mean of each sensor at the same step of the week (else of the day, else overall)."""

    def __init__(self, config: HistoricalAverageConfig) -> None:
        super().__init__()
        self.config = config
        slots = 7 * config.steps_per_day
        self.register_buffer("table", torch.zeros(slots, config.n_nodes, len(config.targets)))  # [S, N, out]

    @torch.no_grad()
    def fit(self, x: np.ndarray, time_features: np.ndarray, mask: np.ndarray) -> HistoricalAverage:
        """Fill the table from scaled training data.

        x [T, N, F], time_features [T, 3], mask [T, N, F].
        """
        targets = list(self.config.targets)
        v = np.nan_to_num(x[..., targets].astype(np.float64))  # [T, N, out]
        m = ((mask[..., targets] > 0) & np.isfinite(x[..., targets])).astype(np.float64)  # [T, N, out]
        slot = self._slot(torch.from_numpy(time_features)).numpy()  # [T]
        sums = np.zeros(tuple(self.table.shape))
        counts = np.zeros(tuple(self.table.shape))
        np.add.at(sums, slot, v * m)
        np.add.at(counts, slot, m)
        # Fallbacks for slots the training data never saw: same time of day on any weekday, then overall.
        spd = self.config.steps_per_day
        day_sums = sums.reshape(7, spd, *sums.shape[1:]).sum(0)  # [spd, N, out]
        day_counts = counts.reshape(7, spd, *counts.shape[1:]).sum(0)
        overall = (v * m).sum(0) / np.maximum(m.sum(0), 1)  # [N, out]
        by_day = np.where(
            day_counts > 0, day_sums / np.maximum(day_counts, 1), overall[None]
        )  # [spd, N, out]
        table = np.where(counts > 0, sums / np.maximum(counts, 1), np.tile(by_day, (7, 1, 1)))  # [S, N, out]
        self.table.copy_(torch.from_numpy(table).float())
        return self

    def _slot(self, time_features: torch.Tensor) -> torch.Tensor:
        spd = self.config.steps_per_day
        step_of_day = torch.round(time_features[..., 0] * spd).long() % spd
        return time_features[..., 1].long() * spd + step_of_day

    def forward(self, x: torch.Tensor, time_features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x [B, T, N, F], time_features [B, T, 3], mask [B, T, N, F] -> [B, H, N, out]."""
        ahead = torch.arange(1, self.config.horizon + 1, device=x.device)  # [H]
        slots = (self._slot(time_features[:, -1])[:, None] + ahead) % self.table.shape[0]  # [B, H]
        return self.table[slots]  # [B, H, N, out]
