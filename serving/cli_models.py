"""`sensorcast models list|show|promote|rollback`: the registry from the command line.

The serving process follows the registry's champion pointer, so `promote` and `rollback` here swap the
live model within seconds; every change is recorded with its reason.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from serving.cli_common import console

models_app = typer.Typer(help="List, inspect, promote and roll back model versions.", no_args_is_help=True)

RegistryDir = Annotated[Path, typer.Option("--registry", help="registry folder")]
DEFAULT_REGISTRY = Path("sensorcast-data/registry")


def _registry(root: Path):  # type: ignore[no-untyped-def]
    from training.registry import Registry

    if not root.exists():
        raise typer.BadParameter(f"no registry at {root}")
    return Registry(root)


def _when(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


@models_app.command("list")
def list_(registry: RegistryDir = DEFAULT_REGISTRY) -> None:
    """Every version with its lineage, gate figures and the decision's reason."""
    reg = _registry(registry)
    champion = reg.champion()
    table = Table(title=f"models in {registry}")
    for col in ("version", "", "kind", "parent", "created (UTC)", "gate MAE chall/champ/pers", "reason"):
        table.add_column(col)
    for r in reg.list():
        gate = r.metrics.get("gate", {}).get("mae", {})
        figures = "/".join(f"{gate[k]:.3f}" for k in ("challenger", "champion", "persistence") if k in gate)
        mark = "★ champion" if champion and champion.version == r.version else ""
        table.add_row(r.version, mark, r.kind, r.parent or "—", _when(r.created_ms), figures or "—", r.reason)
    console.print(table)


@models_app.command()
def show(version: str, registry: RegistryDir = DEFAULT_REGISTRY) -> None:
    """One version's full record (JSON)."""
    from dataclasses import asdict

    console.print_json(json.dumps(asdict(_registry(registry).show(version)), default=str))


@models_app.command()
def promote(
    version: str,
    reason: Annotated[str, typer.Option(help="why (recorded)")] = "promoted by an operator",
    registry: RegistryDir = DEFAULT_REGISTRY,
) -> None:
    """Make VERSION the champion; serving swaps to it at its next registry check."""
    record = _registry(registry).promote(version, reason=reason)
    console.print(f"champion is now {record.version} ({record.kind})")


@models_app.command()
def rollback(
    reason: Annotated[str, typer.Option(help="why (recorded)")] = "rolled back by an operator",
    registry: RegistryDir = DEFAULT_REGISTRY,
) -> None:
    """Make the previous champion the champion again."""
    record = _registry(registry).rollback(reason=reason)
    console.print(f"rolled back: champion is now {record.version} ({record.kind})")
