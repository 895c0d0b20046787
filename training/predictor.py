"""The serving-side forecaster: original units in, original units out, one model behind it.

`Predictor` wraps a model (learned or baseline), its scaler and network, and turns windows of
last-observation-filled readings into forecasts. Serving code (Ray actors) uses only this class.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from stream.datasets import SensorDataset
from stream.network import Network
from training.baselines import HistoricalAverage, HistoricalAverageConfig, Persistence, PersistenceConfig
from training.checkpoint import load_checkpoint
from training.data import DAY_MS, time_features
from training.scaler import StandardScaler

CPU_CHUNK = 1536  # sensor-windows per forward on a CPU (7 windows of 207 sensors)


class PredictorError(ValueError):
    """Inputs that do not fit the predictor's network, window or layout."""


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


class Predictor:
    """Forecasts `[B, horizon, N, out]` in original units from `[B, window, N, F]` windows.

    Where a (sample, sensor, target feature) has no finite value anywhere in its input window (never
    observed), the forecast is NaN: there is nothing to forecast from, and callers should skip it.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        network: Network,
        scaler: StandardScaler,
        targets: tuple[int, ...],
        window: int,
        horizon: int,
        version: str,
        device: str | None = None,
    ) -> None:
        self.device = torch.device(device or default_device())
        self.model = model.to(self.device).eval()
        self.network = network
        self.scaler = scaler
        self.targets = tuple(targets)
        self.window = window
        self.horizon = horizon
        self.version = version
        self.network_fingerprint = network.fingerprint()
        self.out_features = tuple(network.feature_names[i] for i in self.targets)

    @classmethod
    def baseline(
        cls,
        kind: str,
        network: Network,
        *,
        window: int = 12,
        horizon: int = 12,
        data: SensorDataset | None = None,
        targets: tuple[str, ...] | None = None,
        device: str | None = None,
    ) -> Predictor:
        """A persistence or historical-average predictor of the `targets` features (default: all).

        `historical_average` needs `data` (training steps) to fit its time-of-week table.
        """
        names = targets or network.feature_names
        unknown = [t for t in names if t not in network.feature_index]
        if unknown:
            raise PredictorError(f"features {unknown} are not in network {network.name!r}")
        target_idx = tuple(network.feature_index[t] for t in names)
        scaler = StandardScaler.identity(network.n_features)
        model: nn.Module
        if kind == "persistence":
            model = Persistence(PersistenceConfig(horizon=horizon, targets=target_idx))
        elif kind == "historical_average":
            if data is None:
                raise PredictorError(
                    "historical_average needs training data to fit: pass data=SensorDataset(...) "
                    "or load a fitted one with Predictor.from_checkpoint"
                )
            if data.network.fingerprint() != network.fingerprint():
                raise PredictorError(f"data is on network {data.network.name!r}, not {network.name!r}")
            model = HistoricalAverage(
                HistoricalAverageConfig(
                    n_nodes=network.n_sensors,
                    steps_per_day=max(1, DAY_MS // network.step_ms),
                    horizon=horizon,
                    targets=target_idx,
                )
            ).fit(data.values, time_features(data.step_ts), data.mask)
        else:
            raise PredictorError(f"unknown baseline {kind!r}: expected 'persistence' or 'historical_average'")
        return cls(
            model,
            network=network,
            scaler=scaler,
            targets=target_idx,
            window=window,
            horizon=horizon,
            version=f"baseline-{kind}",
            device=device,
        )

    @classmethod
    def from_checkpoint(
        cls, path: str | Path, *, device: str | None = None, network: Network | None = None
    ) -> Predictor:
        """Load a verified checkpoint (raises `CheckpointError`); with `network`, refuse a mismatch."""
        ckpt = load_checkpoint(path, network=network)
        return cls(
            ckpt.build_model(),
            network=ckpt.network,
            scaler=ckpt.scaler,
            targets=ckpt.target_indices,
            window=ckpt.window,
            horizon=ckpt.horizon,
            version=ckpt.version,
            device=device,
        )

    def _check(self, values: np.ndarray, mask: np.ndarray, step_ts: np.ndarray) -> None:
        expected = (self.window, self.network.n_sensors, self.network.n_features)
        if values.ndim != 4 or values.shape[1:] != expected:
            dims = ", ".join(map(str, expected))
            raise PredictorError(f"values have shape {values.shape}, expected [B, {dims}]")
        if mask.shape != values.shape:
            raise PredictorError(f"mask shape {mask.shape} differs from values shape {values.shape}")
        if step_ts.shape != values.shape[:2]:
            raise PredictorError(f"step_ts shape {step_ts.shape}, expected {values.shape[:2]}")

    def _inputs(
        self, values: np.ndarray, mask: np.ndarray, step_ts: np.ndarray
    ) -> tuple[np.ndarray, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Checked, scaled model inputs (x, time_features, mask) on the device, and the finite-value map."""
        values = np.asarray(values, dtype=np.float32)
        mask = np.asarray(mask)
        step_ts = np.asarray(step_ts, dtype=np.int64)
        self._check(values, mask, step_ts)
        finite = np.isfinite(values)  # [B, T, N, F]
        x = np.where(finite, self.scaler.transform(values), 0.0).astype(np.float32)  # [B, T, N, F]
        m = ((mask > 0) & finite).astype(np.float32)  # [B, T, N, F]
        tf = time_features(step_ts)  # [B, T, 3]
        tensors = tuple(torch.from_numpy(a).to(self.device) for a in (x, tf, m))
        return finite, tensors  # type: ignore[return-value]

    @torch.inference_mode()
    def predict(self, values: np.ndarray, mask: np.ndarray, step_ts: np.ndarray) -> np.ndarray:
        """values, mask: [B, window, N, F] in original units (values last-observation filled; NaN where never
        observed); step_ts: [B, window] int64 epoch ms UTC of each input step.
        Returns [B, horizon, N, out] float32 in original units."""
        finite, (x, tf, m) = self._inputs(values, mask, step_ts)
        b, n = x.shape[0], x.shape[2]
        # On a CPU, a forward over many windows at once falls out of cache (the Los-loop STFormer, 2 threads:
        # 7.2-7.4 ms per window in batches of 4-8, 8.5 in 16, 9.5 in 32): chunks of ~CPU_CHUNK sensor-windows.
        step = b if self.device.type != "cpu" else max(1, CPU_CHUNK // n)
        y = torch.cat(
            [self.model(x[i : i + step], tf[i : i + step], m[i : i + step]) for i in range(0, b, step)]
        )
        out = self.scaler.inverse(y.float().cpu().numpy(), self.targets)  # [B, H, N, out]
        never = ~finite[..., list(self.targets)].any(axis=1)  # [B, N, out]
        out[np.broadcast_to(never[:, None], out.shape)] = np.nan
        return out.astype(np.float32)

    @torch.inference_mode()
    def attention(self, values: np.ndarray, mask: np.ndarray, step_ts: np.ndarray) -> dict[str, np.ndarray]:
        """The model's attention weights for these windows (see the model's `attention_maps`)."""
        maps = getattr(self.model, "attention_maps", None)
        if maps is None:
            raise PredictorError(f"{self.version} has no attention weights to show (a baseline?)")
        _, inputs = self._inputs(values, mask, step_ts)
        return {k: v.float().cpu().numpy() for k, v in maps(*inputs).items()}
