"""`sensorcast network init DATA --out net.toml`: a network file written from a table of readings.

Reads the CSV or Parquet table with the generic reader (`stream.table`), detecting whatever the options
leave unset, and writes the network — sensor ids, features with units and inferred valid ranges, the step,
coordinates and edges when files give them, `zero_is_missing` — with a `[source]` table saying how the data
was read. `train`, `evaluate`, `explain` and `replay` then take `--dataset net.toml` (replay: `replay
net.toml`) and read the same table onto the network as edited; `serve --network net.toml` serves it. The
summary of gaps is printed and kept as comments at the top of the file. No Kafka, Ray or torch here.
"""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any

import typer

from serving.cli.common import console
from stream.network import dumps_toml
from stream.sensordata import gaps
from stream.table import TableRead, TableSpec, read_table
from stream.tabletime import describe_step

network_app = typer.Typer(help="Write network files from your own data.", no_args_is_help=True)


def _utc(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%d %H:%M")


def _bound(x: float) -> str:
    return f"{x:g}" if abs(x) != float("inf") else ("∞" if x > 0 else "-∞")


def describe(read: TableRead, data: Path) -> list[str]:
    """What reading the table found, one line each: layout, columns, grid, placement, gaps, features."""
    ds, spec, net = read.dataset, read.spec, read.dataset.network
    if spec.layout == "wide":
        columns = f"{net.n_sensors} sensor columns"
    elif spec.feature:
        columns = f"sensor column {spec.sensor!r}, feature column {spec.feature!r}, values {spec.values[0]!r}"
    else:
        columns = f"sensor column {spec.sensor!r}, feature columns {', '.join(map(repr, spec.values))}"
    when = f"time from {'/'.join(spec.time)}" if spec.time else f"rows are steps from {spec.start}"
    step = describe_step(net.step_ms) + ("" if spec.step else " (inferred)")
    span = f"{_utc(int(ds.step_ts[0]))} → {_utc(int(ds.step_ts[-1]))} UTC"
    g = gaps(ds)
    longest = g["longest_gap"]
    lines = [
        f"{data.name}: {spec.layout} table, {when}, {columns}",
        f"step {step}; {span}: {ds.n_steps} steps × {net.n_sensors} sensors × {net.n_features} features",
        f"{read.readings} readings; {read.off_grid} between step starts (put on the step that contains "
        f"them), {read.merged} averaged with another of the same sensor, feature and step",
        f"gaps: {100 * g['missing_share']:.1f} % of sensor-steps missing, {g['empty_steps']} steps without "
        "any reading"
        + (
            f", longest {longest['steps']} steps ({longest['sensor']} from {_utc(longest['from_ms'])})"
            if longest
            else ""
        ),
    ]
    if g["most_missing"]:
        lines.append("most missing: " + ", ".join(f"{s} {100 * x:.1f} %" for s, x in g["most_missing"]))
    if g["never_observed"]:
        lines.append(f"never observed: {', '.join(g['never_observed'][:10])}")
    ranges = (f"{f.name} [{_bound(f.min)}, {_bound(f.max)}] {f.unit}".rstrip() for f in net.features)
    lines.append("features: " + "; ".join(ranges))
    if net.coords is not None:
        lines.append(f"coordinates for {net.n_sensors} sensors from {Path(str(spec.metadata)).name}")
    if spec.edges:
        lines.append(f"{len(net.edges)} edges from {Path(spec.edges).name}")
    return lines


_EDIT = [
    "Edit freely: sensor ids and order (with their coords), feature units and valid ranges (the observed",
    "bounds pushed well outward; readings outside them are rejected), step_ms, edges.",
    "zero_is_missing = true makes a reading of exactly 0 count as none (loop detectors that report 0 when",
    "broken); otherwise 0 is a real value. [source] says how the table is read: `sensorcast train --dataset",
    "THIS_FILE` reads it onto this network.",
]


@network_app.command("init")
def init(
    data: Annotated[Path, typer.Argument(help="CSV or Parquet table of readings", show_default=False)],
    out: Annotated[Path, typer.Option("--out", help="network file to write (.toml, or .json)")],
    layout: Annotated[
        str, typer.Option(help="wide (a column per sensor), long (a row per sensor and time) or auto")
    ] = "auto",
    time_column: Annotated[
        list[str] | None,
        typer.Option(help="time column; repeat for year/month/day[/hour] or date + time columns"),
    ] = None,
    time_format: Annotated[
        str | None, typer.Option(help="strftime format of the time column (default: pandas infers)")
    ] = None,
    start: Annotated[
        str | None, typer.Option(help="a table without times: its rows are consecutive steps from this time")
    ] = None,
    step: Annotated[
        str | None, typer.Option(help="step length, e.g. 5min, 1h, 1D (default: inferred)")
    ] = None,
    sensor_column: Annotated[str | None, typer.Option(help="long layout: the sensor id column")] = None,
    feature_column: Annotated[str | None, typer.Option(help="long layout: a feature-name column")] = None,
    value_column: Annotated[
        list[str] | None, typer.Option(help="value column(s) (default: every other column)")
    ] = None,
    feature: Annotated[str | None, typer.Option(help="wide layout: the name of its one feature")] = None,
    metadata: Annotated[
        Path | None,
        typer.Option(help="sensor metadata: an id column and longitude/latitude (or x/y) columns"),
    ] = None,
    edges: Annotated[
        Path | None,
        typer.Option(help="edges: a from,to[,weight] list of sensor ids, or an N × N matrix in sensor order"),
    ] = None,
    name: Annotated[str | None, typer.Option(help="network name (default: the table's file name)")] = None,
    zero_is_missing: Annotated[
        bool,
        typer.Option(
            "--zero-is-missing/--zero-is-real", help="whether a reading of exactly 0 means 'no reading'"
        ),
    ] = False,
    force: Annotated[bool, typer.Option(help="overwrite an existing network file")] = False,
) -> None:
    """Infer a network (ids, features, units, ranges, step, coordinates, edges) from a table and write it."""
    if out.exists() and not force:
        raise typer.BadParameter(f"{out} exists (an edited network?); pass --force to overwrite it")
    spec = TableSpec(
        layout=layout,
        time=tuple(time_column or ()),
        time_format=time_format,
        start=start,
        step=step,
        sensor=sensor_column,
        feature=feature_column,
        values=tuple(value_column or ()),
        feature_name=feature,
        metadata=str(metadata) if metadata else None,
        edges=str(edges) if edges else None,
    )
    read = read_table(data, spec, name=name or data.stem)
    network = replace(read.dataset.network, zero_is_missing=zero_is_missing)
    lines = describe(read, data)
    fields = network.to_dict()
    body: dict[str, Any] = {  # zero_is_missing always written, near the top: a convention to decide on
        "name": fields.pop("name"),
        "step_ms": fields.pop("step_ms"),
        "zero_is_missing": fields.pop("zero_is_missing", False),
        **fields,
        "source": read.spec.to_dict(data, out.parent.resolve()),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() == ".json":
        out.write_text(json.dumps(body, indent=1))
    else:
        header = [
            f"sensorcast network {network.name!r}, written by `sensorcast network init` from {data}",
            "",
        ]
        comments = "".join(f"# {line}\n".replace("# \n", "#\n") for line in [*header, *_EDIT, "", *lines])
        out.write_text(comments + "\n" + dumps_toml(body))
    for line in lines:
        console.print(line, highlight=False, soft_wrap=True)
    console.print(
        f"wrote {out}: then `sensorcast train --dataset {out} --out model.pt`",
        highlight=False,
        soft_wrap=True,
    )
