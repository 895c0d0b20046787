"""What the CLI shows a user, run as a user runs it (a subprocess, output not a terminal).

`train` through Ray Train: one line per epoch, one summary, the path of the file Ray's own logs went to, and
none of Ray's internals on stdout or stderr. Before this was fixed, a 3-epoch run on this dataset printed 86
lines of Ray's on stderr: the Train controller's resource-request tracebacks, the PlacementGroupCleaner's
"Failed to query Ray Train Controller actor state" warnings (or its traceback when several Ray instances run
on the machine), a `Reporting training result` line per worker per epoch, a `core_worker.cc` error, the
token-authentication notice — and every epoch line twice, prefixed `(RayTrainWorker pid=…)`, once on stdout
and once on stderr (Ray Train's print patch sends a worker's `print` to its stdout and to its logger; Ray
echoed both).

`ingest --until-idle`: the idle time counts from the first partition assignment, so a consumer-group join
slower than the idle limit still reads what waits on the topic.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import orjson
import pytest

from serving.embedded import EmbeddedRuntime
from stream.config import KafkaSettings
from stream.produce import run_simulation
from stream.simulate import simulated_network

TINY = {"input_dim": 8, "tod_dim": 4, "dow_dim": 4, "adaptive_dim": 8, "heads": 2, "ffn_dim": 16}
# Lines only Ray prints: its actors' and workers' echoed output, its loggers' format, its C++ core.
RAY_NOISE = re.compile(
    r"PlacementGroupCleaner|TrainController|RayTrainWorker|Reporting training result|core_worker\.cc"
    r"|\(pid=|Token authentication|ray\._private|ray\.train|Traceback|WARNING|\bINFO\b"
)


def _tiny_dataset(folder: Path) -> Path:
    """6 sensors × 400 five-minute steps of daily-periodic speeds, in the T-GCN csv layout."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    t = np.arange(400)[:, None]
    speed = 50 + 10 * np.sin(2 * np.pi * t / 288 + np.arange(6)) + rng.normal(0, 1, (400, 6))
    header = ",".join(f"{100 + i}" for i in range(6))
    np.savetxt(folder / "tiny_speed.csv", speed, delimiter=",", header=header, comments="", fmt="%.3f")
    np.savetxt(folder / "tiny_adj.csv", np.eye(6) + np.eye(6, k=1), delimiter=",", fmt="%.1f")
    return folder


@pytest.mark.skipif(os.environ.get("SENSORCAST_SKIP_RAY") == "1", reason="SENSORCAST_SKIP_RAY=1")
def test_train_shows_each_epoch_once_one_summary_and_no_ray_internals(tmp_path: Path) -> None:
    data, ckpt, epochs = _tiny_dataset(tmp_path / "tiny"), tmp_path / "m.pt", 3
    sets = [arg for k, v in TINY.items() for arg in ("--set", f"{k}={v}")]
    cmd = [sys.executable, "-m", "serving.cli", "train", "--dataset", str(data), "--out", str(ckpt)]
    cmd += ["--workers", "2", "--cpus-per-worker", "0.5", "--epochs", str(epochs), "--threads", "1"]
    cmd += ["--batch-size", "8", *sets]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # a local Ray of its own
    started = time.monotonic()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400)
    print(f"sensorcast train (2 Ray Train workers, {epochs} epochs): {time.monotonic() - started:.0f} s")
    out, err = proc.stdout.splitlines(), proc.stderr.splitlines()
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    noise = [line for line in out + err if RAY_NOISE.search(line)]
    print(f"Ray lines on the terminal: {len(noise)}; stdout {len(out)} lines, stderr {len(err)} lines")
    assert noise == [], "\n".join(noise[:20])
    epoch_lines = [int(m.group(1)) for line in out if (m := re.match(rf"epoch\s+(\d+)/{epochs}\s", line))]
    assert epoch_lines == list(range(1, epochs + 1)), out
    assert all(
        re.search(r"loss .* val MAE .* samples/s .* ETA", line) for line in out if line.startswith("epoch")
    )
    assert sum(f"→ {ckpt}" in line for line in out) == 1, out  # one summary
    repeated = {line for line in out + err if (out + err).count(line) > 1}
    assert not repeated, repeated

    ray_log_lines = [line for line in out if line.startswith("Ray logs: ")]
    assert len(ray_log_lines) == 1, out
    ray_log = Path(ray_log_lines[0].removeprefix("Ray logs: ").split(" (")[0])
    assert "Started a local Ray instance" in ray_log.read_text()  # what Ray's loggers said on the driver
    beside = "".join(p.read_text(errors="replace") for p in ray_log.parent.glob("worker-*.err"))
    assert "Reporting training result" in beside  # the workers' lines are kept, not lost


def test_ingest_until_idle_counts_from_the_first_assignment(
    embedded: EmbeddedRuntime, tmp_path: Path
) -> None:
    """The broker holds a join for about half the session timeout; with 12 s that is well over the 2 s idle
    limit, and ingest must still read every reading waiting on the topic."""
    tag, idle_s, steps = uuid.uuid4().hex[:8], 2.0, 20
    kafka = KafkaSettings(
        bootstrap=embedded.bootstrap,
        readings_topic=f"idle-readings-{tag}",
        dead_letter_topic=f"idle-dead-{tag}",
        group_id=f"idle-{tag}",
        partitions=2,
        session_timeout_ms=12_000,
    )
    network = simulated_network(6)
    network.save(tmp_path / "network.toml")
    sent = run_simulation(kafka, network, speed=0, start_ts=1_700_000_000_000, n_steps=steps)
    env = {
        **os.environ,
        "SENSORCAST_KAFKA__READINGS_TOPIC": kafka.readings_topic,
        "SENSORCAST_KAFKA__DEAD_LETTER_TOPIC": kafka.dead_letter_topic,
        "SENSORCAST_KAFKA__GROUP_ID": kafka.group_id,
        "SENSORCAST_KAFKA__PARTITIONS": "2",
        "SENSORCAST_KAFKA__SESSION_TIMEOUT_MS": str(kafka.session_timeout_ms),
    }
    cmd = [sys.executable, "-m", "serving.cli", "ingest", "--network", str(tmp_path / "network.toml")]
    cmd += ["--archive", str(tmp_path / "archive"), "--until-idle", str(idle_s)]
    cmd += ["--bootstrap", embedded.bootstrap, "--log-level", "info"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = orjson.loads(proc.stdout)
    assert result["ledger"]["received"] == sent.readings, result
    assert result["steps_sealed"] == steps, result
    logged = [orjson.loads(line) for line in proc.stderr.splitlines() if line.startswith("{")]
    joined = [rec for rec in logged if rec["msg"] == "partitions assigned"]
    assert len(joined) == 1, proc.stderr[-3000:]
    print(f"group join took {joined[0]['after_s']} s; idle limit {idle_s} s")
    assert joined[0]["after_s"] > idle_s, "the join was quicker than the idle limit: nothing was tested"
