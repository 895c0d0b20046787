"""The ONNX Runtime CPU engine behind `Predictor(backend=...)`: it serves what torch would (the committed
Los-loop checkpoint on real windows), it is refused where it does not apply, and a model whose ONNX
graph computes something else is caught at load — an error when asked for, torch with a warning on auto."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from stream.datasets import load_dataset
from stream.network import Network
from tests.conftest import REPO
from training.baselines import Persistence, PersistenceConfig
from training.predictor import Predictor, PredictorError
from training.scaler import StandardScaler

CHECKPOINT = REPO / "benchmarks" / "results" / "stformer-los-loop.pt"


def test_onnx_forecasts_equal_torch_on_los_loop(datasets_dir: Path) -> None:
    ds = load_dataset(datasets_dir / "los-loop")
    torch_p = Predictor.from_checkpoint(CHECKPOINT, device="cpu", network=ds.network)
    onnx_p = Predictor.from_checkpoint(CHECKPOINT, device="cpu", network=ds.network, backend="onnx")
    assert (torch_p.backend, onnx_p.backend) == ("torch", "onnx")
    windows = np.stack([np.arange(s, s + 12) for s in range(1500, 1505)])  # 5 consecutive windows
    values, mask, step_ts = ds.values[windows].copy(), ds.mask[windows].copy(), ds.step_ts[windows]
    values[:, :, 3] = np.nan  # a sensor never observed in these windows: no forecast from either engine
    mask[:, :, 3] = 0
    expected = torch_p.predict(values, mask, step_ts)
    got = onnx_p.predict(values, mask, step_ts)
    assert got.shape == expected.shape == (5, 12, ds.network.n_sensors, 1)
    assert np.isnan(got[:, :, 3]).all() and np.isnan(expected[:, :, 3]).all()
    np.testing.assert_allclose(got, expected, atol=1e-3)  # mph; the engines differ in float rounding only
    np.testing.assert_allclose(onnx_p.predict(values[:1], mask[:1], step_ts[:1]), expected[:1], atol=1e-3)


def test_onnx_backend_is_refused_where_it_does_not_apply() -> None:
    network = Network.simple("tiny", 3, ["speed"])
    with pytest.raises(PredictorError, match="baseline"):
        Predictor(
            Persistence(PersistenceConfig(horizon=12, targets=(0,))),
            network=network,
            scaler=StandardScaler.identity(1),
            targets=(0,),
            window=12,
            horizon=12,
            version="baseline-persistence",
            device="cpu",
            backend="onnx",
        )
    with pytest.raises(PredictorError, match="unknown backend"):
        Predictor.from_checkpoint(CHECKPOINT, device="cpu", backend="tensorrt")  # type: ignore[arg-type]


class _Noisy(nn.Module):
    """A model whose ONNX graph cannot reproduce torch: it draws random numbers at inference."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(1, 12)

    def forward(self, x: torch.Tensor, time_features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        y = self.proj(x[:, -1]).permute(0, 2, 1)[..., None]  # [B, H, N, 1]
        return y + torch.rand_like(y)


def _noisy(backend: str) -> Predictor:
    network = Network.simple("noisy", 3, ["speed"])
    return Predictor(
        _Noisy(),
        network=network,
        scaler=StandardScaler.identity(1),
        targets=(0,),
        window=12,
        horizon=12,
        version="noisy-1",
        device="cpu",
        backend=backend,
    )  # type: ignore[arg-type]


def test_a_graph_that_differs_from_torch_is_refused(caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(PredictorError, match="differs from torch"):
        _noisy("onnx")
    with caplog.at_level(logging.WARNING, logger="training.predictor"):
        auto = _noisy("auto")
    assert auto.backend == "torch"
    assert any("differs from torch" in getattr(r, "reason", "") for r in caplog.records)
