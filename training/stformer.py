"""STFormer: a STAEformer-class transformer — input, time and adaptive per-(step, sensor) embeddings,
temporal attention over each sensor's window, spatial attention across all sensors at each step, one
linear projection to the whole horizon. The accurate model (a GPU trains it at full size).

With `block_size` > 0 the spatial attention runs within blocks of that many sensors (`training.partition`:
home sensors plus a halo of their neighbours) instead of across all of them, so its cost grows linearly with
the network; the blocks are saved with the weights, and training may feed one block at a time (`block`).
The adaptive embedding still has one row per sensor, as in the dense model: a model fits one network.

It takes scaled inputs and shares the models' interface (`training.seq2seq` describes it):
`forward(x [B, T, N, F], time_features [B, T, 3], mask [B, T, N, F]) -> [B, H, N, out]`.
`attention_maps` returns the last temporal and spatial layers' weights for `explain`. No I/O, no globals.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import nn

from training.attention import AttentionModel, SelfAttentionLayer
from training.partition import Blocks


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
    # > 0: spatial attention within blocks of this many sensors (home + halo) instead of across all sensors;
    # `n_blocks` is the partition's count (`set_blocks`, from `training.partition`)
    block_size: int = 0
    n_blocks: int = 1

    @property
    def model_dim(self) -> int:
        return self.input_dim + self.tod_dim + self.dow_dim + self.doy_dim + self.adaptive_dim


class STFormer(AttentionModel):
    """Input projection + time-of-day, day-of-week and adaptive node embeddings, temporal attention layers
    (each sensor over its window), spatial attention layers (all sensors at each step), then one linear
    projection from the whole window to all horizon steps."""

    # buffers (declared for type checkers): blocks and graph bias exist only when configured
    block_members: torch.Tensor
    block_home: torch.Tensor
    adjacency: torch.Tensor
    targets: torch.Tensor

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
        size = min(c.block_size, c.n_nodes)
        if c.block_size:
            # Filled by `set_blocks`; saved with the weights, so a checkpoint keeps its partition.
            self.register_buffer("block_members", torch.zeros(c.n_blocks, size, dtype=torch.long))  # [P, S]
            self.register_buffer("block_home", torch.arange(c.n_nodes))  # [N]
        if c.graph_bias:
            # Filled from the network's edges by `set_graph`; saved with the weights. Per block with blocks.
            shape = (c.n_blocks, size, size) if c.block_size else (c.n_nodes, c.n_nodes)
            self.register_buffer("adjacency", torch.zeros(shape))  # [N, N] or [P, S, S]
            self.graph_scale = nn.Parameter(torch.ones(c.spatial_layers, c.heads, 1, 1))
        self.norm = nn.LayerNorm(d)
        self.output_proj = nn.Linear(c.window * d, c.horizon * out)
        self.register_buffer("targets", torch.tensor(c.targets, dtype=torch.long), persistent=False)

    def forward(
        self, x: torch.Tensor, time_features: torch.Tensor, mask: torch.Tensor, block: int | None = None
    ) -> torch.Tensor:
        """x [B, T, N, F], time_features [B, T, 3], mask [B, T, N, F] -> [B, H, N, out].

        With `block` (a model with blocks, in training), x and mask hold only that block's sensors
        [B, T, S, F] in its member order, attention runs across them alone, and the forecast is theirs
        [B, H, S, out]: with one spatial layer, exactly what the whole-network forward computes for the
        block's home sensors."""
        return self._forward(x, time_features, mask, need_weights=False, block=block)[0]

    def _forward(
        self,
        x: torch.Tensor,
        time_features: torch.Tensor,
        mask: torch.Tensor,
        need_weights: bool,
        block: int | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The forecast [B, H, N, out] and, with `need_weights`, the attention maps (else none):
        {"temporal": [B, N, heads, T, T], "spatial": [B, T, heads, N, N]} from the last layer of each. With
        blocks, "spatial" is [B, T, heads, N, S] — each sensor's row over its home block's S members — and
        "spatial_columns" [N, S] names the sensor of each column."""
        b, t, n, _ = x.shape
        c = self.config
        nodes = None if block is None else self.block_members[block]  # [S]
        expected = c.n_nodes if nodes is None else nodes.shape[0]
        if (t, n) != (c.window, expected):
            raise ValueError(f"STFormer built for window {c.window} × {expected} sensors, got {t} × {n}")
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
        adaptive = self.adaptive_embedding if nodes is None else self.adaptive_embedding[:, nodes]
        parts.append(adaptive.expand(b, -1, -1, -1))  # [B, T, N, adaptive_dim]
        h = torch.cat(parts, dim=-1)  # [B, T, N, D]
        h = h.transpose(1, 2).reshape(b * n, t, -1)  # [B*N, T, D]
        maps: dict[str, torch.Tensor] = {}
        for layer in self.temporal:
            h, w = layer(h, need_weights=need_weights)
            if w is not None:  # the last layer's are kept
                maps["temporal"] = w.reshape(b, n, *w.shape[1:])  # [B, N, heads, T, T]
        h = h.reshape(b, n, t, -1).transpose(1, 2).reshape(b * t, n, -1)  # [B*T, N, D]
        blocks = (self.block_members, self.block_home) if c.block_size and block is None else None
        for i, layer in enumerate(self.spatial):
            h, w = layer(h, self._graph_bias(i, block), need_weights, blocks)
            if w is not None:
                maps["spatial"] = w.reshape(b, t, *w.shape[1:])  # [B, T, heads, N, N or S]
                if blocks is not None:
                    maps["spatial_columns"] = self.block_members[self.block_home // w.shape[-1]]  # [N, S]
        h = self.norm(h).reshape(b, t, n, -1).transpose(1, 2).reshape(b, n, -1)  # [B, N, T*D]
        y = self.output_proj(h).reshape(b, n, c.horizon, -1).transpose(1, 2)  # [B, H, N, out]
        if c.residual:
            y = y + x[:, -1:].index_select(-1, self.targets)
        return y, maps

    def _graph_bias(self, layer: int, block: int | None) -> torch.Tensor | None:
        """Layer `layer`'s spatial logit bias: [heads, N, N] dense, [P, heads, S, S] over all blocks,
        [heads, S, S] for one block; None without a graph bias."""
        if not self.config.graph_bias:
            return None
        scale = self.graph_scale[layer]  # [heads, 1, 1]
        if not self.config.block_size:
            return scale * self.adjacency
        return scale * (self.adjacency[:, None] if block is None else self.adjacency[block])

    @torch.no_grad()
    def set_blocks(self, blocks: Blocks) -> STFormer:
        """Use `blocks` (`training.partition.partition` of the network) for the spatial attention."""
        c = self.config
        expected = (c.n_blocks, min(c.block_size, c.n_nodes))
        if not c.block_size or blocks.members.shape != expected or blocks.home.shape != (c.n_nodes,):
            raise ValueError(
                f"blocks {blocks.members.shape} over {blocks.home.shape[0]} sensors do not fit this model "
                f"(block_size {c.block_size}, {c.n_blocks} blocks of {c.n_nodes} sensors)"
            )
        self.block_members.copy_(torch.from_numpy(blocks.members))
        self.block_home.copy_(torch.from_numpy(blocks.home))
        return self

    @torch.no_grad()
    def shard(self, index: int, count: int) -> tuple[STFormer, np.ndarray, np.ndarray]:
        """Shard `index` of `count` of a model with blocks, for serving a network across actors: the blocks
        are split into `count` runs of consecutive blocks, each reading about as many sensors (its blocks'
        home sensors and halos), and shard `index` forecasts the home sensors of its run. Returns `(model, sensors, own)`: a model with blocks over just the sensors those forecasts
        need (`sensors [U]`, global indices; its input is the network's windows at them), and the positions
        in `sensors` of the shard's own home sensors, whose forecasts equal the whole model's.

        With L spatial layers a home sensor's forecast needs, at the layer below, the blocks its block's
        members call home: the run is widened L - 1 times by those (computed, then discarded)."""
        c = self.config
        if not c.block_size or c.n_blocks < count or not 0 <= index < count:
            raise ValueError(
                f"cannot cut shard {index} of {count} from a model with {c.n_blocks if c.block_size else 0} "
                "sensor blocks: sharding needs a model with at least one block per shard (preset blocks)"
            )
        members, size = self.block_members, self.block_members.shape[1]
        home_block = self.block_home // size  # [N] each sensor's home block
        bounds = _balanced_runs(members, count)
        own_blocks = torch.arange(bounds[index], bounds[index + 1])
        blocks = own_blocks
        for _ in range(c.spatial_layers - 1):
            blocks = torch.unique(torch.cat([blocks, home_block[members[blocks].reshape(-1)]]))
        sensors = torch.unique(members[blocks].reshape(-1))  # [U] sorted
        local = torch.full((c.n_nodes,), -1, dtype=torch.long)
        local[sensors] = torch.arange(len(sensors))
        sub_members = local[members[blocks]]  # [P', S]
        # each sensor's home slot where its home block is here, else its first slot (a halo-only sensor)
        flat = sub_members.reshape(-1)
        sub_home = torch.full((len(sensors),), flat.numel()).scatter_reduce(
            0, flat, torch.arange(flat.numel()), "amin"
        )
        position = torch.full((c.n_blocks,), -1, dtype=torch.long)
        position[blocks] = torch.arange(len(blocks))  # each block's place among the shard's, or -1
        here = position[home_block[sensors]]  # [U]
        kept = here >= 0
        sub_home[kept] = here[kept] * size + self.block_home[sensors[kept]] % size
        model = STFormer(replace(c, n_nodes=len(sensors), n_blocks=len(blocks)))
        state = dict(self.state_dict())
        state["adaptive_embedding"] = self.adaptive_embedding[:, sensors]
        state["block_members"], state["block_home"] = sub_members, sub_home
        if c.graph_bias:
            state["adjacency"] = self.adjacency[blocks]
        model.load_state_dict(state)
        own = torch.isin(home_block[sensors], own_blocks).nonzero().reshape(-1)
        return model.eval(), sensors.numpy(), own.numpy()

    @torch.no_grad()
    def set_graph(self, edges: Sequence[tuple[int, int, float]]) -> STFormer:
        """Fill the graph bias from `(from, to, weight)` edges, symmetric, weights scaled to [0, 1], self
        loops 1 (with blocks: within each block, after `set_blocks`)."""
        n = self.config.n_nodes
        pairs = torch.tensor([(i, j) for i, j, _ in edges], dtype=torch.long).reshape(-1, 2)  # [E, 2]
        w = torch.tensor([float(x) for _, _, x in edges]).clamp(min=0.0)  # [E]
        w = w / w.max().clamp(min=1e-12) if len(w) else w
        pairs, w = torch.cat([pairs, pairs.flip(1)]), torch.cat([w, w])  # both directions
        if not self.config.block_size:
            a = torch.zeros(n * n).scatter_reduce_(0, pairs[:, 0] * n + pairs[:, 1], w, "amax")
            self.adjacency.copy_(a.reshape(n, n).fill_diagonal_(1.0))
            return self
        groups, size = self.block_members.shape
        slot = torch.full((groups, n), -1, dtype=torch.long)  # [P, N] each sensor's slot in each block
        slot.scatter_(1, self.block_members, torch.arange(size).expand(groups, -1))
        a = torch.zeros(groups, size * size)
        for p in range(groups):
            i, j = slot[p, pairs[:, 0]], slot[p, pairs[:, 1]]
            inside = (i >= 0) & (j >= 0)
            a[p].scatter_reduce_(0, i[inside] * size + j[inside], w[inside], "amax")
        a = a.reshape(groups, size, size)
        a.diagonal(dim1=1, dim2=2).fill_(1.0)
        self.adjacency.copy_(a)
        return self


def _balanced_runs(members: torch.Tensor, count: int) -> list[int]:
    """Boundaries `[0, b1, ..., P]` of `count` runs of consecutive blocks (rows of `members [P, S]`) that
    minimise the most sensors any run reads (the union of its blocks' members): a shard's cost."""
    p, n = members.shape[0], int(members.max()) + 1
    reads = np.zeros((p + 1, p + 1), np.int64)  # reads[i, j]: sensors of blocks i..j-1
    rows = members.numpy()
    for i in range(p):
        seen = np.zeros(n, bool)
        for j in range(i, p):
            seen[rows[j]] = True
            reads[i, j + 1] = seen.sum()
    # best[k, j]: the least possible largest run over blocks 0..j-1 cut into k runs; cut: where the last starts
    best = np.full((count + 1, p + 1), np.iinfo(np.int64).max)
    cut = np.zeros((count + 1, p + 1), np.int64)
    best[0, 0] = 0
    for k in range(1, count + 1):
        for j in range(k, p + 1):
            for i in range(k - 1, j):
                worst = max(best[k - 1, i], reads[i, j])
                if worst < best[k, j]:
                    best[k, j], cut[k, j] = worst, i
    bounds = [p]
    for k in range(count, 0, -1):
        bounds.append(int(cut[k, bounds[-1]]))
    return bounds[::-1]
