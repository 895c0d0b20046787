"""Shared pieces of the `sensorcast` commands: option types, settings from flags, the embedded runtime
and the Ray session as context managers, the network a command works on."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from serving.config import Settings, load_settings
from serving.embedded import EmbeddedRuntime
from stream.network import Network
from stream.simulate import simulated_network

console = Console()
log = logging.getLogger("sensorcast")

Bootstrap = Annotated[
    str | None, typer.Option("--bootstrap", help="Kafka host:port; default: embedded Tansu")
]
RedisUrl = Annotated[str | None, typer.Option("--redis-url", help="redis://host:port/db; default: embedded")]
RayAddress = Annotated[str | None, typer.Option("--ray-address", help="existing Ray cluster; default: local")]
ConfigFile = Annotated[Path | None, typer.Option("--config", help="TOML settings file")]
LogLevel = Annotated[str, typer.Option("--log-level", help="debug, info, warning, error")]


def settings_from(
    config: Path | None,
    bootstrap: str | None,
    redis_url: str | None,
    ray_address: str | None,
    **sections: dict[str, Any],
) -> Settings:
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
    """Connect to the configured Ray cluster, or start a local one that dies with this process even when
    it is killed (`serving.ray_local`); an existing cluster is only disconnected from, never stopped.
    Ray's own logs go to a file whose path is printed once, unless the log level is debug
    (`training.ray_train.init_ray`)."""
    import ray

    from serving.cluster import ADDRESS_SETTING, RayUnavailable, check_ray_address
    from serving.ray_local import Watchdog
    from training.ray_train import init_ray

    if ray.is_initialized():
        yield
        return
    address = settings.ray.address
    check_ray_address(address)
    try:
        ray_log = init_ray(address, verbose=logging.getLogger().isEnabledFor(logging.DEBUG))
    except ConnectionError as exc:  # e.g. `auto` with no cluster on this machine
        raise RayUnavailable(f"cannot connect to Ray at {address} ({ADDRESS_SETTING}): {exc}") from None
    if ray_log is not None:
        console.print(f"Ray logs: {ray_log} (its workers' beside it)", highlight=False, soft_wrap=True)
    watchdog: Watchdog | None = None
    try:
        if settings.ray.address is None:
            watchdog = Watchdog.start()
        yield
    finally:
        ray.shutdown()
        if watchdog is not None:
            watchdog.close()


def broker_settings(command: str, config: Path | None, bootstrap: str | None, log_level: str) -> Settings:
    """Logging and settings for a command that works against an existing broker (no embedded one)."""
    from serving import logs

    logs.configure(log_level)
    settings = settings_from(config, bootstrap, None, None)
    if not settings.kafka.bootstrap:
        raise typer.BadParameter(f"{command} works against an existing broker: pass --bootstrap HOST:PORT")
    return settings


def network_for(settings: Settings, sensors: int, *, step_ms: int = 300_000) -> Network:
    if settings.network_file is not None:
        return Network.load(settings.network_file)
    return simulated_network(sensors, step_ms=step_ms)
