"""The `sensorcast` command line (typer + rich) — the composition root that wires Kafka, Ray and Redis.

`demo` runs everything on this machine (embedded broker and Redis, local Ray, the simulator); `serve`
runs ingest + forecaster actors + sink against configured servers; `simulate` only produces readings.
`--bootstrap`, `--redis-url` and `--ray-address` point any command at existing servers instead. Each
command lives in a module of this package; this one assembles them and turns the errors a user fixes
into one line.
"""

from __future__ import annotations

import logging

import typer
from typer.exceptions import TyperException

from serving.cli.common import console
from serving.cli.dashboard import dashboard
from serving.cli.demo import demo
from serving.cli.fleet import status
from serving.cli.models import models_app
from serving.cli.network import network_app
from serving.cli.ops import forecasts, ingest, replay, serve, simulate
from serving.cli.plots import plot_app
from serving.config import ConfigError
from serving.lease import LeaseHeld, LeaseLost
from serving.sink import SinkUnavailable
from stream.archive import ArchiveMismatch
from stream.datasets import DatasetError
from stream.kafka_errors import BrokerUnavailable
from stream.network import NetworkError
from stream.storage import StorageError
from training.checkpoint import CheckpointError
from training.cli import app as training_app
from training.registry import RegistryError

app = typer.Typer(help="sensorcast: streaming forecasts for sensor networks.", no_args_is_help=True)
for _command in (demo, serve, simulate, ingest, replay, forecasts, status, dashboard):
    app.command()(_command)
app.registered_commands.extend(training_app.registered_commands)  # train, evaluate, explain
app.add_typer(plot_app, name="plot")
app.add_typer(models_app, name="models")
app.add_typer(network_app, name="network")

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
    LeaseHeld,
    LeaseLost,
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
