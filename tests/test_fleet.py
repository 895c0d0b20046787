"""Many networks, one deployment, on real Ray, Kafka (Tansu) and Redis: three simulated networks served by
three pipeline actors from one deployment file; one actor is killed mid-stream and Ray brings it back;
every network's Redis stream ends with every step exactly once; a second pipeline for a served network is
refused naming the lease, as is a second fleet on the same Ray cluster."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import ray
import redis
from typer.testing import CliRunner

from serving.cli import app
from serving.config import Settings
from serving.deployment import NetworkPlan, load_deployment
from serving.embedded import EmbeddedRuntime
from serving.fleet import Fleet
from serving.keys import Keys
from serving.lease import LeaseHeld
from serving.pipeline import ServePipeline
from stream.clock import wall_ms
from stream.kafka_io import ensure_topics
from stream.produce import run_simulation
from tests.conftest import wait_for

pytestmark = pytest.mark.usefixtures("ray_local")

NAMES = ("north", "south", "east")
STEPS, WINDOW, SPEED = 64, 4, 600.0  # 5-minute steps at speed 600: two steps a second


def _deployment(rt: EmbeddedRuntime, tmp_path: Path, names: tuple[str, ...] = NAMES) -> list[NetworkPlan]:
    tag = uuid.uuid4().hex[:8]
    entries = "\n".join(
        f'[[networks]]\nname = "{n}"\nsimulate = {6 + 2 * i}\ntopic = "{n}-{tag}"\n'
        for i, n in enumerate(names)
    )
    text = f"""
[defaults]
kafka = {{ bootstrap = "{rt.bootstrap}", partitions = 2, session_timeout_ms = 3000 }}
redis = {{ url = "{rt.redis_url}", key_prefix = "fleet{tag}", lease_ttl_s = 4.0 }}
ray = {{ actor_num_cpus = 0.1, pipeline_num_cpus = 0.1 }}
window = {{ window = {WINDOW}, horizon = 3, allowed_lateness_ms = 0, idle_timeout_ms = 60000 }}
archive = {{ root = "archive" }}
retrain = {{ registry = "registry" }}

{entries}"""
    path = tmp_path / "deployment.toml"
    path.write_text(text)
    return load_deployment(path, Settings())


def _stream_steps(r: redis.Redis, keys: Keys) -> list[int]:
    return [int(f[b"step_ts"]) for _, f in r.xrange(keys.stream)]


def test_three_networks_one_killed_mid_stream_no_step_missing_or_doubled(
    embedded: EmbeddedRuntime, tmp_path: Path
) -> None:
    plans = _deployment(embedded, tmp_path)
    assert [p.name for p in plans] == list(NAMES)
    assert plans[0].settings.archive.root == str(tmp_path / "archive" / "north")
    for p in plans:
        k = p.settings.kafka
        ensure_topics(k, {k.readings_topic: k.partitions, k.dead_letter_topic: 1})
    r = redis.Redis.from_url(str(embedded.redis_url))
    keys = {p.name: Keys(p.settings.redis.key_prefix, p.name) for p in plans}
    fleet = Fleet(plans).start()
    start = wall_ms() - (WINDOW + 2) * plans[0].network.step_ms
    sims = [
        threading.Thread(
            target=run_simulation,
            args=(p.settings.kafka, p.network),
            kwargs={"speed": SPEED, "start_ts": start, "n_steps": STEPS, "backfill_steps": WINDOW + 2},
            name=f"sim-{p.name}",
        )
        for p in plans
    ]
    observed: dict[str, Any] = {}
    try:
        status = fleet.wait_until(lambda st: all(s["state"] == "serving" for s in st.values()), timeout_s=120)
        assert all(s["state"] == "serving" for s in status.values()), status
        for t in sims:
            t.start()
        status = fleet.wait_until(
            lambda st: all(s.get("steps_forecast", 0) >= 14 for s in st.values()), timeout_s=120
        )
        assert all(s["state"] == "serving" for s in status.values()), status
        victim = "south"
        before = {n: len(_stream_steps(r, keys[n])) for n in NAMES}
        old_pid = status[victim]["pid"]
        t_kill = time.monotonic()
        ray.kill(fleet.actors[victim], no_restart=False)
        back = fleet.wait_until(
            lambda st: st[victim].get("state") == "serving" and st[victim].get("pid") != old_pid,
            timeout_s=120,
        )
        observed["restart_s"] = round(time.monotonic() - t_kill, 1)
        assert back[victim]["state"] == "serving" and back[victim]["pid"] != old_pid, back
        observed["others_progress_during_restart"] = {
            n: len(_stream_steps(r, keys[n])) - before[n] for n in NAMES if n != victim
        }

        # a second pipeline for a served network: refused once the TTL passed, naming the lease
        t0 = time.monotonic()
        with pytest.raises(LeaseHeld, match="already served by another pipeline") as err:
            ServePipeline(plans[0].settings, plans[0].network, plans[0].model, client_id="dup").start()
        observed["duplicate_refused_after_s"] = round(time.monotonic() - t0, 1)
        assert keys["north"].lease in str(err.value)
        with pytest.raises(LeaseHeld, match="already has a pipeline actor"):
            Fleet(plans[:1]).start()

        status_cli = CliRunner().invoke(
            app,
            ["status", "--deployment", str(tmp_path / "deployment.toml"), "--json"],
            catch_exceptions=False,
        )
        rows = {row["network"]: row for row in json.loads(status_cli.stdout)}
        observed["status"] = {
            n: (row["health"], row.get("model_version"), row.get("lag")) for n, row in rows.items()
        }
        assert sorted(rows) == sorted(NAMES) and all(r["health"] == "ok" for r in rows.values()), observed
        assert all(r["lease"].split(":", 1)[1].startswith("actor-") for r in rows.values()), rows

        for t in sims:
            t.join(timeout=120)
        last = start - start % plans[0].network.step_ms + (STEPS - 2) * plans[0].network.step_ms
        for n in NAMES:  # the newest step stays open (nothing later arrives to seal it)
            wait_for(
                lambda n=n: int(r.hget(keys[n].latest_meta, "step_ts") or 0) >= last,
                timeout_s=90,
                what=f"{n} forecast through the last sealed step",
            )
    finally:
        fleet.stop()
    step_ms = plans[0].network.step_ms
    for n in NAMES:
        steps = _stream_steps(r, keys[n])
        observed[n] = {"entries": len(steps), "unique": len(set(steps))}
        assert len(steps) == len(set(steps)), (n, observed)  # nothing doubled
        expected = list(range(min(steps), max(steps) + step_ms, step_ms))
        missing = sorted(set(expected) - set(steps))
        assert not missing, (n, len(missing), observed)  # nothing missing
        assert max(steps) >= last, (n, observed)
    print("observed:", observed)
    assert observed["restart_s"] < 60, observed
    assert all(v > 0 for v in observed["others_progress_during_restart"].values()), observed


def test_serve_deployment_command_runs_two_networks_and_status_lists_them(
    embedded: EmbeddedRuntime, tmp_path: Path
) -> None:
    """`sensorcast serve --deployment` as a user runs it (its own Ray), readings flowing to both networks."""
    plans = _deployment(embedded, tmp_path, names=("alpha", "beta"))
    for p in plans:
        k = p.settings.kafka
        ensure_topics(k, {k.readings_topic: k.partitions, k.dead_letter_topic: 1})
    cmd = [sys.executable, "-m", "serving.cli", "serve", "--deployment", str(tmp_path / "deployment.toml")]
    proc = subprocess.Popen(
        [*cmd, "--duration", "25"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
    )
    start = wall_ms() - (WINDOW + 2) * plans[0].network.step_ms
    sims = [
        threading.Thread(
            target=run_simulation,
            args=(p.settings.kafka, p.network),
            kwargs={"speed": SPEED, "start_ts": start, "n_steps": 40, "backfill_steps": WINDOW + 2},
        )
        for p in plans
    ]
    for t in sims:
        t.start()
    r = redis.Redis.from_url(str(embedded.redis_url))
    keys = [Keys(p.settings.redis.key_prefix, p.name) for p in plans]
    try:
        wait_for(lambda: all(r.hlen(k.latest) for k in keys), timeout_s=90, what="forecasts of both networks")
        prefix = plans[0].settings.redis.key_prefix
        args = ["status", "--redis-url", str(embedded.redis_url), "--key-prefix", prefix, "--json"]
        out = CliRunner().invoke(app, args)
        mine = {row["network"]: row for row in json.loads(out.stdout) if row["network"] in ("alpha", "beta")}
        assert {n: row["health"] for n, row in mine.items()} == {"alpha": "ok", "beta": "ok"}, mine
    finally:
        for t in sims:
            t.join(timeout=60)
        text, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, text[-3000:]
    assert "serving 2 networks from" in text and "alpha: serving" in text and "beta: serving" in text, text[
        -3000:
    ]
    assert "Traceback" not in text, text[-3000:]
