"""Continuous retraining beside serving: triggers, a Ray Train job on the archive, the champion/challenger
gate, and the decision recorded in the registry. The hot swap itself is `serving.lifecycle`'s (between steps).

Triggers: every `every_steps` sealed steps, every `interval_s` seconds, and on **drift** — the serving
model's rolling online MAE above its reference (the rolling MAE when its window first filled) by
`drift_margin` for `drift_patience` consecutive steps. One job at a time, in a background thread (the
serving loop never waits for it); a failed job (exception, non-finite loss or forecasts) leaves the
champion untouched, is reported as an event, and the next trigger waits an exponential backoff.

The job trains on a sliding range of recent archived steps, excluding the newest `holdout_steps`: the Ray
Train workers read that range from the archive themselves (a URI on a cluster; see `training.ray_train`
for what travels how), report the challenger to `storage_path`, and this process registers it from there.
The gate runs here, in the job's thread, and scores challenger, champion and persistence on those held-out
steps (never trained on) with the evaluation protocol's masked metrics and promotes the challenger only if
it beats the champion by `promote_margin` (the seed champion is persistence itself, so the first model
must beat persistence; after a regime change a challenger that beats the champion but not persistence on
the holdout is still promoted — it is the better of the models that can serve — and its reason says so).
Every decision, with its figures, goes to the registry and the events stream.
"""

from __future__ import annotations

import logging
import math
import shutil
import tempfile
import time
import traceback
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from serving.config import RetrainSettings
from serving.forecaster import ModelSpec, build_predictor
from stream.archive import Archive
from stream.config import StorageSettings
from stream.datasets import SensorDataset, read_archive
from stream.network import Network
from stream.storage import open_location

log = logging.getLogger(__name__)


@dataclass
class Decision:
    """The gate's verdict with its figures (MAE averaged over horizons, on the held-out steps)."""

    promoted: bool
    version: str
    reason: str
    figures: dict[str, Any] = field(default_factory=dict)


class TrainingFailed(RuntimeError):
    """A training job crashed or produced a model that cannot be used (non-finite loss or forecasts)."""


def gate(challenger: Any, champion: Any, persistence: Any, holdout: SensorDataset, margin: float) -> Decision:
    """Score the three predictors on every window of `holdout` and decide."""
    from training.data import Protocol
    from training.evaluate import evaluate

    t = holdout.n_steps
    targets = tuple(holdout.network.feature_index[n] for n in challenger.out_features)
    protocol = Protocol("gate", challenger.window, challenger.horizon, (0, 0), (0, 0), (0, t), targets, ())
    scores = {
        name: evaluate(p, holdout, split="test", protocol=protocol)["average"]
        for name, p in (("challenger", challenger), ("champion", champion), ("persistence", persistence))
    }
    mae = {name: s["mae"] for name, s in scores.items()}
    figures = {
        "mae": mae,
        "rmse": {n: s["rmse"] for n, s in scores.items()},
        "windows": t - protocol.window - protocol.horizon + 1,
    }
    if not math.isfinite(mae["challenger"]):
        return Decision(False, challenger.version, "challenger forecasts are not finite", figures)
    bar = mae["champion"] * (1 - margin)
    figures_text = (
        f"champion {mae['champion']:.4f}, persistence {mae['persistence']:.4f}, margin {margin:.0%}"
    )
    if mae["challenger"] < bar:
        reason = f"challenger MAE {mae['challenger']:.4f} < {bar:.4f} ({figures_text})"
        if mae["challenger"] >= mae["persistence"]:
            # Still the better of the two models that can serve: keeping the champion would be worse.
            reason += "; persistence is better still on this holdout"
        return Decision(True, challenger.version, reason, figures)
    reason = f"challenger MAE {mae['challenger']:.4f} not below {bar:.4f} ({figures_text})"
    return Decision(False, challenger.version, reason, figures)


def archived_steps(archive: Archive, settings: RetrainSettings, step_ms: int) -> int:
    """How many steps the archive already holds, up to what a job needs (a `Retrainer`'s starting count)."""
    last = archive.last_step()
    if last is None:
        return 0
    need = settings.min_steps + settings.holdout_steps
    return len(archive.read(start_ms=last - need * step_ms)[0])


class Retrainer:
    """Owned by the model lifecycle: `on_steps(n, ...)` after each cycle's sealed steps, `poll()` each cycle.
    Does no I/O until a job runs: `archived` is the archive's step count at start (`archived_steps`)."""

    def __init__(
        self,
        settings: RetrainSettings,
        archive: Archive,
        network: Network,
        *,
        window: int,
        horizon: int,
        registry: Any,
        storage: StorageSettings,
        archived: int = 0,
    ) -> None:
        self.settings = settings
        self.storage = storage
        self.archive = archive
        self.network = network
        self.window = window
        self.horizon = horizon
        self.registry = registry
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="retrain")
        self._job: Future[Decision] | None = None
        self._steps_since = 0
        self._last_start = time.monotonic()
        self._drifting = 0
        self._reference: dict[str, float] = {}  # model version -> reference rolling MAE
        self._backoff_until = 0.0
        self._failures = 0
        self.decisions: list[Decision] = []
        self._archived = archived

    # -- triggers ----------------------------------------------------------------------------------------
    def on_steps(self, n: int, version: str, rolling_mae: float, rolling_full: bool) -> str | None:
        """Called after `n` newly sealed steps with the serving model's rolling MAE (the same for all `n`:
        it is scored once per cycle); returns a trigger or None. A step counts towards the schedule, the
        archive's size and the drift streak whichever trigger it ends up firing."""
        s = self.settings
        self._steps_since += n
        self._archived += n
        if rolling_full and math.isfinite(rolling_mae) and version not in self._reference:
            self._reference[version] = rolling_mae
        ref = self._reference.get(version)
        drifting = ref is not None and rolling_mae > ref * (1 + s.drift_margin)
        self._drifting = self._drifting + n if drifting else 0
        if self.busy or time.monotonic() < self._backoff_until:
            return None
        if self._archived < s.min_steps + s.holdout_steps:
            return None
        if self._drifting >= s.drift_patience:
            return "drift"
        if s.every_steps and self._steps_since >= s.every_steps:
            return "schedule"
        if s.interval_s and time.monotonic() - self._last_start >= s.interval_s:
            return "interval"
        return None

    @property
    def busy(self) -> bool:
        """A job runs, or finished without its result collected by `poll()` yet."""
        return self._job is not None

    def reference(self, version: str) -> float | None:
        return self._reference.get(version)

    # -- the job -----------------------------------------------------------------------------------------
    def launch(self, reason: str, champion_spec: ModelSpec) -> dict[str, Any]:
        """Start a training job + gate in the background on the recent archive; returns its description.
        `champion_spec` is the serving model: the gate's reference and the warm start."""
        s = self.settings
        last = self.archive.last_step()
        if last is None:
            raise TrainingFailed("the archive holds no steps yet")
        step = self.network.step_ms
        holdout_start = last - (s.holdout_steps - 1) * step
        history = s.drift_history_steps if reason == "drift" and s.drift_history_steps else s.history_steps
        train_start = holdout_start - history * step
        meta = {
            "reason": reason,
            "train_range": [train_start, holdout_start],
            "holdout": [holdout_start, last + step],
            "parent": champion_spec.ref,
        }
        config: dict[str, Any] = {
            "dataset": self.archive.root.uri,
            "start_ms": train_start,
            "end_ms": holdout_start,
            "model": s.model,
            "preset": s.preset,
            "window": self.window,
            "horizon": self.horizon,
            "epochs": s.epochs,
            "time_budget_s": s.time_budget_s,
            "patience": max(3, s.epochs // 4),
            "threads": 1,
            "nice": s.nice,
            "overrides": dict(s.overrides),
        }
        if s.warm_start and not champion_spec.is_baseline:
            config["init_checkpoint"] = champion_spec.ref
        self._steps_since = 0
        self._last_start = time.monotonic()
        self._job = self._pool.submit(self._run, config, meta, champion_spec)
        log.info("retraining started", extra=meta)
        return meta

    def _run(self, config: dict[str, Any], meta: dict[str, Any], champion_spec: ModelSpec) -> Decision:
        summary = self._train(config)
        # the champion as a local predictor, built here in the job's thread: the serving loop never waits
        champion, _ = build_predictor(
            champion_spec, self.network, self.window, self.horizon, storage=self.storage
        )
        return self._decide(summary, champion, meta)

    def _train(self, config: dict[str, Any]) -> dict[str, Any]:
        from training.ray_train import train_with_ray
        from training.train import train_func

        s = self.settings
        if s.workers > 0:
            summary = train_with_ray(
                config,
                num_workers=s.workers,
                use_gpu=s.use_gpu,
                cpus_per_worker=s.cpus_per_worker,
                resources_per_worker=dict(s.resources_per_worker),
                storage_path=s.storage_path or self.registry.root / "ray-train",
                storage=self.storage,
            )
        else:  # in this process: the checkpoint never leaves it until it is registered
            workdir = tempfile.mkdtemp(prefix="sensorcast-retrain-")
            try:
                out = str(Path(workdir) / "challenger.pt")
                summary = {**train_func({**config, "out": out}, storage=self.storage), "checkpoint": out}
                summary["checkpoint_bytes"] = Path(out).read_bytes()
            finally:
                shutil.rmtree(workdir, ignore_errors=True)
        loss = summary.get("val_mae")
        if loss is not None and not math.isfinite(float(loss)):
            raise TrainingFailed(f"training produced a non-finite validation error ({loss})")
        return summary

    def poll(self) -> Decision | Exception | None:
        """The finished job's decision, its failure, or None while none finished."""
        if self._job is None or not self._job.done():
            return None
        job, self._job = self._job, None
        try:
            decision = job.result()
        except Exception as exc:  # the champion stays; report, back off, retry at the next trigger
            self._failures += 1
            self._backoff_until = time.monotonic() + self.settings.backoff_s * 2 ** (self._failures - 1)
            log.error("retraining failed", extra={"error": repr(exc), "trace": traceback.format_exc(limit=5)})
            return exc
        self._failures = 0
        self.decisions.append(decision)
        return decision

    def _decide(self, summary: dict[str, Any], champion: Any, meta: dict[str, Any]) -> Decision:
        from training.predictor import Predictor

        source = summary.pop("checkpoint_bytes", None) or summary["checkpoint"]
        challenger = Predictor.from_checkpoint(
            source, network=self.network, device="cpu", storage=self.storage
        )
        persistence = Predictor.baseline(
            "persistence", self.network, window=self.window, horizon=self.horizon
        )
        start, end = meta["holdout"]
        holdout = read_archive(self.archive.root, start_ms=start, end_ms=end)
        decision = gate(challenger, champion, persistence, holdout, self.settings.promote_margin)
        train = {k: v for k, v in summary.items() if k != "history"}
        figures = {
            **decision.figures,
            "train_range": meta["train_range"],
            "holdout": meta["holdout"],
            "trigger": meta["reason"],
            "train": train,
        }
        verdict = ("promoted: " if decision.promoted else "rejected: ") + decision.reason
        record = self.registry.register(source, reason=verdict, metrics={"gate": figures})
        decision.version = record.version
        decision.figures = figures
        if decision.promoted:
            self.registry.promote(record.version, reason=decision.reason)
        self._forget(summary["checkpoint"])
        return decision

    def _forget(self, reported: str) -> None:
        """Remove the Ray Train run's checkpoint once the registry holds its copy."""
        if "/checkpoint_" not in reported:
            return
        run = open_location(reported, self.storage).parent.parent  # <run>/checkpoint_…/model.pt
        try:
            run.fs.delete_dir(run.path)
        except OSError:  # leftovers cost space, not correctness
            log.warning("cannot remove a finished training run", extra={"run": run.uri})

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
