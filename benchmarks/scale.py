"""Scale-out figures of issue #20 in one file: `benchmarks/results/scale.json`.

    python benchmarks/scale.py [--quick] [--only sink model serving networks]

Runs each part in turn and merges its figures under its key (each part can also run alone):

* **sink** (`scale_sink.py`): Redis writes per micro-batch — one round trip for the forecasts, actuals and
  scores of all its steps — against the per-step pattern, at up to 8,600 sensors;
* **model** (`scale_model.py`): the block-attention STFormer against the dense one — forward time vs
  sensors, training samples/s at 675 sensors, accuracy on Los-loop and pems08-head at one CPU budget, and a
  675-sensor street grid vs persistence at every horizon;
* **serving** (`scale_serve.py`): seal→Redis latency and replay rate at 1,000 and 8,600 sensors through
  the real pipeline (Kafka, Ray actors — one, or two sensor shards —, ONNX Runtime, Redis);
* **networks** (`scale_networks.py`): three 207-sensor networks served at once by pipeline actors, each
  one's p99 against one network alone in the same run.
"""

from __future__ import annotations

import argparse
import importlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results" / "scale.json"

PARTS = {
    "sink": "scale_sink",
    "model": "scale_model",
    "serving": "scale_serve",
    "networks": "scale_networks",
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="short runs of every part")
    ap.add_argument("--only", nargs="+", choices=sorted(PARTS), help="run only these parts")
    args = ap.parse_args()
    for key in args.only or PARTS:
        module = importlib.import_module(PARTS[key])  # this folder is first on sys.path
        t0 = time.monotonic()
        print(f"== {key} ({PARTS[key]}.py)", flush=True)
        figures = module.run(quick=args.quick)
        merge(key, figures)
        print(
            f"== {key}: {time.monotonic() - t0:.0f} s, merged into benchmarks/results/scale.json", flush=True
        )


def part_main(key: str, run: Callable[..., dict[str, Any]]) -> None:
    """A part run alone (`python benchmarks/scale_PART.py [--quick]`): its figures, merged under `key`."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    figures = run(quick=ap.parse_args().quick)
    print(json.dumps(figures, indent=1))
    merge(key, figures)
    print(f"wrote {RESULTS} ({key})")


def merge(key: str, figures: dict[str, Any]) -> None:
    """Replace `key`'s figures in results/scale.json, keeping the other parts'."""
    doc = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    doc[key] = figures
    RESULTS.write_text(json.dumps(doc, indent=1) + "\n")


if __name__ == "__main__":
    main()
