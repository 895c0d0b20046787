"""The rolling input window: the last `size` sealed steps as `[steps, nodes, features]` arrays for a model.

A ring buffer over sealed steps. Steps must be consecutive on the grid; the windower seals empty steps,
so a gap only appears when the caller skips steps (e.g. after a restart that lost the tail). A gap
empties the window and starts again from the new step (`gaps` counts them) rather than feed a model
steps that are not adjacent; a step that is not newer than the last one is a caller bug (ValueError).

Pure numpy, no I/O.
"""

from __future__ import annotations

import numpy as np

from stream.network import Network
from stream.window import SealedStep


class RollingWindow:
    """The last `size` consecutive sealed steps, oldest first."""

    def __init__(self, network: Network, size: int) -> None:
        if size < 1:
            raise ValueError(f"window size must be >= 1, got {size}")
        self.network = network
        self.size = size
        shape = (size, network.n_sensors, network.n_features)
        self._values = np.full(shape, np.nan, dtype=np.float32)  # [T, N, F] ring
        self._mask = np.zeros(shape, dtype=np.uint8)  # [T, N, F] ring
        self._step_ts = np.zeros(size, dtype=np.int64)  # [T] ring
        self._count = 0  # steps held, at most size
        self._head = 0  # ring slot of the next push
        self.last_step_ts: int | None = None
        self.gaps = 0

    def push(self, step: SealedStep) -> None:
        """Append one sealed step (`values` and `mask` `[N, F]`), dropping the oldest when full."""
        step_ts = step.step_ts
        step_ms = self.network.step_ms
        if self.last_step_ts is not None:
            if step_ts <= self.last_step_ts:
                raise ValueError(f"step {step_ts} is not after the last pushed step {self.last_step_ts}")
            if step_ts != self.last_step_ts + step_ms:
                self.gaps += 1
                self._count = 0
        self._values[self._head] = step.values
        self._mask[self._head] = step.mask
        self._step_ts[self._head] = step_ts
        self._head = (self._head + 1) % self.size
        self._count = min(self._count + 1, self.size)
        self.last_step_ts = step_ts

    @property
    def ready(self) -> bool:
        """True once `size` consecutive steps are held."""
        return self._count == self.size

    def __len__(self) -> int:
        return self._count

    def _order(self) -> np.ndarray:
        return (self._head - self._count + np.arange(self._count)) % self.size  # oldest first

    def values(self) -> np.ndarray:
        """float32 `[T, N, F]` (T = steps held, `size` when ready), oldest first; a copy."""
        return self._values[self._order()]

    def mask(self) -> np.ndarray:
        """uint8 `[T, N, F]`, 1 = observed; a copy."""
        return self._mask[self._order()]

    def step_ts(self) -> np.ndarray:
        """int64 `[T]` step starts (epoch ms), consecutive."""
        return self._step_ts[self._order()]
