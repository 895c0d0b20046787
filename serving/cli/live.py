"""The demo's live view: a few sensors' latest forecasts read back from Redis, which model serves and since
when (from the lifecycle events in Redis), and the stream's health (ledger, steps, latency). Reads what a
consumer would read — it never looks inside the pipeline's model — so what it prints is what Redis holds.

On a terminal it is one rich table redrawn in place; when stdout is not a terminal (a log file, CI) it
prints one plain status line every `every_s` seconds instead, and nothing is redrawn.
"""

from __future__ import annotations

import datetime as dt
import time
from typing import TYPE_CHECKING, Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from serving.client import ForecastClient
from training.model import BASELINES

if TYPE_CHECKING:
    from serving.pipeline import RunningPipeline

HORIZONS_SHOWN = (1, 3, 6, 12)
DECISIONS = ("promoted", "rejected", "retrain_failed")


def _hhmm(ts_ms: int) -> str:
    return dt.datetime.fromtimestamp(ts_ms / 1000, tz=dt.timezone.utc).strftime("%m-%d %H:%M")


def _order(event: dict[str, Any]) -> tuple[int, ...]:
    """A stream entry id `<ms>-<seq>` as numbers, so that entries of one millisecond compare in order."""
    return tuple(int(part) for part in event["id"].split("-"))


class ModelStatus:
    """Which model serves, since when, why, and whether a challenger is training — from the events."""

    def __init__(self, events: list[dict[str, Any]], started_wall_ms: int) -> None:
        self.kinds = {
            e["model_version"]: e["detail"].get("kind", "?") for e in events if e["type"] == "serving"
        }
        serving = [e for e in events if e["type"] == "serving"]
        self.current = serving[-1] if serving else None
        self.started_wall_ms = started_wall_ms
        self.decision = next((e for e in reversed(events) if e["type"] in DECISIONS), None)
        started = next((e for e in reversed(events) if e["type"] == "retrain_started"), None)
        done_after = (
            self.decision is not None and started is not None and _order(self.decision) > _order(started)
        )
        self.training = None if started is None or done_after else started

    def at(self, event: dict[str, Any]) -> str:
        return f"+{(event['ts'] - self.started_wall_ms) / 1000:.0f} s"

    def kind(self, version: str) -> str:
        return self.kinds.get(version, "?")

    def line(self) -> str:
        if self.current is None:
            return "model: starting"
        v = self.current["model_version"]
        text = f"model {v} ({self.kind(v)}) serving since {self.at(self.current)}"
        previous = self.current["detail"].get("previous")
        if previous:
            text += f", replacing {previous} ({self.kind(previous)})"
        if self.decision is not None:
            d = self.decision
            text += f" · last gate {d['type']} {d['model_version']} at {self.at(d)}"
            mae = d["detail"].get("mae") or {}
            if mae:
                text += " (holdout MAE " + ", ".join(f"{k} {val:.2f}" for k, val in mae.items()) + ")"
        if self.training is not None:
            text += f" · training a challenger since {self.at(self.training)}"
        return text


class LiveView:
    def __init__(
        self, console: Console, pipeline: RunningPipeline, *, show: int, started: float, every_s: float = 5.0
    ) -> None:
        self.console = console
        self.pipeline = pipeline
        self.show = show
        self.started = started
        self.started_wall_ms = int(time.time() * 1000 - (time.monotonic() - started) * 1000)
        self.plain = not console.is_terminal
        self.every_s = every_s if self.plain else 0.5
        self.first_forecast_s: float | None = None
        self.status = ModelStatus([], self.started_wall_ms)
        self._next = 0.0
        self._live: Live | None = None
        self.client = ForecastClient(pipeline.redis, pipeline.network.name, pipeline.keys.prefix)

    def __enter__(self) -> LiveView:
        if self.plain:
            self.console.print(self._hint(), soft_wrap=True)
        else:
            self._live = Live(self._render(), console=self.console, refresh_per_second=4, transient=False)
            self._live.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._live is not None:
            self._live.update(self._render())
            self._live.__exit__(*exc)

    def update(self, _pipeline: Any = None) -> None:
        now = time.monotonic()
        if self.first_forecast_s is None and self.pipeline.steps_forecast:
            self.first_forecast_s = now - self.started
        if now < self._next:
            return
        self._next = now + self.every_s
        self.status = ModelStatus(self.client.events(200), self.started_wall_ms)
        if self.plain:
            self.console.print(self._plain_line(), soft_wrap=True, highlight=False)
        elif self._live is not None:
            self._live.update(self._render())

    # -- plain ---------------------------------------------------------------------------------------------
    def _plain_line(self) -> str:
        p = self.pipeline
        tot = p.ingestor.ledger.snapshot()["total"]
        mean = self._seal_to_redis_ms()
        return (
            f"[{time.monotonic() - self.started:5.0f} s] steps forecast {p.steps_forecast} · "
            f"readings {tot.get('received', 0)} (dead-lettered {tot.get('dead_lettered', 0)}, late "
            f"{tot.get('late', 0)}) · seal→redis {f'{mean:.0f} ms' if mean is not None else '—'} · "
            + self.status.line()
        )

    # -- rich ----------------------------------------------------------------------------------------------
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
            model = f"{fc.model_version} {self.status.kind(fc.model_version)}"
            table.add_row(s, _hhmm(fc.step_ts), model, *cells)
        return Group(table, self.status.line(), self._health(), self._hint())

    def _seal_to_redis_ms(self) -> float | None:
        hist = self.pipeline.metrics.seal_to_redis_seconds.collect()[0].samples
        count = next((s.value for s in hist if s.name.endswith("_count")), 0.0)
        total = next((s.value for s in hist if s.name.endswith("_sum")), 0.0)
        return 1000 * total / count if count else None

    def _health(self) -> Table:
        p = self.pipeline
        tot = p.ingestor.ledger.snapshot()["total"]
        mean = self._seal_to_redis_ms()
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
            f"seal→redis mean {mean:.1f} ms" if mean is not None else "seal→redis —",
            f"first forecast after {self.first_forecast_s:.1f} s"
            if self.first_forecast_s
            else "waiting for a full window",
            f"metrics :{p.metrics_port}" if p.metrics_port else "",
            f"up {time.monotonic() - self.started:.0f} s",
        )
        return t

    def _hint(self) -> str:
        p = self.pipeline
        kw = p.redis.connection_pool.connection_kwargs
        args = f"-h {kw.get('host', '127.0.0.1')} -p {kw.get('port', 6379)} -n {kw.get('db', 0)}"
        return f"read a forecast: redis-cli {args} HGET '{p.keys.latest}' {p.network.sensors[0]}"

    def summary(self, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """Print the run's outcome; returns it (the demo's `--summary-json`)."""
        p = self.pipeline
        self.status = ModelStatus(self.client.events(1000), self.started_wall_ms)
        snap = p.ingestor.ledger.snapshot()["total"]
        self.console.print()
        self.console.print(
            f"[bold]done[/bold]: {p.steps_forecast} steps forecast; first forecast in Redis after "
            f"{self.first_forecast_s:.1f} s"
            if self.first_forecast_s
            else "[red]no forecast reached Redis[/red]"
        )
        learned = self.first_learned_forecast()
        if learned is not None:
            version, at_s = learned
            self.console.print(f"first forecast of a trained model ({version}) in Redis after {at_s:.1f} s")
        self.console.print(self.status.line(), soft_wrap=True, highlight=False)
        self.console.print(f"ledger: {snap}")
        if extra:
            self.console.print(f"memory: {extra}")
        return {
            "first_forecast_s": self.first_forecast_s,
            "first_learned_forecast_s": None if learned is None else learned[1],
            "steps_forecast": p.steps_forecast,
            "ledger": snap,
            "timeline": self.timeline(),
            **(extra or {}),
        }

    def first_learned_forecast(self) -> tuple[str, float] | None:
        """The first trained (non-baseline) version to serve and when its first forecast reached Redis, in
        seconds after start: the first stream entry of that version at or after its swap event (a stream
        entry's id is the wall-clock ms Redis wrote it)."""
        swap = next(
            (
                e
                for e in self.client.events(1000)
                if e["type"] == "serving" and e["detail"].get("kind", "?") not in (*BASELINES, "?")
            ),
            None,
        )
        if swap is None:
            return None
        version = swap["model_version"]
        entries = self.client.redis.xrange(self.client.keys.stream, min=str(swap["ts"] - 5_000), count=200)
        for entry_id, fields in entries:
            if fields[b"model_version"].decode() == version:
                written = int(entry_id.split(b"-")[0])
                return version, round((written - self.started_wall_ms) / 1000, 1)
        return None

    def timeline(self) -> list[dict[str, Any]]:
        """Every lifecycle event of this run, seconds after start, with its gate figures when it has them."""
        out = []
        for e in self.client.events(1000):
            row = {"at_s": round((e["ts"] - self.started_wall_ms) / 1000, 1), "type": e["type"]}
            row["model_version"] = e["model_version"]
            for key in ("kind", "reason", "mae", "trigger"):
                if key in e["detail"]:
                    row[key] = e["detail"][key]
            out.append(row)
        return out
