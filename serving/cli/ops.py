"""Operator commands: `serve` (the long-running pipeline) and the stream-side `simulate`, `ingest`,
`replay`, `forecasts` (registered by `serving.cli`)."""

from __future__ import annotations

import contextlib
import logging
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
    broker_settings,
    console,
    network_for,
    ray_session,
    runtime,
    settings_from,
)
from serving.forecaster import ModelSpec
from serving.memory import settle_heap
from stream.clock import wall_ms
from stream.network import Network


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

    settings = broker_settings("simulate", config, bootstrap, log_level)
    network = network_for(settings, sensors)
    ensure_topics(settings.kafka, {settings.kafka.readings_topic: settings.kafka.partitions})
    try:
        stats = run_simulation(
            settings.kafka,
            network,
            speed=speed,
            start_ts=wall_ms(),
            n_steps=steps or None,
            seed=seed,
            fmt=fmt,
            regime_at_step=regime_at,
        )
    except KeyboardInterrupt:
        return
    console.print(
        f"published {stats.steps} steps, {stats.readings} readings to {settings.kafka.readings_topic}"
    )


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

    settings = settings_from(config, None, redis_url, None)
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


def ingest(
    network_file: Annotated[Path, typer.Option("--network", help="network TOML/JSON")],
    archive: Annotated[str, typer.Option(help="archive root: a folder or URI (s3://bucket/prefix)")],
    until_idle: Annotated[
        float,
        typer.Option(
            help="stop after this many seconds without input, counted from the first partition "
            "assignment (0 = never)"
        ),
    ] = 0.0,
    client_id: Annotated[str, typer.Option(help="Kafka client id")] = "sensorcast-ingest",
    bootstrap: Bootstrap = None,
    config: ConfigFile = None,
    log_level: LogLevel = "info",
) -> None:
    """Ingest only: readings → validated, windowed, sealed steps in the archive (no forecasting)."""
    from stream.archive import Archive
    from stream.consume import IngestService

    settings = broker_settings("ingest", config, bootstrap, log_level)
    network = Network.load(network_file)
    svc = IngestService(
        settings.kafka,
        settings.window,
        Archive(archive, network, settings.storage),
        network,
        client_id=client_id,
    )
    svc.start()
    from serving.metrics import ServeMetrics

    metrics = ServeMetrics()
    metrics.attach_ledger(svc.ingestor.ledger.snapshot)
    port = metrics.serve(settings.metrics.port, settings.metrics.host)
    log = logging.getLogger("sensorcast")
    log.info("ingest metrics", extra={"port": port})
    settle_heap()
    started = time.monotonic()
    # The idle clock starts at the first partition assignment: joining the consumer group can take longer
    # than --until-idle (the broker waits for other members), and nothing can arrive before it.
    last_input: float | None = None
    try:
        while True:
            received = svc.ingestor.ledger.total().received
            sealed = svc.poll_once(500)
            if sealed:
                metrics.steps_sealed.inc(len(sealed))
                metrics.last_sealed.set(sealed[-1].step_ts)
            now = time.monotonic()
            if last_input is None and (assigned := svc.consumer.assigned()):
                log.info(
                    "partitions assigned", extra={"partitions": assigned, "after_s": round(now - started, 2)}
                )
                last_input = now
            if svc.ingestor.ledger.total().received != received:
                last_input = now
            elif until_idle and last_input is not None and now - last_input > until_idle:
                svc.drain()
                break
    except KeyboardInterrupt:
        pass
    finally:
        svc.close()
    console.print_json(
        data={"ledger": svc.ingestor.ledger.snapshot()["total"], "steps_sealed": svc.steps_sealed}
    )


def replay(
    dataset: Annotated[
        Path,
        typer.Argument(
            help="a network file from `sensorcast network init`, a CSV/Parquet table, or a dataset folder "
            "or file (PEMS .npz, T-GCN csv, wide csv, .h5)"
        ),
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

    settings = broker_settings("replay", config, bootstrap, log_level)
    ds = load_dataset(dataset)
    if save_network is not None:
        ds.network.save(save_network)
    ensure_topics(settings.kafka, {settings.kafka.readings_topic: settings.kafka.partitions})
    msgs, exp = plan(
        ds,
        n_partitions=settings.kafka.partitions,
        start_step=start_step,
        n_steps=steps or None,
        fmt=fmt,
        shuffle_ms=shuffle_ms,
        duplicate_rate=duplicates,
        garbage_rate=garbage,
        late_readings=late,
        allowed_lateness_ms=settings.window.allowed_lateness_ms,
        seed=seed,
    )
    from rich.progress import Progress

    with ReadingProducer(settings.kafka, ds.network) as producer, Progress(console=console) as progress:
        task = progress.add_task(f"replaying {ds.network.name}", total=len(msgs))
        send(
            msgs,
            producer,
            step_ms=ds.network.step_ms,
            speed=speed,
            on_progress=lambda n: progress.update(task, completed=n),
        )
        progress.update(task, completed=len(msgs))
    summary = {"messages": len(msgs), "readings": exp.readings, "duplicates": exp.duplicates}
    console.print_json(data={**summary, "late": exp.late, "dead_by_reason": exp.dead_by_reason})


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
    deployment: Annotated[
        Path | None,
        typer.Option(help="a deployment file: serve every network it lists, each in a Ray pipeline actor"),
    ] = None,
    duration: Annotated[float, typer.Option(help="seconds to run (0 = until Ctrl-C)")] = 0.0,
    bootstrap: Bootstrap = None,
    redis_url: RedisUrl = None,
    ray_address: RayAddress = None,
    config: ConfigFile = None,
    log_level: LogLevel = "info",
) -> None:
    """Ingest readings, forecast every sealed step with Ray actors, write forecasts to Redis."""
    from serving.pipeline import ServePipeline

    if deployment is not None:
        from serving.cli.fleet import serve_options_deployment

        serve_options_deployment(deployment, duration, bootstrap, redis_url, ray_address, config, log_level)
        return
    logs.configure(log_level)
    settings = settings_from(
        config, bootstrap, redis_url, ray_address, retrain={"enabled": retrain, "registry": registry}
    )
    if network_file is not None:
        settings = settings.model_copy(update={"network_file": network_file})
    embedded_redis = settings.redis.url is None
    with runtime(settings) as settings, ray_session(settings):
        network = network_for(settings, sensors)
        with ServePipeline(settings, network, ModelSpec(model)).start(serve_metrics=True) as pipeline:
            settle_heap()
            # an embedded Redis has no credentials: its URL is what `sensorcast forecasts` needs
            url = settings.redis.url.get_secret_value() if embedded_redis and settings.redis.url else None
            where = f"forecasts in {url}, " if url else ""
            console.print(
                f"serving {network.name} ({network.n_sensors} sensors) from {settings.kafka.bootstrap}, "
                f"{where}metrics on :{pipeline.metrics_port}",
                soft_wrap=True,
            )
            with contextlib.suppress(KeyboardInterrupt):
                pipeline.run(duration_s=duration or None)
