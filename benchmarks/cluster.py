"""Cluster benchmark: what running on a multi-node Ray cluster with object storage costs, against the same
thing on one node, measured in one run.

- checkpoint load in a forecaster actor on an isolated node: from an `s3://` URI (read on that node) and
  from the driver's disk (shipped as bytes through Ray's object store), and an actor on the driver's node
  loading the local path (the one-machine baseline); driver-observed wall time of `load()` and the actor's
  own time, medians of `--repeats`;
- retraining data: a Los-loop-sized archive range (207 sensors × 2,016 steps) read by `read_archive` from
  the object store vs from a local folder, first with one Parquet file per step (as live serving writes
  them), then after `Archive.compact` (one file per closed UTC day, what the ingest service keeps);
- live seal→Redis p99 at 207 sensors (STFormer small, ONNX Runtime) with the forecaster actor on the
  isolated node vs on the driver's node, alternating (remote, local, local, remote); target ratio ≤ 1.3.

Topology: `tests.cluster.RayCluster` — the head (where the driver runs) and one worker node in a private
mount namespace that cannot see the driver's files —, a real S3 endpoint (moto's server, `tests.s3`), and
the embedded Kafka broker and Redis. The driver is a subprocess joined to the cluster.

    python benchmarks/cluster.py [--quick]

Prints a table and writes benchmarks/results/cluster.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import types
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

RESULTS = REPO / "benchmarks" / "results"
STEP = 300_000
T0 = 1_767_225_600_000


def read_archive_times(moto: Any, root: Path, steps: int, repeats: int) -> dict[str, Any]:
    """Write the same archive locally and to S3 (one file per step), then time reading it back."""
    from stream.archive import Archive
    from stream.datasets import read_archive
    from stream.simulate import Simulator, simulated_network
    from stream.window import SealedStep

    network = simulated_network(207, step_ms=STEP)
    sim = Simulator(network, seed=0)
    sealed = [SealedStep(T0 + t * STEP, *sim.step(T0 + t * STEP), 0) for t in range(steps)]
    uri = moto.bucket(f"bench-{uuid.uuid4().hex[:10]}") + "/archive"
    out: dict[str, Any] = {"steps": steps, "sensors": 207, "files": steps}
    for name, where, storage in (("local", str(root / "archive"), None), ("s3", uri, moto.settings)):
        archive = Archive(where, network, storage).claim()
        t0 = time.perf_counter()
        for step in sealed:  # as live serving writes: one append (one file) per sealed step
            archive.append([step])
        out[f"write_{name}_s"] = round(time.perf_counter() - t0, 2)
        for layout in ("per_step", "compacted"):
            if layout == "compacted":
                t0 = time.perf_counter()
                archive.compact()  # what the ingest service does once a UTC day is closed
                out[f"compact_{name}_s"] = round(time.perf_counter() - t0, 2)
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                ds = read_archive(where, storage=storage)
                times.append(time.perf_counter() - t0)
                assert ds.n_steps == steps
            out[f"read_{name}_{layout}_ms"] = round(1000 * statistics.median(times), 1)
        out[f"files_{name}_compacted"] = len(Archive(where, network, storage)._files)
    for layout in ("per_step", "compacted"):
        out[f"read_s3_vs_local_{layout}_ratio"] = round(
            out[f"read_s3_{layout}_ms"] / out[f"read_local_{layout}_ms"], 2
        )
    return out


def driver(args: dict[str, Any]) -> dict[str, Any]:
    """Runs in a subprocess joined to the cluster: checkpoint loads and live latency, remote vs local."""
    import ray

    from benchmarks.serve import _stformer_checkpoint, run_case
    from serving.config import RaySettings
    from serving.forecaster import ModelSpec, make_actor, ship
    from stream.config import StorageSettings
    from stream.simulate import simulated_network
    from training.checkpoint import load_checkpoint, save_checkpoint

    ray.init(log_to_driver=False, configure_logging=False)
    storage = StorageSettings.model_validate(args["storage"])
    root = Path(args["root"])
    network = simulated_network(207, step_ms=STEP)
    local = _stformer_checkpoint(network, root)
    ckpt = load_checkpoint(local)
    uri = save_checkpoint(ckpt, args["bucket"] + "/models/stformer-207.pt", storage)
    pins = {"remote": {"sc_isolated": 1}, "local": {"sc_head": 1}}
    loads: dict[str, Any] = {}
    for where, source in (("remote", uri), ("remote", local), ("local", local)):
        settings = RaySettings(actor_resources=pins[where], actor_num_cpus=0.5, cpu_backend="torch")
        actor = make_actor(settings, 12, 12, storage)
        ray.get(actor.load.remote(*ship(ModelSpec(local, ckpt.sha256), storage).args(), network.to_dict()))
        node = ray.get(actor.info.remote())["node"]
        walls, inside = [], []
        for _ in range(args["repeats"]):
            t0 = time.perf_counter()
            shipment = ship(ModelSpec(source, ckpt.sha256), storage)  # the driver's part is timed too
            ray.get(actor.load.remote(*shipment.args()))
            walls.append(1000 * (time.perf_counter() - t0))
            inside.append(ray.get(actor.info.remote())["load_ms"])
        kind = "uri" if source == uri else "local_path"
        loads[f"{where}_actor_{kind}"] = {
            "node": node,
            "wall_ms": round(statistics.median(walls), 1),
            "in_actor_ms": round(statistics.median(inside), 1),
            "shipped_as": "uri" if shipment.blob is None else "bytes via the object store",
        }
        ray.kill(actor)
    live: dict[str, list[dict[str, Any]]] = {"remote": [], "local": []}
    rt = types.SimpleNamespace(bootstrap=args["bootstrap"], redis_url=args["redis_url"])
    for where in ("remote", "local", "local", "remote"):
        row = run_case(
            rt,
            root,
            207,
            "stformer",
            replay_steps=args["replay_steps"],
            live_steps=args["live_steps"],
            rate=10.0,
            backend="onnx",
            actor_resources=pins[where],
        )  # type: ignore[arg-type]
        live[where].append(row)
        print(
            f"live {where}: p50 {row['p50_ms']:.1f} ms, p99 {row['p99_ms']:.1f} ms",
            file=sys.stderr,
            flush=True,
        )
    ray.shutdown()
    return {"checkpoint_load": loads, "live": live}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer steps and repeats (a smoke run)")
    ap.add_argument("--out", type=Path, default=RESULTS / "cluster.json")
    args = ap.parse_args()
    import ray

    from serving.embedded import EmbeddedRuntime
    from tests.cluster import RayCluster
    from tests.s3 import MotoServer

    repeats = 3 if args.quick else 7
    archive_steps = 288 if args.quick else 2016
    with tempfile.TemporaryDirectory(prefix="sc-bench-cluster-") as tmp:
        root = Path(tmp)
        data = root / "driver-data"  # the driver's files: hidden from the isolated node
        data.mkdir()
        moto = MotoServer.start(root)
        try:
            reads = read_archive_times(moto, data, archive_steps, repeats)
            for layout in ("per_step", "compacted"):
                print(
                    f"archive read ({layout} files), {archive_steps} steps × 207 sensors: local "
                    f"{reads[f'read_local_{layout}_ms']} ms, s3 {reads[f'read_s3_{layout}_ms']} ms "
                    f"(x{reads[f'read_s3_vs_local_{layout}_ratio']})",
                    flush=True,
                )
            bucket = moto.bucket(f"bench-{uuid.uuid4().hex[:10]}")
            with (
                EmbeddedRuntime() as rt,
                RayCluster.start(
                    root / "cluster", isolated_nodes=1, hidden=[data], head_resources={"sc_head": 10}
                ) as cluster,
            ):
                t0 = time.monotonic()
                spec = {
                    "storage": json.loads(moto.settings.model_dump_json()),
                    "bucket": bucket,
                    "root": str(data),
                    "repeats": repeats,
                    "bootstrap": rt.bootstrap,
                    "redis_url": rt.redis_url,
                    "replay_steps": 60 if args.quick else 200,
                    "live_steps": 40 if args.quick else 150,
                }
                code = (
                    "import json, sys; from benchmarks.cluster import driver; "
                    "print(json.dumps(driver(json.loads(sys.argv[1]))))"
                )
                # the storage secrets ride in the argument list of a local subprocess: test credentials only
                measured = cluster.driver(code, json.dumps(spec), timeout_s=1800)
                topology = {
                    "head": cluster.head_node_id,
                    "isolated": cluster.node_ids,
                    "cluster_s": round(time.monotonic() - t0),
                }
        finally:
            moto.stop()
    loads = measured["checkpoint_load"]
    p99 = {w: statistics.median(r["p99_ms"] for r in rows) for w, rows in measured["live"].items()}
    p50 = {w: statistics.median(r["p50_ms"] for r in rows) for w, rows in measured["live"].items()}
    figures = {
        "checkpoint_load_remote_uri_ms": loads["remote_actor_uri"]["wall_ms"],
        "checkpoint_load_remote_shipped_bytes_ms": loads["remote_actor_local_path"]["wall_ms"],
        "checkpoint_load_local_path_ms": loads["local_actor_local_path"]["wall_ms"],
        "checkpoint_load_uri_vs_local_ratio": round(
            loads["remote_actor_uri"]["wall_ms"] / loads["local_actor_local_path"]["wall_ms"], 2
        ),
        "retrain_read_s3_compacted_ms": reads["read_s3_compacted_ms"],
        "retrain_read_local_compacted_ms": reads["read_local_compacted_ms"],
        "retrain_read_s3_vs_local_compacted_ratio": reads["read_s3_vs_local_compacted_ratio"],
        "retrain_read_s3_per_step_files_ms": reads["read_s3_per_step_ms"],
        "retrain_read_local_per_step_files_ms": reads["read_local_per_step_ms"],
        "retrain_read_s3_vs_local_per_step_files_ratio": reads["read_s3_vs_local_per_step_ratio"],
        "live_p50_ms_remote": round(p50["remote"], 1),
        "live_p50_ms_local": round(p50["local"], 1),
        "live_p99_ms_remote": round(p99["remote"], 1),
        "live_p99_ms_local": round(p99["local"], 1),
        "live_p99_remote_vs_local_ratio": round(p99["remote"] / p99["local"], 2),
    }
    for name, value in figures.items():
        print(f"{name:45s} {value}")
    result = {
        "benchmark": "cluster",
        "machine": {"node": platform.node(), "cpus": os.cpu_count(), "load_avg": os.getloadavg()},
        "versions": {"python": platform.python_version(), "ray": ray.__version__},
        "topology": topology | {"object_store": "moto server (S3 API over HTTP on loopback)"},
        "parameters": {
            "repeats": repeats,
            "archive_steps": archive_steps,
            "sensors": 207,
            "quick": args.quick,
        },
        "targets": {"live_p99_remote_vs_local_ratio": 1.3},
        "figures": figures,
        "checkpoint_load": loads,
        "archive": reads,
        "live_rows": measured["live"],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
