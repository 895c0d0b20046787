"""The `sensorcast` CLI as a user runs it: `demo` against servers someone else started (here: the test
session's broker and Redis), ending with forecasts for every sensor in Redis."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import orjson
import redis

from serving.embedded import EmbeddedRuntime


def test_demo_against_existing_servers(embedded: EmbeddedRuntime, tmp_path: Path) -> None:
    tag = uuid.uuid4().hex[:8]
    env = {
        **os.environ,
        "SENSORCAST_KAFKA__READINGS_TOPIC": f"cli-readings-{tag}",
        "SENSORCAST_KAFKA__DEAD_LETTER_TOPIC": f"cli-dead-{tag}",
        "SENSORCAST_KAFKA__GROUP_ID": f"cli-{tag}",
        "SENSORCAST_KAFKA__SESSION_TIMEOUT_MS": "3000",
        "SENSORCAST_REDIS__KEY_PREFIX": f"cli{tag}",
    }
    cmd = [
        sys.executable, "-m", "serving.cli", "demo", "--duration", "12", "--sensors", "12", "--speed", "1200",
        "--bootstrap", str(embedded.bootstrap), "--redis-url", str(embedded.redis_url),
        "--data-dir", str(tmp_path), "--show", "3",
    ]  # fmt: skip
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "first forecast in Redis after" in out.stdout, out.stdout[-2000:]

    r = redis.Redis.from_url(str(embedded.redis_url))
    latest = r.hgetall(f"cli{tag}:{{sim}}:latest")
    assert len(latest) == 12, f"forecasts for {len(latest)} of 12 sensors"
    for raw in latest.values():
        doc = orjson.loads(raw)
        assert doc["model_version"] == "baseline-persistence"
        assert len(doc["forecast"]) == 12
    steps = r.zcard(f"cli{tag}:{{sim}}:done:baseline-persistence")
    assert steps >= 5, f"only {steps} steps forecast"
    assert (tmp_path / "archive" / "steps").exists()
