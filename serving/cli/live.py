"""The demo's live terminal view (rich): a few sensors' latest forecasts read back from Redis, and the
stream's health (ledger, steps, latency). Reads what a consumer would read — it never looks inside the
pipeline's model — so what it prints is what Redis holds.
"""

from __future__ import annotations

import datetime as dt
import time
from typing import TYPE_CHECKING, Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from serving.client import ForecastClient

if TYPE_CHECKING:
    from serving.pipeline import RunningPipeline

HORIZONS_SHOWN = (1, 3, 6, 12)


def _hhmm(ts_ms: int) -> str:
    return dt.datetime.fromtimestamp(ts_ms / 1000, tz=dt.timezone.utc).strftime("%m-%d %H:%M")


class LiveView:
    def __init__(self, console: Console, pipeline: RunningPipeline, *, show: int, started: float) -> None:
        self.console = console
        self.pipeline = pipeline
        self.show = show
        self.started = started
        self.first_forecast_s: float | None = None
        self._next = 0.0
        self._live: Live | None = None
        self.client = ForecastClient(pipeline.redis, pipeline.network.name, pipeline.keys.prefix)

    def __enter__(self) -> LiveView:
        self._live = Live(self._render(), console=self.console, refresh_per_second=4, transient=False)
        self._live.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._live is not None:
            self._live.update(self._render())
            self._live.__exit__(*exc)

    def update(self, _pipeline: Any = None) -> None:
        if self.first_forecast_s is None and self.pipeline.steps_forecast:
            self.first_forecast_s = time.monotonic() - self.started
        now = time.monotonic()
        if now >= self._next and self._live is not None:
            self._next = now + 0.5
            self._live.update(self._render())

    def _render(self) -> Group:
        net = self.pipeline.network
        sensors = list(net.sensors[: self.show])
        table = Table(title=f"sensorcast — latest forecasts in Redis ({net.name}, {net.n_sensors} sensors)")
        table.add_column("sensor")
        table.add_column("last step (UTC)")
        table.add_column("model")
        for h in HORIZONS_SHOWN:
            table.add_column(f"+{h * net.step_ms // 60_000} min", justify="right")
        latest = self.client.latest(sensors)
        for s in sensors:
            fc = latest.get(s)
            if fc is None:
                table.add_row(s, "—", "—", *["…"] * len(HORIZONS_SHOWN))
                continue
            cells = [
                f"{fc.forecast[h - 1, 0]:.1f}" if h <= fc.forecast.shape[0] else "" for h in HORIZONS_SHOWN
            ]
            table.add_row(s, _hhmm(fc.step_ts), fc.model_version, *cells)
        return Group(table, self._health())

    def _health(self) -> Table:
        p = self.pipeline
        tot = p.ingestor.ledger.snapshot()["total"]
        hist = p.metrics.seal_to_redis_seconds.collect()[0].samples
        count = next((s.value for s in hist if s.name.endswith("_count")), 0.0)
        total = next((s.value for s in hist if s.name.endswith("_sum")), 0.0)
        t = Table.grid(padding=(0, 2))
        t.add_row(
            f"readings {tot.get('received', 0)}",
            f"windowed {tot.get('windowed', 0)}",
            f"dead-lettered {tot.get('dead_lettered', 0)}",
            f"late {tot.get('late', 0)}",
            f"duplicates {tot.get('duplicates', 0)}",
        )
        t.add_row(
            f"steps forecast {p.steps_forecast}",
            f"seal→redis mean {1000 * total / count:.1f} ms" if count else "seal→redis —",
            f"first forecast after {self.first_forecast_s:.1f} s"
            if self.first_forecast_s
            else "waiting for a full window",
            f"metrics :{p.metrics_port}" if p.metrics_port else "",
            f"up {time.monotonic() - self.started:.0f} s",
        )
        t.add_row(f"redis-cli {self._redis_cli_args()} HGET '{p.keys.latest}' {p.network.sensors[0]}")
        return t

    def _redis_cli_args(self) -> str:
        kw = self.pipeline.redis.connection_pool.connection_kwargs
        return f"-h {kw.get('host', '127.0.0.1')} -p {kw.get('port', 6379)} -n {kw.get('db', 0)}"

    def summary(self, extra: dict[str, Any] | None = None) -> None:
        p = self.pipeline
        snap = p.ingestor.ledger.snapshot()["total"]
        self.console.print()
        self.console.print(
            f"[bold]done[/bold]: {p.steps_forecast} steps forecast; first forecast in Redis after "
            f"{self.first_forecast_s:.1f} s"
            if self.first_forecast_s
            else "[red]no forecast reached Redis[/red]"
        )
        self.console.print(f"ledger: {snap}")
        if extra:
            self.console.print(f"memory: {extra}")
