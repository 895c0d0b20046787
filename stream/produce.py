"""Paced producers: publish the simulator (or a recorded dataset) to Kafka as real timestamped readings.

`speed` is a multiple of real time: at speed 300 a 5-minute step is published every second. A backfill
publishes the first steps as fast as the broker takes them, so a demo has a full window at once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from stream.config import KafkaSettings
from stream.kafka_io import ReadingProducer
from stream.network import Network
from stream.simulate import Simulator

log = logging.getLogger(__name__)


@dataclass
class PaceStats:
    steps: int = 0
    readings: int = 0
    last_step_ts: int | None = None


def paced(
    steps: Iterator[tuple[int, np.ndarray, np.ndarray]],
    producer: ReadingProducer,
    *,
    step_ms: int,
    speed: float,
    backfill_steps: int = 0,
    stop: threading.Event | None = None,
    on_step: Callable[[PaceStats], None] | None = None,
) -> PaceStats:
    """Publish `(step_ts, values [N, F], present [N, F])` items, sleeping `step_ms / speed` between steps
    after the first `backfill_steps`; `speed <= 0` means as fast as possible."""
    stats = PaceStats()
    interval = step_ms / 1000 / speed if speed > 0 else 0.0
    next_at = time.monotonic()
    for ts, values, present in steps:
        if stop is not None and stop.is_set():
            break
        if stats.steps >= backfill_steps and interval > 0:
            delay = next_at - time.monotonic()
            if delay > 0:
                if stop is not None:
                    if stop.wait(delay):
                        break
                else:
                    time.sleep(delay)
            next_at = max(next_at, time.monotonic() - interval) + interval
        producer.send_step(ts, values, present)
        stats.steps += 1
        stats.readings += int(present.sum())
        stats.last_step_ts = ts
        if stats.steps == backfill_steps or interval > 0:
            producer.flush()
        if on_step is not None:
            on_step(stats)
    producer.flush()
    return stats


def simulated_steps(
    sim: Simulator, start_ts: int, *, n_steps: int | None = None, regime_at_step: int | None = None
) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """The simulator's steps from `start_ts` (aligned to the grid), optionally switching regime."""
    step_ms = sim.network.step_ms
    ts = start_ts - start_ts % step_ms
    i = 0
    while n_steps is None or i < n_steps:
        if regime_at_step is not None and i == regime_at_step:
            sim.set_regime(1)
            log.info("simulator regime change", extra={"step_ts": ts})
        values, present = sim.step(ts)
        yield ts, values, present
        ts += step_ms
        i += 1


def run_simulation(
    settings: KafkaSettings,
    network: Network,
    *,
    speed: float,
    start_ts: int,
    n_steps: int | None = None,
    backfill_steps: int = 0,
    seed: int = 0,
    fmt: str = "batch",
    regime_at_step: int | None = None,
    stop: threading.Event | None = None,
    on_step: Callable[[PaceStats], None] | None = None,
) -> PaceStats:
    sim = Simulator(network, seed=seed)
    with ReadingProducer(settings, network, fmt=fmt) as producer:
        return paced(
            simulated_steps(sim, start_ts, n_steps=n_steps, regime_at_step=regime_at_step),
            producer,
            step_ms=network.step_ms,
            speed=speed,
            backfill_steps=backfill_steps,
            stop=stop,
            on_step=on_step,
        )
