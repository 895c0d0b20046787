"""The storage layer against a real S3 endpoint (moto's server) and a local folder: whole-object writes,
listing, slot claims under contention, the archive read straight from its URI by pandas and pyarrow, and
the one-line errors a wrong bucket, refused credentials or an unreachable endpoint give at start."""

from __future__ import annotations

import random
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from pydantic import SecretStr

from stream.archive import Archive
from stream.config import StorageSettings
from stream.network import Network
from stream.storage import StorageError, check, open_location
from stream.window import SealedStep
from tests.s3 import MotoServer

NET = Network.simple("store", 5, ["speed", "flow"], step_ms=60_000)
T0 = 1_700_000_040_000 - 1_700_000_040_000 % 60_000


def _steps(n: int, first: int = 0) -> list[SealedStep]:
    rng = np.random.default_rng(first)
    out = []
    for i in range(first, first + n):
        values = rng.normal(50, 5, (NET.n_sensors, NET.n_features)).astype(np.float32)
        out.append(SealedStep(T0 + i * NET.step_ms, values, np.ones_like(values, np.uint8), 0))
    return out


@pytest.fixture(params=["local", "s3"])
def root(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, StorageSettings]:
    if request.param == "local":
        return str(tmp_path / "store"), StorageSettings()
    moto: MotoServer = request.getfixturevalue("moto_s3")
    return moto.bucket(f"b-{uuid.uuid4().hex[:12]}") + "/prefix", moto.settings


def test_objects_are_written_whole_listed_and_deleted(root: tuple[str, StorageSettings]) -> None:
    where, storage = root
    loc = open_location(where, storage)
    assert not (loc / "a/b.bin").exists()
    (loc / "a/b.bin").write_bytes(b"x" * 100_000)
    (loc / "a/c.txt").write_text("hello")
    (loc / "top.txt").write_text("t")
    names = [f.uri.removeprefix(loc.uri + "/") for f in loc.files()]
    assert names == ["a/b.bin", "a/c.txt", "top.txt"]
    assert [f.name for f in loc.files(recursive=False)] == ["top.txt"]
    assert (loc / "a/b.bin").read_bytes() == b"x" * 100_000
    (loc / "a/c.txt").delete()
    (loc / "a/c.txt").delete()  # missing is fine
    assert [f.name for f in (loc / "a").files()] == ["b.bin"]
    if loc.is_local:  # no temporary file is left beside a local object
        assert sorted(p.name for p in Path(loc.path, "a").iterdir()) == ["b.bin"]


def test_claims_give_each_slot_to_one_racer(root: tuple[str, StorageSettings]) -> None:
    where, storage = root
    loc = open_location(where, storage) / "claims"
    wins: list[tuple[int, str]] = []
    lock = threading.Lock()
    rng = random.Random(0)

    def racer(k: int) -> None:
        slot = 1
        while slot < 40:
            got = (loc / f"{slot:04d}").claim(str(k).encode())
            if got is not None:
                with lock:
                    wins.append((slot, got.read_text()))
                return
            # as the registry does (`Registry._claim`): losers pause a random, growing moment, or racers
            # that all lost can collide again slot after slot in lockstep (seen on a loaded machine)
            time.sleep(rng.uniform(0, 0.005 * 2 ** min(slot, 7)))
            slot += 1

    threads = [threading.Thread(target=racer, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    slots = [s for s, _ in wins]
    print("claims won:", sorted(wins))
    assert len(wins) == 6, "every racer eventually owns a slot"
    assert len(set(slots)) == 6, f"a slot was won twice: {sorted(wins)}"
    owners = {s: o for s, o in wins}
    for f in loc.files():  # every surviving claim object is its winner's
        slot = int(f.name.split("-")[0])
        assert f.read_text() == owners[slot]


def test_archive_on_s3_reads_back_and_is_readable_straight_from_the_uri(moto_s3: MotoServer) -> None:
    uri = moto_s3.bucket(f"arch-{uuid.uuid4().hex[:10]}") + "/archive"
    archive = Archive(uri, NET, moto_s3.settings).claim()
    steps = _steps(30)
    archive.append(steps[:10])
    archive.append(steps[5:30])  # overlapping: the first five are skipped
    again = Archive(uri, NET, moto_s3.settings)  # a restarted writer finds where it stopped
    assert again.last_step() == steps[-1].step_ts
    step_ts, values, mask = again.read(start_ms=steps[3].step_ts, end_ms=steps[20].step_ts)
    assert list(step_ts) == [s.step_ts for s in steps[3:20]]
    np.testing.assert_array_equal(values, np.stack([s.values for s in steps[3:20]]))
    assert mask.all()
    fs = open_location(uri, moto_s3.settings).fs
    table = pq.read_table(uri.removeprefix("s3://") + "/steps", filesystem=fs)  # pyarrow, partitions too
    assert table.num_rows == 30 * NET.n_sensors * NET.n_features
    frame = pd.read_parquet(uri.removeprefix("s3://") + "/steps", filesystem=fs)  # pandas
    assert sorted(frame["step_ts"].unique()) == [s.step_ts for s in steps]
    with pytest.raises(Exception, match="belongs to network"):
        Archive(uri, Network.simple("other", 3, ["speed"]), moto_s3.settings).claim()


def test_wrong_bucket_bad_credentials_and_dead_endpoint_fail_in_one_line(
    moto_s3: MotoServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = open_location(f"s3://no-such-{uuid.uuid4().hex[:8]}/archive", moto_s3.settings)
    with pytest.raises(StorageError) as err:
        check(missing, "archive.root")
    print("missing bucket:", err.value)
    assert str(err.value).startswith("archive.root=s3://no-such-") and "does not exist" in str(err.value)

    monkeypatch.setenv("INITIAL_NO_AUTH_ACTION_COUNT", "0")  # this server checks credentials: none are known
    strict = MotoServer.start(tmp_path)
    monkeypatch.delenv("INITIAL_NO_AUTH_ACTION_COUNT")
    try:
        refused = StorageSettings(
            endpoint=strict.endpoint,
            region="us-east-1",
            access_key_id=SecretStr("AKIAWRONG"),
            secret_access_key=SecretStr("wrong-secret"),
        )
        with pytest.raises(StorageError) as err:
            check(open_location("s3://bucket/registry", refused), "retrain.registry")
        print("refused credentials:", err.value)
        assert str(err.value).startswith("retrain.registry=s3://bucket/registry: ")
        assert "credentials were refused" in str(err.value) or "access denied" in str(err.value)
        assert "wrong-secret" not in str(err.value)
    finally:
        strict.stop()

    dead = StorageSettings(endpoint="http://127.0.0.1:9", connect_timeout_s=1, request_timeout_s=1, retries=1)
    with pytest.raises(StorageError) as err:
        check(open_location("s3://bucket/archive", dead), "archive.root")
    print("dead endpoint:", err.value)
    assert "cannot be reached" in str(err.value)


def test_cli_names_the_setting_without_a_stack_trace(moto_s3: MotoServer, tmp_path: Path) -> None:
    network = tmp_path / "net.toml"
    NET.save(network)
    env = {
        "SENSORCAST_STORAGE__ENDPOINT": moto_s3.endpoint,
        "SENSORCAST_STORAGE__REGION": "us-east-1",
        "SENSORCAST_STORAGE__ACCESS_KEY_ID": "test",
        "SENSORCAST_STORAGE__SECRET_ACCESS_KEY": "test",
    }
    bucket = f"missing-{uuid.uuid4().hex[:8]}"
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "serving.cli",
            "ingest",
            "--network",
            str(network),
            "--archive",
            f"s3://{bucket}/archive",
            "--bootstrap",
            "127.0.0.1:9",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**_base_env(), **env},
    )
    text = out.stdout + out.stderr
    print(text)
    assert out.returncode == 2
    assert "Traceback" not in text
    assert f"archive.root=s3://{bucket}/archive" in text and "does not exist" in text


def _base_env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("SENSORCAST_")}
