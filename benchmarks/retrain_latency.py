"""Does retraining starve serving? Live seal→Redis latency of a 207-sensor network served by an STFormer
actor, first idle, then while a Ray Train job with the retraining defaults (`RetrainSettings`: 2 workers ×
0.5 CPU, 1 torch thread each, nice 10) trains on Los-loop beside it — same process, same run, real
broker, Redis and Ray.

    python benchmarks/retrain_latency.py [--steps 60] [--rate 5] [--workers N] [--nice N] [--threads N]

The committed JSON is a `--workers 1 --steps 120` run (what a 2-core machine should use).

Prints both and writes benchmarks/results/retrain_latency.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil
from serve import T0, _frames, _settings, _stformer_checkpoint, live  # benchmarks/serve.py, beside this file

from serving.config import RetrainSettings
from serving.embedded import EmbeddedRuntime
from serving.forecaster import ModelSpec
from serving.pipeline import ServePipeline
from stream.datasets import datasets_root
from stream.kafka_io import ReadingProducer, ensure_topics
from stream.simulate import simulated_network

RESULTS = Path(__file__).parent / "results"
WARM = 13  # steps published before measuring: a window of 12, plus the step that seals its last
WARMUP_S = 25.0  # from starting the job to measuring: Ray Train workers start, load data, compile nothing


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--rate", type=float, default=5.0)
    ap.add_argument(
        "--nice", type=int, default=None, help="training workers' niceness (default: the setting's)"
    )
    ap.add_argument("--workers", type=int, default=None, help="Ray Train workers (default: the setting's)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the forecaster actor")
    args = ap.parse_args()
    root_data = datasets_root()
    if root_data is None:
        print("shared datasets not found: set SENSORCAST_DATASETS")
        return
    import ray

    from training.ray_train import train_with_ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    network = simulated_network(207, step_ms=300_000)
    out: dict[str, Any] = {}
    with EmbeddedRuntime() as rt, tempfile.TemporaryDirectory() as tmp:
        s = _settings(rt, Path(tmp), threads=args.threads)
        ensure_topics(s.kafka, {s.kafka.readings_topic: 2, s.kafka.dead_letter_topic: 1})
        frames = _frames(network, WARM + 2 * args.steps + 4)
        pipe = ServePipeline(
            s, network, ModelSpec(_stformer_checkpoint(network, Path(tmp))), client_id="rl"
        ).start()
        try:
            with ReadingProducer(s.kafka, network) as producer:
                for t in range(WARM):  # a full window, and one more step so that its last step seals
                    producer.send_step(T0 + t * network.step_ms, *frames[t])
                producer.flush()
                deadline = time.monotonic() + 120
                while pipe.steps_forecast == 0:
                    if time.monotonic() > deadline:
                        raise RuntimeError("no forecast within 120 s of publishing the first window")
                    pipe.poll_once(100)
                psutil.cpu_percent(interval=None)
                idle = live(pipe, producer, frames, WARM, args.steps, args.rate, network.step_ms)
                cpu_idle = psutil.cpu_percent(interval=None)
                busy_s = args.steps / args.rate
                rs = RetrainSettings()  # a retraining job's defaults: threads, priority, workers
                if args.workers is not None:
                    rs.workers = args.workers
                config = {
                    "dataset": str(root_data / "los-loop"),
                    "out": str(Path(tmp) / "job.pt"),
                    "model": "stformer",
                    "epochs": 100,
                    "time_budget_s": WARMUP_S + busy_s + 30,
                    "threads": 1,
                    "nice": args.nice if args.nice is not None else rs.nice,
                }
                job_out: dict[str, Any] = {}

                def train() -> None:
                    try:
                        job_out["summary"] = train_with_ray(
                            config, num_workers=rs.workers, cpus_per_worker=rs.cpus_per_worker
                        )
                    except Exception as exc:  # reported, and the figures are marked as not measured
                        job_out["error"] = repr(exc)

                job = threading.Thread(target=train, daemon=True)
                job.start()
                print(
                    f"idle: {len(idle)} steps; training starts, measuring again in {WARMUP_S:.0f} s",
                    flush=True,
                )
                t_warm = time.monotonic() + WARMUP_S  # the workers start and reach their training loop
                while time.monotonic() < t_warm:
                    pipe.poll_once(100)
                psutil.cpu_percent(interval=None)
                busy = live(
                    pipe, producer, frames, WARM + 1 + args.steps, args.steps, args.rate, network.step_ms
                )
                cpu_busy = psutil.cpu_percent(interval=None)
                training_alive = job.is_alive()
                print(f"training: {len(busy)} steps; waiting for the job to end", flush=True)
                job.join(timeout=WARMUP_S + busy_s + 300)
        finally:
            pipe.close()
    for name, lat in (("idle", idle), ("training", busy)):
        out[name] = {
            "steps": len(lat),
            "p50_ms": float(np.percentile(lat, 50)),
            "p99_ms": float(np.percentile(lat, 99)),
        }
        print(
            f"{name:9s} p50 {out[name]['p50_ms']:7.1f} ms   p99 {out[name]['p99_ms']:7.1f} ms   ({len(lat)} steps)"
        )
    out["p99_training_over_idle_ratio"] = out["training"]["p99_ms"] / out["idle"]["p99_ms"]
    out["training_ran_throughout"] = training_alive
    out["machine_cpu_percent"] = {"idle": cpu_idle, "training": cpu_busy}
    out["training_job"] = {k: v for k, v in (job_out.get("summary") or {}).items() if k != "config"}
    out["training_job_error"] = job_out.get("error")
    print(f"machine CPU busy: {cpu_idle:.0f} % idle window, {cpu_busy:.0f} % training window", flush=True)
    ray.shutdown()
    result = {
        "benchmark": "retrain_latency",
        "machine": {"node": platform.node(), "cpus": os.cpu_count(), "load_avg": os.getloadavg()},
        "parameters": {
            "sensors": 207,
            "model": "stformer-small",
            "rate_steps_per_s": args.rate,
            "steps": args.steps,
            "train": f"Ray Train {rs.workers} workers x {rs.cpus_per_worker} CPU, 1 torch thread each, on los-loop",
            "train_nice": config["nice"],
            "train_workers": rs.workers,
            "actor_torch_threads": args.threads,
        },
        **out,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "retrain_latency.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
