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
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from serving import logs
from serving.config import Settings, load_settings
from serving.dashboard.command import dashboard as dashboard_command
from serving.embedded import EmbeddedRuntime, rss_mb
from serving.forecaster import ModelSpec
from serving.plots import plot_app
from stream.network import Network
from stream.simulate import simulated_network
from training.cli import app as training_app

app = typer.Typer(help="sensorcast: streaming forecasts for sensor networks.", no_args_is_help=True)
app.registered_commands.extend(training_app.registered_commands)  # train, evaluate, explain
app.command("dashboard")(dashboard_command)
app.add_typer(plot_app, name="plot")
console = Console()
log = logging.getLogger("sensorcast")

Bootstrap = Annotated[
    str | None, typer.Option("--bootstrap", help="Kafka host:port; default: embedded Tansu")
]
RedisUrl = Annotated[str | None, typer.Option("--redis-url", help="redis://host:port/db; default: embedded")]
RayAddress = Annotated[str | None, typer.Option("--ray-address", help="existing Ray cluster; default: local")]
ConfigFile = Annotated[Path | None, typer.Option("--config", help="TOML settings file")]
LogLevel = Annotated[str, typer.Option("--log-level", help="debug, info, warning, error")]


def _settings(config: Path | None, bootstrap: str | None, redis_url: str | None, ray_address: str | None,
              **sections: dict[str, Any]) -> Settings:  # fmt: skip
    return load_settings(
        config,
        kafka={"bootstrap": bootstrap, **sections.pop("kafka", {})},
        redis={"url": redis_url},
        ray={"address": ray_address},
        **sections,
    )


@contextlib.contextmanager
def runtime(settings: Settings, *, need_kafka: bool = True, need_redis: bool = True) -> Iterator[Settings]:
    """Start embedded servers for whatever the settings leave unset; yield settings pointing at them."""
    want_kafka = need_kafka and not settings.kafka.bootstrap
    want_redis = need_redis and settings.redis.url is None
    if not (want_kafka or want_redis):
        yield settings
        return
    with EmbeddedRuntime(kafka=want_kafka, redis=want_redis) as rt:
        data = settings.model_dump()
        if want_kafka:
            data["kafka"]["bootstrap"] = rt.bootstrap
        if want_redis:
            data["redis"]["url"] = rt.redis_url
        log.info(
            "embedded runtime",
            extra={"bootstrap": rt.bootstrap, "redis": rt.redis_url, "rss_mb": rt.memory_rss_mb()},
        )
        yield Settings.model_validate(data)


@contextlib.contextmanager
def ray_session(settings: Settings) -> Iterator[None]:
    import ray

    if ray.is_initialized():
        yield
        return
    ray.init(address=settings.ray.address, include_dashboard=False, log_to_driver=False,
             configure_logging=False)  # fmt: skip
    try:
        yield
    finally:
        ray.shutdown()


def _network(settings: Settings, sensors: int) -> Network:
    if settings.network_file is not None:
        return Network.load(settings.network_file)
    return simulated_network(sensors)


@app.command()
def demo(
    duration: Annotated[float, typer.Option(help="seconds to run (0 = until Ctrl-C)")] = 60.0,
    sensors: Annotated[int, typer.Option(help="simulated sensors")] = 20,
    speed: Annotated[
        float, typer.Option(help="simulated time per real time (300: a 5-min step per second)")
    ] = 300.0,
    model: Annotated[
        str, typer.Option(help="baseline:persistence or a checkpoint path")
    ] = "baseline:persistence",
    data_dir: Annotated[Path, typer.Option(help="archive and registry root")] = Path("sensorcast-data/demo"),
    show: Annotated[int, typer.Option(help="sensors shown in the live table")] = 8,
    dashboard: Annotated[bool, typer.Option(help="serve the live dashboard and print its URL")] = True,
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
    settings = _settings(config, bootstrap, redis_url, ray_address, archive={"root": data_dir / "archive"})
    with runtime(settings) as settings, ray_session(settings):
        if not bootstrap and settings.archive.root.exists():
            shutil.rmtree(settings.archive.root)  # the embedded broker starts empty: so must the archive
        network = _network(settings, sensors)
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
        str, typer.Option(help="baseline:persistence, or a checkpoint path")
    ] = "baseline:persistence",
    sensors: Annotated[int, typer.Option(help="simulated network size when no --network file is given")] = 20,
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
    settings = _settings(config, bootstrap, redis_url, ray_address)
    if network_file is not None:
        settings = settings.model_copy(update={"network_file": network_file})
    with runtime(settings) as settings, ray_session(settings):
        network = _network(settings, sensors)
        pipeline = ServePipeline(settings, network, ModelSpec(model)).start(serve_metrics=True)
        console.print(f"serving {network.name} ({network.n_sensors} sensors) from {settings.kafka.bootstrap}, "
                      f"metrics on :{pipeline.metrics_port}")  # fmt: skip
        try:
            pipeline.run(duration_s=duration or None)
        except KeyboardInterrupt:
            pass
        finally:
            pipeline.close()


@app.command()
def simulate(
    sensors: Annotated[int, typer.Option(help="simulated sensors")] = 20,
    speed: Annotated[float, typer.Option(help="multiple of real time; 0 = as fast as possible")] = 300.0,
    steps: Annotated[int, typer.Option(help="steps to publish (0 = until Ctrl-C)")] = 0,
    fmt: Annotated[str, typer.Option("--format", help="batch or single")] = "batch",
    regime_at: Annotated[int | None, typer.Option(help="switch to the drift regime at this step")] = None,
    seed: int = 0,
    bootstrap: Bootstrap = None,
    config: ConfigFile = None,
    log_level: LogLevel = "info",
) -> None:
    """Publish the synthetic network's readings to Kafka (needs --bootstrap or a configured broker)."""
    from stream.kafka_io import ensure_topics
    from stream.produce import run_simulation

    logs.configure(log_level)
    settings = _settings(config, bootstrap, None, None)
    if not settings.kafka.bootstrap:
        raise typer.BadParameter("simulate publishes to an existing broker: pass --bootstrap HOST:PORT")
    network = _network(settings, sensors)
    ensure_topics(settings.kafka, {settings.kafka.readings_topic: settings.kafka.partitions})
    start = time.time_ns() // 1_000_000
    try:
        stats = run_simulation(settings.kafka, network, speed=speed, start_ts=start, n_steps=steps or None,
                               seed=seed, fmt=fmt, regime_at_step=regime_at)  # fmt: skip
    except KeyboardInterrupt:
        return
    console.print(
        f"published {stats.steps} steps, {stats.readings} readings to {settings.kafka.readings_topic}"
    )


@app.command()
def forecasts(
    redis_url: Annotated[str | None, typer.Option("--redis-url", help="redis://host:port/db")] = None,
    network: Annotated[str, typer.Option(help="network name (the key's {tag})")] = "sim",
    sensor: Annotated[
        list[str] | None, typer.Option(help="sensor id (repeatable); default: the first 10")
    ] = None,
    follow: Annotated[bool, typer.Option(help="print each new step as it is published")] = False,
    config: ConfigFile = None,
) -> None:
    """Print the latest forecasts from Redis (what any consumer reads); --follow for live updates."""
    from rich.table import Table

    from serving.client import ForecastClient

    settings = _settings(config, None, redis_url, None)
    if settings.redis.url is None:
        raise typer.BadParameter("pass --redis-url redis://HOST:PORT/0 (or SENSORCAST_REDIS__URL)")
    from serving.sink import connect

    client = ForecastClient(connect(settings.redis), network, settings.redis.key_prefix)
    chosen = list(sensor) if sensor else client.sensors()[:10]
    if not chosen:
        raise typer.BadParameter(
            f"no forecasts for network {network!r} under prefix {settings.redis.key_prefix!r}"
        )

    def show() -> None:
        table = Table(title=f"latest forecasts — {network}")
        for col in ("sensor", "step (UTC ms)", "model", "feature", "forecast h=1..H"):
            table.add_column(col)
        for s, fc in client.latest(chosen).items():
            for k, feat in enumerate(fc.features):
                vals = " ".join(f"{v:.1f}" for v in fc.forecast[:, k])
                table.add_row(s, str(fc.step_ts), fc.model_version, feat, vals)
        console.print(table)

    show()
    if follow:
        try:
            for note in client.follow():
                console.print(f"step {note['step_ts']} by {note['model_version']}")
                show()
        except KeyboardInterrupt:
            pass


@app.command()
def ingest(
    network_file: Annotated[Path, typer.Option("--network", help="network TOML/JSON")],
    archive: Annotated[Path, typer.Option(help="archive root (Parquet sealed steps + late log)")],
    until_idle: Annotated[
        float, typer.Option(help="stop after this many seconds without input (0 = never)")
    ] = 0.0,
    client_id: Annotated[str, typer.Option(help="Kafka client id")] = "sensorcast-ingest",
    bootstrap: Bootstrap = None,
    config: ConfigFile = None,
    log_level: LogLevel = "info",
) -> None:
    """Ingest only: readings → validated, windowed, sealed steps in the archive (no forecasting)."""
    from stream.archive import Archive
    from stream.consume import IngestService

    logs.configure(log_level)
    settings = _settings(config, bootstrap, None, None)
    if not settings.kafka.bootstrap:
        raise typer.BadParameter("ingest reads an existing broker: pass --bootstrap HOST:PORT")
    network = Network.load(network_file)
    svc = IngestService(
        settings.kafka, settings.window, Archive(archive, network), network, client_id=client_id
    )
    svc.start()
    last_input = time.monotonic()
    try:
        while True:
            received = svc.ingestor.ledger.total().received
            svc.poll_once(500)
            if svc.ingestor.ledger.total().received != received:
                last_input = time.monotonic()
            elif until_idle and time.monotonic() - last_input > until_idle:
                svc.drain()
                break
    except KeyboardInterrupt:
        pass
    finally:
        svc.close()
    console.print_json(
        data={"ledger": svc.ingestor.ledger.snapshot()["total"], "steps_sealed": svc.steps_sealed}
    )


@app.command()
def replay(
    dataset: Annotated[
        Path, typer.Argument(help="dataset folder or file (PEMS .npz, T-GCN csv, wide csv, .h5)")
    ],
    speed: Annotated[float, typer.Option(help="multiple of real time; 0 = as fast as possible")] = 0.0,
    fmt: Annotated[str, typer.Option("--format", help="single or batch")] = "batch",
    start_step: Annotated[int, typer.Option(help="first step of the dataset to send")] = 0,
    steps: Annotated[int, typer.Option(help="steps to send (0 = all)")] = 0,
    shuffle_ms: Annotated[int, typer.Option(help="shuffle messages within this much event time")] = 0,
    duplicates: Annotated[float, typer.Option(help="share of messages sent twice")] = 0.0,
    garbage: Annotated[float, typer.Option(help="share of extra malformed messages")] = 0.0,
    late: Annotated[int, typer.Option(help="readings held back until after everything else")] = 0,
    save_network: Annotated[
        Path | None, typer.Option(help="write the dataset's network definition here")
    ] = None,
    seed: int = 0,
    bootstrap: Bootstrap = None,
    config: ConfigFile = None,
    log_level: LogLevel = "info",
) -> None:
    """Publish a recorded dataset as real timestamped readings (optionally messy, for testing)."""
    from stream.datasets import load_dataset
    from stream.kafka_io import ReadingProducer, ensure_topics
    from stream.replay import plan, send

    logs.configure(log_level)
    settings = _settings(config, bootstrap, None, None)
    if not settings.kafka.bootstrap:
        raise typer.BadParameter("replay publishes to an existing broker: pass --bootstrap HOST:PORT")
    ds = load_dataset(dataset)
    if save_network is not None:
        ds.network.save(save_network)
    ensure_topics(settings.kafka, {settings.kafka.readings_topic: settings.kafka.partitions})
    msgs, exp = plan(
        ds, n_partitions=settings.kafka.partitions, start_step=start_step, n_steps=steps or None, fmt=fmt,
        shuffle_ms=shuffle_ms, duplicate_rate=duplicates, garbage_rate=garbage, late_readings=late,
        allowed_lateness_ms=settings.window.allowed_lateness_ms, seed=seed,
    )  # fmt: skip
    from rich.progress import Progress

    with ReadingProducer(settings.kafka, ds.network) as producer, Progress(console=console) as progress:
        task = progress.add_task(f"replaying {ds.network.name}", total=len(msgs))
        send(msgs, producer, step_ms=ds.network.step_ms, speed=speed,
             on_progress=lambda n: progress.update(task, completed=n))  # fmt: skip
        progress.update(task, completed=len(msgs))
    console.print_json(data={"messages": len(msgs), "readings": exp.readings, "duplicates": exp.duplicates,
                             "late": exp.late, "dead_by_reason": exp.dead_by_reason})  # fmt: skip


if __name__ == "__main__":  # pragma: no cover
    app()
