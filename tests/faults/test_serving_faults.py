"""Serving under faults, against the fault suite's own broker and Redis and the local Ray: a killed
forecaster actor, the broker frozen (SIGSTOP) and Redis frozen. After each, every reading is accounted for
(the ledger balances with nothing lost) and every expected forecast step is present in Redis exactly once.

The embedded broker is memory-only, so "unavailable" is a SIGSTOP/SIGCONT pause: its data survives, and
the scenario checks that the consumer rides out the silence and goes on from where it was, not what a
broker that loses its log would do. The default run pauses 5 s; the 30 s variants are `slow`."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import ray
import redis
from kafka import KafkaConsumer
from kafka.structs import TopicPartition

from serving.config import Settings
from serving.embedded import EmbeddedRuntime
from serving.forecaster import ModelSpec
from serving.pipeline import ServePipeline
from stream.kafka_io import ReadingProducer, ensure_topics
from stream.network import Network
from stream.simulate import Simulator, simulated_network
from tests.conftest import wait_for
from tests.faults.conftest import Reliability

pytestmark = [pytest.mark.faults, pytest.mark.usefixtures("ray_local")]

STEP = 60_000
T0 = 1_767_225_600_000
STEPS = 40
PAUSES = [pytest.param(5, id="5s"), pytest.param(30, id="30s", marks=pytest.mark.slow)]


class Run:
    """A persistence pipeline over a simulated network with every step already produced to Kafka."""

    def __init__(self, s: Settings, name: str, steps: int = STEPS) -> None:
        self.s = s.model_copy(deep=True)
        self.s.kafka.max_poll_records = 4  # many small cycles, so a fault lands mid-stream
        self.network: Network = simulated_network(12, name=name, step_ms=STEP)
        sim = Simulator(self.network, seed=2)
        frames = [sim.step(T0 + t * STEP) for t in range(steps)]
        self.steps = steps
        self.produced = sum(int(p.sum()) for _, p in frames)
        ensure_topics(self.s.kafka, {self.s.kafka.readings_topic: self.s.kafka.partitions,
                                     self.s.kafka.dead_letter_topic: 1})  # fmt: skip
        self.pipe = ServePipeline(
            self.s, self.network, ModelSpec("baseline:persistence"), client_id=name
        ).start()
        with ReadingProducer(self.s.kafka, self.network) as producer:
            for t, (v, p) in enumerate(frames):
                producer.send_step(T0 + t * STEP, v, p)

    def poll_until(self, cond: Any, timeout_s: float, what: str) -> None:
        wait_for(
            lambda: self.pipe.poll_once(100) >= 0 and cond(), timeout_s=timeout_s, what=what, interval_s=0
        )

    def finish(self) -> None:
        ledger = self.pipe.ingest.ingestor.ledger
        self.poll_until(lambda: ledger.total().received >= self.produced, 180, "every reading consumed")
        self.pipe.drain()

    def check(self) -> tuple[int, int]:
        """(readings lost, forecast steps missing); asserts both are zero and the ledger exact."""
        t = self.pipe.ingest.ingestor.ledger.total()
        assert self.pipe.ingest.ingestor.ledger.balanced()
        lost = self.produced - t.windowed
        assert (t.received, t.windowed, t.dead_lettered, t.late, t.duplicates) == (self.produced, self.produced,
                                                                                     0, 0, 0)  # fmt: skip
        r = redis.Redis.from_url(self.s.redis.url.get_secret_value())
        got = [
            int(f[b"step_ts"])
            for _, f in r.xrange(f"{self.s.redis.key_prefix}:{{{self.network.name}}}:forecasts")
        ]
        want = [T0 + t * STEP for t in range(self.s.window.window - 1, self.steps)]
        missing = sorted(set(want) - set(got))
        assert got == want, f"missing {missing}, extra {len(got) - len(set(got))}"
        return lost, len(missing)


@contextmanager
def _paused(server: Any) -> Iterator[None]:
    server.pause()
    try:
        yield
    finally:
        server.resume()


def _committed(s: Settings) -> dict[int, int | None]:
    c = KafkaConsumer(
        bootstrap_servers=s.kafka.bootstrap, group_id=s.kafka.group_id, enable_auto_commit=False
    )
    try:
        return {p: c.committed(TopicPartition(s.kafka.readings_topic, p)) for p in range(s.kafka.partitions)}
    finally:
        c.close(autocommit=False)


def test_killed_forecaster_actor_is_restarted_and_no_step_is_missing(
    fault_settings: Settings, reliability: Reliability
) -> None:
    run = Run(fault_settings, "killactor")
    try:
        run.poll_until(lambda: run.pipe.steps_forecast >= 5, 90, "the first forecasts")
        actor = run.pipe.dispatcher.actors[0]
        pid_before = ray.get(actor.info.remote())["pid"]
        before = run.pipe.steps_forecast
        t_kill = time.monotonic()
        ray.kill(actor, no_restart=False)  # Ray restarts it (max_restarts); the dispatcher re-sends
        run.poll_until(lambda: run.pipe.steps_forecast > before, 120, "a forecast after the kill")
        recovery = time.monotonic() - t_kill
        run.finish()
        assert ray.get(actor.info.remote())["pid"] != pid_before, "the actor was not restarted"
    finally:
        run.pipe.close()
    lost, missing = run.check()
    reliability.record("forecaster actor killed", survived=True, lost=lost + missing, recovery_s=recovery,
                       detail=f"Ray restarted the actor; {run.steps - run.s.window.window + 1} of "
                       f"{run.steps - run.s.window.window + 1} steps in Redis, {run.produced} readings windowed")  # fmt: skip


@pytest.mark.parametrize("pause_s", PAUSES)
def test_broker_paused_consumer_carries_on(
    pause_s: int, fault_settings: Settings, faults_runtime: EmbeddedRuntime, reliability: Reliability
) -> None:
    run = Run(fault_settings, f"brokerpause{pause_s}")
    kafka = faults_runtime.kafka
    assert kafka is not None
    resumed: list[float] = []
    timer = threading.Timer(pause_s, lambda: (kafka.resume(), resumed.append(time.monotonic())))
    try:
        run.poll_until(lambda: run.pipe.steps_forecast >= 5, 90, "the first forecasts")
        before = run.pipe.steps_forecast
        cycles, longest = 0, 0.0
        deadline = time.monotonic() + pause_s + 180
        kafka.pause()
        timer.start()
        # the loop keeps polling against the frozen broker: nothing may raise
        while not resumed or run.pipe.steps_forecast == before:
            t = time.monotonic()
            run.pipe.poll_once(200)
            cycles, longest = cycles + 1, max(longest, time.monotonic() - t)
            assert time.monotonic() < deadline, "no forecast within 180 s of the broker coming back"
        recovery = time.monotonic() - resumed[0]
        run.finish()
    finally:
        timer.cancel()
        if not resumed:
            kafka.resume()
        run.pipe.close()
    lost, missing = run.check()
    reliability.record(f"broker paused {pause_s} s", survived=True, lost=lost + missing, recovery_s=recovery,
                       detail=f"SIGSTOP/SIGCONT of Tansu mid-stream; {cycles} poll cycles, none raised (longest "
                       f"{longest:.0f} s: an offset commit waiting out its request timeout, skipped and redone "
                       f"next cycle); {run.produced} readings = {run.produced} windowed; every step in Redis")  # fmt: skip


@pytest.mark.parametrize("pause_s", PAUSES)
def test_redis_paused_sink_retries_and_holds_offsets(
    pause_s: int, fault_settings: Settings, faults_runtime: EmbeddedRuntime, reliability: Reliability
) -> None:
    run = Run(fault_settings, f"redispause{pause_s}")
    stop = threading.Event()
    errors: list[BaseException] = []

    def loop() -> None:
        try:
            while not stop.is_set():
                run.pipe.poll_once(100)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=loop, daemon=True)
    try:
        run.poll_until(lambda: run.pipe.steps_forecast >= 5, 90, "the first forecasts")
        sink = run.pipe.sink
        with _paused(faults_runtime.redis):
            thread.start()
            wait_for(lambda: sink.retries > 0 or errors, timeout_s=30, what="the sink's first retry")
            assert not errors, errors
            held = _committed(run.s)
            forecast_during = run.pipe.steps_forecast
            time.sleep(max(0.0, pause_s - 6))  # the fault's duration, not a wait for a condition
            assert _committed(run.s) == held, "offsets were committed past forecasts Redis never got"
            assert not errors, errors
        t_resume = time.monotonic()
        wait_for(lambda: run.pipe.steps_forecast > forecast_during or errors, timeout_s=60,
                 what="a forecast written after Redis came back")  # fmt: skip
        recovery = time.monotonic() - t_resume
        stop.set()
        thread.join(60)
        assert not errors, errors
        retries = sink.retries
        run.finish()
        assert _committed(run.s) != held
    finally:
        stop.set()
        run.pipe.close()
    lost, missing = run.check()
    reliability.record(f"redis paused {pause_s} s", survived=True, lost=lost + missing, recovery_s=recovery,
                       detail=f"SIGSTOP/SIGCONT of redis-server; {retries} sink retries with backoff; committed "
                       "offsets unchanged while Redis was down; every step in Redis afterwards")  # fmt: skip
