"""Sealed steps → forecasts in Redis, and the actuals scored against them.

`StepForecasts` keeps the rolling window over sealed steps, sends every newly complete window of a cycle to
the forecaster actors in micro-batches (the next call submitted before the previous one's steps are
written, so the actors compute while this process writes), writes each step's forecast to Redis tagged
with the version that made it, and scores the sealed steps online as soon as the forecasts that target
them are recorded. The pipeline calls it inside the ingest service's `on_sealed` hook, so all of it is
done before the offsets are committed. It never reads Kafka and never chooses the model: the dispatcher
holds the serving version and `serving.lifecycle` swaps it between cycles.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

import numpy as np

from serving.dispatch import Call, Dispatcher
from serving.metrics import ServeMetrics
from serving.online import OnlineEvaluator
from serving.sink import RedisSink, StepForecast
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
    forecast is recorded: while a long batch is forecast, after each call's steps are written (`written`,
    the actors compute meanwhile), and the rest at the end (`through(None)`).
    """

    def __init__(
        self, sealed: list[SealedStep], online: OnlineEvaluator, sink: RedisSink, horizon_ms: int
    ) -> None:
        self.waiting = deque(sealed)
        self.online = online
        self.sink = sink
        self.horizon_ms = horizon_ms
        self.scored = False  # some forecast was completed and scored

    def written(self, last_issued: int) -> None:
        """The forecasts issued up to `last_issued` are recorded: score the steps they end on."""
        self.through(last_issued + self.horizon_ms)

    def through(self, step_ts: int | None) -> None:
        """Score the waiting steps up to `step_ts` (all: None) and write them as actuals."""
        ready = []
        while self.waiting and (step_ts is None or self.waiting[0].step_ts <= step_ts):
            ready.append(self.waiting.popleft())
        for st in ready:
            self.scored |= self.online.observe(st.step_ts, st.values, st.mask) is not None
        self.sink.write_actuals([(st.step_ts, st.values, st.mask) for st in ready])


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
        self._retries = 0  # dispatcher re-sends already reported

    def on_sealed(self, sealed: list[SealedStep]) -> None:
        """Forecast every window a sealed step completes, then score the sealed steps."""
        sealed_at = time.monotonic()
        pending = _Pending()
        for step in sealed:
            self.rolling.push(step)
            if self.rolling.ready:
                pending.add(self.rolling, step.step_ts, sealed_at)
        scoring = _Scoring(sealed, self.online, self.sink, self.horizon_ms)
        self._forecast(pending, on_written=scoring.written)
        scoring.through(None)
        if scoring.scored:
            self._publish_online(sealed[-1].step_ts)

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

    def _publish_online(self, step_ts: int) -> None:
        rolling = self.online.rolling(self.dispatcher.version)
        per_horizon = cast(list[float], rolling["mae"]), cast(list[float], rolling["rmse"])
        for h, (mae, rmse) in enumerate(zip(*per_horizon, strict=True), 1):
            self.metrics.online_mae.labels(str(h)).set(mae)
            self.metrics.online_rmse.labels(str(h)).set(rmse)
        cumulative = {v: sums.scores() for v, sums in self.online.cumulative.items()}
        self.sink.write_online(
            step_ts, cumulative, rolling, self.online.mean_rolling_mae(self.dispatcher.version)
        )

    def _forecast(self, pending: _Pending, on_written: Callable[[int], None] | None = None) -> int:
        """Forecast the pending windows and write each step to Redis, in step order.

        A long backlog (catching up, replaying) goes in calls of `pipeline_windows` windows per replica,
        and the next call is submitted before the previous one's steps are written, so the actors
        compute while this process writes to Redis. `on_written(step_ts)` follows each call's writes,
        with its last step, while the next call computes.
        """
        if not pending.step_ts:
            return 0
        values = np.stack(pending.values)  # [B, window, N, F]
        mask = np.stack(pending.mask)  # [B, window, N, F]
        ts = np.stack(pending.ts)  # [B, window]
        b = len(pending.step_ts)
        size = self.pipeline_windows * len(self.dispatcher.actors)
        calls: deque[tuple[int, Call]] = deque()
        for lo in range(0, b, size):
            hi = min(b, lo + size)
            calls.append((lo, self.dispatcher.submit(values[lo:hi], mask[lo:hi], ts[lo:hi])))
            if len(calls) > 1:
                self._write(pending, *calls.popleft(), on_written)
        while calls:
            self._write(pending, *calls.popleft(), on_written)
        return b

    def _write(
        self, pending: _Pending, first: int, call: Call, on_written: Callable[[int], None] | None
    ) -> None:
        """Wait for `call` (pending windows `first`, `first + 1`, ...), write its steps, then call
        `on_written` with the last one's step."""
        out = self.dispatcher.collect(call)  # [b, H, N, out]
        self.metrics.inference_seconds.observe(self.dispatcher.last_infer_ms / 1000)
        version = self.dispatcher.version
        if self.dispatcher.retries > self._retries:  # an actor failed and was replaced (maybe elsewhere)
            self.metrics.actor_retries.inc(self.dispatcher.retries - self._retries)
            self._retries = self.dispatcher.retries
            self.sink.add_event(
                "actors_recovered", version, {"retries": self._retries, **self.dispatcher.placement()}
            )
        for k in range(out.shape[0]):
            step_ts = pending.step_ts[first + k]
            self.sink.write(StepForecast(step_ts, version, out[k], wall_ms()))
            self.online.record_forecast(step_ts, version, out[k])
            latency = time.monotonic() - pending.sealed_at[first + k]
            self.metrics.seal_to_redis_seconds.observe(latency)
            self.latencies_s.append(latency)
        self.metrics.steps_forecast.inc(out.shape[0])
        self.steps_forecast += out.shape[0]
        if on_written is not None:
            on_written(pending.step_ts[first + out.shape[0] - 1])
