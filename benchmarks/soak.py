"""Soak: replay a simulated network at a multiple of the steady rate through the full pipeline (embedded
Kafka → ingest → Ray forecaster actor → Redis) for a bounded time, and report the serving process's RSS and
the consumer lag over time.

The steady rate is the demo's: one 5-minute step per second (`sensorcast demo`'s default speed of 300) for
`--sensors` sensors (default 207, Los-loop's size); `--rate-multiple 10` publishes ten steps per second.
Bounded memory means RSS growth after the warm-up stays small; no lag growth means the lag at the end is no
larger than the lag after the warm-up (the consumer keeps up).

    python benchmarks/soak.py --minutes 10 --rate-multiple 10

Prints a table and writes benchmarks/results/soak.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from serving.config import Settings
from serving.embedded import EmbeddedRuntime, rss_mb
from serving.forecaster import ModelSpec
from serving.pipeline import ServePipeline
from stream.kafka_io import ReadingProducer, ensure_topics
from stream.simulate import Simulator, simulated_network

T0 = 1_767_225_600_000
STEADY_STEPS_PER_S = 1.0
RESULTS = Path(__file__).parent / "results"


def _settings(rt: EmbeddedRuntime, root: Path) -> Settings:
    tag = uuid.uuid4().hex[:8]
    return Settings.model_validate(
        {
            "kafka": {"bootstrap": rt.bootstrap, "readings_topic": f"soak-{tag}", "dead_letter_topic": f"dl-{tag}",
                      "group_id": f"g-{tag}", "partitions": 2, "session_timeout_ms": 6000},
            "redis": {"url": rt.redis_url, "key_prefix": f"soak{tag}", "stream_maxlen": 2000},
            "archive": {"root": str(root / tag)},
            "window": {"allowed_lateness_ms": 0, "idle_timeout_ms": 600_000},
            "ray": {"actor_num_cpus": 0.5},
        }
    )  # fmt: skip


def soak(minutes: float, rate_multiple: float, sensors: int, sample_s: float) -> dict[str, Any]:
    import ray

    rate = STEADY_STEPS_PER_S * rate_multiple  # steps per second
    network = simulated_network(sensors, step_ms=300_000)
    sim = Simulator(network, seed=0)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    samples: list[dict[str, Any]] = []
    with EmbeddedRuntime() as rt, tempfile.TemporaryDirectory() as tmp:
        s = _settings(rt, Path(tmp))
        ensure_topics(s.kafka, {s.kafka.readings_topic: 2, s.kafka.dead_letter_topic: 1})
        pipe = ServePipeline(s, network, ModelSpec("baseline:persistence"), client_id="soak").start()
        stop = threading.Event()
        sent = [0]
        errors: list[BaseException] = []

        def publish() -> None:
            try:
                with ReadingProducer(s.kafka, network) as producer:
                    t_start = time.monotonic()
                    while not stop.is_set():
                        due = t_start + sent[0] / rate
                        if stop.wait(max(0.0, due - time.monotonic())):
                            return
                        ts = T0 + sent[0] * network.step_ms
                        producer.send_step(ts, *sim.step(ts))
                        producer.flush()
                        sent[0] += 1
            except BaseException as exc:
                errors.append(exc)

        th = threading.Thread(target=publish, daemon=True)
        t0 = time.monotonic()
        th.start()
        next_sample = t0
        end = t0 + minutes * 60
        try:
            while time.monotonic() < end and not errors:
                pipe.poll_once(100)
                now = time.monotonic()
                if now >= next_sample:
                    next_sample += sample_s
                    lag = pipe.lag()
                    samples.append({
                        "t_s": round(now - t0, 1), "rss_mb": round(rss_mb(), 1),
                        "lag_messages": sum(v for v in lag.values() if v >= 0), "steps_sent": sent[0],
                        "steps_forecast": pipe.steps_forecast,
                        "servers_rss_mb": {k: round(v, 1) for k, v in rt.memory_rss_mb().items()},
                    })  # fmt: skip
        finally:
            stop.set()
            th.join(30)
            ledger = pipe.ingest.ingestor.ledger.snapshot()
            pipe.close()
            ray.shutdown()
    if errors:
        raise errors[0]
    warm = [x for x in samples if x["t_s"] >= min(60.0, minutes * 60 / 4)] or samples
    rss = np.array([x["rss_mb"] for x in warm])
    lag = np.array([x["lag_messages"] for x in warm])
    t = np.array([x["t_s"] for x in warm])
    elapsed = samples[-1]["t_s"] if samples else 0.0
    return {
        "benchmark": "soak",
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "parameters": {
            "minutes": minutes,
            "rate_multiple": rate_multiple,
            "steps_per_s": rate,
            "sensors": sensors,
            "sample_s": sample_s,
            "model": "baseline:persistence",
            "warmup_s": float(warm[0]["t_s"]),
        },
        "baseline": {
            "steady_steps_per_s": STEADY_STEPS_PER_S,
            "readings_per_s": STEADY_STEPS_PER_S * sensors,
        },
        "figures": {
            "readings_per_s": ledger["total"]["received"] / elapsed if elapsed else 0.0,
            "steps_sent": samples[-1]["steps_sent"],
            "steps_forecast": samples[-1]["steps_forecast"],
            "rss_mb_after_warmup": float(rss[0]),
            "rss_mb_end": float(rss[-1]),
            "rss_mb_max": float(rss.max()),
            "rss_growth_mb": float(rss[-1] - rss[0]),
            "rss_slope_mb_per_min": float(np.polyfit(t / 60, rss, 1)[0]) if len(t) > 2 else 0.0,
            "lag_after_warmup": int(lag[0]),
            "lag_end": int(lag[-1]),
            "lag_max": int(lag.max()),
            "lag_slope_messages_per_min": float(np.polyfit(t / 60, lag, 1)[0]) if len(t) > 2 else 0.0,
            "ledger_balanced": ledger["balanced"],
        },
        "samples": samples,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--rate-multiple", type=float, default=10.0)
    ap.add_argument("--sensors", type=int, default=207)
    ap.add_argument("--sample-s", type=float, default=10.0)
    args = ap.parse_args()
    out = soak(args.minutes, args.rate_multiple, args.sensors, args.sample_s)
    print(f"{'t_s':>7} {'rss_mb':>8} {'lag':>6} {'sent':>7} {'forecast':>9}")
    for x in out["samples"]:
        print(
            f"{x['t_s']:>7} {x['rss_mb']:>8} {x['lag_messages']:>6} {x['steps_sent']:>7} {x['steps_forecast']:>9}"
        )
    f = out["figures"]
    print(f"RSS {f['rss_mb_after_warmup']:.0f} → {f['rss_mb_end']:.0f} MB (growth {f['rss_growth_mb']:+.1f} MB, "
          f"{f['rss_slope_mb_per_min']:+.2f} MB/min); lag {f['lag_after_warmup']} → {f['lag_end']} messages "
          f"(max {f['lag_max']}); {f['readings_per_s']:.0f} readings/s; ledger balanced: {f['ledger_balanced']}")  # fmt: skip
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "soak.json").write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
