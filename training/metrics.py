"""Masked forecast metrics per horizon step: MAE, RMSE, MAPE, and T-GCN-style trajectory scores.

Missing targets (mask 0) are excluded everywhere; MAPE also excludes zero targets. Trajectory scores pool
all errors over steps 1..k (T-GCN's '15 min' RMSE is the RMSE over the whole 3-step trajectory).
Accumulates over batches so a whole test split never has to sit in memory. Pure numpy; no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

MAPE_EPS = 1e-4  # targets with |y| below this are zeros for MAPE


class HorizonMetrics:
    """Running sums of errors per horizon step for predictions `[B, H, N, out]`."""

    def __init__(self, horizon: int) -> None:
        self.horizon = horizon
        self.abs = np.zeros(horizon)
        self.sq = np.zeros(horizon)
        self.ape = np.zeros(horizon)
        self.n = np.zeros(horizon)
        self.n_ape = np.zeros(horizon)

    def update(self, pred: np.ndarray, target: np.ndarray, mask: np.ndarray) -> None:
        """pred, target, mask: [B, H, N, out]; mask 1 where the target counts."""
        keep = (mask > 0) & np.isfinite(target) & np.isfinite(pred)  # [B, H, N, out]
        err = np.where(keep, pred.astype(np.float64) - target, 0.0)  # [B, H, N, out]
        nonzero = keep & (np.abs(target) > MAPE_EPS)
        ape = np.where(nonzero, np.abs(err) / np.where(nonzero, np.abs(target), 1.0), 0.0)
        axes = (0, 2, 3)
        self.abs += np.abs(err).sum(axes)
        self.sq += (err**2).sum(axes)
        self.ape += ape.sum(axes)
        self.n += keep.sum(axes)
        self.n_ape += nonzero.sum(axes)

    def _scores(self, steps: slice) -> dict[str, float]:
        n, n_ape = self.n[steps].sum(), self.n_ape[steps].sum()
        return {
            "mae": float(self.abs[steps].sum() / n) if n else float("nan"),
            "rmse": float(np.sqrt(self.sq[steps].sum() / n)) if n else float("nan"),
            "mape": float(100 * self.ape[steps].sum() / n_ape) if n_ape else float("nan"),
            "count": int(n),
        }

    def per_step(self) -> list[dict[str, float]]:
        """Scores of each horizon step 1..H."""
        return [{"step": h + 1, **self._scores(slice(h, h + 1))} for h in range(self.horizon)]

    def average(self) -> dict[str, float]:
        """Scores pooled over all horizon steps (the usual '12-step average')."""
        return self._scores(slice(0, self.horizon))

    def trajectory(self, lengths: Sequence[int]) -> dict[int, dict[str, float]]:
        """Scores pooled over steps 1..k for each k in `lengths` (T-GCN's 15/30/45/60-min figures)."""
        return {k: self._scores(slice(0, k)) for k in lengths if k <= self.horizon}

    def summary(self, lengths: Sequence[int] = (3, 6, 9, 12)) -> dict[str, Any]:
        return {
            "per_step": self.per_step(),
            "average": self.average(),
            "trajectory": {str(k): v for k, v in self.trajectory(lengths).items()},
        }


def masked_mae(pred: np.ndarray, target: np.ndarray, mask: np.ndarray) -> float:
    """Mean absolute error over entries where `mask` is 1."""
    m = HorizonMetrics(pred.shape[1])
    m.update(pred, target, mask)
    return m.average()["mae"]
