"""Serving benchmark: seal→Redis latency (p50/p99) in live mode and sustained end-to-end replay steps/s,
through the real embedded Kafka broker, real Redis and a local Ray forecaster actor, on CPU (or GPU when
the actor sees one).

Networks: 207 sensors (Los-loop's size), 1,000 and 8,600 (simulated). Models: the persistence baseline
and an untrained STFormer "small" with the committed Los-loop checkpoint's architecture (residual,
road-graph attention bias): the attention model's real compute; weights do not change timing.
Live mode publishes one step every `1/rate` s and measures each step from its sealing to its forecast in
Redis; replay mode publishes a backlog and measures forecast steps per second once the first lands.

    python benchmarks/serve.py [--quick]

Prints a table and writes benchmarks/results/serve.json.
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
from serving.embedded import EmbeddedRuntime
from serving.forecaster import ModelSpec
from serving.pipeline import RunningPipeline, ServePipeline
from stream.kafka_io import ReadingProducer, ensure_topics
from stream.network import Network
from stream.simulate import Simulator, simulated_network

T0 = 1_767_225_600_000
RESULTS = Path(__file__).parent / "results"


def _settings(
    rt: EmbeddedRuntime,
    root: Path,
    *,
    replicas: int = 1,
    shards: int = 1,
    threads: int = 1,
    backend: str = "auto",
    actor_resources: dict[str, float] | None = None,
) -> Settings:
    tag = uuid.uuid4().hex[:8]
    return Settings.model_validate(
        {
            "kafka": {
                "bootstrap": rt.bootstrap,
                "readings_topic": f"bench-{tag}",
                "dead_letter_topic": f"dl-{tag}",
                "group_id": f"g-{tag}",
                "partitions": 2,
                "session_timeout_ms": 3000,
            },
            "redis": {"url": rt.redis_url, "key_prefix": f"b{tag}"},
            "archive": {"root": str(root / tag)},
            "window": {"allowed_lateness_ms": 0, "idle_timeout_ms": 600_000},
            "ray": {
                "actor_num_cpus": 0.5,
                "replicas": replicas,
                "shards": shards,
                "actor_torch_threads": threads,
                "cpu_backend": backend,
                "actor_resources": actor_resources or {},
            },
        }
    )


def _stformer_checkpoint(network: Network, root: Path) -> str:
    import torch

    from training.model import PRESETS
    from training.stformer import STFormer, STFormerConfig

    torch.manual_seed(0)
    # The architecture of the committed Los-loop checkpoint: small preset, residual, road-graph bias.
    cfg = STFormerConfig(
        n_nodes=network.n_sensors,
        in_features=1,
        targets=(0,),
        residual=True,
        graph_bias=True,
        **PRESETS["small"],
    )  # type: ignore[arg-type]
    return save_untrained(STFormer(cfg).set_graph(network.edges), network, root, "stformer")


def save_untrained(model: Any, network: Network, root: Path, name: str) -> str:
    """`model` (weights as built: timing does not depend on them) as a checkpoint of one speed feature."""
    from training.checkpoint import Checkpoint, save_checkpoint
    from training.scaler import StandardScaler

    ckpt = Checkpoint.from_model(
        "stformer",
        model,
        scaler=StandardScaler.identity(1),
        network=network,
        targets=("speed",),
        window=12,
        horizon=12,
        version=f"bench-{name}-{network.n_sensors}",
    )
    return str(save_checkpoint(ckpt, root / f"{name}-{network.n_sensors}.pt"))


def _frames(network: Network, steps: int) -> list[tuple[np.ndarray, np.ndarray]]:
    sim = Simulator(network, seed=0)
    return [sim.step(T0 + t * network.step_ms) for t in range(steps)]


def live(
    pipe: RunningPipeline,
    producer: ReadingProducer,
    frames: list[Any],
    first: int,
    steps: int,
    rate: float,
    step_ms: int,
) -> np.ndarray:
    """Publish one step every 1/rate s from `first`; seal→Redis latency (ms) of each forecast step."""
    pipe.latencies_s.clear()
    pipe.inference_ms.clear()
    stop = threading.Event()

    def publish() -> None:
        for t in range(first, first + steps + 1):
            if stop.wait(1 / rate):
                return
            producer.send_step(T0 + t * step_ms, *frames[t])
            producer.flush()

    th = threading.Thread(target=publish, daemon=True)
    th.start()
    deadline = time.monotonic() + steps / rate + 60
    while len(pipe.latencies_s) < steps and time.monotonic() < deadline:
        pipe.poll_once(20)
    stop.set()
    th.join()
    return np.array(pipe.latencies_s) * 1000


def run_case(
    rt: EmbeddedRuntime,
    root: Path,
    n: int,
    model: str,
    *,
    replay_steps: int,
    live_steps: int,
    rate: float,
    replicas: int = 1,
    shards: int = 1,
    threads: int = 1,
    backend: str = "auto",
    actor_resources: dict[str, float] | None = None,
    network: Network | None = None,
    spec: str | None = None,
) -> dict[str, Any]:
    """One row; `network` and `spec` (a checkpoint) replace the simulated ring and the dense STFormer."""
    network = network or simulated_network(n, step_ms=300_000)
    if spec is None:
        spec = "baseline:persistence" if model == "persistence" else _stformer_checkpoint(network, root)
    s = _settings(
        rt,
        root,
        replicas=replicas,
        shards=shards,
        threads=threads,
        backend=backend,
        actor_resources=actor_resources,
    )
    ensure_topics(s.kafka, {s.kafka.readings_topic: 2, s.kafka.dead_letter_topic: 1})
    frames = _frames(network, replay_steps + live_steps + 1)
    pipe = ServePipeline(s, network, ModelSpec(spec), client_id="bench").start()
    out: dict[str, Any] = {
        "sensors": n,
        "model": model,
        "replicas": replicas,
        "shards": shards,
        "torch_threads": threads,
        "cpu_backend": backend,
    }
    try:
        with ReadingProducer(s.kafka, network) as producer:
            for t in range(replay_steps):  # the backlog
                producer.send_step(T0 + t * network.step_ms, *frames[t])
            producer.flush()
            ledger = pipe.ingest.ingestor.ledger
            while True:  # the group join is not part of the replay: start at the poll that gets data
                t0 = time.perf_counter()
                pipe.poll_once(200)
                if ledger.total().received:
                    break
            target = replay_steps - s.window.window  # the last backlog step seals when live steps arrive
            while pipe.steps_forecast < target:
                pipe.poll_once(200)
            elapsed = time.perf_counter() - t0
            first = 0
            out["replay_steps_per_s"] = (pipe.steps_forecast - first) / elapsed
            lat = live(pipe, producer, frames, replay_steps, live_steps, rate, network.step_ms)
            infer = np.array(pipe.inference_ms)
        out.update(
            live_rate_steps_per_s=rate,
            live_steps=len(lat),
            p50_ms=float(np.percentile(lat, 50)) if len(lat) else None,
            p90_ms=float(np.percentile(lat, 90)) if len(lat) else None,
            p99_ms=float(np.percentile(lat, 99)) if len(lat) else None,
            max_ms=float(lat.max()) if len(lat) else None,
            # the actors' compute alone, per live call: how much of the tail is the CPU's, not the path's
            inference_p50_ms=float(np.percentile(infer, 50)) if len(infer) else None,
            inference_p99_ms=float(np.percentile(infer, 99)) if len(infer) else None,
            inference_ms_last=pipe.dispatcher.last_infer_ms,
            device=pipe.dispatcher.devices()[0],
            node=pipe.dispatcher.infos()[0]["node"],
        )
    finally:
        pipe.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer steps (a smoke run)")
    ap.add_argument("--sensors", type=int, nargs="*", help="only these network sizes")
    ap.add_argument("--replicas", type=int, default=1, help="forecaster actors sharing the steps")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per actor")
    ap.add_argument(
        "--cpu-backends",
        nargs="+",
        default=["onnx", "torch"],
        choices=["onnx", "torch"],
        help="engines of the stformer rows on a CPU, each measured in this run (ray.cpu_backend)",
    )
    ap.add_argument("--out", type=Path, default=RESULTS / "serve.json", help="where the JSON goes")
    args = ap.parse_args()
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    import torch

    gpu = torch.cuda.is_available()
    backends = ["torch"] if gpu else args.cpu_backends  # the CPU engine does not apply on a GPU
    cases = [
        (207, "persistence", 300, 100, 10.0, "torch"),
        *[(207, "stformer", 600, 100, 10.0, b) for b in backends],
        (1000, "persistence", 150, 50, 5.0, "torch"),
        *[(1000, "stformer", 100, 40, 4.0, b) for b in backends],
        (8600, "persistence", 40, 20, 1.0, "torch"),
    ]
    if gpu:  # quadratic spatial attention: ~minutes per step on 2 CPU cores
        cases.append((8600, "stformer", 30, 10, 0.5, "torch"))
    if args.quick:
        cases = [
            (n, m, max(30, r // 5), max(10, lv // 5), rate, b) for n, m, r, lv, rate, b in cases if n < 8600
        ]
    if args.sensors:
        cases = [c for c in cases if c[0] in args.sensors]
    rows = []
    with EmbeddedRuntime() as rt, tempfile.TemporaryDirectory() as tmp:
        for n, model, replay_steps, live_steps, rate, backend in cases:
            row = run_case(
                rt,
                Path(tmp),
                n,
                model,
                replay_steps=replay_steps,
                live_steps=live_steps,
                rate=rate,
                replicas=args.replicas,
                threads=args.threads,
                backend=backend,
            )
            rows.append(row)
            print(
                f"{n:5d} sensors {model:12s} replay {row['replay_steps_per_s']:8.1f} steps/s   "
                f"live@{rate:g}/s p50 {row['p50_ms']:8.1f} ms  p99 {row['p99_ms']:8.1f} ms  "
                f"infer {row['inference_ms_last']:.1f} ms on {row['device']}",
                flush=True,
            )
    ray.shutdown()
    result = {
        "benchmark": "serve",
        "machine": {"node": platform.node(), "cpus": os.cpu_count(), "load_avg": os.getloadavg()},
        "versions": {"python": platform.python_version(), "ray": ray.__version__},
        "targets": {"p99_ms_207_cpu": 50, "replay_steps_per_s_207_cpu": 100},
        "not_run": []
        if any(r["sensors"] == 8600 and r["model"] == "stformer" for r in rows)
        else [
            "8600 sensors stformer on CPU: quadratic spatial attention, see benchmarks/results/gpu_check.json"
        ],
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
