"""Los-loop recipe sweep: how far one change at a time moves the STFormer from its CPU recipe.

    python benchmarks/losloop_sweep.py [--workers 10] [--device cuda] [--only base-s0,mse]

Each variant is the CPU recipe the sweep started from (README "Training results" before the sweep chose
lr 6e-3 from it, `BASE`) with one change, trained by the same
`train_func` as `sensorcast train` for the same number of epochs a 2-core CPU fits in its 30-minute budget
(22), with the global batch of the two CPU workers (2 x 16) in one process — so a GPU explores in minutes
what the CPU would take hours for, with the same training dynamics. Every variant is scored on the
validation part (what a choice may use) and on the test part (T-GCN protocol, trajectory RMSE/MAE). Three
seeds of the unchanged recipe give the noise level. `refit-*` variants refit the recipe on the training and
validation parts together (test only is held out) for a fixed number of epochs; `ensemble-*` rows average
the forecasts of trained variants. Variants run in parallel processes (one torch thread each). Prints one
line per variant and writes benchmarks/results/losloop_sweep.json ($OUT when set).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import tempfile
import time
import traceback
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from stream.datasets import datasets_root

# The recipe this sweep started from (the committed checkpoint's until the sweep chose lr 6e-3), with the
# epochs a CPU run now fits in its budget and the two workers' batches as one.
BASE: dict[str, Any] = dict(
    model="stformer",
    preset="small",
    epochs=22,
    batch_size=32,
    lr=3e-3,
    weight_decay=1e-4,
    loss="huber",
    schedule="cosine",
    warmup_epochs=2,
    ema=0.99,
    patience=10,
    seed=0,
    overrides={"residual": True, "dow_dim": 0, "graph_bias": True, "steps_per_day": 48},
)

# name -> change; "o.X" changes the model config field X. "info" variants do not fit the CPU budget.
VARIANTS: dict[str, dict[str, Any]] = {
    "base-s0": {},
    "base-s1": {"seed": 1},
    "base-s2": {"seed": 2},
    "mse": {"loss": "mse"},
    "mae": {"loss": "mae"},
    "lr1e-3": {"lr": 1e-3},
    "lr6e-3": {"lr": 6e-3},
    "drop0.0": {"o.dropout": 0.0},
    "drop0.2": {"o.dropout": 0.2},
    "drop0.3": {"o.dropout": 0.3},
    "wd1e-2": {"weight_decay": 1e-2},
    "wd5e-2": {"weight_decay": 5e-2},
    "adapt48": {"o.adaptive_dim": 48},
    "adapt8": {"o.adaptive_dim": 8},
    "spd288": {"o.steps_per_day": 288},
    "spd24": {"o.steps_per_day": 24},
    "tod0": {"o.tod_dim": 0, "o.input_dim": 32},
    "nograph": {"o.graph_bias": False},
    "temporal2": {"o.temporal_layers": 2},
    "spatial2": {"o.spatial_layers": 2},
    "bs16": {"batch_size": 16},
    "bs64": {"batch_size": 64, "lr": 4e-3},
    "ema0": {"ema": 0.0},
    "ema0.995": {"ema": 0.995},
    "ffn192": {"o.ffn_dim": 192},
    "in32": {"o.input_dim": 32},
    "heads4": {"o.heads": 4},
    "warm0": {"warmup_epochs": 0},
    "info-epochs40": {"epochs": 40},
    "info-epochs12": {"epochs": 12},
    "info-full-preset": {"preset": "full"},
}
# Refits of the recipe on the training and validation parts together (`fit_on="train+val"`): a fixed number
# of epochs, the final weights kept. 18 epochs over the 1.25x larger refit set are about the optimizer steps
# of the best validation epoch (13-14 of 22) and what a 2-core CPU fits in 30 minutes. Nothing is held out
# but test, so these are scored on test only (their validation figures are in-sample).
REFIT = {"fit_on": "train+val", "epochs": 18}
VARIANTS.update(
    {
        "refit-s0": REFIT,
        "refit-s1": {**REFIT, "seed": 1},
        "refit-s2": {**REFIT, "seed": 2},
        "refit-mse": {**REFIT, "loss": "mse"},
        "refit-lr6e-3": {**REFIT, "lr": 6e-3},
        "refit-lr6e-3-s1": {**REFIT, "lr": 6e-3, "seed": 1},
        "refit-ema0.995": {**REFIT, "ema": 0.995},
        "refit-spatial2": {**REFIT, "o.spatial_layers": 2},
        "refit-bs16": {**REFIT, "batch_size": 16},
        "refit-e22": {**REFIT, "epochs": 22},
        "refit-e22-s1": {**REFIT, "epochs": 22, "seed": 1},
        "info-refit-e30": {**REFIT, "epochs": 30},
        "info-refit-e30-s1": {**REFIT, "epochs": 30, "seed": 1},
    }
)
# Averages of the forecasts of several trained variants: how far variance reduction alone goes (a served
# ensemble would multiply the per-step model cost by its size).
ENSEMBLES: dict[str, list[str]] = {
    "ensemble-base": ["base-s0", "base-s1", "base-s2"],
    "ensemble-refit": ["refit-s0", "refit-s1", "refit-s2"],
    "ensemble-refit-all": [n for n in VARIANTS if n.startswith(("refit", "info-refit"))],
}


def make_config(change: dict[str, Any]) -> dict[str, Any]:
    """The base recipe with `change` applied."""
    cfg = {**BASE, "overrides": dict(BASE["overrides"])}
    for key, value in change.items():
        if key.startswith("o."):
            cfg["overrides"][key[2:]] = value
        else:
            cfg[key] = value
    return cfg


def run_variant(
    name: str, change: dict[str, Any], dataset: str, device: str, work: str, epochs: int | None
) -> dict[str, Any]:
    """Train one variant and score it on val and test; runs in a worker process."""
    import torch

    torch.set_num_threads(1)
    from stream.datasets import load_dataset
    from training.predictor import Predictor
    from training.train import train_func

    started = time.monotonic()
    out = str(Path(work) / f"{name}.pt")
    config = {**make_config(change), "dataset": dataset, "out": out, "device": device}
    if epochs:
        config["epochs"] = epochs
    summary = train_func(config)
    ds = load_dataset(dataset)
    predictor = Predictor.from_checkpoint(out, device=device, network=ds.network)
    result: dict[str, Any] = {
        "name": name,
        "change": change,
        "best_epoch": summary["best_epoch"],
        "epochs_run": summary["epochs_run"],
        "seconds": round(time.monotonic() - started, 1),
    }
    return {**result, **_score(predictor, ds)}


def _score(forecaster: Any, ds: Any) -> dict[str, Any]:
    """Trajectory RMSE and MAE on the validation and test parts."""
    from training.evaluate import evaluate

    scores: dict[str, Any] = {}
    for split in ("val", "test"):
        report = evaluate(forecaster, ds, split=split)
        scores[split] = {
            lead: {"rmse": round(v["rmse"], 4), "mae": round(v["mae"], 4)}
            for lead, v in report["trajectory"].items()
        }
    return scores


class _Average:
    """The mean forecast of several trained variants (the `Forecaster` that evaluation takes)."""

    def __init__(self, members: list[Any]) -> None:
        self.members = members
        first = members[0]
        self.window, self.horizon, self.version = first.window, first.horizon, "ensemble"
        self.network_fingerprint, self.out_features = first.network_fingerprint, first.out_features

    def predict(self, values: Any, mask: Any, step_ts: Any) -> Any:
        import numpy as np

        return np.mean([m.predict(values, mask, step_ts) for m in self.members], axis=0)


def score_ensemble(name: str, members: list[str], dataset: str, device: str, work: str) -> dict[str, Any]:
    from stream.datasets import load_dataset
    from training.predictor import Predictor

    ds = load_dataset(dataset)
    average = _Average(
        [
            Predictor.from_checkpoint(
                Path(work) / f"{m}.pt", device=device, network=ds.network, backend="torch"
            )
            for m in members
        ]
    )
    return {"name": name, "members": members, **_score(average, ds)}


def _line(r: dict[str, Any]) -> str:
    t, v = r["test"], r["val"]
    trained = (
        f"best epoch {r['best_epoch']:>2}/{r['epochs_run']:>2}"
        if "best_epoch" in r
        else f"{len(r['members'])} members"
    )
    return (
        f"{r['name']:>18}  {trained:<16}  val 60-min RMSE {v['60 min']['rmse']:.3f}  |  test RMSE "
        + " / ".join(f"{t[k]['rmse']:.3f}" for k in ("15 min", "30 min", "45 min", "60 min"))
        + f"  MAE 15/60 {t['15 min']['mae']:.3f} / {t['60 min']['mae']:.3f}"
        + (f"  ({r['seconds']:.0f} s)" if "seconds" in r else "")
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default=None, help="los-loop folder (default: the shared datasets)")
    parser.add_argument("--workers", type=int, default=10, help="variants trained at once")
    parser.add_argument("--device", default=None, help="cuda when available, else cpu")
    parser.add_argument("--only", default=None, help="comma-separated variant names")
    parser.add_argument("--epochs", type=int, default=None, help="override every variant's (smoke runs)")
    args = parser.parse_args()
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    root = datasets_root()
    dataset = args.dataset or (str(root / "los-loop") if root else None)
    if dataset is None or not Path(dataset).is_dir():
        raise SystemExit("los-loop not found: pass --dataset or set SENSORCAST_DATASETS")
    names = args.only.split(",") if args.only else list(VARIANTS)
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown:
        raise SystemExit(f"unknown variants {unknown}: expected some of {list(VARIANTS)}")
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as work:
        ctx = mp.get_context("spawn")  # CUDA cannot be used in forked children
        with ProcessPoolExecutor(args.workers, mp_context=ctx) as pool:
            futures = {
                pool.submit(run_variant, n, VARIANTS[n], dataset, device, work, args.epochs): n for n in names
            }
            for future in as_completed(futures):
                try:
                    result = future.result()
                except Exception:
                    print(f"{futures[future]} failed:\n{traceback.format_exc()}", flush=True)
                    continue
                results.append(result)
                print(_line(result), flush=True)
        trained = {r["name"] for r in results}
        ensembles = [
            score_ensemble(name, members, dataset, device, work)
            for name, members in ENSEMBLES.items()
            if set(members) <= trained
        ]
        for e in ensembles:
            print(_line(e), flush=True)
    # held-out variants by validation error, then the refits (their validation figures are in-sample)
    results.sort(key=lambda r: (r["change"].get("fit_on") == "train+val", r["val"]["60 min"]["rmse"]))
    doc = {
        "machine": platform.node(),
        "device": torch.cuda.get_device_name(0) if device == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "base": BASE,
        "epochs_override": args.epochs,
        "variants": results,
        "ensembles": ensembles,
    }
    out_dir = Path(os.environ.get("OUT", Path(__file__).parent / "results"))
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "losloop_sweep.json").write_text(json.dumps(doc, indent=1))


if __name__ == "__main__":
    main()
