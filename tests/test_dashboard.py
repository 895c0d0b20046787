"""The dashboard's API, live stream and plots against a real Redis holding what the serving sink writes
(`RedisSink` fills it with a known sequence, so every figure shown can be checked independently), and the
API against its own OpenAPI spec with schemathesis. The browser test is `test_dashboard_browser.py`.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
import redis
import schemathesis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings
from typer.testing import CliRunner

from serving.cli import app as cli
from serving.config import RedisSettings
from serving.dashboard.app import create_app, start_in_thread
from serving.dashboard.layout import force_layout, positions
from serving.embedded import EmbeddedRuntime
from serving.keys import Keys
from serving.online import OnlineEvaluator
from serving.sink import RedisSink
from serving.sink_scripts import OnlineScores, StepForecast
from stream.network import Network
from stream.simulate import Simulator, simulated_network
from training.baselines import Persistence, PersistenceConfig
from training.checkpoint import Checkpoint, save_checkpoint
from training.model import AttentionSeq2Seq, Seq2SeqConfig
from training.registry import Registry
from training.scaler import StandardScaler

STEP = 300_000
T0 = 1_767_225_600_000  # 2026-01-01 00:00 UTC
H = 3
N_STEPS = 16
PROMOTED_AT = 10  # from this step on, v2 serves


@dataclass
class Seeded:
    url: str
    prefix: str
    network: Network
    sink: RedisSink
    values: np.ndarray  # [T, N] speed as written (float32)
    present: np.ndarray  # [T, N] bool
    forecasts: dict[int, tuple[str, np.ndarray]]  # step_ts -> (version, [H, N, 1])

    @property
    def redis(self) -> RedisSettings:
        return RedisSettings(url=self.url, key_prefix=self.prefix)


def _forecast(values: np.ndarray) -> np.ndarray:
    """A made-up model: value + h at horizon h, so the fan has a slope. [N, 1] -> [H, N, 1]."""
    return (values[None, :, :1] + np.arange(1, H + 1)[:, None, None]).astype(np.float32)


def seed(url: str, network: Network) -> Seeded:
    """Write N_STEPS sealed steps, their forecasts, online scores, health and events, as the pipeline does."""
    prefix = f"d{uuid.uuid4().hex[:10]}"
    sink = RedisSink(
        redis.Redis.from_url(url),
        Keys(prefix, network.name),
        sensors=network.sensors,
        features=("speed",),
        step_ms=STEP,
    )
    sink.publish_network()
    sim, online = Simulator(network, seed=1), OnlineEvaluator(horizon=H, step_ms=STEP, targets=(0,))
    version = "v1"
    sink.add_event("serving", version, {"spec": "test"})
    vals, pres, forecasts = [], [], {}
    for t in range(N_STEPS):
        ts = T0 + t * STEP
        if t == PROMOTED_AT:
            version = "v2"
            time.sleep(0.002)  # events are placed on the chart by the millisecond they were written
            sink.add_event("promoted", version, {"val_mae": 1.5, "champion_val_mae": 2.0})
        values, present = sim.step(ts)  # [N, F]
        values = values.astype(np.float32)
        vals.append(values[:, 0])
        pres.append(present[:, 0])
        scored = online.observe(ts, values, present) is not None
        forecasts[ts] = (version, _forecast(values))
        online.record_forecast(ts, version, forecasts[ts][1])
        scores = None
        if scored:
            cumulative = {v: s.scores() for v, s in online.cumulative.items()}
            scores = OnlineScores(ts, cumulative, online.rolling(version), online.mean_rolling_mae(version))
        sink.write_batch(  # one step per micro-batch, as the live loop writes
            [StepForecast(ts, version, forecasts[ts][1], int(time.time() * 1000))],
            actuals=[(ts, values, present)],
            online=scores,
        )
    sink.write_health(
        {
            "ledger": {
                "received": 100,
                "windowed": 90,
                "dead_lettered": 6,
                "late": 3,
                "duplicates": 1,
                "replayed": 0,
            },
            "dead_by_reason": {"bad_json": 4, "unknown_sensor": 2},
            "lag": {0: 5, 1: 2},
            "watermark": T0 + N_STEPS * STEP,
            "last_sealed": T0 + (N_STEPS - 1) * STEP,
            "steps_forecast": N_STEPS,
            "readings_per_s": 12.5,
            "model_version": version,
            "updated_ms": int(time.time() * 1000),
        }
    )
    return Seeded(url, prefix, network, sink, np.array(vals), np.array(pres), forecasts)


@pytest.fixture(scope="module")
def seeded(embedded: EmbeddedRuntime) -> Seeded:
    return seed(str(embedded.redis_url), simulated_network(6))


@pytest.fixture(scope="module")
def app(seeded: Seeded) -> FastAPI:
    return create_app(seeded.redis, seeded.network)


@pytest.fixture(scope="module")
def api(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app) as client:
        yield client


def test_network_latest_and_sensor_views_show_what_was_written(api: TestClient, seeded: Seeded) -> None:
    net = api.get("/api/network").json()
    assert [s["id"] for s in net["sensors"]] == list(seeded.network.sensors)
    assert net["coordinates"] is True and net["matches_redis"] is True
    assert len(net["edges"]) == len(seeded.network.edges) and net["forecast_features"] == ["speed"]
    assert all(0 <= s["x"] <= 1 and 0 <= s["y"] <= 1 for s in net["sensors"])

    last = T0 + (N_STEPS - 1) * STEP
    latest = api.get("/api/latest").json()
    assert latest["meta"]["step_ts"] == last and latest["meta"]["model_version"] == "v2"
    assert [f["sensor"] for f in latest["forecasts"]] == list(seeded.network.sensors)
    np.testing.assert_allclose(latest["forecasts"][2]["forecast"], seeded.forecasts[last][1][:, 2], rtol=1e-6)

    view = api.get("/api/sensors/s0002", params={"steps": 5, "fan": 4}).json()
    assert view["sensor"] == "s0002" and view["feature"] == "speed" and view["unit"] == "mph"
    assert [a["ts"] for a in view["actuals"]] == [T0 + t * STEP for t in range(N_STEPS - 5, N_STEPS)]
    np.testing.assert_allclose([a["value"] for a in view["actuals"]], seeded.values[-5:, 2], rtol=1e-6)
    assert [a["observed"] for a in view["actuals"]] == seeded.present[-5:, 2].tolist()
    assert [f["step_ts"] for f in view["forecasts"]] == [T0 + t * STEP for t in range(N_STEPS - 4, N_STEPS)]
    for line in view["forecasts"]:
        np.testing.assert_allclose(line["values"], seeded.forecasts[line["step_ts"]][1][:, 2, 0], rtol=1e-6)
    assert view["model_version"] == "v2"

    assert api.get("/api/sensors/nope").status_code == 404
    assert api.get("/api/sensors/s0001", params={"feature": "flow"}).status_code == 404
    assert api.get("/api/sensors/s0001", params={"steps": 0}).status_code == 422


def test_map_colours_by_value_forecast_and_one_step_error(api: TestClient, seeded: Seeded) -> None:
    state = api.get("/api/map").json()
    last = T0 + (N_STEPS - 1) * STEP
    assert state["step_ts"] == last and state["forecast_step_ts"] == last
    issued_before = seeded.forecasts[last - STEP][1][0, :, 0]  # h=1 forecast of the last step [N]
    for i, row in enumerate(state["sensors"]):
        assert row["id"] == seeded.network.sensors[i]
        assert row["actual"] == pytest.approx(float(seeded.values[-1, i]), rel=1e-6)
        assert row["forecast"] == pytest.approx(float(seeded.forecasts[last][1][0, i, 0]), rel=1e-6)
        if seeded.present[-1, i]:
            want = abs(float(issued_before[i]) - float(seeded.values[-1, i]))
            assert row["error"] == pytest.approx(want, rel=1e-5)
        else:
            assert row["error"] is None and row["observed"] is False


def test_metrics_health_and_models_views(api: TestClient, seeded: Seeded) -> None:
    online = api.get("/api/metrics").json()
    assert [p["step_ts"] for p in online["history"]] == [
        T0 + t * STEP for t in range(H, N_STEPS)
    ]  # a forecast is scored once complete
    # after the promotion v2's rolling MAE stays empty until steps it forecast are scored
    lengths = [len(p["mae"]) for p in online["history"]]
    assert set(lengths) <= {0, H} and lengths[0] == lengths[-1] == H
    assert set(online["versions"]) == {"v1", "v2"} and online["rolling"]["model_version"] == "v2"
    assert [e["type"] for e in online["events"]] == ["serving", "promoted"]
    promoted = online["events"][1]
    assert promoted["detail"] == {"val_mae": 1.5, "champion_val_mae": 2.0}
    assert promoted["at_step_ts"] == T0 + PROMOTED_AT * STEP  # placed on the step scored when it happened
    assert online["history"][-1]["model_version"] == "v2"

    health = api.get("/api/health").json()
    assert health["available"] and health["readings_per_s"] == 12.5 and health["lag"] == {"0": 5, "1": 2}
    assert health["lag_total"] == 7 and health["dead_by_reason"] == {"bad_json": 4, "unknown_sensor": 2}
    assert (
        health["ledger"]["late"] == 3 and health["watermark"] == T0 + N_STEPS * STEP and health["age_s"] < 60
    )

    models = api.get("/api/models").json()
    assert models["configured"] is False and "no registry configured" in models["message"]

    page = api.get("/")
    assert page.status_code == 200 and "sensorcast" in page.text
    assert api.get("/static/dashboard.js").status_code == 200


def _persistence(path: Path, net: Network, val_mae: float) -> str:
    ckpt = Checkpoint.from_model(
        "persistence",
        Persistence(PersistenceConfig(horizon=H)),
        scaler=StandardScaler.identity(1),
        network=net,
        targets=("speed",),
        window=4,
        horizon=H,
        metrics={"val_mae": val_mae},
    )
    return save_checkpoint(ckpt, path)


def test_models_view_reads_the_registry(seeded: Seeded, tmp_path: Path) -> None:
    reg = Registry(tmp_path / "registry")
    reg.register(_persistence(tmp_path / "a.pt", seeded.network, 3.0), reason="initial")
    reg.promote("v0001", reason="first")
    reg.register(_persistence(tmp_path / "b.pt", seeded.network, 2.5), reason="retrained")
    reg.promote("v0002", reason="val MAE 2.5 < 3.0")
    reg.register(_persistence(tmp_path / "c.pt", seeded.network, float("nan")), reason="retrained on drift")
    app = create_app(seeded.redis, seeded.network, registry=tmp_path / "registry")
    with TestClient(app) as client:
        models = client.get("/api/models").json()
    assert models["configured"] and models["champion"] == "v0002"
    roles = {v["version"]: v["role"] for v in models["versions"]}
    assert roles == {"v0003": "challenger", "v0002": "champion", "v0001": "former champion"}
    figures = {v["version"]: v["metrics"]["val_mae"] for v in models["versions"]}
    assert figures == {"v0001": 3.0, "v0002": 2.5, "v0003": None}  # NaN is shown as null, not invalid JSON
    assert [h["version"] for h in models["history"]] == ["v0001", "v0002"]


def test_force_layout_places_neighbours_closer_than_strangers() -> None:
    n = 12
    ring = [(i, (i + 1) % n, 1.0) for i in range(n)]
    xy = force_layout(n, ring)  # [N, 2]
    dist = np.linalg.norm(xy[:, None] - xy[None], axis=-1)
    neighbours = np.mean([dist[a, b] for a, b, _ in ring])
    opposite = np.mean([dist[i, (i + n // 2) % n] for i in range(n)])
    assert neighbours < 0.6 * opposite
    pos, real = positions(Network.simple("nocoords", ["a", "b", "c"], ["speed"]))
    assert not real and pos.shape == (3, 2) and pos.min() >= 0 and pos.max() <= 1


def test_live_stream_relays_each_forecast_step(seeded: Seeded) -> None:
    """A real uvicorn server: `/api/live` says hello, sends health, and relays a step written after it."""
    dash = start_in_thread(seeded.redis, seeded.network, port=0)
    seen: list[str] = []
    try:
        with httpx.stream("GET", dash.url + "api/live", timeout=10) as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            lines = response.iter_lines()
            deadline = time.monotonic() + 20
            event, written = None, False
            new_ts = T0 + 100 * STEP
            for line in lines:
                if line.startswith("event: "):
                    event = line[7:]
                    seen.append(event)
                elif line.startswith("data: ") and event == "step":
                    assert '"step_ts":' + str(new_ts) in line.replace(" ", "")
                    break
                if "health" in seen and not written:
                    written = True  # write only once subscribed: pub/sub does not replay
                    values = np.zeros((seeded.network.n_sensors, 1), np.float32)
                    seeded.sink.write(StepForecast(new_ts, "v2", _forecast(values), int(time.time() * 1000)))
                assert time.monotonic() < deadline, f"no step event within 20 s (events seen: {seen})"
    finally:
        dash.stop()
    assert seen[0] == "hello" and "health" in seen and seen[-1] == "step"


def test_plot_commands_write_pngs(seeded: Seeded, tmp_path: Path) -> None:
    runner = CliRunner(env={"SENSORCAST_REDIS__KEY_PREFIX": seeded.prefix})
    common = ["--redis-url", seeded.url]
    net = ["--sensors", str(seeded.network.n_sensors)]
    model = AttentionSeq2Seq(Seq2SeqConfig(in_features=1, window=4, horizon=H, hidden=8))
    ckpt = save_checkpoint(
        Checkpoint.from_model(
            "seq2seq",
            model,
            scaler=StandardScaler.identity(1),
            network=seeded.network,
            targets=("speed",),
            window=4,
            horizon=H,
        ),
        tmp_path / "s2s.pt",
    )
    runs = {
        "forecast": [
            "plot",
            "forecast",
            "--sensor",
            "s0003",
            "--out",
            str(tmp_path / "f.png"),
            *common,
            *net,
        ],
        "mae": ["plot", "mae", "--out", str(tmp_path / "m.png"), *common, *net],
        "attention": [
            "plot",
            "attention",
            str(ckpt),
            "--sensor",
            "s0001",
            "--out",
            str(tmp_path / "a.png"),
            *common,
        ],
    }
    for name, args in runs.items():
        result = runner.invoke(cli, args)
        assert result.exit_code == 0, f"plot {name}: {result.output}{result.exception!r}"
    for name in ("f", "m", "a"):
        data = (tmp_path / f"{name}.png").read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000, name
    bad = runner.invoke(
        cli, ["plot", "forecast", "--sensor", "nope", "--out", str(tmp_path / "x.png"), *common, *net]
    )
    assert bad.exit_code == 2 and "unknown sensor" in bad.output
    no_redis = runner.invoke(cli, ["dashboard"])
    assert no_redis.exit_code == 2 and "--redis-url" in no_redis.output


@pytest.fixture(scope="module")
def api_schema(app: FastAPI) -> object:
    return schemathesis.openapi.from_asgi("/openapi.json", app)


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck))
def test_api_conforms_to_its_openapi_spec(case: schemathesis.Case) -> None:
    """Every route, bounded examples: no server errors, documented status codes, bodies match the schemas."""
    case.call_and_validate()
