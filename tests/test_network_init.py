"""`sensorcast network init` and the README's path on a table laid out unlike any shipped dataset: your
table -> network -> train -> evaluate (default suite), and -> serve -> replay -> read forecasts (slow)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import orjson
import pandas as pd
import pytest
import redis
from typer.testing import CliRunner

from serving.cli import app
from serving.embedded import EmbeddedRuntime
from serving.keys import Keys
from stream.datasets import load_dataset
from tests.conftest import wait_for
from tests.test_table import counts_table, write_file


def _cli(*args: str) -> str:
    out = CliRunner().invoke(app, list(args))
    assert out.exit_code == 0, f"{args}: {out.output}\n{out.exception!r}"
    return out.output


def test_network_init_writes_an_editable_network_that_datasets_read(tmp_path: Path) -> None:
    counts_table(steps=60).to_parquet(tmp_path / "counts.parquet")
    meta = write_file(
        tmp_path / "stations.csv",
        "Station,lat,lon\nnorth-1,52,13\nnorth-2,52.1,13\neast-7,52,13.2\nring-3,52,13.1\n",
    )
    net_file = tmp_path / "conf" / "net.toml"
    out = _cli(
        "network", "init", str(tmp_path / "counts.parquet"), "--out", str(net_file), "--metadata", str(meta)
    )
    assert "step 1h (inferred)" in out and "gaps:" in out and "coordinates for 4 sensors" in out
    text = net_file.read_text()
    assert "# gaps:" in text and 'path = "../counts.parquet"' in text and "zero_is_missing = false" in text
    ds = load_dataset(net_file)
    assert ds.network.coords is not None and ds.network.coords[0] == (13.0, 52.0) and not ds.zero_is_missing
    # edited by hand: zero now means "no reading", and ring-3 (with its coordinates) is dropped
    lines = text.replace("zero_is_missing = false", "zero_is_missing = true").splitlines(keepends=True)
    net_file.write_text("".join(x for x in lines if "ring-3" not in x and x.strip() != "[13.1, 52.0],"))
    again = load_dataset(net_file)
    assert again.zero_is_missing and again.network.sensors == ("north-1", "north-2", "east-7")
    refused = CliRunner().invoke(
        app, ["network", "init", str(tmp_path / "counts.parquet"), "--out", str(net_file)]
    )
    assert refused.exit_code != 0 and "pass --force" in refused.output


def test_evaluation_states_its_zero_convention(tmp_path: Path) -> None:
    from training.evaluate import evaluate, render_table
    from training.predictor import Predictor

    counts_table(steps=200).to_parquet(tmp_path / "counts.parquet")
    scores = {}
    for zero_is_missing in (False, True):
        flag = "--zero-is-missing" if zero_is_missing else "--zero-is-real"
        net_file = tmp_path / f"net-{zero_is_missing}.toml"
        _cli("network", "init", str(tmp_path / "counts.parquet"), "--out", str(net_file), flag)
        ds = load_dataset(net_file)
        report = evaluate(Predictor.baseline("persistence", ds.network, device="cpu"), ds)
        assert report["zero_is_missing"] is zero_is_missing
        assert report["zeros"].startswith("zeros are missing" if zero_is_missing else "zeros are real values")
        assert render_table(report).caption == report["zeros"]
        scores[zero_is_missing] = report["average"]["count"]
    assert scores[True] < scores[False]  # the 04:00 zeros are scored only when zero is a real value


def test_table_to_network_to_train_to_evaluate(tmp_path: Path) -> None:
    """The README's path on a long Parquet table with Year/Month/Day/Hour/Minute columns and irregular
    times: `network init` -> `train` (tiny budget, no Ray) -> `evaluate`."""
    counts_table(steps=150).to_parquet(tmp_path / "counts.parquet")
    net_file, model = tmp_path / "net.toml", tmp_path / "model.pt"
    _cli("network", "init", str(tmp_path / "counts.parquet"), "--out", str(net_file))
    _cli(
        "train",
        "--dataset",
        str(net_file),
        "--out",
        str(model),
        "--workers",
        "0",
        "--epochs",
        "1",
        "--threads",
        "1",
    )
    out = _cli("evaluate", str(model), "--dataset", str(net_file), "--json", str(tmp_path / "report.json"))
    assert "zeros are real values" in out and "beats persistence" in out
    report = pd.read_json(tmp_path / "report.json", typ="series")
    assert report["dataset"] == "counts" and report["zero_is_missing"] is False and report["windows"] > 0


def test_bad_input_is_one_line_from_the_command(tmp_path: Path) -> None:
    bad = write_file(
        tmp_path / "bad.csv", "sensor;time;value\na;2024-03-01 00:00;1\na;2024-03-01 01:00;12,5\n"
    )
    cmd = [
        sys.executable,
        "-m",
        "serving.cli",
        "network",
        "init",
        str(bad),
        "--out",
        str(tmp_path / "n.toml"),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stdout.splitlines() == [
        f"error: DatasetError: {bad}: line 3, column 'value': expected a number, got '12,5'"
    ], proc.stdout + proc.stderr


@pytest.mark.slow
def test_table_to_network_to_train_to_serve_to_read_forecasts(
    embedded: EmbeddedRuntime, tmp_path: Path
) -> None:
    """The README's whole path, command by command, against the session's broker and Redis: network init
    -> train -> serve (a subprocess) + replay the table -> `sensorcast forecasts` reads them back."""
    tag = uuid.uuid4().hex[:8]
    env = {
        **os.environ,
        "SENSORCAST_KAFKA__READINGS_TOPIC": f"table-readings-{tag}",
        "SENSORCAST_KAFKA__DEAD_LETTER_TOPIC": f"table-dead-{tag}",
        "SENSORCAST_KAFKA__GROUP_ID": f"table-{tag}",
        "SENSORCAST_KAFKA__SESSION_TIMEOUT_MS": "3000",
        "SENSORCAST_REDIS__KEY_PREFIX": f"tbl{tag}",
        "SENSORCAST_ARCHIVE__ROOT": str(tmp_path / "archive"),
    }
    servers = ["--bootstrap", str(embedded.bootstrap)]
    redis_url = ["--redis-url", str(embedded.redis_url)]
    sensorcast = [sys.executable, "-m", "serving.cli"]
    counts_table(steps=150).to_parquet(tmp_path / "counts.parquet")
    meta = write_file(
        tmp_path / "stations.csv", "Station,lat,lon\nnorth-1,1,1\nnorth-2,1,2\neast-7,2,1\nring-3,2,2\n"
    )
    net_file, model = tmp_path / "net.toml", tmp_path / "model.pt"
    _cli("network", "init", str(tmp_path / "counts.parquet"), "--out", str(net_file), "--metadata", str(meta))
    _cli("train", "--dataset", str(net_file), "--out", str(model), "--workers", "0", "--epochs", "1")
    log = (tmp_path / "serve.log").open("w")
    serve = subprocess.Popen(
        [*sensorcast, "serve", "--network", str(net_file), "--model", str(model), *servers, *redis_url],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        replay = subprocess.run(
            [*sensorcast, "replay", str(net_file), *servers],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert replay.returncode == 0, replay.stdout[-2000:] + replay.stderr[-2000:]
        r = redis.Redis.from_url(str(embedded.redis_url))
        latest = Keys(f"tbl{tag}", "counts").latest
        wait_for(
            lambda: serve.poll() is None and len(r.hgetall(latest)) == 4,
            timeout_s=300,
            what=f"forecasts for the 4 stations in {latest} (serve log: {tmp_path / 'serve.log'})",
        )
        doc = orjson.loads(r.hget(latest, "north-1") or b"{}")
        assert doc["model_version"].startswith("stformer") and len(doc["forecast"]) == 12
        shown = subprocess.run(
            [*sensorcast, "forecasts", *redis_url, "--network", "counts"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert shown.returncode == 0 and "north-1" in shown.stdout and "cars" in shown.stdout, shown.stdout
    finally:
        serve.send_signal(signal.SIGINT)
        try:
            serve.wait(timeout=60)
        except subprocess.TimeoutExpired:
            serve.kill()
        log.close()
    assert "serving counts (4 sensors)" in (tmp_path / "serve.log").read_text()
