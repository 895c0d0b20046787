"""One contract for every model: shapes, determinism, overfitting a tiny batch, checkpoint round trip."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import training.attention as attention_module
from stream.network import Network
from training.attention import attend
from training.baselines import HistoricalAverage, HistoricalAverageConfig, Persistence, PersistenceConfig
from training.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from training.data import time_features
from training.partition import partition
from training.scaler import StandardScaler
from training.seq2seq import AttentionSeq2Seq, Seq2SeqConfig
from training.stformer import STFormer, STFormerConfig

torch.set_num_threads(1)

B, T, N, F, H = 3, 6, 4, 2, 3
TARGETS = (0,)

TINY_ST = dict(input_dim=8, tod_dim=4, dow_dim=4, adaptive_dim=8, heads=2, ffn_dim=16, dropout=0.0)


def _blocks_stformer() -> STFormer:
    """Spatial attention within blocks of 3 of the 4 sensors (home + halo), graph bias, two spatial layers."""
    blocks = partition(Network.simple("tiny", N, ["speed", "flow"]), 3)
    config = STFormerConfig(
        n_nodes=N,
        in_features=F,
        window=T,
        horizon=H,
        temporal_layers=1,
        spatial_layers=2,
        graph_bias=True,
        block_size=3,
        n_blocks=blocks.count,
        **TINY_ST,
    )
    return STFormer(config).set_blocks(blocks).set_graph([(0, 1, 2.0), (1, 2, 1.0)])


MODELS: dict[str, tuple[str, Callable[[], nn.Module]]] = {
    "persistence": ("persistence", lambda: Persistence(PersistenceConfig(horizon=H, targets=TARGETS))),
    "historical_average": (
        "historical_average",
        lambda: HistoricalAverage(HistoricalAverageConfig(n_nodes=N, steps_per_day=288, horizon=H)),
    ),
    "seq2seq-gru-additive": (
        "seq2seq",
        lambda: AttentionSeq2Seq(Seq2SeqConfig(in_features=F, window=T, horizon=H, hidden=16)),
    ),
    "seq2seq-lstm-dot": (
        "seq2seq",
        lambda: AttentionSeq2Seq(
            Seq2SeqConfig(in_features=F, window=T, horizon=H, hidden=16, encoder="lstm", attention="dot")
        ),
    ),
    "seq2seq-scaled-dot": (
        "seq2seq",
        lambda: AttentionSeq2Seq(
            Seq2SeqConfig(
                in_features=F, window=T, horizon=H, hidden=16, attention="scaled_dot", residual=False
            )
        ),
    ),
    "stformer": (
        "stformer",
        lambda: STFormer(
            STFormerConfig(
                n_nodes=N, in_features=F, window=T, horizon=H, temporal_layers=1, spatial_layers=1, **TINY_ST
            )
        ),
    ),
    "seq2seq-seasonal": (
        "seq2seq",
        lambda: AttentionSeq2Seq(Seq2SeqConfig(in_features=F, window=T, horizon=H, hidden=16, seasonal=True)),
    ),
    "stformer-daily-graph": (
        "stformer",
        lambda: STFormer(
            STFormerConfig(
                n_nodes=N,
                in_features=F,
                window=T,
                horizon=H,
                temporal_layers=1,
                spatial_layers=1,
                steps_per_day=1,
                graph_bias=True,
                **{**TINY_ST, "tod_dim": 0, "doy_dim": 4},
            )
        ).set_graph([(0, 1, 2.0), (1, 2, 1.0)]),
    ),
    "stformer-blocks-graph": ("stformer", lambda: _blocks_stformer()),
}
LEARNED = [k for k, (kind, _) in MODELS.items() if kind in ("seq2seq", "stformer")]


def _batch(seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, N, F, generator=g)  # [B, T, N, F]
    mask = (torch.rand(B, T, N, F, generator=g) > 0.2).float()
    step_ts = 1_330_560_000_000 + 300_000 * (np.arange(T)[None] + 50 * np.arange(B)[:, None])
    tf = torch.from_numpy(time_features(step_ts))  # [B, T, 3]
    y = torch.randn(B, H, N, len(TARGETS), generator=g)  # [B, H, N, out]
    return x, tf, mask, y


def _build(name: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return MODELS[name][1]().eval()


@pytest.mark.parametrize("name", list(MODELS))
def test_output_shape(name: str) -> None:
    x, tf, mask, _ = _batch()
    out = _build(name)(x, tf, mask)
    assert out.shape == (B, H, N, len(TARGETS)) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", list(MODELS))
def test_deterministic_under_seed(name: str) -> None:
    x, tf, mask, _ = _batch()
    torch.testing.assert_close(_build(name, seed=7)(x, tf, mask), _build(name, seed=7)(x, tf, mask))


@pytest.mark.parametrize("name", LEARNED)
def test_overfits_a_tiny_batch(name: str) -> None:
    x, tf, mask, y = _batch()
    model = _build(name).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    first = None
    for _ in range(150):
        loss = (model(x, tf, mask) - y).abs().mean()
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.25 * first, f"{name}: loss {first:.3f} -> {loss.item():.3f}"


@pytest.mark.parametrize("name", list(MODELS))
def test_checkpoint_round_trip(name: str, tmp_path: Path) -> None:
    x, tf, mask, _ = _batch()
    model = _build(name, seed=3)
    net = Network.simple("tiny", N, ["speed", "flow"])
    ckpt = Checkpoint.from_model(
        MODELS[name][0],
        model,
        scaler=StandardScaler.identity(F),
        network=net,
        targets=("speed",),
        window=T,
        horizon=H,
    )
    loaded = load_checkpoint(save_checkpoint(ckpt, tmp_path / "m.pt"), network=net).build_model()
    torch.testing.assert_close(loaded(x, tf, mask), model(x, tf, mask))


def test_attention_maps() -> None:
    x, tf, mask, _ = _batch()
    seq = _build("seq2seq-gru-additive")
    weights = seq.attention_maps(x, tf, mask)["temporal"]  # type: ignore[operator]
    assert weights.shape == (B, N, H, T)
    torch.testing.assert_close(weights.sum(-1), torch.ones(B, N, H))
    maps = _build("stformer").attention_maps(x, tf, mask)  # type: ignore[operator]
    assert maps["temporal"].shape == (B, N, 2, T, T) and maps["spatial"].shape == (B, T, 2, N, N)


@pytest.mark.parametrize("name", LEARNED)
def test_attention_weights_are_returned_not_kept(name: str) -> None:
    """Weights come back only from `attention_maps` (need_weights); no forward leaves tensors behind on a
    module (training and serving would pay for them on every batch)."""
    x, tf, mask, _ = _batch()
    model = _build(name)
    model(x, tf, mask)
    assert model.attention_maps(x, tf, mask)  # type: ignore[operator]
    kept = [k for m in model.modules() for k, v in vars(m).items() if isinstance(v, torch.Tensor)]
    assert kept == []


def test_time_features_hold_time_of_day_day_of_week_and_time_of_year() -> None:
    ts = np.array([np.datetime64(d, "ms").astype(np.int64) for d in ("2001-01-01T06:00", "2001-07-02T00:00")])
    tf = time_features(ts)  # [2, 3]
    assert tf[0, 0] == pytest.approx(0.25) and tf[0, 1] == 0  # 2001-01-01 was a Monday
    assert min(tf[0, 2], 1 - tf[0, 2]) < 2 / 365 and tf[1, 2] == pytest.approx(0.5, abs=2 / 365)


def test_graph_bias_is_symmetric_scaled_and_saved(tmp_path: Path) -> None:
    model = MODELS["stformer-daily-graph"][1]()
    a = model.adjacency
    assert torch.equal(a, a.T) and a.max() == 1 and torch.all(a.diagonal() == 1) and a[0, 1] == 1
    assert a[1, 2] == 0.5 and a[0, 3] == 0


@pytest.mark.parametrize(
    ("m", "heads", "length", "d", "with_bias", "chunk"),
    [
        (40, 2, 12, 8, False, None),  # temporal: short sequences, written out
        (6, 2, 30, 8, True, None),  # spatial with the graph bias
        (7, 3, 9, 4, True, 3 * 9 * 9 * 2),  # several chunks of 2 sequences, a short last one
        (5, 2, 40, 8, False, None),  # long, no bias: the fused kernel
    ],
)
def test_attend_equals_scaled_dot_product_attention(
    monkeypatch: pytest.MonkeyPatch,
    m: int,
    heads: int,
    length: int,
    d: int,
    with_bias: bool,
    chunk: int | None,
) -> None:
    """The CPU attention written out in chunks gives what `F.scaled_dot_product_attention` gives, values
    and gradients (the graph bias's included)."""
    if chunk is not None:
        monkeypatch.setattr(attention_module, "CPU_SCORES_CHUNK", chunk)
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(m, heads, length, d, generator=g, requires_grad=True) for _ in range(3))
    bias = torch.randn(heads, length, length, generator=g, requires_grad=True) if with_bias else None
    got = attend(q, k, v, bias, 0.0, True)
    want = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    upstream = torch.randn(got.shape, generator=g)
    leaves = [q, k, v, *([bias] if bias is not None else [])]
    grads_got = torch.autograd.grad(got, leaves, upstream)
    grads_want = torch.autograd.grad(want, leaves, upstream)
    for a, b in zip(grads_got, grads_want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", LEARNED)
def test_onnx_export_equals_torch_for_any_batch_size(name: str) -> None:
    """The serving CPU engine: each learned model exports with a dynamic batch axis (traced on 3 windows)
    and ONNX Runtime forecasts what torch does for 1 and 5 windows, masks and NaN-free inputs alike."""
    from training.onnx_backend import OnnxModel

    model = _build(name)
    x, tf, mask, _ = _batch()
    onnx_model = OnnxModel(model, (x, tf, mask))
    for b, seed in ((1, 1), (5, 2)):
        xs, tfs, masks = (
            torch.cat([t, t2]) for t, t2 in zip(_batch(seed)[:3], _batch(seed + 10)[:3], strict=True)
        )
        xs, tfs, masks = xs[:b], tfs[:b], masks[:b]
        with torch.no_grad():
            expected = model(xs, tfs, masks).numpy()
        got = onnx_model(xs.numpy(), tfs.numpy(), masks.numpy())
        assert got.shape == expected.shape == (b, H, N, len(TARGETS))
        np.testing.assert_allclose(got, expected, atol=1e-5, rtol=1e-4)
