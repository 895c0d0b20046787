"""Registry: versions, lineage, champion log, promote and rollback — on a local folder and on S3 (a real moto
server), alone and under concurrent writers, and after a registration that died half-way."""

from __future__ import annotations

import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from stream.config import StorageSettings
from stream.network import Network
from stream.storage import Location, StorageError, open_location
from tests.s3 import MotoServer
from training.baselines import Persistence, PersistenceConfig
from training.checkpoint import (
    Checkpoint,
    CheckpointError,
    checkpoint_bytes,
    load_checkpoint,
    save_checkpoint,
)
from training.predictor import Predictor
from training.registry import Registry, RegistryError
from training.scaler import StandardScaler

NET = Network.simple("ring", 3, ["speed"])


def _ckpt(val_mae: float) -> Checkpoint:
    return Checkpoint.from_model(
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


def _checkpoint(path: Path, val_mae: float) -> str:
    return save_checkpoint(_ckpt(val_mae), path)


@pytest.fixture(params=["local", "s3"])
def where(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, StorageSettings | None]:
    """A fresh registry root and the settings to reach it: a local folder, or a bucket on moto."""
    if request.param == "local":
        return str(tmp_path / "reg"), None
    moto: MotoServer = request.getfixturevalue("moto_s3")
    return moto.bucket(f"reg-{uuid.uuid4().hex[:12]}") + "/registry", moto.settings


def test_register_promote_rollback_with_lineage(
    where: tuple[str, StorageSettings | None], tmp_path: Path
) -> None:
    root, storage = where
    reg = Registry(root, storage)
    assert reg.list() == [] and reg.champion() is None and reg.history() == []
    with pytest.raises(RegistryError, match="no champion"):
        reg.champion_uri()
    first = reg.register(_checkpoint(tmp_path / "a.pt", 3.0), reason="initial")
    assert first.version == "v0001" and first.parent is None and first.data_range["end_ms"] == 1000
    assert first.uri == (open_location(root, storage) / "versions/v0001/model.pt").uri
    reg.promote("v0001", reason="first model")
    second = reg.register(checkpoint_bytes(_ckpt(2.5)), reason="retrained")  # bytes, as Ray carries them
    assert second.parent == "v0001" and second.metrics["val_mae"] == 2.5
    reg.promote("v0002", reason="val MAE 2.5 < 3.0")
    other = Registry(root, storage)  # another process's view: everything it knows is in storage
    assert other.champion() == second and other.champion_uri() == second.uri
    p = Predictor.from_checkpoint(
        other.champion_uri(), device="cpu", storage=storage, expected_sha256=second.sha256
    )
    assert p.version == "v0002"
    assert reg.rollback(reason="bad live MAE").version == "v0001"
    assert [h["version"] for h in other.history()] == ["v0001", "v0002", "v0001"]
    assert other.history()[-1]["reason"].startswith("rollback from v0002")
    assert set(other.history()[0]) == {"version", "at_ms", "reason"}
    assert [r.version for r in other.list()] == ["v0001", "v0002"] and other.champion() == first


def test_registry_refuses_bad_input(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "reg")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(RegistryError, match="refusing to register"):
        reg.register(tmp_path / "junk.pt")
    with pytest.raises(RegistryError, match="refusing to register checkpoint bytes"):
        reg.register(b"not a checkpoint either")
    with pytest.raises(RegistryError, match="parent version"):
        reg.register(_checkpoint(tmp_path / "a.pt", 1.0), parent="v0042")
    with pytest.raises(RegistryError, match="no version"):
        reg.show("v0001")
    with pytest.raises(RegistryError, match="no version"):
        reg.show("../../etc")
    reg.register(_checkpoint(tmp_path / "a.pt", 1.0))
    reg.promote("v0001", reason="only one")
    with pytest.raises(RegistryError, match="no earlier champion"):
        reg.rollback(reason="nothing to go back to")


def test_replaced_model_object_is_refused_by_its_recorded_sha256(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "reg")
    v1 = reg.register(checkpoint_bytes(_ckpt(3.0)))
    v2 = reg.register(checkpoint_bytes(_ckpt(2.0)))
    open_location(v2.uri).write_bytes(open_location(v1.uri).read_bytes())  # a valid checkpoint, not v2's
    assert load_checkpoint(v2.uri).version == "v0001"  # it verifies on its own ...
    with pytest.raises(CheckpointError, match="not the checkpoint the registry recorded"):
        load_checkpoint(v2.uri, expected_sha256=v2.sha256)  # ... but it is not what v0002 recorded


def test_concurrent_registration_and_promotion(where: tuple[str, StorageSettings | None]) -> None:
    """Writers in several threads, each with its own Registry (as separate processes would have):
    version numbers stay unique and consecutive, every promotion is in the log exactly once and in the
    order its writer made it, and the champion is the log's last entry."""
    root, storage = where
    writers, versions_each, promotions_each = 5, 2, 3
    blob = checkpoint_bytes(_ckpt(1.0))

    def writer(w: int) -> list[str]:
        reg = Registry(root, storage)
        mine = [reg.register(blob, parent=None, reason=f"w{w}").version for _ in range(versions_each)]
        for k in range(promotions_each):
            reg.promote(mine[k % len(mine)], reason=f"w{w}-p{k}")
        return mine

    with ThreadPoolExecutor(writers) as pool:
        registered = [v for vs in pool.map(writer, range(writers)) for v in vs]
    reg = Registry(root, storage)
    n = writers * versions_each
    assert sorted(registered) == [f"v{i:04d}" for i in range(1, n + 1)]  # unique and consecutive
    assert [r.version for r in reg.list()] == sorted(registered)
    history = reg.history()
    reasons = Counter(h["reason"] for h in history)
    expected = {f"w{w}-p{k}" for w in range(writers) for k in range(promotions_each)}
    assert set(reasons) == expected and set(reasons.values()) == {1}, reasons
    for w in range(writers):
        assert [h["reason"] for h in history if h["reason"].startswith(f"w{w}-")] == [
            f"w{w}-p{k}" for k in range(promotions_each)
        ]
    assert reg.champion() is not None and reg.champion().version == history[-1]["version"]
    for h in history:  # each entry names the version its writer promoted
        assert reg.show(h["version"]).reason == h["reason"].split("-")[0]


def test_version_without_record_is_invisible_and_its_number_not_reused(
    where: tuple[str, StorageSettings | None],
) -> None:
    """What a registration that died between the model and the record leaves: a claim and a model object."""
    root, storage = where
    reg = Registry(root, storage)
    reg.register(checkpoint_bytes(_ckpt(3.0)), reason="complete")
    loc = open_location(root, storage)
    assert (loc / "claims" / "v0002").claim() is not None
    save_checkpoint(_ckpt(2.0), loc / "versions/v0002/model.pt")
    assert [r.version for r in reg.list()] == ["v0001"]
    with pytest.raises(RegistryError, match="no version 'v0002'"):
        reg.promote("v0002", reason="not registered")
    assert reg.register(checkpoint_bytes(_ckpt(1.0))).version == "v0003"
    assert [r.version for r in Registry(root, storage).list()] == ["v0001", "v0003"]


def test_record_write_failure_leaves_no_version(tmp_path: Path) -> None:
    """A real failure between the model and its record (the record's name is taken by a folder)."""
    reg = Registry(tmp_path / "reg")
    (tmp_path / "reg/versions/v0001/record.json").mkdir(parents=True)
    with pytest.raises(StorageError, match="cannot write"):
        reg.register(checkpoint_bytes(_ckpt(3.0)))
    (tmp_path / "reg/versions/v0001/record.json").rmdir()
    assert (tmp_path / "reg/versions/v0001/model.pt").is_file() and reg.list() == []
    assert reg.register(checkpoint_bytes(_ckpt(3.0))).version == "v0002"


def test_registry_takes_a_location(tmp_path: Path) -> None:
    loc: Location = open_location(f"file://{tmp_path}/reg")
    reg = Registry(loc)
    record = reg.register(checkpoint_bytes(_ckpt(3.0)))
    assert record.uri == f"file://{tmp_path}/reg/versions/v0001/model.pt"
    assert load_checkpoint(record.uri, expected_sha256=record.sha256).version == "v0001"


def test_store_failure_is_a_storage_error_and_nothing_is_lost(moto_s3: MotoServer) -> None:
    """A frozen store (SIGSTOP) fails reads and writes within the client's timeouts, as `StorageError`;
    once it answers again the registry is as it was."""
    root = moto_s3.bucket(f"reg-{uuid.uuid4().hex[:12]}") + "/registry"
    quick = moto_s3.settings.model_copy(
        update={"connect_timeout_s": 1.0, "request_timeout_s": 1.0, "retries": 1}
    )
    reg = Registry(root, quick)
    reg.promote(reg.register(checkpoint_bytes(_ckpt(3.0))).version, reason="first")
    moto_s3.pause()
    try:
        with pytest.raises(StorageError):
            Registry(root, quick).champion()
        with pytest.raises(StorageError):
            reg.register(checkpoint_bytes(_ckpt(2.0)))
    finally:
        moto_s3.resume()
    assert [r.version for r in Registry(root, quick).list()] == ["v0001"]
    assert Registry(root, quick).champion_uri().endswith("/versions/v0001/model.pt")
