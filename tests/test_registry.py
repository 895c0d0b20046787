"""Registry: versions, lineage, champion pointer, promote and rollback."""

from __future__ import annotations

from pathlib import Path

import pytest

from stream.network import Network
from training.baselines import Persistence, PersistenceConfig
from training.checkpoint import Checkpoint, save_checkpoint
from training.predictor import Predictor
from training.registry import Registry, RegistryError
from training.scaler import StandardScaler

NET = Network.simple("ring", 3, ["speed"])


def _checkpoint(path: Path, val_mae: float) -> Path:
    ckpt = Checkpoint.from_model(
        "persistence",
        Persistence(PersistenceConfig(horizon=2)),
        scaler=StandardScaler.identity(1),
        network=NET,
        targets=("speed",),
        window=4,
        horizon=2,
        data_range={"start_ms": 0, "end_ms": 1000},
        metrics={"val_mae": val_mae},
    )
    return save_checkpoint(ckpt, path)


def test_register_promote_rollback_with_lineage(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "reg")
    assert reg.list() == [] and reg.champion() is None
    with pytest.raises(RegistryError, match="no champion"):
        reg.champion_path()
    first = reg.register(_checkpoint(tmp_path / "a.pt", 3.0), reason="initial")
    assert first.version == "v0001" and first.parent is None and first.data_range["end_ms"] == 1000
    reg.promote("v0001", reason="first model")
    second = reg.register(_checkpoint(tmp_path / "b.pt", 2.5), reason="retrained")
    assert second.parent == "v0001" and second.metrics["val_mae"] == 2.5
    reg.promote("v0002", reason="val MAE 2.5 < 3.0")
    p = Predictor.from_checkpoint(reg.champion_path(), device="cpu")
    assert p.version == "v0002"
    assert reg.rollback(reason="bad live MAE").version == "v0001"
    assert [h["version"] for h in reg.history()] == ["v0001", "v0002", "v0001"]
    assert reg.history()[-1]["reason"].startswith("rollback from v0002")
    assert [r.version for r in reg.list()] == ["v0001", "v0002"]


def test_registry_refuses_bad_input(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "reg")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(RegistryError, match="refusing to register"):
        reg.register(tmp_path / "junk.pt")
    with pytest.raises(RegistryError, match="parent version"):
        reg.register(_checkpoint(tmp_path / "a.pt", 1.0), parent="v0042")
    with pytest.raises(RegistryError, match="no version"):
        reg.show("v0001")
    reg.register(_checkpoint(tmp_path / "a.pt", 1.0))
    reg.promote("v0001", reason="only one")
    with pytest.raises(RegistryError, match="no earlier champion"):
        reg.rollback(reason="nothing to go back to")
