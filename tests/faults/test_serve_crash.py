"""SIGKILL of `sensorcast serve` mid-stream, then a restart: the killed process's local Ray instance goes
with it (gcs_server and raylet by Ray's own PR_SET_PDEATHSIG, the raylet's agents and workers by the
watchdog of `serving.ray_local`), the restart runs exactly one Ray instance, and every step is forecast
exactly once across both runs (the restart replays the uncommitted tail; the sink's done record drops the
repeats).

Measured, recorded, then checked: the killed instance's Ray processes still alive after a bounded wait
and how long they took to go, the Ray instances the restarted process runs, forecast steps missing or
doubled in the Redis stream, and the recovery time from the restart to its first forecast. Ray processes
are told apart by their session directory (every one of them writes its logs there), found from the serve
process's children before the kill: the session Ray and other people's instances are never counted.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis

from serving.config import Settings
from serving.keys import Keys
from serving.ray_local import sessions_started_by, writers
from stream.kafka_io import ReadingProducer, ensure_topics
from stream.network import Network
from stream.simulate import Simulator, simulated_network
from tests.conftest import wait_for
from tests.faults.reliability import Reliability

pytestmark = pytest.mark.faults

STEP = 60_000
T0 = 1_767_225_600_000
RATE = 5.0  # steps per second fed for the whole scenario, so the kill lands mid-stream
GONE_S = 20.0  # the killed instance's processes must be gone by then (Ray's agents alone take ~55 s)


class Feed:
    """Produces one step of the simulated network every 1/RATE s in a thread until stopped."""

    def __init__(self, s: Settings, network: Network) -> None:
        self.s, self.network, self.steps = s, network, 0
        self._stop = threading.Event()
        self._errors: list[BaseException] = []

    def _run(self) -> None:
        sim = Simulator(self.network, seed=3)
        try:
            with ReadingProducer(self.s.kafka, self.network) as producer:
                while not self._stop.wait(1 / RATE):
                    ts = T0 + self.steps * STEP
                    producer.send_step(ts, *sim.step(ts))
                    producer.flush(30)
                    self.steps += 1
        except BaseException as exc:
            self._errors.append(exc)

    @contextmanager
    def running(self) -> Iterator[Feed]:
        thread = threading.Thread(target=self._run, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self.stop()
            thread.join(60)
        assert not self._errors, self._errors

    def stop(self) -> None:
        self._stop.set()


def _serve(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:  # a file, not a pipe nobody reads
        return subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)


def _steps(r: redis.Redis, keys: Keys) -> list[int]:
    return [int(f[b"step_ts"]) for _, f in r.xrange(keys.stream)]


def test_serve_sigkill_takes_its_ray_and_restart_forecasts_every_step_once(
    fault_settings: Settings, tmp_path: Path, reliability: Reliability
) -> None:
    s = fault_settings
    network = simulated_network(12, name=f"crash{uuid.uuid4().hex[:6]}", step_ms=STEP)
    net_file = tmp_path / "network.toml"
    network.save(net_file)
    ensure_topics(s.kafka, {s.kafka.readings_topic: s.kafka.partitions, s.kafka.dead_letter_topic: 1})
    keys = Keys(s.redis.key_prefix, network.name)
    r = redis.Redis.from_url(s.redis.url.get_secret_value())
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "SENSORCAST_"))}
    env.update(
        SENSORCAST_KAFKA__READINGS_TOPIC=s.kafka.readings_topic,
        SENSORCAST_KAFKA__DEAD_LETTER_TOPIC=s.kafka.dead_letter_topic,
        SENSORCAST_KAFKA__GROUP_ID=s.kafka.group_id,
        SENSORCAST_KAFKA__PARTITIONS=str(s.kafka.partitions),
        SENSORCAST_KAFKA__SESSION_TIMEOUT_MS=str(s.kafka.session_timeout_ms),
        SENSORCAST_KAFKA__MAX_POLL_RECORDS="20",  # small cycles: many commits to crash between
        SENSORCAST_REDIS__KEY_PREFIX=s.redis.key_prefix,
        SENSORCAST_RAY__ACTOR_NUM_CPUS=str(s.ray.actor_num_cpus),
        SENSORCAST_ARCHIVE__ROOT=s.archive.root,
        SENSORCAST_WINDOW__WINDOW=str(s.window.window),
        SENSORCAST_WINDOW__HORIZON=str(s.window.horizon),
        SENSORCAST_WINDOW__ALLOWED_LATENESS_MS="0",
    )
    cmd = [sys.executable, "-m", "serving.cli", "serve", "--network", str(net_file), "--log-level", "warning"]
    cmd += ["--bootstrap", str(s.kafka.bootstrap), "--redis-url", s.redis.url.get_secret_value()]

    with Feed(s, network).running() as feed:
        crashed = _serve(cmd, env, tmp_path / "crashed.log")
        try:
            wait_for(
                lambda: r.xlen(keys.stream) >= 5 or crashed.poll() is not None,
                timeout_s=120,
                what="the first forecasts of serve",
            )
            assert crashed.poll() is None, (tmp_path / "crashed.log").read_text()[-3000:]
            sessions = sessions_started_by(crashed.pid)
            assert len(sessions) == 1, f"serve runs {len(sessions)} local Ray instances: {sessions}"
            (session,) = sessions
            before = len(writers(session))
            crashed.send_signal(signal.SIGKILL)
            t_kill = time.monotonic()
            crashed.wait(10)
        finally:
            if crashed.poll() is None:
                crashed.kill()
        forecast_at_kill = r.xlen(keys.stream)
        while (left := writers(session)) and time.monotonic() - t_kill < GONE_S:
            time.sleep(0.1)
        gone_s = time.monotonic() - t_kill

        restart = _serve(cmd, env, tmp_path / "restart.log")
        t_restart = time.monotonic()
        try:
            wait_for(
                lambda: b"serving " in (tmp_path / "restart.log").read_bytes() or restart.poll() is not None,
                timeout_s=120,
                what="the restarted serve to start serving",
            )
            up_s = time.monotonic() - t_restart
            assert restart.poll() is None, (tmp_path / "restart.log").read_text()[-3000:]
            wait_for(
                lambda: r.xlen(keys.stream) > forecast_at_kill or restart.poll() is not None,
                timeout_s=120,
                what="the restarted serve's first forecast",
            )
            recovery = time.monotonic() - t_restart
            target = r.xlen(keys.stream) + 20
            wait_for(
                lambda: r.xlen(keys.stream) >= target, timeout_s=60, what="20 steps more after the restart"
            )
            feed.stop()
            # the newest step seals only when a later one arrives: every step before it is due
            last = T0 + (feed.steps - 2) * STEP
            wait_for(lambda: last in _steps(r, keys), timeout_s=120, what=f"the forecast of step {last}")
            instances = sessions_started_by(restart.pid)
            left |= writers(session)  # nothing of the killed instance came back meanwhile
        finally:
            restart.send_signal(signal.SIGINT)  # a clean stop: ray.shutdown, then the watchdog's sweep
            try:
                restart.wait(60)
            except subprocess.TimeoutExpired:
                restart.kill()
                restart.wait(10)
    after_stop = set().union(*(writers(x) for x in instances))

    got = _steps(r, keys)
    want = [T0 + i * STEP for i in range(s.window.window - 1, feed.steps - 1)]
    missing = len(set(want) - set(got))
    doubled = len(got) - len(set(got))
    unexpected = len(set(got) - set(want) - {T0 + (feed.steps - 1) * STEP})
    anomalies = (
        [f"{len(left)} Ray processes of the killed serve alive {gone_s:.0f} s after the kill"] if left else []
    )
    anomalies += [] if len(instances) == 1 else [f"the restarted serve ran {len(instances)} Ray instances"]
    anomalies += [f"{len(after_stop)} Ray processes outlived the restart's clean stop"] if after_stop else []
    anomalies += [f"{unexpected} unexpected steps"] if unexpected else []
    reliability.record(
        "serve SIGKILL mid-stream + restart",
        lost=None,
        missing=missing,
        doubled=doubled,
        recovery_s=recovery,
        detail=f"killed after {forecast_at_kill} steps forecast; of the killed serve's {before} Ray "
        f"processes {len(left)} alive {gone_s:.1f} s after the kill; the restart ran {len(instances)} Ray "
        f"instance(s), served {up_s:.1f} s and forecast {recovery:.1f} s after starting, and left "
        f"{len(after_stop)} Ray processes after its clean stop; {len(set(got) & set(want))} of {len(want)} "
        "steps in Redis",
        anomalies=anomalies,
    )
    assert not left, f"Ray processes {sorted(left)} of the killed serve outlived it by {gone_s:.0f} s"
    assert len(instances) == 1, instances
    assert not after_stop, f"Ray processes {sorted(after_stop)} outlived the restart's clean stop"
    assert missing == doubled == unexpected == 0, (
        f"missing {missing}, doubled {doubled}, unexpected {unexpected}"
    )


@pytest.mark.usefixtures("ray_local")
def test_a_cluster_this_process_did_not_start_is_never_watched() -> None:
    """`ray.init()` without an address may connect to an existing cluster (here through RAY_ADDRESS, as
    `sensorcast serve` would): no watchdog starts for it, so nothing ever sweeps it."""
    import ray

    ctx = ray.get_runtime_context()
    session = Path(ctx.get_temp_dir()) / ctx.get_session_name()
    running = writers(session)
    code = "import ray; from serving.ray_local import Watchdog; ray.init(configure_logging=False); "
    code += "print(Watchdog.start())"
    env = {**os.environ, "RAY_ADDRESS": ctx.gcs_address}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.splitlines()[-1] == "None", out.stdout
    assert running <= writers(session), "a process of the existing cluster is gone"
    assert ray.get(ray.put(1)) == 1
