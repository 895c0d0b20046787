"""Training batches by sensor block, for models with blocks (the STFormer's `block_size`, `training.partition`).

Each batch is `batch_size` windows of one block's sensors — its home sensors and their halo — so a training
step costs one block rather than the whole network. With one spatial layer the forward is exactly the
whole-network forward's computation for the block's home sensors. The loss covers the halo too: its
forecasts, made at the edge of the block's context, are training signal at no extra cost (serving keeps only
home slots). The block of each batch is drawn at random. No I/O, no models built here.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from training.data import WindowData


class ShardSampler:
    """Draws a block per batch and cuts its windows; `members [P, S]` are the blocks' sensors."""

    def __init__(self, members: torch.Tensor) -> None:
        self.members = members

    @classmethod
    def of(cls, model: nn.Module) -> ShardSampler | None:
        """The sampler of a model's blocks; None for a model without blocks or with one (the network)."""
        members = getattr(model, "block_members", None)
        if not isinstance(members, torch.Tensor) or len(members) < 2:
            return None
        return cls(members.cpu())

    @property
    def sensors(self) -> int:
        """Sensors per sample."""
        return int(self.members.shape[1])

    def batch(
        self, data: WindowData, starts: np.ndarray, rng: np.random.Generator
    ) -> tuple[tuple[torch.Tensor, ...], int]:
        """One block's windows (x, tf, mask, y, y_mask as `WindowData.batch` cuts them, N = S) and the
        block's index, which the model's forward takes as `block`."""
        p = int(rng.integers(len(self.members)))
        return data.batch(starts, self.members[p]), p
