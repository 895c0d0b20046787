"""A manual failover of the Redis Cluster master serving a network's slot, mid-stream (`tests/redis_cluster.py`:
three masters, three replicas on loopback): no step is lost or doubled, through the sink alone and through
the whole serving pipeline.

The scenarios measure first (failover time, the longest time without a forecast written, steps written while
the slot moved, retries, notifications missed), write that to `failover-*.json` in the test's temporary
folder and the log, then assert.
"""

from __future__ import annotations

import itertools
import json
import logging
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from serving.client import Notifications
from serving.config import Settings
from serving.embedded import EmbeddedRuntime
from serving.forecaster import ModelSpec
from serving.keys import Keys
from serving.pipeline import ServePipeline
from serving.sink import RedisSink, StepForecast, connect
from stream.kafka_io import ReadingProducer, ensure_topics
from stream.simulate import Simulator, simulated_network
from tests.conftest import settings_for, wait_for
from tests.redis_cluster import LocalCluster
from tests.test_redis_cluster import STEP, T0, _cluster_settings, _forecast, _names

log = logging.getLogger(__name__)


@dataclass
class Failover:
    """What a failover scenario observed, recorded before anything is asserted."""

    scenario: str
    steps: int  # steps served
    missing: int  # steps absent from the network's forecast stream
    doubled: int  # entries beyond one per step
    failover_s: float  # CLUSTER FAILOVER sent → every node names the new master, the old one in sync
    longest_gap_s: float  # longest time without a forecast written, around the failover
    typical_gap_s: float  # the median time between forecasts written, for comparison
    steps_during_failover: int  # forecasts written while the slot moved
    sink_retries: int  # the sink's own retries (redis-py follows MOVED itself)
    notes_received: int  # notifications a subscriber got
    notes_after_failover: int
    resubscribed: int  # times the subscriber followed the slot to its new master
    old_master: int
    new_master: int

    @classmethod
    def observe(
        cls,
        scenario: str,
        *,
        want: list[int],
        got: list[int],
        written: list[float],
        window: tuple[float, float],
        retries: int,
        listener: Listener,
        old: Any,
        new: Any,
    ) -> Failover:
        """The figures of one run: the steps wanted and found in the stream, the times forecasts were
        written, the failover's (start, end) and the subscriber's notifications."""
        t0, t1 = window
        longest, typical = _gaps(written, t0, t1)
        return cls(
            scenario=scenario,
            steps=len(want),
            missing=len(set(want) - set(got)),
            doubled=len(got) - len(set(got)),
            failover_s=round(t1 - t0, 3),
            longest_gap_s=longest,
            typical_gap_s=typical,
            steps_during_failover=sum(t0 <= t <= t1 for t in written),
            sink_retries=retries,
            notes_received=len(listener.got),
            notes_after_failover=sum(t > t1 for t, _ in listener.got),
            resubscribed=listener.notes.resubscribed,
            old_master=old.port,
            new_master=new.port,
        )

    def record(self, folder: Path) -> None:
        doc = asdict(self)
        (folder / f"failover-{self.scenario}.json").write_text(json.dumps(doc, indent=1))
        log.warning("redis cluster failover observed: %s", doc)


class Listener:
    """Collects the network's notifications in a thread, each with the time it arrived."""

    def __init__(self, client: Any, channel: str) -> None:
        self.notes = Notifications(client, channel)
        self.got: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            note = self.notes.get(0.2)
            if note is not None:
                self.got.append((time.monotonic(), int(note["step_ts"])))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self.notes.close()


def _stream_steps(client: Any, keys: Keys) -> list[int]:
    return [int(f[b"step_ts"]) for _, f in client.xrange(keys.stream)]


def _gaps(times: list[float], t0: float, t1: float) -> tuple[float, float]:
    """The longest interval between consecutive writes that overlaps [t0, t1], and the median of all."""
    pairs = list(itertools.pairwise(times))
    around = [b - a for a, b in pairs if b >= t0 and a <= t1]
    return round(max(around, default=0.0), 3), round(float(np.median([b - a for a, b in pairs])), 3)


def test_sink_loses_and_doubles_no_step_when_the_slot_fails_over(
    redis_cluster: LocalCluster, tmp_path: Path
) -> None:
    prefix, name = _names()
    n_steps, fail_at = 150, 40
    keys = Keys(prefix, name)
    sink = RedisSink(
        connect(_cluster_settings(redis_cluster, prefix)),
        keys,
        sensors=("a", "b"),
        features=("x",),
        step_ms=STEP,
    )
    listener = Listener(connect(_cluster_settings(redis_cluster, prefix)), keys.channel)
    written: list[float] = []
    errors: list[BaseException] = []
    reached = threading.Event()

    def writer() -> None:
        try:
            for i in range(n_steps):
                sink.write(StepForecast(T0 + i * STEP, "v1", _forecast(i, 2), i))
                written.append(time.monotonic())
                if i == fail_at:
                    reached.set()
                time.sleep(0.01)
        except BaseException as exc:
            errors.append(exc)
            reached.set()

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    try:
        assert reached.wait(30), "the writer never reached the failover point"
        t0 = time.monotonic()
        old, new = redis_cluster.failover(keys.stream)
        t1 = time.monotonic()
        thread.join(60)
        last = T0 + (n_steps - 1) * STEP
        wait_for(
            lambda: any(st == last for _, st in listener.got),
            timeout_s=10,
            what="the last step's notification",
        )
    finally:
        listener.stop()
    got = _stream_steps(sink.client, keys)
    want = [T0 + i * STEP for i in range(n_steps)]
    seen = Failover.observe(
        "sink",
        want=want,
        got=got,
        written=written,
        window=(t0, t1),
        retries=sink.retries,
        listener=listener,
        old=old,
        new=new,
    )
    seen.record(tmp_path)
    assert not errors and not thread.is_alive(), errors
    assert got == want, f"missing {sorted(set(want) - set(got))[:10]}, doubled {seen.doubled}"
    assert redis_cluster.master_of(keys.stream).port == new.port != old.port
    assert seen.notes_after_failover > 0, "no notification after the failover: the subscriber was lost"
    assert seen.longest_gap_s < 10, seen


@pytest.mark.usefixtures("ray_local")
def test_pipeline_serves_through_a_failover_of_the_networks_slot(
    redis_cluster: LocalCluster, embedded: EmbeddedRuntime, tmp_path: Path
) -> None:
    s: Settings = settings_for(embedded, tmp_path)
    prefix, name = _names()
    s.redis = _cluster_settings(redis_cluster, prefix)
    s.kafka.max_poll_records = 4  # many small cycles, so the failover lands mid-stream
    network = simulated_network(12, name=name, step_ms=STEP)
    ensure_topics(s.kafka, {s.kafka.readings_topic: s.kafka.partitions, s.kafka.dead_letter_topic: 1})
    sim, n_steps = Simulator(network, seed=2), 80
    keys = Keys(prefix, name)
    stop, errors = threading.Event(), []
    marks: list[tuple[float, int]] = []  # (time, steps forecast) after each serving cycle
    with ServePipeline(s, network, ModelSpec("baseline:persistence"), client_id=name).start() as running:
        listener = Listener(connect(s.redis), keys.channel)

        def serve() -> None:
            try:
                while not stop.is_set():
                    running.poll_once(100)
                    marks.append((time.monotonic(), running.steps_forecast))
            except BaseException as exc:
                errors.append(exc)

        def feed() -> None:  # a step's readings every 50 ms, failover or not
            try:
                with ReadingProducer(s.kafka, network) as producer:
                    for i in range(n_steps):
                        producer.send_step(T0 + i * STEP, *sim.step(T0 + i * STEP))
                        producer.flush(10)
                        time.sleep(0.05)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=f, daemon=True) for f in (serve, feed)]
        for thread in threads:
            thread.start()
        try:
            wait_for(lambda: running.steps_forecast >= 10 or errors, timeout_s=60, what="the first forecasts")
            t0 = time.monotonic()
            old, new = redis_cluster.failover(keys.stream)
            t1 = time.monotonic()
            threads[1].join(60)
            last = T0 + (n_steps - 2) * STEP  # the newest sealed step once the last one's readings are in
            wait_for(
                lambda: any(st == last for _, st in listener.got) or errors,
                timeout_s=60,
                what="the notification of the last sealed step",
            )
        finally:
            stop.set()
            for thread in threads:
                thread.join(30)
            listener.stop()
        got = _stream_steps(running.redis, keys)
        retries = running.sink.retries
    window = s.window.window
    want = [T0 + i * STEP for i in range(window - 1, n_steps - 1)]
    written = [t for (_, before), (t, n) in itertools.pairwise(marks) if n > before]
    seen = Failover.observe(
        "pipeline",
        want=want,
        got=got,
        written=written,
        window=(t0, t1),
        retries=retries,
        listener=listener,
        old=old,
        new=new,
    )
    seen.record(tmp_path)
    assert not errors, errors
    assert got == want, f"missing {sorted(set(want) - set(got))[:10]}, doubled {seen.doubled}"
    assert seen.notes_after_failover > 0 and seen.longest_gap_s < 10, seen
