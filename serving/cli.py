"""The `sensorcast` command line (typer + rich) — the composition root that wires Kafka, Ray and Redis.

`demo` runs everything on this machine (embedded broker and Redis, local Ray, the simulator); `serve`
runs ingest + forecaster actors + sink against configured servers; `simulate` only produces readings.
`--bootstrap`, `--redis-url` and `--ray-address` point any command at existing servers instead.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import threading
import time
from pathlib import Path
from typing import Annotated

import typer
from typer.exceptions import TyperException

from serving import logs
from serving.cli_common import (
    Bootstrap,
    ConfigFile,
    LogLevel,
    RayAddress,
    RedisUrl,
    console,
    network_for,
    ray_session,
    runtime,
    settings_from,
    settle_heap,
)
from serving.cli_models import models_app
from serving.cli_ops import forecasts, ingest, replay, simulate
from serving.config import ConfigError
from serving.dashboard.command import dashboard as dashboard_command
from serving.embedded import rss_mb
from serving.forecaster import ModelSpec
from serving.plots import plot_app
from serving.sink import SinkUnavailable
from stream.archive import ArchiveMismatch
from stream.datasets import DatasetError
from stream.kafka_io import BrokerUnavailable
from stream.network import NetworkError
from stream.storage import StorageError
from training.checkpoint import CheckpointError
from training.cli import app as training_app
from training.registry import RegistryError

app = typer.Typer(help="sensorcast: streaming forecasts for sensor networks.", no_args_is_help=True)
app.registered_commands.extend(training_app.registered_commands)  # train, evaluate, explain
app.command("dashboard")(dashboard_command)
app.add_typer(plot_app, name="plot")
app.add_typer(models_app, name="models")
for _command in (simulate, ingest, replay, forecasts):
    app.command()(_command)


# The demo's retraining: a first job once ~300 steps are archived (2.5 min at the default speed, six
# simulated days of 30-minute steps), then every 300 steps or on drift; a small STFormer on 2 Ray Train
# workers × 0.5 CPU, warm-started from the champion after the first promotion.
DEMO_RETRAIN = {
    "every_steps": 300, "min_steps": 250, "holdout_steps": 48, "history_steps": 1000, "epochs": 30,
    "time_budget_s": 150.0, "workers": 2, "drift_patience": 20, "backoff_s": 30.0,
}  # fmt: skip


@app.command()
def demo(
    duration: Annotated[float, typer.Option(help="seconds to run (0 = until Ctrl-C)")] = 60.0,
    sensors: Annotated[int, typer.Option(help="simulated sensors")] = 20,
    speed: Annotated[
        float, typer.Option(help="simulated time per real time (3600: two 30-min steps per second)")
    ] = 3600.0,
    step_minutes: Annotated[int, typer.Option(help="grid step of the simulated network")] = 30,
    model: Annotated[
        str, typer.Option(help="baseline:persistence or a checkpoint path")
    ] = "baseline:persistence",
    data_dir: Annotated[Path, typer.Option(help="archive and registry root")] = Path("sensorcast-data/demo"),
    show: Annotated[int, typer.Option(help="sensors shown in the live table")] = 8,
    dashboard: Annotated[bool, typer.Option(help="serve the live dashboard and print its URL")] = True,
    retrain: Annotated[
        bool, typer.Option(help="retrain on the archive (Ray Train), gate and hot-swap while serving")
    ] = True,
    bootstrap: Bootstrap = None,
    redis_url: RedisUrl = None,
    ray_address: RayAddress = None,
    config: ConfigFile = None,
    log_level: LogLevel = "warning",
) -> None:
    """Run the whole path locally: simulator → Kafka → windows → Ray actor → Redis, with a live table."""
    from serving.live import LiveView
    from serving.pipeline import ServePipeline
    from stream.produce import run_simulation

    logs.configure(log_level)
    t_start = time.monotonic()
    settings = settings_from(
        config, bootstrap, redis_url, ray_address, archive={"root": str(data_dir / "archive")},
        retrain={**DEMO_RETRAIN, "enabled": retrain, "registry": str(data_dir / "registry")},
    )  # fmt: skip
    with runtime(settings) as settings, ray_session(settings):
        if not bootstrap:  # the embedded broker starts empty: so do the archive and the registry
            for folder in (settings.archive.root, settings.retrain.registry):
                shutil.rmtree(folder, ignore_errors=True)
        network = network_for(settings, sensors, step_ms=step_minutes * 60_000)
        pipeline = ServePipeline(settings, network, ModelSpec(model), client_id="sensorcast-demo")
        stop = threading.Event()
        sim_error: list[BaseException] = []

        def produce() -> None:
            try:
                start = time.time_ns() // 1_000_000 - (settings.window.window + 2) * network.step_ms
                run_simulation(settings.kafka, network, speed=speed, start_ts=start,
                               backfill_steps=settings.window.window + 2, stop=stop)  # fmt: skip
            except BaseException as exc:  # surfaced in the main thread
                sim_error.append(exc)
                stop.set()

        pipeline.start(serve_metrics=True)
        if dashboard:
            from serving.dashboard.app import start_in_thread

            url = start_in_thread(settings.redis.url.get_secret_value(), network, settings.redis.key_prefix,
                                  registry=data_dir / "registry").url  # fmt: skip
            console.print(f"dashboard: [bold]{url}[/bold]")
        producer = threading.Thread(target=produce, name="simulator", daemon=True)
        settle_heap()
        producer.start()
        view = LiveView(console, pipeline, show=show, started=t_start)
        try:
            with view:
                pipeline.run(duration_s=duration or None, stop=stop, on_cycle=view.update)
        except KeyboardInterrupt:
            console.print("[yellow]interrupted[/yellow]")
        finally:
            stop.set()
            producer.join(timeout=10)
            pipeline.close()
        if sim_error:
            raise sim_error[0]
        view.summary(extra={"embedded_rss_mb": _embedded_rss(), "driver_rss_mb": round(rss_mb(), 1)})


def _embedded_rss() -> dict[str, float]:
    import psutil

    out: dict[str, float] = {}
    for proc in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            name = proc.name()
            if name in ("tansu", "redis-server", "valkey-server"):
                out[name] = round(proc.memory_info().rss / 2**20, 1)
    return out


@app.command()
def serve(
    model: Annotated[
        str,
        typer.Option(
            help="baseline:persistence, a checkpoint or a registry (path or URI), or REGISTRY:VERSION"
        ),
    ] = "baseline:persistence",
    sensors: Annotated[int, typer.Option(help="simulated network size when no --network file is given")] = 20,
    retrain: Annotated[
        bool | None, typer.Option(help="retrain and hot-swap (default: from settings)")
    ] = None,
    registry: Annotated[
        str | None, typer.Option(help="registry for retraining: a folder or URI (s3://bucket/prefix)")
    ] = None,
    network_file: Annotated[Path | None, typer.Option("--network", help="network TOML/JSON")] = None,
    duration: Annotated[float, typer.Option(help="seconds to run (0 = until Ctrl-C)")] = 0.0,
    bootstrap: Bootstrap = None,
    redis_url: RedisUrl = None,
    ray_address: RayAddress = None,
    config: ConfigFile = None,
    log_level: LogLevel = "info",
) -> None:
    """Ingest readings, forecast every sealed step with Ray actors, write forecasts to Redis."""
    from serving.pipeline import ServePipeline

    logs.configure(log_level)
    settings = settings_from(
        config, bootstrap, redis_url, ray_address, retrain={"enabled": retrain, "registry": registry}
    )
    if network_file is not None:
        settings = settings.model_copy(update={"network_file": network_file})
    with runtime(settings) as settings, ray_session(settings):
        network = network_for(settings, sensors)
        pipeline = ServePipeline(settings, network, ModelSpec(model)).start(serve_metrics=True)
        settle_heap()
        console.print(f"serving {network.name} ({network.n_sensors} sensors) from {settings.kafka.bootstrap}, "
                      f"metrics on :{pipeline.metrics_port}")  # fmt: skip
        try:
            pipeline.run(duration_s=duration or None)
        except KeyboardInterrupt:
            pass
        finally:
            pipeline.close()


# Errors a user fixes by changing a setting, a file or a server: one line naming it, no stack trace
# (`--log-level debug` keeps the trace in the log).
_USER_ERRORS: tuple[type[Exception], ...] = (
    StorageError,
    BrokerUnavailable,
    DatasetError,
    NetworkError,
    ArchiveMismatch,
    CheckpointError,
    RegistryError,
    ConfigError,
    SinkUnavailable,
)


def main() -> None:
    """The `sensorcast` entry point: `app` with configuration and infrastructure errors as one line."""
    try:
        app(standalone_mode=False)
    except typer.Exit as exc:
        raise SystemExit(exc.exit_code) from None
    except typer.Abort:
        raise SystemExit(130) from None
    except TyperException as exc:  # usage errors and bad parameters (typer's own click exceptions)
        exc.show()  # type: ignore[attr-defined]
        raise SystemExit(exc.exit_code) from None  # type: ignore[attr-defined]
    except _USER_ERRORS as exc:
        logging.getLogger("sensorcast").debug("failed", exc_info=True)
        console.print(f"[red]error:[/red] {type(exc).__name__}: {exc}", highlight=False, soft_wrap=True)
        raise SystemExit(2) from None


if __name__ == "__main__":  # pragma: no cover
    main()
