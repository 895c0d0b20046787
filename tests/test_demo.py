"""`sensorcast demo` as a user runs it (against the test session's broker and Redis): persistence serves
first, an STFormer trained through the real path (simulated history archived at full speed, Ray Train on
the archive, the gate, the hot swap) takes over, and the dashboard shows it. The browser part saves
demo-dashboard.png in the `artifacts_dir` (the README's screenshot: see docs/serving.md); it skips
without /usr/bin/chromium or Playwright, the rest does not."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis

from serving.embedded import EmbeddedRuntime
from serving.keys import Keys
from training.registry import Registry

CHROMIUM = Path("/usr/bin/chromium")
DURATION_S = 110
SENSORS = 12


@dataclass
class DemoRun:
    proc: subprocess.Popen[str]
    tag: str
    data_dir: Path
    summary: Path
    lines: list[str] = field(default_factory=list)
    url: str | None = None
    promoted_after_s: float | None = None

    def events(self) -> list[dict[str, Any]]:
        with urllib.request.urlopen(f"{self.url}/api/events?limit=200", timeout=5) as r:
            return list(json.loads(r.read()))

    def finish(self) -> dict[str, Any]:
        rc = self.proc.wait(timeout=DURATION_S + 120)
        assert rc == 0, "\n".join(self.lines[-40:])
        return dict(json.loads(self.summary.read_text()))


@pytest.fixture(scope="module")
def demo_run(embedded: EmbeddedRuntime, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoRun]:
    """The demo running in a subprocess until a trained model serves (then yielded, still running)."""
    tag = uuid.uuid4().hex[:8]
    root = tmp_path_factory.mktemp("demo")
    env = {
        **os.environ,
        "SENSORCAST_KAFKA__READINGS_TOPIC": f"demo-readings-{tag}",
        "SENSORCAST_KAFKA__DEAD_LETTER_TOPIC": f"demo-dead-{tag}",
        "SENSORCAST_KAFKA__GROUP_ID": f"demo-{tag}",
        "SENSORCAST_KAFKA__SESSION_TIMEOUT_MS": "3000",
        "SENSORCAST_REDIS__KEY_PREFIX": f"demo{tag}",
    }
    cmd = [sys.executable, "-m", "serving.cli", "demo", "--duration", str(DURATION_S)]
    cmd += ["--sensors", str(SENSORS), "--show", "3", "--data-dir", str(root / "data")]
    cmd += ["--bootstrap", str(embedded.bootstrap), "--redis-url", str(embedded.redis_url)]
    cmd += ["--summary-json", str(root / "summary.json")]
    proc = subprocess.Popen(
        cmd, env=env, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    run = DemoRun(proc, tag, root / "data", root / "summary.json")

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            run.lines.append(line.rstrip("\n"))
            m = re.search(r"dashboard: (http://\S+)", line)
            if m:
                run.url = m.group(1).rstrip("/")

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    t0 = time.monotonic()
    try:
        while time.monotonic() - t0 < DURATION_S and proc.poll() is None:
            if run.url and any(
                e["type"] == "serving" and e["detail"].get("kind") == "stformer" for e in run.events()
            ):
                run.promoted_after_s = time.monotonic() - t0
                break
            time.sleep(1.0)
        yield run
    finally:
        if proc.poll() is None:
            proc.wait(timeout=DURATION_S + 120)
        reader.join(timeout=10)


def test_dashboard_shows_the_promoted_attention_model(demo_run: DemoRun, artifacts_dir: Path) -> None:
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} not found: apt-get install -y chromium")
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    assert demo_run.promoted_after_s is not None, "\n".join(demo_run.lines[-30:])
    time.sleep(6)  # a few steps by the new model, so its forecasts reach the charts
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM), args=["--headless", "--no-sandbox", "--disable-gpu"]
        )
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(str(demo_run.url))
        page.wait_for_function(
            "document.querySelector('#live-status').textContent === 'live'", timeout=60_000
        )
        page.wait_for_function(
            "document.querySelector('#fan-version').textContent === 'v0002'", timeout=60_000
        )
        page.wait_for_function("document.querySelectorAll('#fan path.forecast').length >= 3", timeout=60_000)
        champion = page.locator("#models-table tbody tr.champion")
        assert "stformer" in champion.text_content() and "holdout MAE" in champion.text_content()
        assert "promoted v0002" in page.text_content("#events")
        ticks = page.locator("#fan text.tick-x").all_text_contents()
        observed = {"ticks": ticks, "legend": page.text_content("#sensor-panel .legend")}
        assert any(re.match(r"[A-Z][a-z]{2} \d+", t) for t in ticks), observed  # dated axis
        assert "not an uncertainty interval" in str(observed["legend"]), observed
        page.screenshot(path=str(artifacts_dir / "demo-dashboard.png"), full_page=True)
        browser.close()
    assert (artifacts_dir / "demo-dashboard.png").stat().st_size > 20_000


def test_demo_serves_persistence_first_then_a_trained_attention_model(
    demo_run: DemoRun, embedded: EmbeddedRuntime
) -> None:
    summary = demo_run.finish()
    timeline = [(e["at_s"], e["type"], e["model_version"], e.get("kind")) for e in summary["timeline"]]
    assert summary["first_forecast_s"] is not None, timeline
    assert timeline[0][1:] == ("serving", "v0001", "persistence"), timeline
    promoted = [e for e in summary["timeline"] if e["type"] == "promoted"]
    assert promoted and promoted[0]["model_version"] == "v0002", timeline
    gate = promoted[0]["mae"]
    assert gate["challenger"] < gate["persistence"], gate  # trained on the archive, beats persistence
    assert summary["first_learned_forecast_s"] is not None, timeline
    assert ("serving", "v0002", "stformer") in [t[1:] for t in timeline], timeline

    out = "\n".join(demo_run.lines)
    assert "model v0002 (stformer) serving since" in out, out[-2000:]  # the plain status line says so
    assert "Traceback" not in out and "core_worker" not in out, out[-3000:]

    r = redis.Redis.from_url(str(embedded.redis_url))
    keys = Keys(f"demo{demo_run.tag}", "sim")
    latest = [orjson.loads(raw) for raw in r.hgetall(keys.latest).values()]
    assert len(latest) == SENSORS
    assert {doc["model_version"] for doc in latest} == {"v0002"}
    assert r.zcard(keys.done("v0001")) > 0 and r.zcard(keys.done("v0002")) > 0
    champion = Registry(demo_run.data_dir / "registry").champion()
    assert champion is not None and champion.version == "v0002" and champion.kind == "stformer"
