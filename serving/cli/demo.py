"""`sensorcast demo`: the whole path on this machine — simulator → Kafka → windows → Ray actor →
Redis, retraining on the archive and hot-swapping — with a live table and the dashboard."""

from __future__ import annotations

import contextlib
import json
import shutil
import threading
import time
from pathlib import Path
from typing import Annotated

import typer

from serving import logs
from serving.cli.common import (
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
)
from serving.forecaster import ModelSpec
from serving.memory import rss_mb, settle_heap
from stream.clock import wall_ms
from stream.kafka_io import ensure_topics
from stream.simulate import DAY_MS

# The demo's retraining: a first job as soon as the simulated history (`--history-days`, published at full
# speed before going live) is archived, then every 300 steps (2.5 min at the default speed) or on drift; a
# small STFormer on 2 Ray Train workers × 0.5 CPU for at most 30 s, warm-started from the champion after
# the first promotion. `min_steps` is replaced by the history's length when there is one.
DEMO_RETRAIN = {
    "every_steps": 300,
    "min_steps": 250,
    "holdout_steps": 48,
    "history_steps": 1000,
    "epochs": 30,
    "time_budget_s": 30.0,
    "workers": 2,
    "drift_patience": 20,
    "backoff_s": 30.0,
}


def demo(
    duration: Annotated[float, typer.Option(help="seconds to run (0 = until Ctrl-C)")] = 60.0,
    sensors: Annotated[int, typer.Option(help="simulated sensors")] = 20,
    speed: Annotated[
        float, typer.Option(help="simulated time per real time (3600: two 30-min steps per second)")
    ] = 3600.0,
    step_minutes: Annotated[int, typer.Option(help="grid step of the simulated network")] = 30,
    history_days: Annotated[
        float, typer.Option(help="simulated history published at full speed before going live")
    ] = 14.0,
    model: Annotated[
        str, typer.Option(help="baseline:persistence or a checkpoint path")
    ] = "baseline:persistence",
    data_dir: Annotated[Path, typer.Option(help="archive and registry root")] = Path("sensorcast-data/demo"),
    seed: Annotated[int, typer.Option(help="the simulator's seed (sensor levels, noise, incidents)")] = 0,
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
    summary_json: Annotated[
        Path | None, typer.Option(help="write the run's figures and model timeline here (JSON)")
    ] = None,
) -> None:
    """Run the whole path locally: simulator → Kafka → windows → Ray actor → Redis, with a live table."""
    from serving.cli.live import LiveView
    from serving.pipeline import ServePipeline
    from stream.produce import run_simulation

    logs.configure(log_level)
    t_start = time.monotonic()
    retrain_settings = {**DEMO_RETRAIN, "enabled": retrain, "registry": str(data_dir / "registry")}
    archive_settings = {"root": str(data_dir / "archive")}
    settings = settings_from(
        config, bootstrap, redis_url, ray_address, archive=archive_settings, retrain=retrain_settings
    )
    if settings.kafka.bootstrap is None:  # the embedded broker: join its group in ~1.5 s, not ~3 s
        settings.kafka.session_timeout_ms = min(settings.kafka.session_timeout_ms, 3000)
    stop = threading.Event()
    sim_error: list[BaseException] = []
    with runtime(settings) as settings:
        if not bootstrap:  # the embedded broker starts empty: so do the archive and the registry
            for folder in (settings.archive.root, settings.retrain.registry):
                shutil.rmtree(folder, ignore_errors=True)
        network = network_for(settings, sensors, step_ms=step_minutes * 60_000)
        history = int(history_days * DAY_MS // network.step_ms)
        if history > settings.retrain.holdout_steps:  # the first job starts once the history is archived
            settings.retrain.min_steps = history - settings.retrain.holdout_steps

        def produce() -> None:
            try:
                backfill = settings.window.window + 2 + history
                start = wall_ms() - backfill * network.step_ms
                run_simulation(
                    settings.kafka,
                    network,
                    speed=speed,
                    start_ts=start,
                    backfill_steps=backfill,
                    seed=seed,
                    stop=stop,
                )
            except BaseException as exc:  # surfaced in the main thread
                sim_error.append(exc)
                stop.set()

        # The simulator publishes while Ray starts (~6 s), and torch is imported meanwhile: the first
        # windows wait in Kafka when the pipeline joins its group.
        k = settings.kafka
        ensure_topics(k, {k.readings_topic: k.partitions, k.dead_letter_topic: 1})
        producer = threading.Thread(target=produce, name="simulator", daemon=True)
        producer.start()
        threading.Thread(target=_import_models, name="warm-up", daemon=True).start()
        try:
            with ray_session(settings):
                running = ServePipeline(
                    settings, network, ModelSpec(model), client_id="sensorcast-demo"
                ).start(serve_metrics=True)
                if dashboard:
                    from serving.dashboard.app import start_in_thread

                    url = start_in_thread(settings.redis, network, registry=data_dir / "registry").url
                    console.print(f"dashboard: [bold]{url}[/bold]")
                settle_heap()
                view = LiveView(console, running, show=show, started=t_start)
                try:
                    with view:
                        running.run(duration_s=duration or None, stop=stop, on_cycle=view.update)
                except KeyboardInterrupt:
                    console.print("[yellow]interrupted[/yellow]")
                finally:
                    stop.set()
                    producer.join(timeout=10)
                    running.close()
        finally:
            stop.set()
        if sim_error:
            raise sim_error[0]
        figures = view.summary(
            extra={"embedded_rss_mb": _embedded_rss(), "driver_rss_mb": round(rss_mb(), 1)}
        )
        if summary_json is not None:
            summary_json.write_text(json.dumps({"history_steps": history, "seed": seed, **figures}, indent=1))


def _import_models() -> None:
    """What the pipeline's start needs next (the registry's first checkpoint): imported while Ray starts."""
    import torch  # noqa: F401

    import training.checkpoint
    import training.registry  # noqa: F401


def _embedded_rss() -> dict[str, float]:
    import psutil

    out: dict[str, float] = {}
    for proc in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            name = proc.name()
            if name in ("tansu", "redis-server", "valkey-server"):
                out[name] = round(proc.memory_info().rss / 2**20, 1)
    return out
