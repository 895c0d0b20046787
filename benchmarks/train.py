"""Ray Train throughput vs a plain torch loop: same model, data and batch size, measured in one run.

    python benchmarks/train.py [--dataset PATH] [--batches 12] [--epochs 2]

Prints a table and writes benchmarks/results/train.json. The plain loop gets as many torch threads as the
Ray run has workers (one thread each), so both use the same cores; the target is ray_vs_plain_ratio ≥ 0.85.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import ray
import torch
from rich.console import Console
from rich.table import Table

from stream.datasets import datasets_root
from training.ray_train import train_with_ray
from training.train import train_func

RESULTS = Path(__file__).resolve().parent / "results" / "train.json"


def _synthetic(folder: Path) -> Path:
    t = np.arange(2016)[:, None]
    speed = 55 + 10 * np.sin(2 * np.pi * t / 288 + np.arange(207) / 10)
    np.savetxt(
        folder / "bench_speed.csv", speed, delimiter=",", header=",".join(map(str, range(207))), comments=""
    )
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dataset", type=Path, default=None)
    parser.add_argument("--model", default="stformer")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batches", type=int, default=12, help="batches per worker per epoch")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="sensorcast-bench-"))
    root = datasets_root()
    dataset = args.dataset or (root / "los-loop" if root else _synthetic(tmp))
    config = {
        "dataset": str(dataset),
        "model": args.model,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "max_batches": args.batches,
        "max_val_windows": 32,
        "patience": 100,
    }
    torch.set_num_threads(args.workers)
    started = time.monotonic()
    plain = train_func({**config, "out": str(tmp / "plain.pt"), "threads": args.workers})
    plain_s = time.monotonic() - started
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, configure_logging=False, log_to_driver=False)
    started = time.monotonic()
    distributed = train_with_ray(
        {**config, "out": str(tmp / "ray.pt"), "threads": 1}, num_workers=args.workers
    )
    ray_s = time.monotonic() - started
    ray.shutdown()
    ratio = distributed["samples_per_s"] / plain["samples_per_s"]
    result = {
        "benchmark": "train",
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
        },
        "versions": {"torch": torch.__version__, "ray": ray.__version__, "numpy": np.__version__},
        "parameters": {**config, "dataset": Path(dataset).name, "workers": args.workers},
        "plain_samples_per_s": plain["samples_per_s"],
        "ray_samples_per_s": distributed["samples_per_s"],
        "ray_vs_plain_ratio": ratio,
        "plain_wall_s": round(plain_s, 1),
        "ray_wall_s_incl_startup": round(ray_s, 1),
        "note": "samples/s over training steps only (validation and Ray start-up excluded); "
        f"the plain loop uses {args.workers} torch threads, each Ray worker 1 thread and 0.5 CPU",
    }
    table = Table(title=f"{args.model} training throughput on {Path(dataset).name}")
    for column in ("run", "samples/s", "wall s"):
        table.add_column(column, justify="right")
    table.add_row(f"plain torch, {args.workers} threads", f"{plain['samples_per_s']:.1f}", f"{plain_s:.1f}")
    table.add_row(f"Ray Train, {args.workers} workers", f"{distributed['samples_per_s']:.1f}", f"{ray_s:.1f}")
    table.add_row("ratio", f"{ratio:.2f}", "")
    Console().print(table)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=1))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
