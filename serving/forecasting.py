"""Sealed steps → forecasts in Redis, and the actuals scored against them.

`StepForecasts` keeps the rolling window over sealed steps, sends every newly complete window of a cycle to
the forecaster actors in micro-batches (the next call submitted before the previous one's steps are
written, so the actors compute while this process writes), writes each call's forecasts to Redis tagged
with the version that made it, and scores the sealed steps online as soon as the forecasts that target
them are recorded: a call's forecasts and the actuals and online scores they complete go to Redis in one
round trip. The pipeline calls it inside the ingest service's `on_sealed` hook, so all of it is done
before the offsets are committed. It never reads Kafka and never chooses the model: the dispatcher holds
the serving version and `serving.lifecycle` swaps it between cycles.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import cast

import numpy as np

from serving.dispatch import Call, Dispatcher
from serving.metrics import ServeMetrics
from serving.online import OnlineEvaluator
from serving.sink import RedisSink
from serving.sink_scripts import Actual, OnlineScores, StepForecast
from stream.clock import wall_ms
from stream.network import Network
from stream.rolling import RollingWindow
from stream.window import SealedStep

log = logging.getLogger(__name__)


@dataclass
class _Pending:
    """Complete windows waiting for one actor call."""

    step_ts: list[int] = field(default_factory=list)
    values: list[np.ndarray] = field(default_factory=list)  # each [window, N, F]
    mask: list[np.ndarray] = field(default_factory=list)
    ts: list[np.ndarray] = field(default_factory=list)  # each [window]
    sealed_at: list[float] = field(default_factory=list)

    def add(self, rolling: RollingWindow, step_ts: int, sealed_at: float) -> None:
        self.step_ts.append(step_ts)
        self.values.append(rolling.values())
        self.mask.append(rolling.mask())
        self.ts.append(rolling.step_ts())
        self.sealed_at.append(sealed_at)


class _Scoring:
    """One cycle's sealed steps on their way to the online scores and the actuals stream.

    A step is the last target of the forecast issued H steps before it, so it is scored only once that
    forecast is recorded: while a long batch is forecast, with each call's steps (`take(last_issued +
    horizon)`, the actors compute meanwhile), and the rest with the cycle's last call (`take(None)`).
    """

    def __init__(self, sealed: list[SealedStep], online: OnlineEvaluator) -> None:
        self.waiting = deque(sealed)
        self.online = online

    def take(self, step_ts: int | None) -> tuple[list[Actual], bool]:
        """Score the waiting steps up to `step_ts` (all: None); returns them as actuals, and whether some
        forecast was completed and scored."""
        actuals: list[Actual] = []
        scored = False
        while self.waiting and (step_ts is None or self.waiting[0].step_ts <= step_ts):
            st = self.waiting.popleft()
            scored |= self.online.observe(st.step_ts, st.values, st.mask) is not None
            actuals.append((st.step_ts, st.values, st.mask))
        return actuals, scored


class StepForecasts:
    """Forecast, write and score sealed steps (see the module docstring); counts what it wrote."""

    def __init__(
        self,
        network: Network,
        window: int,
        dispatcher: Dispatcher,
        sink: RedisSink,
        online: OnlineEvaluator,
        metrics: ServeMetrics,
        *,
        pipeline_windows: int,
    ) -> None:
        self.rolling = RollingWindow(network, window)
        self.dispatcher = dispatcher
        self.sink = sink
        self.online = online
        self.metrics = metrics
        self.pipeline_windows = pipeline_windows  # windows per replica in one actor call
        self.horizon_ms = online.horizon * network.step_ms
        self.steps_forecast = 0
        self.latencies_s: deque[float] = deque(maxlen=10_000)  # seal→Redis per step, for benchmarks
        self.inference_ms: deque[float] = deque(maxlen=10_000)  # per actor call (slowest shard), likewise
        self._retries = 0  # dispatcher re-sends already reported

    def on_sealed(self, sealed: list[SealedStep]) -> None:
        """Forecast every window a sealed step completes and score the sealed steps: one Redis round trip
        per actor call, with its steps' forecasts and the actuals and online scores they complete."""
        sealed_at = time.monotonic()
        pending = _Pending()
        for step in sealed:
            self.rolling.push(step)
            if self.rolling.ready:
                pending.add(self.rolling, step.step_ts, sealed_at)
        scoring = _Scoring(sealed, self.online)
        self._forecast(pending, scoring)
        if scoring.waiting:  # no window complete yet: the actuals alone
            self._write_batch([], *scoring.take(None))

    def refill(
        self, step_ts: np.ndarray, values: np.ndarray, mask: np.ndarray, done_through: int | None
    ) -> int:
        """Recovery: push archived steps (`[T]`, `[T, N, F]`, `[T, N, F]`) into the rolling window and
        forecast those after `done_through`, the last step Redis holds (None: none); returns how many."""
        pending = _Pending()
        for i, ts in enumerate(step_ts):
            self.rolling.push(SealedStep(int(ts), values[i], mask[i], 0))
            if self.rolling.ready and (done_through is None or ts > done_through):
                pending.add(self.rolling, int(ts), time.monotonic())
        if pending.step_ts:
            log.info("re-forecasting archived steps missing in redis", extra={"steps": len(pending.step_ts)})
        return self._forecast(pending)

    def _write_batch(self, forecasts: list[StepForecast], actuals: list[Actual], scored: bool) -> None:
        """One round trip: forecasts, actuals, and the online scores when some forecast was scored."""
        online = None
        if scored:
            rolling = self.online.rolling(self.dispatcher.version)
            per_horizon = cast(list[float], rolling["mae"]), cast(list[float], rolling["rmse"])
            for h, (mae, rmse) in enumerate(zip(*per_horizon, strict=True), 1):
                self.metrics.online_mae.labels(str(h)).set(mae)
                self.metrics.online_rmse.labels(str(h)).set(rmse)
            online = OnlineScores(
                step_ts=actuals[-1][0],
                cumulative={v: sums.scores() for v, sums in self.online.cumulative.items()},
                rolling=rolling,
                mean_mae=self.online.mean_rolling_mae(self.dispatcher.version),
            )
        self.sink.write_batch(forecasts, actuals=actuals, online=online)

    def _forecast(self, pending: _Pending, scoring: _Scoring | None = None) -> int:
        """Forecast the pending windows and write their steps to Redis, in step order.

        A long backlog (catching up, replaying) goes in calls of `pipeline_windows` windows per replica,
        and the next call is submitted before the previous one's steps are written, so the actors
        compute while this process writes to Redis. Each call's steps are written in one round trip with
        the sealed steps of `scoring` they complete (all that remain with the last call).
        """
        if not pending.step_ts:
            return 0
        values = np.stack(pending.values)  # [B, window, N, F]
        mask = np.stack(pending.mask)  # [B, window, N, F]
        ts = np.stack(pending.ts)  # [B, window]
        b = len(pending.step_ts)
        size = self.pipeline_windows * len(self.dispatcher.groups)  # windows per replica
        calls: deque[tuple[int, Call]] = deque()
        for lo in range(0, b, size):
            hi = min(b, lo + size)
            calls.append((lo, self.dispatcher.submit(values[lo:hi], mask[lo:hi], ts[lo:hi])))
            if len(calls) > 1:
                self._write(pending, *calls.popleft(), scoring)
        while calls:
            self._write(pending, *calls.popleft(), scoring)
        return b

    def _write(self, pending: _Pending, first: int, call: Call, scoring: _Scoring | None) -> None:
        """Wait for `call` (pending windows `first`, `first + 1`, ...), then write its steps with what
        they let `scoring` score."""
        out = self.dispatcher.collect(call)  # [b, H, N, out]
        self.metrics.inference_seconds.observe(self.dispatcher.last_infer_ms / 1000)
        self.inference_ms.append(self.dispatcher.last_infer_ms)
        version = self.dispatcher.version
        if self.dispatcher.retries > self._retries:  # an actor failed and was replaced (maybe elsewhere)
            self.metrics.actor_retries.inc(self.dispatcher.retries - self._retries)
            self._retries = self.dispatcher.retries
            self.sink.add_event(
                "actors_recovered", version, {"retries": self._retries, **self.dispatcher.placement()}
            )
        steps = pending.step_ts[first : first + out.shape[0]]
        issued = wall_ms()
        forecasts = [StepForecast(ts, version, out[k], issued) for k, ts in enumerate(steps)]
        for fc in forecasts:
            self.online.record_forecast(fc.step_ts, version, fc.values)
        actuals: list[Actual] = []
        scored = False
        if scoring is not None:
            last = first + len(steps) == len(pending.step_ts)
            actuals, scored = scoring.take(None if last else steps[-1] + self.horizon_ms)
        self._write_batch(forecasts, actuals, scored)
        written = time.monotonic()
        for k in range(len(steps)):
            latency = written - pending.sealed_at[first + k]
            self.metrics.seal_to_redis_seconds.observe(latency)
            self.latencies_s.append(latency)
        self.metrics.steps_forecast.inc(len(steps))
        self.steps_forecast += len(steps)
