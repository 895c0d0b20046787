"""`sensorcast dashboard`: serve the dashboard for a network whose forecasts are in an existing Redis
(`sensorcast demo` starts one itself). Registered on the main CLI by `serving.cli`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from serving.config import load_settings
from stream.network import Network
from stream.simulate import simulated_network


def dashboard(
    redis_url: Annotated[
        str | None, typer.Option("--redis-url", help="redis://host:port/db the pipeline writes to")
    ] = None,
    network_file: Annotated[Path | None, typer.Option("--network", help="network TOML/JSON")] = None,
    sensors: Annotated[int, typer.Option(help="simulated network size when no --network file is given")] = 20,
    registry: Annotated[
        Path | None, typer.Option("--registry", help="model registry directory to show")
    ] = None,
    host: Annotated[str, typer.Option(help="bind address; 0.0.0.0 to serve other machines")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="HTTP port")] = 8765,
    config: Annotated[Path | None, typer.Option("--config", help="TOML settings file")] = None,
) -> None:
    """Live web dashboard: sensor map, forecast fan, online MAE, models and stream health (JSON API at /docs)."""
    from serving.dashboard.app import serve

    settings = load_settings(config, redis={"url": redis_url}, network_file=network_file)
    if settings.redis.url is None:
        raise typer.BadParameter(
            "the dashboard reads an existing Redis: pass --redis-url redis://HOST:PORT/0 "
            "(or run `sensorcast demo`, which starts one with its dashboard)"
        )
    network = Network.load(settings.network_file) if settings.network_file else simulated_network(sensors)
    Console().print(f"dashboard for {network.name} ({network.n_sensors} sensors) on http://{host}:{port}/")
    serve(settings.redis, network, host=host, port=port, registry=registry)
