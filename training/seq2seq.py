"""AttentionSeq2Seq: a per-sensor RNN encoder, attention over its states and an LSTM decoder unrolled over
the horizon — the small attention model that trains in minutes on a CPU.

It takes scaled inputs and shares the models' interface (the same contract tests cover all of them):

    forward(x [B, T, N, F], time_features [B, T, 3], mask [B, T, N, F]) -> [B, H, N, out]

`time_features` holds the time of day in [0, 1), the day of week 0..6 and the time of year in [0, 1) of
every input step (`training.data.time_features`); `mask` is 1 where a reading was observed (x holds
last-observation-filled values elsewhere). `attention_maps` returns the attention weights of one forward
pass for `explain`. No I/O, no globals.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from training.attention import Attention, AttentionModel

YEAR_DAYS = 365.2425  # as in training.data.time_features


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


class AttentionSeq2Seq(AttentionModel):
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

    def _forward(
        self, x: torch.Tensor, time_features: torch.Tensor, mask: torch.Tensor, need_weights: bool
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The forecast [B, H, N, out] and, with `need_weights`, the attention maps (else none):
        {"temporal": [B, N, H, T]}: weight of each input step for each forecast step, per sensor."""
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
        maps = {"temporal": torch.stack(weights, 1).reshape(b, n, c.horizon, t)} if need_weights else {}
        return torch.stack(outputs, 1).reshape(b, n, c.horizon, -1).transpose(1, 2), maps  # [B, H, N, out]


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
