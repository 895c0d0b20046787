"""Training batches by sensor block, for models with blocks (the STFormer's `block_size`, `training.partition`).

Each batch is `batch_size` windows of one block's sensors — its home sensors and their halo — with the loss
on the home sensors only, so a training step costs one block rather than the whole network. With one
spatial layer this is exactly the whole-network forward's computation for those sensors; with more, the
halo's deeper states are the block's own (as in Cluster-GCN). The block of each batch is drawn at random.
No I/O, no models built here.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from training.data import WindowData


class ShardSampler:
    """Draws a block per batch and cuts its windows: `members [P, S]`, `home [P, S]` 1.0 on home slots."""

    def __init__(self, members: torch.Tensor, home: torch.Tensor) -> None:
        self.members = members
        self.home = home

    @classmethod
    def of(cls, model: nn.Module) -> ShardSampler | None:
        """The sampler of a model's blocks; None for a model without blocks or with one (the network)."""
        members = getattr(model, "block_members", None)
        if not isinstance(members, torch.Tensor) or len(members) < 2:
            return None
        home = torch.zeros(members.numel())
        home[model.block_home.cpu()] = 1.0  # type: ignore[index]
        return cls(members.cpu(), home.reshape(members.shape))

    @property
    def sensors(self) -> int:
        """Sensors per sample."""
        return int(self.members.shape[1])

    def batch(
        self, data: WindowData, starts: np.ndarray, rng: np.random.Generator
    ) -> tuple[tuple[torch.Tensor, ...], int]:
        """One block's windows (x, tf, mask, y, y_mask as `WindowData.batch` cuts them, y_mask zero on the
        halo) and the block's index, which the model's forward takes as `block`."""
        p = int(rng.integers(len(self.members)))
        x, tf, m, y, ym = data.batch(starts, self.members[p])
        return (x, tf, m, y, ym * self.home[p][:, None]), p  # ym [B, H, S, out]
