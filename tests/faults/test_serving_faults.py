"""Serving under faults, against the fault suite's own broker and Redis and the local Ray: a killed
forecaster actor, the broker frozen (SIGSTOP) and Redis frozen while readings keep arriving. Each scenario
measures, records, then asserts: readings lost (the ledger), forecast steps missing or doubled in Redis,
how the serving loop cycled during the outage, and the recovery time from the outage's end to the first
forecast written after it.

The embedded broker is memory-only, so "unavailable" is a SIGSTOP/SIGCONT pause: its data survives, and
the scenario checks that the consumer rides out the silence and goes on from where it was, not what a
broker that loses its log would do. The default run pauses 5 s; the 30 s variants are `slow`."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
import ray
import redis
from kafka import KafkaConsumer
from kafka.errors import KafkaTimeoutError
from kafka.structs import TopicPartition

from serving.config import Settings
from serving.embedded import EmbeddedRuntime
from serving.forecaster import ModelSpec
from serving.keys import Keys
from serving.pipeline import RunningPipeline, ServePipeline
from stream.kafka_io import ReadingProducer, ensure_topics
from stream.network import Network
from stream.simulate import Simulator, simulated_network
from tests.conftest import wait_for
from tests.faults.reliability import Reliability

pytestmark = [pytest.mark.faults, pytest.mark.usefixtures("ray_local")]

STEP = 60_000
T0 = 1_767_225_600_000
RATE = 5.0  # steps per second fed while a pause scenario runs
STALL_S = 2.0  # a serving cycle longer than this during a broker outage means the loop stopped cycling
PAUSES = [pytest.param(5, id="5s"), pytest.param(30, id="30s", marks=pytest.mark.slow)]


@dataclass
class Observed:
    """What a run ended with, measured before anything is asserted."""

    produced: int
    received: int
    windowed: int
    other: dict[str, int]  # readings dead-lettered, late, duplicates, replayed: none expected here
    balanced: bool
    got: list[int]  # forecast step_ts in the Redis stream, in stream order
    want: list[int]
    versions: set[bytes]

    @property
    def lost(self) -> int:
        return self.produced - self.windowed

    @property
    def missing(self) -> int:
        return len(set(self.want) - set(self.got))

    @property
    def doubled(self) -> int:
        return len(self.got) - len(set(self.got))

    @property
    def anomalies(self) -> list[str]:
        out = [] if self.balanced else ["ledger unbalanced"]
        unexpected = set(self.got) - set(self.want)
        if unexpected:
            out.append(f"{len(unexpected)} unexpected steps")
        out += [f"{n} readings {bucket.replace('_', '-')}" for bucket, n in self.other.items() if n]
        return out

    def assert_exact(self) -> None:
        assert self.balanced and self.received == self.produced == self.windowed, (self.other, self.produced)
        assert self.got == self.want, (
            f"missing {sorted(set(self.want) - set(self.got))}, doubled {self.doubled}, order {self.got}"
        )


@dataclass
class Cycles:
    """The serving loop run in a thread: every `poll_once` timed, offset commits timed alongside."""

    pipe: RunningPipeline
    spans: list[tuple[float, float]] = field(default_factory=list)
    commits: list[tuple[float, float]] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)

    def __post_init__(self) -> None:
        consumer = self.pipe.ingest.consumer
        assert consumer is not None
        commit = consumer.commit

        def timed(offsets: Any) -> bool:  # measures only: the commit itself is untouched
            t0 = time.monotonic()
            try:
                return commit(offsets)
            finally:
                self.commits.append((t0, time.monotonic()))

        consumer.commit = timed  # type: ignore[method-assign]

    @contextmanager
    def running(self) -> Iterator[None]:
        stop = threading.Event()

        def loop() -> None:
            try:
                while not stop.is_set():
                    t0 = time.monotonic()
                    self.pipe.poll_once(100)
                    self.spans.append((t0, time.monotonic()))
            except BaseException as exc:
                self.errors.append(exc)

        thread = threading.Thread(target=loop, daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(150)
            assert not thread.is_alive(), "the serving loop did not come back within 150 s"

    def during(self, t0: float, t1: float) -> tuple[int, float, float]:
        """Over [t0, t1): the cycles that ran in it (wholly or partly), the longest of them and the longest
        offset commit (s). Call once the loop has stopped, so that no cycle is still open."""
        spans = [b - a for a, b in self.spans if a < t1 and b > t0]
        commit = max((b - a for a, b in self.commits if a < t1 and b > t0), default=0.0)
        return len(spans), max(spans, default=0.0), commit


class Run:
    """A persistence pipeline over a simulated network, fed ahead of time (`produce`) or live (`feeding`)."""

    def __init__(self, s: Settings, name: str, *, sensors: int = 12) -> None:
        self.s = s.model_copy(deep=True)
        self.s.kafka.max_poll_records = 4  # many small cycles, so a fault lands mid-stream
        self.network: Network = simulated_network(sensors, name=name, step_ms=STEP)
        self.sim = Simulator(self.network, seed=2)
        self.steps = self.produced = 0
        kafka = self.s.kafka
        ensure_topics(kafka, {kafka.readings_topic: kafka.partitions, kafka.dead_letter_topic: 1})
        self.pipe = ServePipeline(
            self.s, self.network, ModelSpec("baseline:persistence"), client_id=name
        ).start()

    def _send(self, producer: ReadingProducer) -> None:
        ts = T0 + self.steps * STEP
        producer.send_step(ts, *self.sim.step(ts))
        self.steps += 1

    def produce(self, steps: int) -> None:
        with ReadingProducer(self.s.kafka, self.network) as producer:
            for _ in range(steps):
                self._send(producer)
        self.produced = producer.sent

    @contextmanager
    def feeding(self, rate: float = RATE) -> Iterator[None]:
        """Produce one step every 1/rate s until the block ends; a paused broker delays, never drops them."""
        stop = threading.Event()
        errors: list[BaseException] = []

        def feed() -> None:
            try:
                with ReadingProducer(self.s.kafka, self.network) as producer:
                    while not stop.wait(1 / rate):
                        self._send(producer)
                        deadline = time.monotonic() + 120
                        while True:  # the producer retries on its own; flush only bounds the wait
                            try:
                                producer.flush(5)
                                break
                            except KafkaTimeoutError:
                                if time.monotonic() > deadline:
                                    raise
                self.produced = producer.sent
            except BaseException as exc:
                errors.append(exc)

        thread = threading.Thread(target=feed, daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(150)
        assert not errors, errors

    def poll_until(self, cond: Callable[[], Any], timeout_s: float, what: str) -> None:
        wait_for(
            lambda: self.pipe.poll_once(100) >= 0 and cond(), timeout_s=timeout_s, what=what, interval_s=0
        )

    def carry_on(self, steps: int = 10) -> None:
        """Serve `steps` more steps of the live feed: the stream goes on after a fault, not just resumes."""
        target = self.pipe.steps_forecast + steps
        self.poll_until(lambda: self.pipe.steps_forecast >= target, 60, f"{steps} more steps forecast")

    def finish(self) -> None:
        ledger = self.pipe.ingest.ingestor.ledger
        self.poll_until(lambda: ledger.total().received >= self.produced, 180, "every reading consumed")
        self.pipe.drain()

    def observe(self) -> Observed:
        t = self.pipe.ingest.ingestor.ledger.total()
        r = redis.Redis.from_url(self.s.redis.url.get_secret_value())
        entries = r.xrange(Keys(self.s.redis.key_prefix, self.network.name).stream)
        return Observed(
            produced=self.produced,
            received=t.received,
            windowed=t.windowed,
            other={b: getattr(t, b) for b in ("dead_lettered", "late", "duplicates", "replayed")},
            balanced=self.pipe.ingest.ingestor.ledger.balanced(),
            got=[int(f[b"step_ts"]) for _, f in entries],
            want=[T0 + i * STEP for i in range(self.s.window.window - 1, self.steps)],
            versions={f[b"model_version"] for _, f in entries},
        )


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
    s = fault_settings.model_copy(deep=True)
    s.ray.pipeline_windows = 1  # a cycle's windows go in overlapping calls: a kill lands between them too
    run = Run(s, "killactor", sensors=30)
    try:
        run.produce(40)
        run.poll_until(lambda: run.pipe.steps_forecast >= 3, 90, "the first forecasts")
        actor = run.pipe.dispatcher.actors[0]
        pid_before = ray.get(actor.info.remote())["pid"]
        before = run.pipe.steps_forecast
        t_kill = time.monotonic()
        ray.kill(actor, no_restart=False)  # Ray restarts it (max_restarts); the dispatcher re-sends
        run.poll_until(lambda: run.pipe.steps_forecast > before, 120, "a forecast after the kill")
        recovery = time.monotonic() - t_kill
        run.finish()
        restarted = ray.get(actor.info.remote())["pid"] != pid_before
    finally:
        run.pipe.close()
    seen = run.observe()
    reliability.record(
        "forecaster actor killed",
        lost=seen.lost,
        missing=seen.missing,
        doubled=seen.doubled,
        recovery_s=recovery,
        detail=f"ray.kill of the actor mid-replay; first forecast {recovery:.1f} s after the kill, actor "
        f"{'restarted by Ray (new pid)' if restarted else 'NOT restarted'}; {len(set(seen.got))} of "
        f"{len(seen.want)} steps in Redis; {seen.windowed} of {seen.produced} readings windowed",
        anomalies=seen.anomalies + ([] if restarted else ["actor not restarted"]),
    )
    assert restarted, "the actor was not restarted"
    seen.assert_exact()
    assert seen.versions == {b"baseline-persistence"}


@dataclass
class Outage:
    """What the serving loop did while a server was frozen, measured from the test's side."""

    pause_s: float  # measured SIGSTOP → SIGCONT
    polls: int  # serving cycles that ran (wholly or partly) during the outage
    longest_s: float  # the longest of them
    commit_s: float  # the longest offset commit during the outage
    forecast: int  # steps forecast during the outage
    received: int  # readings consumed during the outage
    recovery_s: float  # outage's end → first forecast written after it
    probes: list[Any]  # what `probe` returned once the outage had settled and again just before its end

    def describe(self) -> str:
        cycles = "1 poll cycle" if self.polls == 1 else f"{self.polls} poll cycles"
        return (
            f"{cycles} during the {self.pause_s:.1f} s outage (longest {self.longest_s:.1f} s, longest offset "
            f"commit {self.commit_s:.1f} s); steps forecast during it: {self.forecast}, readings consumed: "
            f"{self.received}; first forecast {self.recovery_s:.2f} s after its end"
        )


def _outage(
    run: Run,
    cycles: Cycles,
    server: Any,
    pause_s: float,
    *,
    settled: Callable[[], object] = lambda: True,
    probe: Callable[[], Any] = lambda: None,
) -> Outage:
    """Freeze `server` for `pause_s` while `cycles` runs the loop and readings arrive. `probe` runs once
    `settled` holds and again just before the server is resumed."""
    ledger = run.pipe.ingest.ingestor.ledger
    forecast0, received0 = run.pipe.steps_forecast, ledger.total().received
    probes: list[Any] = []
    with cycles.running():
        server.pause()
        t_pause = time.monotonic()
        try:
            # a frozen server shows only when a request times out: the outage lasts at least until then
            wait_for(lambda: settled() or cycles.errors, timeout_s=30, what="the outage to be noticed")
            probes.append(probe())
            time.sleep(max(0.0, t_pause + pause_s - 1 - time.monotonic()))  # the fault's duration
            probes.append(probe())
            time.sleep(max(0.0, t_pause + pause_s - time.monotonic()))
        finally:
            server.resume()
        t_resume = time.monotonic()
        forecast1, received1 = run.pipe.steps_forecast, ledger.total().received
        wait_for(
            lambda: run.pipe.steps_forecast > forecast1 or cycles.errors,
            timeout_s=120,
            what="a forecast written after the outage",
            interval_s=0.01,
        )
        recovery = time.monotonic() - t_resume
    polls, longest, commit = cycles.during(t_pause, t_resume)  # the loop has stopped: every cycle is in
    return Outage(
        t_resume - t_pause,
        polls,
        longest,
        commit,
        forecast1 - forecast0,
        received1 - received0,
        recovery,
        probes,
    )


def _anomalies(seen: Observed, cycles: Cycles, **flags: bool) -> list[str]:
    """The run's anomalies plus each flag that is set, its name spelled out."""
    out = seen.anomalies + ([f"{len(cycles.errors)} errors raised"] if cycles.errors else [])
    return out + [name.replace("_", " ") for name, on in flags.items() if on]


@pytest.mark.parametrize("pause_s", PAUSES)
def test_broker_paused_consumer_carries_on(
    pause_s: int, fault_settings: Settings, faults_runtime: EmbeddedRuntime, reliability: Reliability
) -> None:
    run = Run(fault_settings, f"brokerpause{pause_s}")
    cycles = Cycles(run.pipe)
    try:
        with run.feeding():
            run.poll_until(lambda: run.pipe.steps_forecast >= 5, 90, "the first forecasts")
            outage = _outage(run, cycles, faults_runtime.kafka, pause_s)
            run.carry_on()
        run.finish()
    finally:
        run.pipe.close()
    seen = run.observe()
    stalled = outage.longest_s > STALL_S
    reliability.record(
        f"broker paused {pause_s} s",
        lost=seen.lost,
        missing=seen.missing,
        doubled=seen.doubled,
        recovery_s=outage.recovery_s,
        detail=f"SIGSTOP/SIGCONT of Tansu while {RATE:.0f} steps/s were produced; {outage.describe()}; "
        f"{len(cycles.errors)} errors raised; afterwards {seen.windowed} of {seen.produced} readings windowed, "
        f"{len(set(seen.got))} of {len(seen.want)} steps in Redis",
        anomalies=_anomalies(seen, cycles) + ([f"loop stalled {outage.longest_s:.1f} s"] if stalled else []),
    )
    assert not cycles.errors, cycles.errors
    seen.assert_exact()
    assert not stalled, (
        f"the serving loop stopped cycling for {outage.longest_s:.1f} s of the {outage.pause_s:.1f} s outage; "
        f"the longest offset commit took {outage.commit_s:.1f} s"
    )


@pytest.mark.parametrize("pause_s", PAUSES)
def test_redis_paused_sink_retries_and_holds_offsets(
    pause_s: int, fault_settings: Settings, faults_runtime: EmbeddedRuntime, reliability: Reliability
) -> None:
    run = Run(fault_settings, f"redispause{pause_s}")
    cycles = Cycles(run.pipe)
    sink = run.pipe.sink
    try:
        with run.feeding():
            run.poll_until(lambda: run.pipe.steps_forecast >= 5, 90, "the first forecasts")
            retries0 = sink.retries
            # once the sink retries, the loop waits in it: no offset may be committed until Redis is back
            outage = _outage(
                run,
                cycles,
                faults_runtime.redis,
                pause_s,
                settled=lambda: sink.retries > retries0,
                probe=lambda: _committed(run.s),
            )
            run.carry_on()
        retries = sink.retries - retries0
        run.finish()
        moved_after = _committed(run.s) != outage.probes[0]
    finally:
        run.pipe.close()
    seen = run.observe()
    moved_during = outage.probes[0] != outage.probes[-1]
    reliability.record(
        f"redis paused {pause_s} s",
        lost=seen.lost,
        missing=seen.missing,
        doubled=seen.doubled,
        recovery_s=outage.recovery_s,
        detail=f"SIGSTOP/SIGCONT of redis-server while {RATE:.0f} steps/s were produced; {outage.describe()}; "
        f"{retries} sink retries with backoff (the loop waits in them: backpressure); committed offsets moved "
        f"during the outage: {'yes' if moved_during else 'no'}; afterwards {seen.windowed} of {seen.produced} "
        f"readings windowed, {len(set(seen.got))} of {len(seen.want)} steps in Redis",
        anomalies=_anomalies(
            seen,
            cycles,
            offsets_committed_past_unwritten_forecasts=moved_during,
            offsets_not_committed_afterwards=not moved_after,
            no_sink_retry=retries == 0,
        ),
    )
    assert not cycles.errors, cycles.errors
    assert retries > 0 and not moved_during, "offsets were committed past forecasts Redis never got"
    exported = run.pipe.metrics.registry.get_sample_value("sensorcast_redis_retries_total")
    assert exported == sink.retries, (exported, sink.retries)  # every retry shows on /metrics
    assert moved_after, "the offsets were not committed after Redis came back"
    seen.assert_exact()
