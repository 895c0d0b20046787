"""STFormer: a STAEformer-class transformer — input, time and adaptive per-(step, sensor) embeddings,
temporal attention over each sensor's window, spatial attention across all sensors at each step, one
linear projection to the whole horizon. The accurate model (a GPU trains it at full size).

It takes scaled inputs and shares the models' interface (`training.seq2seq` describes it):
`forward(x [B, T, N, F], time_features [B, T, 3], mask [B, T, N, F]) -> [B, H, N, out]`.
`attention_maps` returns the last temporal and spatial layers' weights for `explain`. No I/O, no globals.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from training.attention import AttentionModel, SelfAttentionLayer


@dataclass
class STFormerConfig:
    n_nodes: int
    in_features: int = 1
    targets: tuple[int, ...] = (0,)
    window: int = 12
    horizon: int = 12
    steps_per_day: int = 288  # time-of-day slots; fewer than the day's steps pool neighbouring steps
    input_dim: int = 24
    tod_dim: int = 24
    dow_dim: int = 24
    adaptive_dim: int = 80  # learned per-(step, node) embedding, STAEformer's key ingredient
    doy_dim: int = 0  # time-of-year embedding (daily data, where time of day says nothing)
    graph_bias: bool = False  # add a learned multiple of the sensor graph to the spatial attention logits
    heads: int = 4
    temporal_layers: int = 3
    spatial_layers: int = 3
    ffn_dim: int = 256
    dropout: float = 0.1
    residual: bool = False

    @property
    def model_dim(self) -> int:
        return self.input_dim + self.tod_dim + self.dow_dim + self.doy_dim + self.adaptive_dim


class STFormer(AttentionModel):
    """Input projection + time-of-day, day-of-week and adaptive node embeddings, temporal attention layers
    (each sensor over its window), spatial attention layers (all sensors at each step), then one linear
    projection from the whole window to all horizon steps."""

    def __init__(self, config: STFormerConfig) -> None:
        super().__init__()
        self.config = c = config
        out = len(c.targets)
        self.input_proj = nn.Linear(2 * c.in_features, c.input_dim)  # values and mask
        # A zero width drops an embedding (CUDA rejects zero-width ones).
        self.tod_embedding = nn.Embedding(max(c.steps_per_day, 1), c.tod_dim) if c.tod_dim else None
        self.dow_embedding = nn.Embedding(7, c.dow_dim) if c.dow_dim else None
        # A smooth function of the season (two harmonics): a table of 366 days would see each day only
        # once per training year.
        self.doy_proj = nn.Linear(4, c.doy_dim) if c.doy_dim else None
        self.adaptive_embedding = nn.Parameter(torch.empty(c.window, c.n_nodes, c.adaptive_dim))
        nn.init.xavier_uniform_(self.adaptive_embedding)
        d = c.model_dim
        self.temporal = nn.ModuleList(
            SelfAttentionLayer(d, c.heads, c.ffn_dim, c.dropout) for _ in range(c.temporal_layers)
        )
        self.spatial = nn.ModuleList(
            SelfAttentionLayer(d, c.heads, c.ffn_dim, c.dropout) for _ in range(c.spatial_layers)
        )
        if c.graph_bias:
            # Filled from the network's edges by `set_graph`; saved with the weights.
            self.register_buffer("adjacency", torch.zeros(c.n_nodes, c.n_nodes))  # [N, N]
            self.graph_scale = nn.Parameter(torch.ones(c.spatial_layers, c.heads, 1, 1))
        self.norm = nn.LayerNorm(d)
        self.output_proj = nn.Linear(c.window * d, c.horizon * out)
        self.register_buffer("targets", torch.tensor(c.targets, dtype=torch.long), persistent=False)

    def _forward(
        self, x: torch.Tensor, time_features: torch.Tensor, mask: torch.Tensor, need_weights: bool
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The forecast [B, H, N, out] and, with `need_weights`, the attention maps (else none):
        {"temporal": [B, N, heads, T, T], "spatial": [B, T, heads, N, N]} from the last layer of each."""
        b, t, n, _ = x.shape
        c = self.config
        if (t, n) != (c.window, c.n_nodes):
            raise ValueError(f"STFormer built for window {c.window} × {c.n_nodes} sensors, got {t} × {n}")
        parts = [self.input_proj(torch.cat([x, mask], dim=-1))]  # [B, T, N, input_dim]
        if self.tod_embedding is not None:
            spd = max(c.steps_per_day, 1)
            tod = (time_features[..., 0] * spd).round().long() % spd  # [B, T]
            parts.append(self.tod_embedding(tod)[:, :, None].expand(-1, -1, n, -1))  # [B, T, N, tod_dim]
        if self.dow_embedding is not None:
            dow = time_features[..., 1].long() % 7  # [B, T]
            parts.append(self.dow_embedding(dow)[:, :, None].expand(-1, -1, n, -1))  # [B, T, N, dow_dim]
        if self.doy_proj is not None:
            year = (
                2 * math.pi * time_features[..., 2:3] * torch.tensor([1.0, 2.0], device=x.device)
            )  # [B, T, 2]
            doy = self.doy_proj(torch.cat([year.sin(), year.cos()], dim=-1))  # [B, T, doy_dim]
            parts.append(doy[:, :, None].expand(-1, -1, n, -1))  # [B, T, N, doy_dim]
        parts.append(self.adaptive_embedding.expand(b, -1, -1, -1))  # [B, T, N, adaptive_dim]
        h = torch.cat(parts, dim=-1)  # [B, T, N, D]
        h = h.transpose(1, 2).reshape(b * n, t, -1)  # [B*N, T, D]
        maps: dict[str, torch.Tensor] = {}
        for layer in self.temporal:
            h, w = layer(h, need_weights=need_weights)
            if w is not None:  # the last layer's are kept
                maps["temporal"] = w.reshape(b, n, *w.shape[1:])  # [B, N, heads, T, T]
        h = h.reshape(b, n, t, -1).transpose(1, 2).reshape(b * t, n, -1)  # [B*T, N, D]
        for i, layer in enumerate(self.spatial):
            bias = self.graph_scale[i] * self.adjacency if c.graph_bias else None  # [heads, N, N]
            h, w = layer(h, bias, need_weights)
            if w is not None:
                maps["spatial"] = w.reshape(b, t, *w.shape[1:])  # [B, T, heads, N, N]
        h = self.norm(h).reshape(b, t, n, -1).transpose(1, 2).reshape(b, n, -1)  # [B, N, T*D]
        y = self.output_proj(h).reshape(b, n, c.horizon, -1).transpose(1, 2)  # [B, H, N, out]
        if c.residual:
            y = y + x[:, -1:].index_select(-1, self.targets)
        return y, maps

    @torch.no_grad()
    def set_graph(self, edges: Sequence[tuple[int, int, float]]) -> STFormer:
        """Fill the graph bias from `(from, to, weight)` edges, symmetric, weights scaled to [0, 1], self
        loops 1."""
        a = torch.zeros(self.config.n_nodes, self.config.n_nodes)  # [N, N]
        for i, j, w in edges:
            a[i, j] = a[j, i] = max(float(a[i, j]), float(w))
        a = a / a.max().clamp(min=1e-12)
        a.fill_diagonal_(1.0)
        self.adjacency.copy_(a)
        return self
