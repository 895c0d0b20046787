"""Checkpoints and the serving Predictor: round trips (file, bytes, S3 on a real moto server), baselines,
and refusal of bad, replaced or missing checkpoints."""

from __future__ import annotations

import io
import re
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch

from stream.datasets import SensorDataset
from stream.network import Network
from tests.s3 import MotoServer
from training.baselines import Persistence, PersistenceConfig
from training.checkpoint import (
    Checkpoint,
    CheckpointError,
    checkpoint_bytes,
    load_checkpoint,
    save_checkpoint,
)
from training.predictor import Predictor, PredictorError
from training.scaler import StandardScaler

torch.set_num_threads(1)

STEP = 300_000
DAY = 86_400_000
T0 = 1_330_560_000_000  # 2012-03-01 00:00 UTC


def _windows(b: int = 3, window: int = 12, n: int = 5, f: int = 2, seed: int = 0):
    rng = np.random.default_rng(seed)
    values = (rng.random((b, window, n, f)) * 60).astype(np.float32)  # [B, T, N, F]
    mask = (rng.random((b, window, n, f)) > 0.2).astype(np.uint8)
    step_ts = T0 + STEP * (np.arange(window)[None] + 7 * np.arange(b)[:, None])  # [B, T]
    return values, mask, step_ts.astype(np.int64)


def test_persistence_repeats_last_filled_value_per_sensor_and_feature() -> None:
    net = Network.simple("ring", 5, ["speed", "flow"])
    values, mask, step_ts = _windows()
    values[1, :, 3, 0] = np.nan  # a sensor never observed in this window
    p = Predictor.baseline("persistence", net, window=12, horizon=6)
    out = p.predict(values, mask, step_ts)
    assert out.shape == (3, 6, 5, 2) and out.dtype == np.float32
    np.testing.assert_array_equal(out, np.repeat(values[:, -1:], 6, axis=1))
    assert p.version == "baseline-persistence" and p.out_features == ("speed", "flow")
    assert p.network_fingerprint == net.fingerprint() and (p.window, p.horizon) == (12, 6)


def test_predict_rejects_wrong_shapes() -> None:
    p = Predictor.baseline("persistence", Network.simple("ring", 5, ["speed", "flow"]))
    values, mask, step_ts = _windows(n=4)
    with pytest.raises(PredictorError, match="expected"):
        p.predict(values, mask, step_ts)


def test_historical_average_needs_data_and_forecasts_time_of_week() -> None:
    net = Network.simple("ring", 2, ["speed"], step_ms=DAY)
    with pytest.raises(PredictorError, match="needs training data"):
        Predictor.baseline("historical_average", net)
    t = 7 * 20
    step_ts = T0 + DAY * np.arange(t, dtype=np.int64)
    dow = (step_ts // DAY + 3) % 7
    values = np.repeat((10.0 * dow)[:, None, None], 2, axis=1).astype(np.float32)  # [T, N, 1]
    data = SensorDataset(net, values, np.ones_like(values, dtype=np.uint8), step_ts)
    p = Predictor.baseline("historical_average", net, window=7, horizon=3, data=data)
    out = p.predict(values[None, :7], np.ones((1, 7, 2, 1), np.uint8), step_ts[None, :7])
    expected = 10.0 * ((dow[6] + np.arange(1, 4)) % 7)
    np.testing.assert_allclose(out[0, :, 0, 0], expected, atol=1e-4)


def _checkpoint(net: Network) -> Checkpoint:
    model = Persistence(PersistenceConfig(horizon=4, targets=(1,)))
    return Checkpoint.from_model(
        "persistence",
        model,
        scaler=StandardScaler([50.0, 100.0], [10.0, 20.0]),
        network=net,
        targets=("flow",),
        window=12,
        horizon=4,
        data_range={"dataset": "synthetic", "start_ms": T0, "end_ms": T0 + 100 * STEP},
        metrics={"val_mae": 1.5},
    )


def test_checkpoint_round_trip_through_predictor(tmp_path: Path) -> None:
    net = Network.simple("ring", 5, ["speed", "flow"])
    path = save_checkpoint(_checkpoint(net), tmp_path / "m.pt")
    ckpt = load_checkpoint(path, network=net)
    assert ckpt.kind == "persistence" and ckpt.metrics == {"val_mae": 1.5} and ckpt.sha256
    assert ckpt.data_range["start_ms"] == T0 and ckpt.code_version
    p = Predictor.from_checkpoint(path, device="cpu")
    values, mask, step_ts = _windows()
    out = p.predict(values, mask, step_ts)
    assert out.shape == (3, 4, 5, 1) and p.out_features == ("flow",)
    np.testing.assert_allclose(out, np.repeat(values[:, -1:, :, 1:], 4, axis=1), rtol=1e-5)
    assert p.version == ckpt.version


def test_tampered_checkpoint_is_refused(tmp_path: Path) -> None:
    net = Network.simple("ring", 5, ["speed", "flow"])
    path = save_checkpoint(_checkpoint(net), tmp_path / "m.pt")
    payload = torch.load(path, weights_only=True)
    payload["scaler"]["mean"][0] += 1.0
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="integrity check"):
        load_checkpoint(path)


def test_foreign_truncated_and_pickled_files_are_refused(tmp_path: Path) -> None:
    torch.save({"weight": torch.zeros(3)}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not a sensorcast checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")
    good = save_checkpoint(_checkpoint(Network.simple("ring", 5, ["speed", "flow"])), tmp_path / "m.pt")
    (tmp_path / "cut.pt").write_bytes(Path(good).read_bytes()[:500])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(tmp_path / "cut.pt")
    torch.save({"format": "sensorcast-checkpoint", "obj": Path("x")}, tmp_path / "pickled.pt")
    with pytest.raises(CheckpointError, match="pickled Python objects"):
        load_checkpoint(tmp_path / "pickled.pt")
    with pytest.raises(CheckpointError, match=re.escape(f"no checkpoint at {tmp_path}/missing.pt")):
        load_checkpoint(tmp_path / "missing.pt")


def test_checkpoint_for_another_network_is_refused(tmp_path: Path) -> None:
    path = save_checkpoint(_checkpoint(Network.simple("ring", 5, ["speed", "flow"])), tmp_path / "m.pt")
    with pytest.raises(CheckpointError, match="fingerprint"):
        Predictor.from_checkpoint(path, network=Network.simple("other", 6, ["speed", "flow"]))


def test_checkpoint_from_bytes_names_them_in_errors() -> None:
    net = Network.simple("ring", 5, ["speed", "flow"])
    ckpt = _checkpoint(net)
    data = checkpoint_bytes(ckpt)
    loaded = load_checkpoint(data, network=net)
    assert loaded.sha256 == ckpt.sha256 and loaded.version == ckpt.version
    assert Predictor.from_checkpoint(data, device="cpu").version == ckpt.version
    with pytest.raises(CheckpointError, match=r"^ray object 7 is truncated or corrupt"):
        load_checkpoint(data[:500], name="ray object 7")
    foreign = io.BytesIO()
    torch.save({"weight": torch.zeros(3)}, foreign)
    with pytest.raises(CheckpointError, match=r"^checkpoint bytes is not a sensorcast checkpoint"):
        load_checkpoint(foreign.getvalue())
    with pytest.raises(CheckpointError, match="not the checkpoint the registry recorded"):
        load_checkpoint(data, expected_sha256="0" * 64)


def test_checkpoint_round_trip_through_s3(moto_s3: MotoServer) -> None:
    bucket = moto_s3.bucket(f"ckpt-{uuid.uuid4().hex[:12]}")
    net = Network.simple("ring", 5, ["speed", "flow"])
    ckpt = _checkpoint(net)
    uri = save_checkpoint(ckpt, f"{bucket}/models/m.pt", moto_s3.settings)
    assert uri == f"{bucket}/models/m.pt"
    loaded = load_checkpoint(uri, network=net, storage=moto_s3.settings, expected_sha256=ckpt.sha256)
    assert loaded.sha256 == ckpt.sha256
    p = Predictor.from_checkpoint(uri, device="cpu", storage=moto_s3.settings, expected_sha256=ckpt.sha256)
    assert p.version == ckpt.version
    with pytest.raises(
        CheckpointError, match=re.escape(f"{uri} is not the checkpoint the registry recorded")
    ):
        load_checkpoint(uri, storage=moto_s3.settings, expected_sha256="f" * 64)
    with pytest.raises(CheckpointError, match=re.escape(f"no checkpoint at {bucket}/models/missing.pt")):
        load_checkpoint(f"{bucket}/models/missing.pt", storage=moto_s3.settings)
