"""The dashboard in a real browser: a live pipeline (real broker, Redis and Ray; the simulator publishing)
serves a registry champion, the dashboard runs on uvicorn, and headless Chromium (Debian's, driven by
Playwright) sees live updates arrive, selects a sensor and finds its forecast fan, the online MAE lines,
the stream health and the models. The page is saved as dashboard.png in the
`artifacts_dir` (a temp folder, or $SENSORCAST_TEST_ARTIFACTS).

Skips when /usr/bin/chromium is absent (`apt-get install -y chromium`); never downloads a browser.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from serving.config import Settings
from serving.dashboard.app import start_in_thread
from serving.forecaster import ModelSpec
from serving.pipeline import ServePipeline
from stream.kafka_io import ensure_topics
from stream.network import Network
from stream.produce import run_simulation
from stream.simulate import simulated_network
from tests.conftest import wait_for
from training.baselines import Persistence, PersistenceConfig
from training.checkpoint import Checkpoint, save_checkpoint
from training.registry import Registry
from training.scaler import StandardScaler

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
WINDOW, HORIZON, SENSORS = 6, 6, 16

pytestmark = [
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} not found: apt-get install -y chromium"),
    pytest.mark.usefixtures("ray_local"),
]


def _registry(root: Path, network: Network) -> Registry:
    """v0001 (persistence) champion, v0002 a challenger with its gate figures."""
    reg = Registry(root)
    for i, val_mae in enumerate((4.2, 3.9)):
        ckpt = Checkpoint.from_model(
            "persistence",
            Persistence(PersistenceConfig(horizon=HORIZON)),
            scaler=StandardScaler.identity(1),
            network=network,
            targets=("speed",),
            window=WINDOW,
            horizon=HORIZON,
            metrics={"val_mae": val_mae, "val_rmse": val_mae * 1.4},
        )
        reg.register(
            save_checkpoint(ckpt, root.parent / f"m{i}.pt"), reason=("initial", "scheduled retrain")[i]
        )
        if i == 0:
            reg.promote("v0001", reason="first model")
    return reg


def test_browser_sees_live_forecasts_and_selects_a_sensor(
    fresh_settings: Settings, tmp_path: Path, artifacts_dir: Path
) -> None:
    screenshot = artifacts_dir / "dashboard.png"
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="pip install playwright (no browser download)"
    )
    s = fresh_settings.model_copy(
        update={"window": fresh_settings.window.model_copy(update={"window": WINDOW, "horizon": HORIZON})}
    )
    network = simulated_network(SENSORS)
    reg = _registry(tmp_path / "registry", network)
    ensure_topics(s.kafka, {s.kafka.readings_topic: s.kafka.partitions, s.kafka.dead_letter_topic: 1})
    pipeline = ServePipeline(s, network, ModelSpec(reg.champion_uri()), client_id="browser").start()
    stop = threading.Event()
    start = time.time_ns() // 1_000_000 - (WINDOW + 2) * network.step_ms
    threads = [
        threading.Thread(target=pipeline.run, kwargs={"stop": stop}, name="pipeline"),
        threading.Thread(
            target=run_simulation,
            args=(s.kafka, network),
            name="simulator",
            kwargs={"speed": 600.0, "start_ts": start, "backfill_steps": WINDOW + 2, "stop": stop},
        ),
    ]
    for t in threads:
        t.start()
    dash = start_in_thread(s.redis, network, port=0, registry=tmp_path / "registry")
    try:
        wait_for(lambda: pipeline.steps_forecast > 0, timeout_s=120, what="a first forecast step in Redis")
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(dash.url)

            def until(js: str, what: str, timeout_s: float = 60) -> None:
                try:
                    page.wait_for_function(js, timeout=timeout_s * 1000)
                except sync_api.TimeoutError:
                    pytest.fail(f"the page never showed {what} within {timeout_s:.0f} s")

            until("document.querySelector('#live-status').textContent === 'live'", "the live connection")
            until("+document.querySelector('#updates').dataset.count >= 1", "a live update")
            first = page.text_content("#last-step")
            until(f"document.querySelector('#last-step').textContent !== {first!r}", "a second, newer step")
            assert page.locator("#map circle.sensor").count() == SENSORS
            until(
                "[...document.querySelectorAll('#map circle.sensor')].every(c => c.getAttribute('fill') !== '#ccc')",
                "every sensor coloured",
            )

            page.click("#sensor-s0003")
            until("document.querySelector('#sensor-title').textContent === 'Sensor s0003'", "s0003 selected")
            assert page.input_value("#sensor-select") == "s0003"
            assert "selected" in (page.get_attribute("#sensor-s0003", "class") or "")
            until("document.querySelectorAll('#fan path.forecast.latest').length === 1", "the forecast fan")
            until(
                "document.querySelectorAll('#fan path.forecast').length >= 3", "earlier forecasts in the fan"
            )
            assert page.text_content("#fan-version") == "v0001"
            until(
                f"document.querySelectorAll('#mae path.mae-line').length === {HORIZON}",
                "MAE lines per horizon",
            )
            until("document.querySelector('#health-rate').textContent !== '–'", "stream health")
            assert page.text_content("#health-lag").split()[0].isdigit()
            rows = page.locator("#models-table tbody tr")
            assert rows.count() == 2
            assert rows.nth(0).text_content().startswith("v0002challenger")
            assert (
                "champion" in (rows.nth(1).get_attribute("class") or "")
                and "val_mae 4.200" in rows.nth(1).text_content()
            )
            assert "serving v0001" in page.text_content("#events")

            page.select_option("#colour-by", "error")
            until(
                "document.querySelector('#map-legend').textContent.includes('|error|')", "the error colouring"
            )
            page.select_option("#colour-by", "actual")
            until(
                "document.querySelector('#map-legend').textContent.startsWith('value')", "the value colouring"
            )
            page.screenshot(path=str(screenshot), full_page=True)
            browser.close()
    finally:
        dash.stop()
        stop.set()
        for t in threads:
            t.join(timeout=30)
        pipeline.close()
    assert screenshot.stat().st_size > 20_000
