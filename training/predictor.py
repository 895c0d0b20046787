"""The serving-side forecaster: original units in, original units out, one model behind it.

`Predictor` wraps a model (learned or baseline), its scaler and network, and turns windows of
last-observation-filled readings into forecasts. Serving code (Ray actors) uses only this class.

`backend` picks the engine of a learned model on a CPU: "torch" (eager; the default, and what
evaluation uses), "onnx" (ONNX Runtime, `training.onnx_backend`: the model exported from its weights
and checked against torch before use; an error when it cannot be) or "auto" (ONNX Runtime when it can
be, else torch with a logged warning). On a GPU and for baselines it is always torch.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import nn

from stream.config import StorageSettings
from stream.datasets import SensorDataset
from stream.network import Network
from stream.storage import Location
from training.baselines import HistoricalAverage, HistoricalAverageConfig, Persistence, PersistenceConfig
from training.checkpoint import load_checkpoint
from training.data import DAY_MS, time_features
from training.model import MODEL_CLASSES
from training.onnx_backend import OnnxBackendError, OnnxModel, onnx_available
from training.scaler import StandardScaler

CPU_CHUNK = 1536  # sensor-windows per forward on a CPU (7 windows of 207 sensors)
ONNX_CHUNK = 256  # sensor-windows per ONNX Runtime run (1 window of 207 sensors: fastest per window)
BACKENDS = ("torch", "onnx", "auto")
Backend = Literal["torch", "onnx", "auto"]

log = logging.getLogger(__name__)


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
        backend: Backend = "torch",
    ) -> None:
        if backend not in BACKENDS:
            raise PredictorError(f"unknown backend {backend!r}: expected one of {', '.join(BACKENDS)}")
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
        self.backend = "torch"
        self.requested_backend: Backend = backend
        self._onnx: OnnxModel | None = None
        # a shard's: the full network's sensor count, the sensors its model reads, the positions among
        # them of the ones it forecasts (`shard`); None: the whole network
        self.part: tuple[int, np.ndarray, np.ndarray] | None = None
        learned = not isinstance(model, (Persistence, HistoricalAverage))
        if backend == "onnx" and (self.device.type != "cpu" or not learned):
            raise PredictorError(
                f"the onnx backend runs learned models on a CPU; {version} is "
                + ("on " + self.device.type if learned else "a baseline")
            )
        if backend != "torch" and learned and self.device.type == "cpu":
            self._start_onnx(strict=backend == "onnx")

    @property
    def kind(self) -> str:
        """The model kind (stformer, seq2seq, persistence, historical_average), as checkpoints name it."""
        return next(
            (k for k, (_, cls) in MODEL_CLASSES.items() if isinstance(self.model, cls)),
            type(self.model).__name__,
        )

    def _start_onnx(self, *, strict: bool) -> None:
        try:
            if not onnx_available():
                raise OnnxBackendError("onnx and onnxruntime are not installed")
            self._onnx = OnnxModel(self.model, self._probe(), threads=torch.get_num_threads())
        except OnnxBackendError as exc:
            if strict:
                raise PredictorError(f"the onnx backend cannot serve {self.version}: {exc}") from exc
            log.warning("serving with torch", extra={"model_version": self.version, "reason": str(exc)})
            return
        self.backend = "onnx"

    def _probe(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Two windows of scaled inputs (values, a mask with gaps, real time features) to export with and
        to check ONNX Runtime against torch on."""
        g = torch.Generator().manual_seed(0)
        shape = (2, self.window, self.network.n_sensors, self.network.n_features)
        step_ts = (
            1_767_225_600_000
            + np.arange(2 * self.window, dtype=np.int64).reshape(2, -1) * self.network.step_ms
        )
        x = torch.randn(shape, generator=g)
        mask = (torch.rand(shape, generator=g) > 0.2).float()
        return x * mask, torch.from_numpy(time_features(step_ts)), mask

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
        cls,
        source: str | Path | Location | bytes,
        *,
        device: str | None = None,
        network: Network | None = None,
        backend: Backend = "torch",
        storage: StorageSettings | None = None,
        expected_sha256: str | None = None,
    ) -> Predictor:
        """Load a verified checkpoint from a path, URI or bytes (raises `CheckpointError`); with `network`,
        refuse a mismatch; with `expected_sha256` (a registry record's), refuse a replaced object."""
        ckpt = load_checkpoint(source, network=network, storage=storage, expected_sha256=expected_sha256)
        return cls(
            ckpt.build_model(),
            network=ckpt.network,
            scaler=ckpt.scaler,
            targets=ckpt.target_indices,
            window=ckpt.window,
            horizon=ckpt.horizon,
            version=ckpt.version,
            device=device,
            backend=backend,
        )

    def shard(self, index: int, count: int, backend: Backend | None = None) -> Predictor | None:
        """The predictor of shard `index` of `count` of the network's sensors (`STFormer.shard`), on
        `backend` (default: this one's): it reads the whole network's windows and forecasts its own sensors
        only, `[B, H, len(own_sensors), out]`. A model that cannot be split (no sensor blocks, or fewer
        blocks than shards) is served whole by shard 0; the other shards then have nothing to forecast
        (None), and a warning says so."""
        backend = backend or self.requested_backend
        if not 0 <= index < count:
            raise PredictorError(f"shard {index} of {count} does not exist")
        config = getattr(self.model, "config", None)
        blocks = getattr(config, "n_blocks", 1) if getattr(config, "block_size", 0) else 0
        if count == 1 or blocks < count:
            if count > 1 and index == 0:
                log.warning(
                    "model cannot be split by sensors: shard 0 serves the whole network",
                    extra={"model_version": self.version, "shards": count, "blocks": blocks},
                )
            return self._like(self.model, self.network, backend) if index == 0 else None
        model, sensors, own = self.model.shard(index, count)  # type: ignore[operator]
        sub = self.network.subset(sensors, name=f"{self.network.name}#{index}/{count}")
        out = self._like(model, sub, backend)
        out.part = (self.network.n_sensors, sensors, own)
        return out

    def _like(self, model: nn.Module, network: Network, backend: Backend) -> Predictor:
        return Predictor(
            model,
            network=network,
            scaler=self.scaler,
            targets=self.targets,
            window=self.window,
            horizon=self.horizon,
            version=self.version,
            device=str(self.device),
            backend=backend,
        )

    @property
    def own_sensors(self) -> np.ndarray | None:
        """The sensors (indices into the whole network) this predictor forecasts; None: all of them."""
        return None if self.part is None else self.part[1][self.part[2]]

    def _check(self, values: np.ndarray, mask: np.ndarray, step_ts: np.ndarray) -> None:
        n = self.network.n_sensors if self.part is None else self.part[0]
        expected = (self.window, n, self.network.n_features)
        if values.ndim != 4 or values.shape[1:] != expected:
            dims = ", ".join(map(str, expected))
            raise PredictorError(f"values have shape {values.shape}, expected [B, {dims}]")
        if mask.shape != values.shape:
            raise PredictorError(f"mask shape {mask.shape} differs from values shape {values.shape}")
        if step_ts.shape != values.shape[:2]:
            raise PredictorError(f"step_ts shape {step_ts.shape}, expected {values.shape[:2]}")

    def _arrays(
        self, values: np.ndarray, mask: np.ndarray, step_ts: np.ndarray
    ) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Checked, scaled model inputs (x, time_features, mask) as float32 arrays, and the finite-value map."""
        values = np.asarray(values, dtype=np.float32)
        mask = np.asarray(mask)
        step_ts = np.asarray(step_ts, dtype=np.int64)
        self._check(values, mask, step_ts)
        if self.part is not None:  # a shard reads its sensors only
            values, mask = values[:, :, self.part[1]], mask[:, :, self.part[1]]
        finite = np.isfinite(values)  # [B, T, N, F]
        x = np.where(finite, self.scaler.transform(values), 0.0).astype(np.float32)  # [B, T, N, F]
        m = ((mask > 0) & finite).astype(np.float32)  # [B, T, N, F]
        tf = time_features(step_ts)  # [B, T, 3]
        return finite, (x, tf, m)

    def _inputs(
        self, values: np.ndarray, mask: np.ndarray, step_ts: np.ndarray
    ) -> tuple[np.ndarray, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """`_arrays` as tensors on the device."""
        finite, arrays = self._arrays(values, mask, step_ts)
        tensors = tuple(torch.from_numpy(a).to(self.device) for a in arrays)
        return finite, tensors  # type: ignore[return-value]

    @torch.inference_mode()
    def predict(self, values: np.ndarray, mask: np.ndarray, step_ts: np.ndarray) -> np.ndarray:
        """values, mask: [B, window, N, F] in original units (values last-observation filled; NaN where never
        observed); step_ts: [B, window] int64 epoch ms UTC of each input step.
        Returns [B, horizon, N, out] float32 in original units ([B, horizon, len(own_sensors), out] for a
        shard)."""
        if self._onnx is not None:
            finite, (xa, tfa, ma) = self._arrays(values, mask, step_ts)
            b, n = xa.shape[0], xa.shape[2]
            step = max(1, ONNX_CHUNK // n)
            parts = [
                self._onnx(xa[i : i + step], tfa[i : i + step], ma[i : i + step]) for i in range(0, b, step)
            ]
            y = parts[0] if len(parts) == 1 else np.concatenate(parts)
        else:
            finite, (x, tf, m) = self._inputs(values, mask, step_ts)
            b, n = x.shape[0], x.shape[2]
            # On a CPU, a forward over many windows at once falls out of cache (the Los-loop STFormer, 2
            # threads: 7.2-7.4 ms per window in batches of 4-8, 8.5 in 16, 9.5 in 32): chunks of ~CPU_CHUNK
            # sensor-windows.
            step = b if self.device.type != "cpu" else max(1, CPU_CHUNK // n)
            y = (
                torch.cat(
                    [
                        self.model(x[i : i + step], tf[i : i + step], m[i : i + step])
                        for i in range(0, b, step)
                    ]
                )
                .float()
                .cpu()
                .numpy()
            )
        out = self.scaler.inverse(y, self.targets)  # [B, H, N, out]
        never = ~finite[..., list(self.targets)].any(axis=1)  # [B, N, out]
        out[np.broadcast_to(never[:, None], out.shape)] = np.nan
        if self.part is not None:
            out = out[:, :, self.part[2]]  # a shard's own sensors
        return out.astype(np.float32)

    @torch.inference_mode()
    def attention(self, values: np.ndarray, mask: np.ndarray, step_ts: np.ndarray) -> dict[str, np.ndarray]:
        """The model's attention weights for these windows (see the model's `attention_maps`)."""
        maps = getattr(self.model, "attention_maps", None)
        if maps is None:
            raise PredictorError(f"{self.version} has no attention weights to show (a baseline?)")
        _, inputs = self._inputs(values, mask, step_ts)
        return {
            k: (v.float() if v.is_floating_point() else v).cpu().numpy() for k, v in maps(*inputs).items()
        }
