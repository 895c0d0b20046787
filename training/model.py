"""Attention forecasting models: AttentionSeq2Seq and STFormer (a STAEformer-class transformer).

Both take scaled inputs and share one interface so the same contract tests cover them (and the baselines):

    forward(x [B, T, N, F], time_features [B, T, 3], mask [B, T, N, F]) -> [B, H, N, out]

`time_features` holds the time of day in [0, 1), the day of week 0..6 and the time of year in [0, 1) of
every input step (`training.data.time_features`); `mask` is 1
where a reading was observed (x holds last-observation-filled values elsewhere). `attention_maps` returns
the attention weights of one forward pass for `explain`. No I/O, no globals.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

YEAR_DAYS = 365.2425  # as in training.data.time_features

# -----------------------------------------------------------------------------------------------------------
# AttentionSeq2Seq


@dataclass
class Seq2SeqConfig:
    in_features: int = 1
    targets: tuple[int, ...] = (0,)  # input feature indices that are forecast (out = len(targets))
    window: int = 12
    horizon: int = 12
    hidden: int = 64
    encoder: str = "gru"  # "gru" | "lstm"
    attention: str = "additive"  # "additive" | "dot" | "scaled_dot"
    dropout: float = 0.0
    residual: bool = True  # forecast the change from the last input step
    seasonal: bool = False  # also feed the time of year (daily data)


class Attention(nn.Module):
    """Score a query against encoder states: additive (Bahdanau), dot or scaled dot (Luong)."""

    def __init__(self, kind: str, hidden: int) -> None:
        super().__init__()
        if kind not in ("additive", "dot", "scaled_dot"):
            raise ValueError(f"unknown attention {kind!r}: expected additive, dot or scaled_dot")
        self.kind = kind
        self.scale = 1 / math.sqrt(hidden) if kind == "scaled_dot" else 1.0
        if kind == "additive":
            self.w_query = nn.Linear(hidden, hidden, bias=False)
            self.w_keys = nn.Linear(hidden, hidden)
            self.v = nn.Linear(hidden, 1, bias=False)

    def forward(self, query: torch.Tensor, keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """query [M, D], keys [M, T, D] -> context [M, D], weights [M, T]."""
        if self.kind == "additive":
            scores = self.v(torch.tanh(self.w_query(query)[:, None] + self.w_keys(keys))).squeeze(
                -1
            )  # [M, T]
        else:
            scores = torch.einsum("md,mtd->mt", query, keys) * self.scale  # [M, T]
        weights = scores.softmax(-1)  # [M, T]
        return torch.einsum("mt,mtd->md", weights, keys), weights


class AttentionSeq2Seq(nn.Module):
    """Per-sensor RNN encoder, attention over its states, LSTM decoder unrolled over the horizon.

    Sensors share all weights: they are folded into the batch dimension.
    """

    def __init__(self, config: Seq2SeqConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        out = len(c.targets)
        n_time = 6 if c.seasonal else 4  # sin/cos of time of day, day of week (and time of year)
        step_in = 2 * c.in_features + n_time  # values, mask, time
        self.input_proj = nn.Linear(step_in, c.hidden)
        rnn = {"gru": nn.GRU, "lstm": nn.LSTM}.get(c.encoder)
        if rnn is None:
            raise ValueError(f"unknown encoder {c.encoder!r}: expected gru or lstm")
        self.encoder = rnn(c.hidden, c.hidden, batch_first=True)
        self.attention = Attention(c.attention, c.hidden)
        self.decoder = nn.LSTMCell(out + c.hidden + n_time, c.hidden)
        self.head = nn.Linear(2 * c.hidden, out)
        self.dropout = nn.Dropout(c.dropout)
        self.register_buffer("targets", torch.tensor(c.targets, dtype=torch.long), persistent=False)
        self.last_weights: torch.Tensor | None = None

    def forward(self, x: torch.Tensor, time_features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x [B, T, N, F], time_features [B, T, 3], mask [B, T, N, F] -> [B, H, N, out]."""
        b, t, n, _ = x.shape
        c = self.config
        tf = _cyclic(time_features, c.seasonal)  # [B, T, C]
        steps = torch.cat([x, mask, tf[:, :, None].expand(-1, -1, n, -1)], dim=-1)  # [B, T, N, 2F+C]
        steps = steps.transpose(1, 2).reshape(b * n, t, -1)  # [B*N, T, 2F+C]
        states, last = self.encoder(self.dropout(torch.relu(self.input_proj(steps))))  # [B*N, T, D]
        h = last[0][-1] if isinstance(last, tuple) else last[-1]  # [B*N, D]
        cell = torch.zeros_like(h)
        last_y = x[:, -1].index_select(-1, self.targets).reshape(b * n, -1)  # [B*N, out]
        future = _cyclic(_future_time(time_features, c.horizon), c.seasonal)  # [B, H, C]
        future = future[:, None].expand(-1, n, -1, -1).reshape(b * n, c.horizon, -1)  # [B*N, H, C]
        y, outputs, weights = last_y, [], []
        for step in range(c.horizon):
            context, w = self.attention(h, states)  # [B*N, D], [B*N, T]
            h, cell = self.decoder(torch.cat([y, context, future[:, step]], dim=-1), (h, cell))
            delta = self.head(self.dropout(torch.cat([h, context], dim=-1)))  # [B*N, out]
            y = y + delta if c.residual else delta
            outputs.append(y)
            weights.append(w)
        self.last_weights = torch.stack(weights, 1).reshape(b, n, c.horizon, t)  # [B, N, H, T]
        return torch.stack(outputs, 1).reshape(b, n, c.horizon, -1).transpose(1, 2)  # [B, H, N, out]

    @torch.no_grad()
    def attention_maps(
        self, x: torch.Tensor, time_features: torch.Tensor, mask: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """{"temporal": [B, N, H, T]}: weight of each input step for each forecast step, per sensor."""
        self.forward(x, time_features, mask)
        assert self.last_weights is not None
        return {"temporal": self.last_weights}


def _cyclic(time_features: torch.Tensor, seasonal: bool = False) -> torch.Tensor:
    """[..., 3] time of day, day of week, time of year -> [..., 4] sin/cos of the first two (so midnight and
    Sunday wrap around), [..., 6] with the time of year when `seasonal`."""
    day = 2 * math.pi * time_features[..., 0]
    week = 2 * math.pi * (time_features[..., 1] + time_features[..., 0]) / 7
    parts = [day.sin(), day.cos(), week.sin(), week.cos()]
    if seasonal:
        year = 2 * math.pi * time_features[..., 2]
        parts += [year.sin(), year.cos()]
    return torch.stack(parts, dim=-1)


def _future_time(time_features: torch.Tensor, horizon: int) -> torch.Tensor:
    """Time features [B, H, 3] of the `horizon` steps after the window, from the last two input steps."""
    last, prev = time_features[:, -1], time_features[:, -2]  # [B, 3]
    step = torch.remainder(last[:, 0] - prev[:, 0], 1.0)  # [B] fraction of a day per step
    step = torch.where(step > 0, step, torch.ones_like(step))  # daily steps: tod is constant
    ahead = torch.arange(1, horizon + 1, device=time_features.device)[None]  # [1, H]
    days = last[:, :1] + step[:, None] * ahead  # [B, H] days after the last step's midnight
    tod = torch.remainder(days, 1.0)
    dow = torch.remainder(last[:, 1:2] + torch.floor(days), 7)
    toy = torch.remainder(last[:, 2:3] + (days - last[:, :1]) / YEAR_DAYS, 1.0)
    return torch.stack([tod, dow, toy], dim=-1)  # [B, H, 3]


# -----------------------------------------------------------------------------------------------------------
# STFormer


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


PRESETS: dict[str, dict[str, int | float]] = {
    # CPU: fits a 2-core, 30-minute budget on a ~200-sensor network.
    "small": dict(
        input_dim=16,
        tod_dim=16,
        dow_dim=8,
        adaptive_dim=24,
        heads=2,
        temporal_layers=1,
        spatial_layers=1,
        ffn_dim=96,
        dropout=0.1,
    ),
    # GPU: STAEformer's published size.
    "full": dict(
        input_dim=24,
        tod_dim=24,
        dow_dim=24,
        adaptive_dim=80,
        heads=4,
        temporal_layers=3,
        spatial_layers=3,
        ffn_dim=256,
        dropout=0.1,
    ),
}


CPU_SCORES_CHUNK = 1 << 18  # attention scores per chunk on a CPU (1 MiB of float32: stays in cache)


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    bias: torch.Tensor | None,
    dropout_p: float,
    training: bool,
) -> torch.Tensor:
    """Scaled dot-product attention over q, k, v [M, heads, L, d], `bias` [heads, L, L] added to the logits.

    On a GPU, in an ONNX export and on a CPU for long sequences without a bias, this is
    `F.scaled_dot_product_attention`.
    On a CPU two cases are much faster written out (measured at 207 sensors, window 12, one thread):
    short sequences (the temporal layers, L = 12: 2.4x; the fused kernel's per-sequence overhead
    dominates) and any bias (the spatial layers' graph bias: 3.3x; the fused kernel expands the bias
    for every sequence) — there the scores are computed a few sequences at a time, so they stay in cache.
    """
    m, heads, length, d = q.shape
    # An ONNX export traces one graph for every batch size: no chunk loop.
    if q.device.type != "cpu" or (bias is None and length > 32) or torch.onnx.is_in_onnx_export():
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout_p)
    chunk = min(m, max(1, CPU_SCORES_CHUNK // (heads * length * length)))
    # [M * heads, L, d]: the chunks below are then plain contiguous slices for bmm (one copy each here,
    # not one per chunk); the scale goes on q, L/d times smaller than the scores.
    q3 = (q * (1.0 / math.sqrt(d))).reshape(m * heads, length, d)
    k3 = k.reshape(m * heads, length, d).transpose(1, 2)  # [M * heads, d, L]
    v3 = v.reshape(m * heads, length, d)
    if bias is not None:  # one chunk's worth, added by the score product itself (baddbmm)
        bias3 = bias.expand(chunk, heads, length, length).reshape(chunk * heads, length, length)
    out = []
    for i in range(0, m * heads, chunk * heads):
        j = min(i + chunk * heads, m * heads)
        if bias is None:
            scores = torch.bmm(q3[i:j], k3[i:j])  # [c * heads, L, L]
        else:
            scores = torch.baddbmm(bias3[: j - i], q3[i:j], k3[i:j])
        weights = F.dropout(scores.softmax(-1), dropout_p, training)
        out.append(torch.bmm(weights, v3[i:j]))
    att = out[0] if len(out) == 1 else torch.cat(out)
    return att.reshape(m, heads, length, d)


class SelfAttentionLayer(nn.Module):
    """Pre-norm multi-head self-attention + feed-forward over the second-to-last axis of [M, L, D]."""

    def __init__(self, dim: int, heads: int, ffn_dim: int, dropout: float) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"model dim {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_dim), nn.GELU(), nn.Linear(ffn_dim, dim))
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)
        self.keep_weights = False
        self.last_weights: torch.Tensor | None = None

    def forward(self, h: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """h [M, L, D], bias [heads, L, L] added to the attention logits (or None) -> [M, L, D]."""
        m, length, d = h.shape
        x = h.reshape(m * length, d)  # [M*L, D]: 2-D linear layers (an ONNX export fuses their bias adds)
        q, k, v = self.qkv(self.norm1(x)).reshape(m, length, 3, self.heads, d // self.heads).unbind(2)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [M, heads, L, d/heads]
        if self.keep_weights:
            scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])  # [M, heads, L, L]
            weights = (scores if bias is None else scores + bias).softmax(-1)
            self.last_weights = weights
            att = weights @ v
        else:
            p = self.dropout.p if self.training else 0.0
            att = attend(q, k, v, bias, p, self.training)  # [M, heads, L, d/h]
        x = x + self.dropout(self.out(att.transpose(1, 2).reshape(m * length, d)))
        return (x + self.dropout(self.ffn(self.norm2(x)))).reshape(m, length, d)


class STFormer(nn.Module):
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

    def forward(self, x: torch.Tensor, time_features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x [B, T, N, F], time_features [B, T, 3], mask [B, T, N, F] -> [B, H, N, out]."""
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
        for layer in self.temporal:
            h = layer(h)
        h = h.reshape(b, n, t, -1).transpose(1, 2).reshape(b * t, n, -1)  # [B*T, N, D]
        for i, layer in enumerate(self.spatial):
            h = layer(h, self.graph_scale[i] * self.adjacency if c.graph_bias else None)
        h = self.norm(h).reshape(b, t, n, -1).transpose(1, 2).reshape(b, n, -1)  # [B, N, T*D]
        y = self.output_proj(h).reshape(b, n, c.horizon, -1).transpose(1, 2)  # [B, H, N, out]
        if c.residual:
            y = y + x[:, -1:].index_select(-1, self.targets)
        return y

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

    @torch.no_grad()
    def attention_maps(
        self, x: torch.Tensor, time_features: torch.Tensor, mask: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """{"temporal": [B, N, heads, T, T], "spatial": [B, T, heads, N, N]} from the last layer of each."""
        b, t, n, _ = x.shape
        layers = [*self.temporal, *self.spatial]
        for layer in layers:
            layer.keep_weights = True
        try:
            self.forward(x, time_features, mask)
            maps: dict[str, torch.Tensor] = {}
            if self.temporal:
                w = self.temporal[-1].last_weights
                assert w is not None
                maps["temporal"] = w.reshape(b, n, *w.shape[1:])
            if self.spatial:
                w = self.spatial[-1].last_weights
                assert w is not None
                maps["spatial"] = w.reshape(b, t, *w.shape[1:])
            return maps
        finally:
            for layer in layers:
                layer.keep_weights, layer.last_weights = False, None
