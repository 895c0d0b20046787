"""Soak: replay a simulated network at a multiple of the steady rate through the full pipeline (embedded
Kafka → ingest → Ray forecaster actor → Redis) for a bounded time, and report the serving process's memory
and the consumer lag over time.

The steady rate is the demo's: one 5-minute step per second (`sensorcast demo`'s default speed of 300) for
`--sensors` sensors (default 207, Los-loop's size); `--rate-multiple 10` publishes ten steps per second.
The pipeline runs in this process, its heap settled once started as `sensorcast serve` does.

Bounded memory means RSS stops growing: its growth rate is fitted (least squares) over the whole run after
the warm-up and, separately, over the second half, where a plateau must show. Each sample also splits
memory by owner, to tell a Python leak from a native one: RSS as anonymous, file-backed and shared pages;
the C library malloc's bytes in use and freed-but-kept (glibc `mallinfo2`, all arenas: numpy arrays,
objects over 512 bytes, Arrow's buffers — `serving` makes malloc Arrow's pool — and C extensions;
fragmentation shows as growing free bytes); bytes Arrow's pool holds; the count of Python object blocks
(pymalloc). Anonymous growth that none of these shows is an allocator with its own arenas (pyarrow's
default mimalloc was one). With `--tracemalloc N` the traced Python/numpy bytes too, and the allocation
sites (N frames) whose live bytes grew most between a snapshot at the end of the warm-up and one at the
end, each after a full collection (so neither garbage nor free lists count), are printed and saved.
Tracing slows the process: use it to find a leak, not for the figures. At the end a full collection
reports the cyclic garbage left (objects, and Python blocks it and the free lists freed). No lag growth
means the lag at the end is no larger than after the warm-up (the consumer keeps up). Latency
percentiles are seal→Redis over the last 10,000 steps.

    python benchmarks/soak.py --minutes 30 --rate-multiple 10
    python benchmarks/soak.py --minutes 6 --tracemalloc 8     # what grows, where

Prints a table and writes benchmarks/results/soak.json.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import ctypes.util
import gc
import json
import os
import platform
import sys
import tempfile
import threading
import time
import tracemalloc
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from serving.config import Settings
from serving.embedded import EmbeddedRuntime
from serving.forecaster import ModelSpec
from serving.memory import rss_mb, settle_heap
from serving.pipeline import ServePipeline
from stream.kafka_io import ReadingProducer, ensure_topics
from stream.simulate import Simulator, simulated_network

T0 = 1_767_225_600_000
STEADY_STEPS_PER_S = 1.0
RESULTS = Path(__file__).parent / "results"
MB = 1024 * 1024
TOP_SITES = 15


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


def _mallinfo2() -> Any:
    """glibc's `mallinfo2` (all arenas), None elsewhere."""
    name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(name) if name else None
    fn = getattr(libc, "mallinfo2", None)
    if fn is None:
        return None
    fn.restype = _MallInfo2
    return fn


MALLINFO2 = _mallinfo2()


def _rss_parts() -> dict[str, float]:
    """RSS split into anonymous memory (heaps, stacks), file pages (libraries) and shared memory (Ray's
    object store is mapped into this process), from /proc (Linux; empty elsewhere)."""
    out = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            name, _, rest = line.partition(":")
            if name in ("RssAnon", "RssFile", "RssShmem"):
                out[f"{name.removeprefix('Rss').lower()}_mb"] = int(rest.split()[0]) / 1024
    return out


def _arrow_pool() -> Any:
    import pyarrow as pa  # not before `serving`, which chooses Arrow's allocator before pyarrow is imported

    return pa.default_memory_pool()


def memory() -> dict[str, float]:
    """This process's memory by owner, in MiB (Python blocks as a count)."""
    out = {"rss_mb": rss_mb(), "py_blocks": sys.getallocatedblocks()}
    out |= _rss_parts()
    if MALLINFO2 is not None:
        info = MALLINFO2()
        out["malloc_used_mb"] = (info.uordblks + info.hblkhd) / MB  # in use, incl. mmap-ed chunks
        out["malloc_free_mb"] = info.fordblks / MB  # freed but kept by the arenas
    out["arrow_mb"] = _arrow_pool().bytes_allocated() / MB
    if tracemalloc.is_tracing():
        out["traced_mb"] = tracemalloc.get_traced_memory()[0] / MB
    return {k: round(v, 2) for k, v in out.items()}


def slope_per_min(t_s: np.ndarray, y: np.ndarray) -> float:
    """Least-squares growth rate of `y` per minute."""
    return float(np.polyfit(t_s / 60, y, 1)[0]) if len(t_s) > 2 else 0.0


def growing_sites(early: tracemalloc.Snapshot, late: tracemalloc.Snapshot) -> list[dict[str, Any]]:
    """The allocation sites (tracebacks) whose live bytes grew most from `early` to `late`."""
    skip = [tracemalloc.Filter(False, tracemalloc.__file__), tracemalloc.Filter(False, "<frozen *>")]
    diff = late.filter_traces(skip).compare_to(early.filter_traces(skip), "traceback")
    return [
        {
            "size_diff_kb": round(d.size_diff / 1024, 1),
            "count_diff": d.count_diff,
            "size_kb": round(d.size / 1024, 1),
            "frames": [f"{f.filename.split('site-packages/')[-1]}:{f.lineno}" for f in d.traceback],
        }
        for d in diff[:TOP_SITES]
    ]


def _settings(rt: EmbeddedRuntime, root: Path) -> Settings:
    tag = uuid.uuid4().hex[:8]
    kafka = {
        "bootstrap": rt.bootstrap,
        "readings_topic": f"soak-{tag}",
        "dead_letter_topic": f"dl-{tag}",
        "group_id": f"g-{tag}",
        "partitions": 2,
        "session_timeout_ms": 6000,
    }
    return Settings.model_validate(
        {
            "kafka": kafka,
            "redis": {"url": rt.redis_url, "key_prefix": f"soak{tag}", "stream_maxlen": 2000},
            "archive": {"root": str(root / tag)},
            "window": {"allowed_lateness_ms": 0, "idle_timeout_ms": 600_000},
            "ray": {"actor_num_cpus": 0.5},
        }
    )


def soak(
    minutes: float, rate_multiple: float, sensors: int, sample_s: float, frames: int = 0
) -> dict[str, Any]:
    import ray

    rate = STEADY_STEPS_PER_S * rate_multiple  # steps per second
    warmup_s = min(60.0, minutes * 60 / 4)
    network = simulated_network(sensors, step_ms=300_000)
    sim = Simulator(network, seed=0)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    samples: list[dict[str, Any]] = []
    snapshots: list[tracemalloc.Snapshot] = []
    with EmbeddedRuntime() as rt, tempfile.TemporaryDirectory() as tmp:
        s = _settings(rt, Path(tmp))
        ensure_topics(s.kafka, {s.kafka.readings_topic: 2, s.kafka.dead_letter_topic: 1})
        pipe = ServePipeline(s, network, ModelSpec("baseline:persistence"), client_id="soak").start()
        settle_heap()
        if frames:
            tracemalloc.start(frames)
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
                    if frames and not snapshots and now - t0 >= warmup_s:
                        gc.collect()
                        snapshots.append(tracemalloc.take_snapshot())
                    by_partition = pipe.lag()
                    sample: dict[str, Any] = {"t_s": round(now - t0, 1), **memory()}
                    sample["lag_messages"] = sum(v for v in by_partition.values() if v >= 0)
                    sample["steps_sent"] = sent[0]
                    sample["steps_forecast"] = pipe.steps_forecast
                    sample["gc_full_collections"] = gc.get_stats()[2]["collections"]
                    sample["servers_rss_mb"] = {k: round(v, 1) for k, v in rt.memory_rss_mb().items()}
                    samples.append(sample)
            blocks = sys.getallocatedblocks()
            garbage = gc.collect()  # cyclic garbage a full collection had not reached yet
            garbage_blocks = blocks - sys.getallocatedblocks()
            if snapshots:
                snapshots.append(tracemalloc.take_snapshot())
        finally:
            stop.set()
            th.join(30)
            tracemalloc.stop()
            ledger = pipe.ingest.ingestor.ledger.snapshot()
            latencies = np.array(pipe.latencies_s) * 1000
            pipe.close()
            ray.shutdown()
    if errors:
        raise errors[0]
    elapsed = samples[-1]["t_s"]
    warm = [x for x in samples if x["t_s"] >= warmup_s] or samples
    half = [x for x in samples if x["t_s"] >= elapsed / 2] or samples

    def series(rows: list[dict[str, Any]], key: str) -> tuple[np.ndarray, np.ndarray]:
        rows = [x for x in rows if key in x]
        return np.array([x["t_s"] for x in rows]), np.array([x[key] for x in rows], dtype=float)

    keys = [k for k in samples[-1] if k == "py_blocks" or (k.endswith("_mb") and k != "servers_rss_mb")]
    rss = series(warm, "rss_mb")[1]
    t, lag = series(warm, "lag_messages")
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
            "second_half_from_s": float(half[0]["t_s"]),
            "tracemalloc_frames": frames,
            "arrow_pool": _arrow_pool().backend_name,
        },
        "baseline": {
            "steady_steps_per_s": STEADY_STEPS_PER_S,
            "readings_per_s": STEADY_STEPS_PER_S * sensors,
        },
        "figures": {
            "readings_per_s": ledger["total"]["received"] / elapsed if elapsed else 0.0,
            "steps_sent": samples[-1]["steps_sent"],
            "steps_forecast": samples[-1]["steps_forecast"],
            "seal_to_redis_p50_ms": float(np.percentile(latencies, 50)) if len(latencies) else None,
            "seal_to_redis_p99_ms": float(np.percentile(latencies, 99)) if len(latencies) else None,
            "rss_mb_after_warmup": float(rss[0]),
            "rss_mb_end": float(rss[-1]),
            "rss_mb_max": float(rss.max()),
            "rss_growth_mb": float(rss[-1] - rss[0]),
            "rss_slope_mb_per_min": slope_per_min(*series(warm, "rss_mb")),
            "rss_slope_second_half_mb_per_min": slope_per_min(*series(half, "rss_mb")),
            # per owner, over the second half (py_blocks: blocks per minute)
            "second_half_per_min": {k: round(slope_per_min(*series(half, k)), 4) for k in keys},
            "lag_after_warmup": int(lag[0]),
            "lag_end": int(lag[-1]),
            "lag_max": int(lag.max()),
            "lag_slope_messages_per_min": slope_per_min(t, lag),
            "ledger_balanced": ledger["balanced"],
            "garbage_objects_at_end": garbage,
            "garbage_blocks_at_end": garbage_blocks,
        },
        "growing_sites": growing_sites(*snapshots) if len(snapshots) == 2 else [],
        "samples": samples,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--rate-multiple", type=float, default=10.0)
    ap.add_argument("--sensors", type=int, default=207)
    ap.add_argument("--sample-s", type=float, default=10.0)
    ap.add_argument("--tracemalloc", type=int, default=0, metavar="FRAMES", help="trace allocations (0: off)")
    ap.add_argument("--out", type=Path, default=RESULTS / "soak.json")
    args = ap.parse_args()
    out = soak(args.minutes, args.rate_multiple, args.sensors, args.sample_s, args.tracemalloc)
    cols = [
        "t_s",
        "rss_mb",
        "anon_mb",
        "file_mb",
        "shmem_mb",
        "malloc_used_mb",
        "malloc_free_mb",
        "arrow_mb",
        "py_blocks",
        "traced_mb",
    ]
    cols = [c for c in cols if c in out["samples"][-1]] + ["lag_messages", "steps_sent", "steps_forecast"]
    print(" ".join(f"{c.removesuffix('_mb').removesuffix('_messages'):>12}" for c in cols))
    for x in out["samples"]:
        print(" ".join(f"{x[c]:>12}" for c in cols))
    for site in out["growing_sites"]:
        print(
            f"{site['size_diff_kb']:+10.1f} KiB {site['count_diff']:+8d} blocks  "
            + " <- ".join(site["frames"][::-1][:4])
        )
    f = out["figures"]
    half = ", ".join(f"{k} {v:+.3f}" for k, v in f["second_half_per_min"].items())
    print(
        f"RSS {f['rss_mb_after_warmup']:.1f} → {f['rss_mb_end']:.1f} MB (growth {f['rss_growth_mb']:+.1f} MB, "
        f"{f['rss_slope_mb_per_min']:+.3f} MB/min after the warm-up, {f['rss_slope_second_half_mb_per_min']:+.3f} "
        f"MB/min over the second half); second half per min: {half}; lag {f['lag_after_warmup']} → "
        f"{f['lag_end']} messages (max {f['lag_max']}); {f['readings_per_s']:.0f} readings/s; seal→Redis p50 "
        f"{f['seal_to_redis_p50_ms']:.1f} ms, p99 {f['seal_to_redis_p99_ms']:.1f} ms; ledger balanced: "
        f"{f['ledger_balanced']}"
    )
    args.out.parent.mkdir(exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
