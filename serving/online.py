"""Online evaluation: score each live forecast against the actual values once they have all arrived.

A forecast issued after step `s` (its last input step) targets steps `s + h·step` for h = 1..H. When step
`s + H·step` seals, the forecast is complete and is scored at every horizon, under the training
protocol's masking (as `training.metrics`: missing targets excluded everywhere, zero targets also for
traffic networks with `zero_is_missing`, and |y| < MAPE_EPS for MAPE). Scores accumulate per model version (all-time) and over a rolling
window of the last `rolling_steps` sealed steps for the serving model — the drift signal retraining uses.
Pure numpy; the pipeline writes the results to Redis and Prometheus.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from training.metrics import MAPE_EPS


@dataclass
class _StepScore:
    """Error sums of one sealed step, per horizon: abs, sq, n `[H]`."""

    step_ts: int
    version: str
    abs: np.ndarray
    sq: np.ndarray
    n: np.ndarray


class Sums:
    """All-time error sums of one model version, per horizon `[H]`."""

    def __init__(self, horizon: int) -> None:
        self.abs, self.sq, self.n = np.zeros(horizon), np.zeros(horizon), np.zeros(horizon)
        self.ape, self.n_ape = np.zeros(horizon), np.zeros(horizon)

    def scores(self) -> dict[str, list[float]]:
        with np.errstate(invalid="ignore", divide="ignore"):
            return {
                "mae": (self.abs / self.n).tolist(),
                "rmse": np.sqrt(self.sq / self.n).tolist(),
                "mape": (100 * self.ape / self.n_ape).tolist(),
                "n": self.n.astype(int).tolist(),
            }


class OnlineEvaluator:
    def __init__(
        self,
        *,
        horizon: int,
        step_ms: int,
        targets: tuple[int, ...],
        rolling_steps: int = 288,
        zero_is_missing: bool = False,
    ) -> None:
        self.horizon = horizon
        self.step_ms = step_ms
        self.targets = list(targets)
        self.zero_is_missing = zero_is_missing
        self._issued: dict[int, tuple[str, np.ndarray]] = {}  # last input step -> (version, [H, N, out])
        self._actuals: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # step -> (values, counts) [N, out]
        self.cumulative: dict[str, Sums] = {}
        self._rolling: deque[_StepScore] = deque(maxlen=rolling_steps)

    def record_forecast(self, step_ts: int, version: str, values: np.ndarray) -> None:
        """values [H, N, out] in original units, issued after step `step_ts`."""
        self._issued[step_ts] = (version, values)

    def observe(self, step_ts: int, values: np.ndarray, mask: np.ndarray) -> _StepScore | None:
        """The sealed step's actuals `values`, `mask` [N, F]. Scores the forecast whose last target this
        step is (issued H steps earlier) at every horizon at once: a forecast counts when it is complete,
        so each horizon is scored on the same forecasts — as offline evaluation scores whole windows."""
        actual = values[:, self.targets].astype(np.float64)  # [N, out]
        keep = (mask[:, self.targets] > 0) & np.isfinite(actual)  # [N, out]
        if self.zero_is_missing:
            keep &= actual != 0
        self._actuals[step_ts] = (actual, keep)
        issued_at = step_ts - self.horizon * self.step_ms
        for ts in [t for t in self._actuals if t <= issued_at]:
            del self._actuals[ts]
        issued = self._issued.pop(issued_at, None)
        for ts in [t for t in self._issued if t < issued_at]:
            del self._issued[ts]
        if issued is None:
            return None
        version, forecast = issued
        sums = self.cumulative.setdefault(version, Sums(self.horizon))
        steps = [issued_at + h * self.step_ms for h in range(1, self.horizon + 1)]
        # every horizon whose target step sealed (all of them while the windower seals every step); a
        # missing target step is never guessed
        rows = [i for i, ts in enumerate(steps) if ts in self._actuals]
        h_abs, h_sq, h_n = np.zeros(self.horizon), np.zeros(self.horizon), np.zeros(self.horizon)
        if rows:  # every horizon at once: [H, N, out]
            y = np.stack([self._actuals[steps[i]][0] for i in rows])
            ok = np.stack([self._actuals[steps[i]][1] for i in rows])
            pred = forecast[rows].astype(np.float64)
            ok &= np.isfinite(pred)
            err = np.abs(np.where(ok, pred - y, 0.0))
            nonzero = ok & (np.abs(y) > MAPE_EPS)
            h_abs[rows] = err.sum(axis=(1, 2))
            h_sq[rows] = (err * err).sum(axis=(1, 2))
            h_n[rows] = ok.sum(axis=(1, 2))
            ape = np.divide(err, np.abs(y), out=np.zeros_like(err), where=nonzero)
            sums.ape[rows] += ape.sum(axis=(1, 2))
            sums.n_ape[rows] += nonzero.sum(axis=(1, 2))
        sums.abs += h_abs
        sums.sq += h_sq
        sums.n += h_n
        score = _StepScore(step_ts, version, h_abs, h_sq, h_n)
        self._rolling.append(score)
        return score

    def rolling(self, version: str | None = None) -> dict[str, list[float] | int | str | None]:
        """Rolling MAE/RMSE per horizon over the last steps (of `version` only, when given)."""
        scores = [s for s in self._rolling if version is None or s.version == version]
        if not scores:
            return {"mae": [], "rmse": [], "n": [], "steps": 0, "model_version": version}
        a = np.sum([s.abs for s in scores], axis=0)
        q = np.sum([s.sq for s in scores], axis=0)
        n = np.sum([s.n for s in scores], axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            mae, rmse = a / n, np.sqrt(q / n)
        return {
            "mae": [float(x) for x in mae],
            "rmse": [float(x) for x in rmse],
            "n": [int(x) for x in n],
            "steps": len(scores),
            "model_version": version or scores[-1].version,
        }

    def mean_rolling_mae(self, version: str | None = None) -> float:
        """One number for drift checks: rolling MAE pooled over all horizons."""
        scores = [s for s in self._rolling if version is None or s.version == version]
        n = sum(float(s.n.sum()) for s in scores)
        return sum(float(s.abs.sum()) for s in scores) / n if n else float("nan")
