"""Many networks on one machine: does serving three networks at once slow each one down?

    python benchmarks/scale_networks.py [--quick]

Real embedded Kafka (Tansu) and Redis, a local Ray, and the deployment path itself (`serving.fleet`: one
pipeline actor per network, each with its own forecaster actor). Each network is a simulated 207-sensor
road network (Los-loop's size) served by an untrained STFormer "small" with the committed Los-loop
checkpoint's architecture (weights do not change timing; `benchmarks/serve.py` builds it), published live
at `rate` steps per second after a window's backfill. In one run: first one network alone, then three at
once; per network the seal→Redis latency (p50/p99) over the live steps, as the pipeline actor measured it,
and the ratio of each network's p99 among three to the single network's p99 (the target: ≤ 1.5).

Merges its figures into benchmarks/results/scale.json under "networks".
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import ray
from scale import part_main  # benchmarks/scale.py
from serve import _frames, _stformer_checkpoint  # benchmarks/serve.py: this folder is first on sys.path

from serving.config import Settings
from serving.deployment import NetworkPlan
from serving.embedded import EmbeddedRuntime
from serving.fleet import Fleet
from serving.forecaster import ModelSpec
from stream.clock import wall_ms
from stream.kafka_io import ReadingProducer, ensure_topics
from stream.simulate import simulated_network

SENSORS, WINDOW = 207, 12


def _plan(rt: EmbeddedRuntime, root: Path, name: str, checkpoint: str) -> NetworkPlan:
    tag = uuid.uuid4().hex[:8]
    settings = Settings.model_validate(
        {
            "kafka": {
                "bootstrap": rt.bootstrap,
                "readings_topic": f"{name}-{tag}",
                "dead_letter_topic": f"{name}-dl-{tag}",
                "group_id": f"{name}-{tag}",
                "partitions": 2,
                "session_timeout_ms": 3000,
            },
            "redis": {"url": rt.redis_url, "key_prefix": f"b{tag}"},
            "ray": {"actor_num_cpus": 0.25, "pipeline_num_cpus": 0.25, "cpu_backend": "auto"},
            "archive": {"root": str(root / name / "archive")},
            "window": {"window": WINDOW, "horizon": 12, "allowed_lateness_ms": 0, "idle_timeout_ms": 60_000},
        }
    )
    network = simulated_network(SENSORS, name=name, step_ms=300_000, seed=hash(name) % 1000)
    return NetworkPlan(settings, network, ModelSpec(checkpoint))


def measure(plans: list[NetworkPlan], *, live_steps: int, rate: float) -> dict[str, Any]:
    """Serve `plans` at once; each network's seal→Redis latency over its live steps."""
    for p in plans:
        k = p.settings.kafka
        ensure_topics(k, {k.readings_topic: k.partitions, k.dead_letter_topic: 1})
    fleet = Fleet(plans).start()
    try:
        fleet.wait_until(lambda st: all(s["state"] == "serving" for s in st.values()), timeout_s=180)
        start = wall_ms() - (WINDOW + 2) * 300_000
        start -= start % 300_000
        frames = {p.name: _frames(p.network, WINDOW + 3 + live_steps) for p in plans}

        def publish(p: NetworkPlan, first: int, n: int, interval: float) -> None:
            with ReadingProducer(p.settings.kafka, p.network) as producer:
                for t in range(first, first + n):
                    producer.send_step(start + t * 300_000, *frames[p.name][t])
                    producer.flush()
                    time.sleep(interval)

        backfill = [threading.Thread(target=publish, args=(p, 0, WINDOW + 2, 0.0)) for p in plans]
        for t in backfill:
            t.start()
        for t in backfill:
            t.join()
        fleet.wait_until(lambda st: all(s.get("steps_forecast", 0) >= 2 for s in st.values()), timeout_s=180)
        for a in fleet.actors.values():
            ray.get(a.latencies_ms.remote(clear=True))
        live = [
            threading.Thread(target=publish, args=(p, WINDOW + 2, live_steps + 1, 1 / rate)) for p in plans
        ]
        for t in live:
            t.start()
        for t in live:
            t.join()
        deadline = time.monotonic() + 60
        lat: dict[str, list[float]] = {}
        while time.monotonic() < deadline:
            lat = {n: ray.get(a.latencies_ms.remote()) for n, a in fleet.actors.items()}
            if all(len(v) >= live_steps for v in lat.values()):
                break
            time.sleep(0.5)
    finally:
        fleet.stop()
    return {
        n: {
            "steps": len(v),
            "p50_ms": round(float(np.percentile(v, 50)), 1) if v else None,
            "p99_ms": round(float(np.percentile(v, 99)), 1) if v else None,
        }
        for n, v in lat.items()
    }


def run(quick: bool = False) -> dict[str, Any]:
    live_steps, rate = (40, 2.0) if quick else (150, 2.0)
    with tempfile.TemporaryDirectory() as tmp, EmbeddedRuntime() as rt:
        root = Path(tmp)
        ray.init(
            num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, configure_logging=False
        )
        try:
            net = simulated_network(SENSORS, step_ms=300_000)
            ckpt = _stformer_checkpoint(net, root)  # same architecture for every 207-sensor network
            single = measure([_plan(rt, root, "solo", ckpt)], live_steps=live_steps, rate=rate)
            three = measure(
                [_plan(rt, root, n, ckpt) for n in ("city1", "city2", "city3")],
                live_steps=live_steps,
                rate=rate,
            )
        finally:
            ray.shutdown()
    base = single["solo"]["p99_ms"]
    return {
        "sensors_per_network": SENSORS,
        "model": "stformer small (untrained, Los-loop checkpoint architecture)",
        "live_rate_steps_per_s": rate,
        "live_steps": live_steps,
        "single": single["solo"],
        "three": three,
        "p99_ratio_three_vs_single": {
            n: round(v["p99_ms"] / base, 2) if base else None for n, v in three.items()
        },
        "target_ratio": 1.5,
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }


if __name__ == "__main__":
    part_main("networks", run)
