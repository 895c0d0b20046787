"""Instructions per message of the raw consume and of the ingest path, counted by valgrind's cachegrind:
figures this shared machine cannot move (its timings swing ±30 % between runs seconds apart).

    python benchmarks/ingest_instructions.py

Publishes pems08-head as single-reading messages on the embedded broker, twice (48 and 144 steps: 8,160
and 24,480 messages), and consumes each topic in a child process under `valgrind --tool=cachegrind`, once
with the raw consumer and once with the ingest path of `benchmarks/ingest.py` (`RawSide`, `IngestSide`:
the same consumer settings, decode + validate + window + seal per poll). The per-message figures are the
differences between the two topic sizes, so start-up, imports and the group join cancel out. Counted:
instructions (Ir), first-level data-cache misses (D1) and last-level misses (LL) of the whole process,
kafka-python's I/O thread included; cachegrind simulates the caches, so misses are its model's, not the
hardware's. Prints a table and writes benchmarks/results/ingest_instructions.json. Needs valgrind
(Debian package `valgrind`); about 6 minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import ingest as bench  # benchmarks/ingest.py (this script's folder is first on sys.path): sides, topics

from serving.embedded import EmbeddedRuntime
from stream.datasets import load_dataset

STEPS = (48, 144)
SESSION_TIMEOUT_MS = 20_000  # everything runs ~50x slower under valgrind: heartbeats must not time out
EVENTS = {"Ir": r"I\s+refs:\s+([\d,]+)", "D1": r"D1\s+misses:\s+([\d,]+)", "LL": r"LL misses:\s+([\d,]+)"}


def child(mode: str, bootstrap: str, topic: str, n_messages: int) -> None:
    """One consume of the whole topic, the process valgrind watches."""
    bench.DEADLINE_S = 3600.0
    ds = load_dataset(bench.DATASET)
    settings = bench.kafka_settings(bootstrap, topic).model_copy(
        update={"session_timeout_ms": SESSION_TIMEOUT_MS}
    )
    side = bench.RawSide(settings) if mode == "raw" else bench.IngestSide(settings, ds)
    bench.consume(side, n_messages)


def counted(mode: str, bootstrap: str, topic: str, n_messages: int, out_dir: Path) -> dict[str, int]:
    """Run `child` under cachegrind; its event totals."""
    out_file = out_dir / f"{mode}-{n_messages}.out"
    valgrind = ["valgrind", "--tool=cachegrind", "--cache-sim=yes", f"--cachegrind-out-file={out_file}"]
    cmd = [*valgrind, sys.executable, __file__, "--child", mode, bootstrap, topic, str(n_messages)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"{mode} under cachegrind failed:\n{proc.stderr[-3000:]}")
    totals = {}
    for name, pattern in EVENTS.items():
        found = re.search(pattern, proc.stderr)
        if found is None:
            raise RuntimeError(f"no {name} total in cachegrind's output:\n{proc.stderr[-2000:]}")
        totals[name] = int(found.group(1).replace(",", ""))
    return totals


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--child", nargs=4, metavar=("MODE", "BOOTSTRAP", "TOPIC", "N"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.child:
        mode, bootstrap, topic, n = args.child
        child(mode, bootstrap, topic, int(n))
        return
    if shutil.which("valgrind") is None:
        print("skipped: valgrind is not installed (apt-get install valgrind)")
        return
    if not bench.DATASET.exists():
        print(f"skipped: dataset not found at {bench.DATASET} (set SENSORCAST_DATASETS)")
        return
    ds = load_dataset(bench.DATASET)
    t0 = time.monotonic()
    runs: dict[str, dict[int, dict[str, int]]] = {"raw": {}, "ingest": {}}
    with EmbeddedRuntime(kafka=True, redis=False) as rt, tempfile.TemporaryDirectory() as tmp:
        assert rt.bootstrap is not None
        topics = [bench.publish(rt.bootstrap, ds, "single", steps)[:2] for steps in STEPS]
        for mode in runs:
            for topic, n_messages in topics:
                runs[mode][n_messages] = counted(mode, rt.bootstrap, topic, n_messages, Path(tmp))
                print(f"{mode:<7}{n_messages:>8,} messages: {runs[mode][n_messages]}", flush=True)
    n_small, n_large = (n for _, n in topics)
    per_message = {
        mode: {k: (c[n_large][k] - c[n_small][k]) / (n_large - n_small) for k in EVENTS}
        for mode, c in runs.items()
    }
    ratio = {k: per_message["raw"][k] / per_message["ingest"][k] for k in EVENTS}
    print(f"{'per message':<12}{'Ir':>10}{'D1 miss':>10}{'LL miss':>10}")
    for mode, m in per_message.items():
        print(f"{mode:<12}{m['Ir']:>10,.0f}{m['D1']:>10,.1f}{m['LL']:>10,.2f}")
    print(f"{'raw/ingest':<12}{ratio['Ir']:>10.3f}{ratio['D1']:>10.3f}{ratio['LL']:>10.3f}")
    result: dict[str, Any] = {
        "benchmark": "ingest_instructions",
        "machine": {
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
        },
        "tool": subprocess.run(["valgrind", "--version"], capture_output=True, text=True).stdout.strip(),
        "parameters": {
            "dataset": "pems08-head",
            "format": "single",
            "steps": list(STEPS),
            "messages": [n_small, n_large],
            "partitions": bench.PARTITIONS,
            "session_timeout_ms": SESSION_TIMEOUT_MS,
        },
        "totals": {mode: {str(n): c for n, c in counts.items()} for mode, counts in runs.items()},
        "per_message": per_message,
        "raw_vs_ingest_ratio": ratio,
        "seconds": round(time.monotonic() - t0, 1),
    }
    out = Path(__file__).parent / "results" / "ingest_instructions.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
