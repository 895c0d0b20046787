"""`sensorcast serve --deployment FILE` (many networks, one pipeline actor each) and `sensorcast status`
(every network's health as the pipelines publish it in Redis: lag, last sealed step, model, lease)."""

from __future__ import annotations

import contextlib
import datetime as dt
import time
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from rich.table import Table

from serving import logs
from serving.cli.common import (
    Bootstrap,
    ConfigFile,
    LogLevel,
    RayAddress,
    RedisUrl,
    console,
    ray_session,
    runtime,
    settings_from,
)
from serving.config import Settings
from serving.deployment import NetworkPlan, load_deployment
from serving.keys import Keys

STALE_AFTER_S = 10.0  # health older than this (its pipeline publishes it about once a second) is stale


def _stamp(ms: Any) -> str:
    if ms in (None, "", -1, "-1"):
        return "—"
    return dt.datetime.fromtimestamp(int(ms) / 1000, tz=dt.timezone.utc).strftime("%Y-%m-%d %H:%M")


def serve_deployment(path: Path, base: Settings, duration: float, every_s: float = 5.0) -> None:
    """Run every network of deployment file `path` as a pipeline actor until `duration` (0: Ctrl-C)."""
    from serving.cluster import require_shared_storage
    from serving.fleet import Fleet

    plans = load_deployment(path, base)
    with runtime(plans[0].settings) as started:
        if started is not plans[0].settings:  # embedded servers: every network uses them (only their
            base = base.model_copy(deep=True)  # addresses: topics, groups and prefixes stay per network)
            base.kafka.bootstrap, base.redis.url = started.kafka.bootstrap, started.redis.url
            plans = load_deployment(path, base)
        with ray_session(plans[0].settings):
            for plan in plans:
                require_shared_storage(plan.settings)
            fleet = Fleet(plans).start()
            names = ", ".join(f"{p.name} ({p.network.n_sensors} sensors)" for p in plans)
            console.print(f"serving {len(plans)} networks from {path}: {names}", soft_wrap=True)
            deadline = time.monotonic() + duration if duration else None
            try:
                with contextlib.suppress(KeyboardInterrupt):
                    while deadline is None or time.monotonic() < deadline:
                        time.sleep(
                            every_s
                            if deadline is None
                            else max(0.0, min(every_s, deadline - time.monotonic()))
                        )
                        for line in _fleet_lines(fleet.status()):
                            console.print(line, soft_wrap=True, highlight=False)
            finally:
                fleet.stop()


def _fleet_lines(status: dict[str, dict[str, Any]]) -> list[str]:
    out = []
    for name, s in status.items():
        line = f"{name}: {s['state']}"
        if "steps_forecast" in s:
            line += (
                f" · model {s.get('model_version')} · steps forecast {s['steps_forecast']} · last sealed "
                f"{_stamp(s.get('last_sealed'))} · lag {s.get('lag')} · metrics :{s.get('metrics_port')}"
            )
        if s.get("error"):
            line += f" · {s['error']}"
        out.append(line)
    return out


def network_health(client: Any, keys: Keys, now_ms: int) -> dict[str, Any]:
    """One network's row for `status`, from its health hash and lease in Redis."""
    raw = {k.decode(): v.decode() for k, v in client.hgetall(keys.health).items()}
    lease = client.get(keys.lease)
    row: dict[str, Any] = {"network": keys.network, "lease": lease.decode() if lease else None}
    if not raw:
        row["health"] = "never served" if lease is None else "starting"
        return row
    age_s = (now_ms - int(raw.get("updated_ms", 0))) / 1000
    lag = orjson.loads(raw.get("lag", "{}"))
    ledger = orjson.loads(raw.get("ledger", "{}"))
    row.update(
        model_version=raw.get("model_version"),
        last_sealed=int(raw.get("last_sealed", -1)),
        lag=sum(int(v) for v in lag.values()),
        steps_forecast=int(raw.get("steps_forecast", 0)),
        dead_lettered=int(ledger.get("dead_lettered", 0)),
        received=int(ledger.get("received", 0)),
        health_age_s=round(age_s, 1),
    )
    if lease is None:
        row["health"] = "down (no pipeline holds its lease)"
    elif age_s > STALE_AFTER_S:
        row["health"] = f"stalled (health {age_s:.0f} s old)"
    elif int(raw.get("unarchived_steps", 0)):
        row["health"] = f"degraded ({raw['unarchived_steps']} steps not archived)"
    else:
        row["health"] = "ok"
    return row


def _networks(client: Any, prefix: str, plans: list[NetworkPlan] | None) -> list[Keys]:
    if plans is not None:
        return [Keys(p.settings.redis.key_prefix, p.name) for p in plans]
    found = set()
    for key in client.scan_iter(match=f"{prefix}:{{*}}:health", count=1000):
        text = key.decode() if isinstance(key, bytes) else key
        found.add(text[len(prefix) + 2 : text.rindex("}")])
    return [Keys(prefix, name) for name in sorted(found)]


def status(
    deployment: Annotated[
        Path | None,
        typer.Option(help="the deployment file whose networks to list (default: every network found)"),
    ] = None,
    redis_url: RedisUrl = None,
    key_prefix: Annotated[
        str | None, typer.Option(help="the networks' key prefix (default: redis.key_prefix, 'sc')")
    ] = None,
    config: ConfigFile = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of a table")] = False,
) -> None:
    """List networks with their health, model version, last sealed step and consumer lag (read from Redis)."""
    from serving.sink import connect

    base = settings_from(config, None, redis_url, None)
    if key_prefix is not None:
        base.redis.key_prefix = key_prefix
    plans = load_deployment(deployment, base) if deployment is not None else None
    settings = plans[0].settings if plans else base
    if settings.redis.url is None:
        raise typer.BadParameter(
            "which Redis? give --redis-url (or redis.url in the config or deployment file)"
        )
    client = connect(settings.redis)
    now_ms = int(time.time() * 1000)
    rows = [network_health(client, k, now_ms) for k in _networks(client, settings.redis.key_prefix, plans)]
    if as_json:
        console.print_json(orjson.dumps(rows).decode())
        return
    if not rows:
        console.print(f"no network has published health under prefix {settings.redis.key_prefix!r}")
        return
    table = Table(title="sensorcast networks")
    for col in (
        "network",
        "health",
        "model",
        "last sealed step (UTC)",
        "lag",
        "steps forecast",
        "dead letters",
    ):
        table.add_column(col)
    for r in rows:
        table.add_row(
            r["network"],
            r["health"],
            str(r.get("model_version", "—")),
            _stamp(r.get("last_sealed")),
            str(r.get("lag", "—")),
            str(r.get("steps_forecast", "—")),
            f"{r.get('dead_lettered', '—')} of {r.get('received', '—')}",
        )
    console.print(table)


def serve_options_deployment(
    deployment: Path,
    duration: float,
    bootstrap: Bootstrap,
    redis_url: RedisUrl,
    ray_address: RayAddress,
    config: ConfigFile,
    log_level: LogLevel,
) -> None:
    """`serve --deployment`: the shared flags become the deployment's base settings."""
    logs.configure(log_level)
    serve_deployment(deployment, settings_from(config, bootstrap, redis_url, ray_address), duration)
