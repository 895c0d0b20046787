"""Per-feature standard scaling, fitted on the training part's observed values only.

The scaler travels with the model inside the checkpoint as plain tensors (`state_dict`/`from_state`), so
a served model scales its inputs exactly as it was trained. Pure numpy; no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


class StandardScaler:
    """`(x - mean) / std` per feature; `mean`, `std` have shape `[F]`."""

    def __init__(self, mean: Sequence[float] | np.ndarray, std: Sequence[float] | np.ndarray) -> None:
        self.mean = np.asarray(mean, dtype=np.float64).reshape(-1)
        self.std = np.asarray(std, dtype=np.float64).reshape(-1)
        if self.mean.shape != self.std.shape:
            raise ValueError(f"scaler mean {self.mean.shape} and std {self.std.shape} differ in shape")
        # A constant feature would divide by zero; scaling it by 1 keeps it exactly representable.
        self.std = np.where(self.std > 1e-8, self.std, 1.0)

    @classmethod
    def identity(cls, n_features: int) -> StandardScaler:
        return cls(np.zeros(n_features), np.ones(n_features))

    @classmethod
    def fit(cls, values: np.ndarray, mask: np.ndarray) -> StandardScaler:
        """Fit on `values [..., F]` where `mask [..., F]` is 1 (observed) and the value is finite."""
        keep = (mask > 0) & np.isfinite(values)
        flat_v = values.reshape(-1, values.shape[-1])  # [M, F]
        flat_k = keep.reshape(-1, values.shape[-1])  # [M, F]
        mean = np.zeros(values.shape[-1])
        std = np.ones(values.shape[-1])
        for f in range(values.shape[-1]):
            v = flat_v[flat_k[:, f], f].astype(np.float64)
            if v.size:
                mean[f], std[f] = v.mean(), v.std()
        return cls(mean, std)

    @property
    def n_features(self) -> int:
        return int(self.mean.shape[0])

    def transform(self, values: np.ndarray) -> np.ndarray:
        """Scale `values [..., F]`; NaN stays NaN."""
        return ((values - self.mean) / self.std).astype(np.float32)

    def inverse(self, scaled: np.ndarray, features: Sequence[int] | None = None) -> np.ndarray:
        """Unscale `scaled [..., len(features)]` whose last axis holds `features` (default: all)."""
        idx = list(range(self.n_features)) if features is None else list(features)
        return (scaled * self.std[idx] + self.mean[idx]).astype(np.float32)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"mean": torch.tensor(self.mean), "std": torch.tensor(self.std)}

    @classmethod
    def from_state(cls, state: dict[str, torch.Tensor]) -> StandardScaler:
        return cls(state["mean"].numpy(), state["std"].numpy())
