"""`sensorcast models list|show|promote|rollback`: the registry from the command line.

The serving process follows the registry's champion pointer, so `promote` and `rollback` here swap the
live model within seconds; every change is recorded with its reason. `--registry` is a folder or a URI
(`s3://bucket/prefix`); without it, the settings' `retrain.registry`. An object store is reached with the
settings' `storage` section (`--config` file or `SENSORCAST_STORAGE__*`), else the AWS chain of this shell.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from serving.cli.common import ConfigFile, console

if TYPE_CHECKING:
    from training.registry import Registry

models_app = typer.Typer(help="List, inspect, promote and roll back model versions.", no_args_is_help=True)

RegistryOpt = Annotated[
    str | None,
    typer.Option("--registry", help="registry folder or URI (s3://bucket/prefix); default: retrain.registry"),
]


def _registry(root: str | None, config: Path | None) -> Registry:
    from serving.config import ConfigError, load_settings
    from stream.storage import StorageError, check, open_location
    from training.registry import Registry

    try:
        settings = load_settings(config)
    except ConfigError as exc:
        raise typer.BadParameter(str(exc)) from None
    root = root or settings.retrain.registry
    try:
        loc = open_location(root, settings.storage)
        check(loc, "--registry")
        missing = loc.is_local and not loc.exists()
    except StorageError as exc:
        raise typer.BadParameter(str(exc)) from None
    if missing:
        raise typer.BadParameter(f"no registry at {root}")
    return Registry(loc, settings.storage)


def _when(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


@models_app.command("list")
def list_(registry: RegistryOpt = None, config: ConfigFile = None) -> None:
    """Every version with its lineage, gate figures and the decision's reason."""
    reg = _registry(registry, config)
    champion = reg.champion()
    table = Table(title=f"models in {reg.root.uri}")
    for col in ("version", "", "kind", "parent", "created (UTC)", "gate MAE chall/champ/pers", "reason"):
        table.add_column(col)
    for r in reg.list():
        gate = r.metrics.get("gate", {}).get("mae", {})
        figures = "/".join(f"{gate[k]:.3f}" for k in ("challenger", "champion", "persistence") if k in gate)
        mark = "★ champion" if champion and champion.version == r.version else ""
        table.add_row(r.version, mark, r.kind, r.parent or "—", _when(r.created_ms), figures or "—", r.reason)
    console.print(table)


@models_app.command()
def show(version: str, registry: RegistryOpt = None, config: ConfigFile = None) -> None:
    """One version's full record (JSON)."""
    from dataclasses import asdict

    console.print_json(json.dumps(asdict(_registry(registry, config).show(version)), default=str))


@models_app.command()
def promote(
    version: str,
    reason: Annotated[str, typer.Option(help="why (recorded)")] = "promoted by an operator",
    registry: RegistryOpt = None,
    config: ConfigFile = None,
) -> None:
    """Make VERSION the champion; serving swaps to it at its next registry check."""
    record = _registry(registry, config).promote(version, reason=reason)
    console.print(f"champion is now {record.version} ({record.kind})")


@models_app.command()
def rollback(
    reason: Annotated[str, typer.Option(help="why (recorded)")] = "rolled back by an operator",
    registry: RegistryOpt = None,
    config: ConfigFile = None,
) -> None:
    """Make the previous champion the champion again."""
    record = _registry(registry, config).rollback(reason=reason)
    console.print(f"rolled back: champion is now {record.version} ({record.kind})")
