"""Attention building blocks of the forecasting models: the seq2seq decoder's scorer over encoder states
(`Attention`), scaled dot-product attention tuned for CPUs (`attend`) and the STFormer's self-attention
layer (`SelfAttentionLayer`).

Weights come back only when asked for (`need_weights`, as in `torch.nn.MultiheadAttention`): training
and serving never keep them. No I/O, no globals.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

CPU_SCORES_CHUNK = 1 << 18  # attention scores per chunk on a CPU (1 MiB of float32: stays in cache)


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

    def forward(
        self,
        h: torch.Tensor,
        bias: torch.Tensor | None = None,
        need_weights: bool = False,
        blocks: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """h [M, L, D], bias [heads, L, L] added to the attention logits (or None) -> [M, L, D] and, with
        `need_weights`, the attention weights [M, heads, L, L] (else None).

        With `blocks` = (members [P, S], home [L]) (`training.partition.Blocks`), attention runs within each
        block of S positions only, bias [P, heads, S, S]: every position is gathered into the blocks it is a
        member of, and keeps the output of its home slot. The projections and the feed-forward still run once
        per position; only the scores are per block. Weights then come back as [M, heads, L, S]: each
        position's row over the members of its home block (`_home_rows`)."""
        m, length, d = h.shape
        dh = d // self.heads
        x = h.reshape(m * length, d)  # [M*L, D]: 2-D linear layers (an ONNX export fuses their bias adds)
        qkv = self.qkv(self.norm1(x))  # [M*L, 3D]
        groups, seq = 1, length
        if blocks is not None:
            members = blocks[0]
            groups, seq = members.shape
            qkv = qkv.reshape(m, length, 3 * d).index_select(1, members.reshape(-1))  # [M, P*S, 3D]
            if bias is not None:
                bias = bias.reshape(groups * self.heads, seq, seq)  # [P*heads, S, S]
        # [M, P*heads, S, dh]: the blocks ride along the heads axis, so the bias of block p, head j applies
        # to that (block, head) of every sequence
        q, k, v = (
            t.transpose(2, 3).reshape(m, groups * self.heads, seq, dh)
            for t in qkv.reshape(m, groups, seq, 3, self.heads, dh).unbind(3)
        )
        weights = None
        if need_weights:  # written out: the fused kernels do not return their weights
            scores = q @ k.transpose(-1, -2) / math.sqrt(dh)  # [M, P*heads, S, S]
            weights = (scores if bias is None else scores + bias).softmax(-1)
            att = weights @ v
        else:
            p = self.dropout.p if self.training else 0.0
            att = attend(q, k, v, bias, p, self.training)  # [M, P*heads, S, dh]
        att = att.reshape(m, groups, self.heads, seq, dh).transpose(2, 3).reshape(m, groups * seq, d)
        if blocks is not None:
            att = att.index_select(1, blocks[1])  # [M, L, D]: each position's home slot (blocks[1]: home)
            if weights is not None:
                weights = _home_rows(weights, *blocks, self.heads)
        x = x + self.dropout(self.out(att.reshape(m * length, d)))
        return (x + self.dropout(self.ffn(self.norm2(x)))).reshape(m, length, d), weights


def _home_rows(weights: torch.Tensor, members: torch.Tensor, home: torch.Tensor, heads: int) -> torch.Tensor:
    """Block attention weights [M, P*heads, S, S] as [M, heads, L, S]: each position's row from its home
    block, over that block's S members (`members[home // S]` names them). Never [L, L]: at 8,600 sensors
    that would be 0.6 GB per sequence."""
    m = weights.shape[0]
    groups, seq = members.shape
    rows = weights.reshape(m, groups, heads, seq, seq).transpose(1, 2).reshape(m, heads, groups * seq, seq)
    return rows.index_select(2, home)  # [M, heads, L, S]


class AttentionModel(nn.Module):
    """The interface the attention models share: `forward` is the forecast (no weights kept),
    `attention_maps` the weights, both from the model's `_forward(..., need_weights)`."""

    def forward(self, x: torch.Tensor, time_features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x [B, T, N, F], time_features [B, T, 3], mask [B, T, N, F] -> [B, H, N, out]."""
        return self._forward(x, time_features, mask, need_weights=False)[0]

    @torch.no_grad()
    def attention_maps(
        self, x: torch.Tensor, time_features: torch.Tensor, mask: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """The model's attention weights by kind (shapes in its `_forward`)."""
        return self._forward(x, time_features, mask, need_weights=True)[1]

    def _forward(
        self, x: torch.Tensor, time_features: torch.Tensor, mask: torch.Tensor, need_weights: bool
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError
