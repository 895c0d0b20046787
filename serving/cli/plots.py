"""`sensorcast plot forecast|mae|attention`: report PNGs (matplotlib) of what the dashboard shows live.

The plot functions draw the data `serving.dashboard.reader.DashboardReader` returns (the same the JSON API
serves), so a report and the page agree. `attention` runs a checkpoint on the newest sealed steps in Redis.
matplotlib is imported only when a plot is drawn; nothing here writes to Redis.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from rich.console import Console

from serving.config import load_settings

plot_app = typer.Typer(
    help="Report plots (PNG) from the forecasts and scores in Redis.", no_args_is_help=True
)
console = Console()


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _times(ms: list[int] | np.ndarray) -> list[dt.datetime]:
    return [dt.datetime.fromtimestamp(t / 1000, tz=dt.timezone.utc) for t in ms]


def _nan(values: list[float | None]) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in values], dtype=np.float64)


def _save(fig: Any, out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    _pyplot().close(fig)
    return out


def plot_forecast(view: dict[str, Any], out: Path) -> Path:
    """A sensor's recent actuals and its forecast fan (`DashboardReader.sensor_view`)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 4.2))
    actuals = view["actuals"]
    if actuals:
        ax.plot(
            _times([a["ts"] for a in actuals]),
            _nan([a["value"] for a in actuals]),
            "k.-",
            lw=1.6,
            label="actuals",
        )
    lines = view["forecasts"]
    for k, f in enumerate(lines):
        ts = f["step_ts"] + view["step_ms"] * np.arange(1, len(f["values"]) + 1)
        newest = k == len(lines) - 1
        ax.plot(
            _times(ts),
            _nan(f["values"]),
            color="tab:blue",
            lw=2.4 if newest else 1.0,
            alpha=1.0 if newest else 0.3 + 0.5 * (k + 1) / len(lines),
            label=f"forecast after {_times([f['step_ts']])[0]:%H:%M} ({f['model_version']})"
            if newest
            else None,
        )
    if lines:
        ax.axvline(_times([lines[-1]["step_ts"]])[0], color="crimson", ls="--", lw=1)
    unit = f" ({view['unit']})" if view["unit"] else ""
    ax.set(
        title=f"sensor {view['sensor']}: {view['feature']}, forecasts of the last {len(lines)} steps",
        xlabel="UTC",
        ylabel=view["feature"] + unit,
    )
    ax.legend(loc="best", fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, out)


def plot_mae(online: dict[str, Any], out: Path) -> Path:
    """Rolling online MAE per horizon over time with lifecycle events, and all-time MAE per version."""
    plt = _pyplot()
    fig, (ax, bars) = plt.subplots(1, 2, figsize=(12, 4.2), gridspec_kw={"width_ratios": [2.2, 1]})
    history = online["history"]
    if history:
        times = _times([p["step_ts"] for p in history])
        mae = np.array([_nan(p["mae"]) for p in history if p["mae"]])  # [steps, H]
        n_h = mae.shape[1] if mae.ndim == 2 else 0
        colours = plt.get_cmap("viridis")(np.linspace(0, 0.9, max(n_h, 1)))
        for h in range(n_h):
            ax.plot(times[-len(mae) :], mae[:, h], color=colours[h], lw=1.3, label=f"h{h + 1}")
        for e in online["events"]:
            if e.get("at_step_ts") is not None:
                ax.axvline(_times([e["at_step_ts"]])[0], color="grey", ls=":", lw=1)
                ax.annotate(
                    f"{e['type']} {e['model_version']}",
                    (_times([e["at_step_ts"]])[0], 1.0),
                    xycoords=("data", "axes fraction"),
                    rotation=90,
                    va="top",
                    fontsize=7,
                )
        ax.legend(ncol=max(1, n_h // 6), fontsize=7, loc="upper left")
    else:
        ax.text(0.5, 0.5, "no scored forecasts yet", ha="center", transform=ax.transAxes)
    ax.set(title="rolling online MAE per horizon", xlabel="UTC step", ylabel="MAE")
    ax.grid(alpha=0.3)
    versions = online["versions"]
    for k, (version, scores) in enumerate(sorted(versions.items())):
        values = _nan(scores.get("mae", []))
        width = 0.8 / max(len(versions), 1)
        bars.bar(np.arange(1, len(values) + 1) + k * width, values, width=width, label=version)
    bars.set(title="all-time online MAE by horizon", xlabel="horizon (steps)", ylabel="MAE")
    if versions:
        bars.legend(fontsize=8)
    return _save(fig, out)


def plot_attention(
    maps: dict[str, np.ndarray], sensors: tuple[str, ...], coords: Any, sensor: int, title: str, out: Path
) -> Path:
    """Temporal attention of one sensor; spatial attention from it (on the map when there are coords)."""
    from training.explain import dense_row, spatial_rows

    plt = _pyplot()
    spatial = "spatial" in maps
    fig, axes = plt.subplots(1, 2 if spatial else 1, figsize=(11 if spatial else 6, 4.5), squeeze=False)
    temporal = maps["temporal"][0, sensor]  # seq2seq [H, T]; stformer [heads, T, T]
    temporal = temporal.mean(0) if temporal.ndim == 3 else temporal  # [rows, T]
    image = axes[0, 0].imshow(temporal, cmap="viridis", aspect="auto")
    axes[0, 0].set(
        title=f"temporal attention, {sensors[sensor]}",
        xlabel="input step (attended)",
        ylabel="input step (attending)" if spatial else "forecast step",
    )
    fig.colorbar(image, ax=axes[0, 0])
    rows = spatial_rows(maps)
    if rows is not None:
        weights = dense_row(*rows, sensor)  # [N] over steps and heads
        ax = axes[0, 1]
        if coords is not None:
            xy = np.asarray(coords)
            points = ax.scatter(xy[:, 0], xy[:, 1], c=weights, cmap="magma_r", s=30)
            ax.scatter(*xy[sensor], marker="*", s=220, c="tab:blue")
        else:
            points = ax.bar(range(len(weights)), weights)
        ax.set_title(f"spatial attention from {sensors[sensor]}")
        if coords is not None:
            fig.colorbar(points, ax=ax)
    fig.suptitle(title, fontsize=10)
    return _save(fig, out)


# -- commands ------------------------------------------------------------------------------------------
RedisUrl = Annotated[
    str | None, typer.Option("--redis-url", help="redis://host:port/db the pipeline writes to")
]
NetworkFile = Annotated[Path | None, typer.Option("--network", help="network TOML/JSON")]
Sensors = Annotated[int, typer.Option("--sensors", help="simulated network size when no --network is given")]
ConfigFile = Annotated[Path | None, typer.Option("--config", help="TOML settings file")]


def _reader(
    redis_url: str | None, network_file: Path | None, sensors: int, config: Path | None, network: Any = None
) -> Any:
    from serving.dashboard.reader import DashboardReader
    from serving.sink import connect
    from stream.network import Network
    from stream.simulate import simulated_network

    settings = load_settings(config, redis={"url": redis_url}, network_file=network_file)
    if settings.redis.url is None:
        raise typer.BadParameter("plots read an existing Redis: pass --redis-url redis://HOST:PORT/0")
    if network is None:
        network = Network.load(settings.network_file) if settings.network_file else simulated_network(sensors)
    return DashboardReader(connect(settings.redis), network, prefix=settings.redis.key_prefix)


@plot_app.command("forecast")
def forecast_cmd(
    sensor: Annotated[str, typer.Option("--sensor", help="sensor id")],
    out: Annotated[Path, typer.Option("--out", help="PNG to write")] = Path("forecast.png"),
    feature: Annotated[str | None, typer.Option(help="feature (default: the first forecast)")] = None,
    steps: Annotated[int, typer.Option(help="recent sealed steps of actuals")] = 36,
    fan: Annotated[int, typer.Option(help="newest forecast steps drawn")] = 6,
    redis_url: RedisUrl = None,
    network_file: NetworkFile = None,
    sensors: Sensors = 20,
    config: ConfigFile = None,
) -> None:
    """A sensor's recent actuals and forecast fan."""
    reader = _reader(redis_url, network_file, sensors, config)
    try:
        view = reader.sensor_view(sensor, feature=feature, steps=steps, fan=fan)
    except KeyError as exc:
        raise typer.BadParameter(str(exc.args[0])) from exc
    console.print(f"wrote {plot_forecast(view, out)}")


@plot_app.command("mae")
def mae_cmd(
    out: Annotated[Path, typer.Option("--out", help="PNG to write")] = Path("mae.png"),
    limit: Annotated[int, typer.Option(help="newest history points")] = 2000,
    redis_url: RedisUrl = None,
    network_file: NetworkFile = None,
    sensors: Sensors = 20,
    config: ConfigFile = None,
) -> None:
    """Online MAE per horizon over time (with retrain/promotion events) and per model version."""
    reader = _reader(redis_url, network_file, sensors, config)
    console.print(f"wrote {plot_mae(reader.online(limit), out)}")


@plot_app.command("attention")
def attention_cmd(
    checkpoint: Annotated[Path, typer.Argument(help="checkpoint of an attention model")],
    sensor: Annotated[str | None, typer.Option("--sensor", help="sensor id (default: the first)")] = None,
    out: Annotated[Path, typer.Option("--out", help="PNG to write")] = Path("attention.png"),
    redis_url: RedisUrl = None,
    config: ConfigFile = None,
) -> None:
    """Where a model looks (in time, and across sensors) for the newest window of sealed steps in Redis."""
    from training.predictor import Predictor, PredictorError

    predictor = Predictor.from_checkpoint(checkpoint, device="cpu")
    net = predictor.network
    reader = _reader(redis_url, None, 0, config, network=net)
    steps = reader.actuals(predictor.window)
    if len(steps) < predictor.window:
        raise typer.BadParameter(
            f"Redis holds {len(steps)} sealed steps of {net.name}; the model needs {predictor.window}"
        )
    if sensor is not None and sensor not in net.sensor_index:
        raise typer.BadParameter(f"unknown sensor {sensor!r}")
    values = np.stack([v for _, v, _ in steps])[None].astype(np.float32)  # [1, T, N, F]
    mask = np.stack([m for _, _, m in steps])[None]  # [1, T, N, F]
    step_ts = np.array([[ts for ts, _, _ in steps]], dtype=np.int64)  # [1, T]
    try:
        maps = predictor.attention(values, mask, step_ts)
    except PredictorError as exc:
        raise typer.BadParameter(str(exc)) from exc
    i = net.sensor_index[sensor] if sensor else 0
    title = f"{predictor.version} on the window ending {_times([int(step_ts[0, -1])])[0]:%Y-%m-%d %H:%M} UTC"
    console.print(f"wrote {plot_attention(maps, net.sensors, net.coords, i, title, out)}")
