"""`OnlineEvaluator` (pure numpy) against the offline metrics (`training.metrics.HorizonMetrics`): the same
forecasts and actuals, fed step by step to one and as whole windows to the other, give the same MAE, RMSE,
MAPE and counts per horizon — with missing actuals, never-observed sensors (NaN forecasts), zero targets
and two model versions."""

from __future__ import annotations

import numpy as np
import pytest

from serving.online import OnlineEvaluator
from training.metrics import HorizonMetrics

STEP = 300_000
T0 = 1_767_225_600_000


def _data(steps: int, n: int, horizon: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """actuals [S, N, 1], mask [S, N, 1] (15 % missing, some zeros), forecasts [S, H, N, 1] (some NaN)."""
    rng = np.random.default_rng(seed)
    values = rng.uniform(0, 70, (steps, n, 1))
    values[rng.random(values.shape) < 0.05] = 0.0
    mask = (rng.random(values.shape) > 0.15).astype(np.uint8)
    forecasts = rng.uniform(0, 70, (steps, horizon, n, 1)).astype(np.float32)
    forecasts[:, :, 0] = np.nan  # a sensor never observed: the predictor gives NaN
    return values, mask, forecasts


@pytest.mark.parametrize("zero_is_missing", [False, True])
def test_online_scores_equal_offline_metrics(zero_is_missing: bool) -> None:
    steps, n, horizon = 60, 9, 4
    values, mask, forecasts = _data(steps, n, horizon, seed=3)
    online = OnlineEvaluator(
        horizon=horizon, step_ms=STEP, targets=(0,), rolling_steps=10_000, zero_is_missing=zero_is_missing
    )
    offline = {"a": HorizonMetrics(horizon), "b": HorizonMetrics(horizon)}
    for s in range(steps):
        version = "a" if s < 30 else "b"  # a hot swap half way
        online.record_forecast(T0 + s * STEP, version, forecasts[s])
        online.observe(T0 + s * STEP, values[s], mask[s])
        if s + horizon < steps:  # complete forecasts only, as online scores them
            target = values[s + 1 : s + 1 + horizon][None]  # [1, H, N, 1]
            keep = mask[s + 1 : s + 1 + horizon][None].astype(bool)
            if zero_is_missing:
                keep &= target != 0
            offline[version].update(forecasts[s][None], target, keep)
    for version, ref in offline.items():
        got = online.cumulative[version].scores()
        np.testing.assert_allclose(got["mae"], ref.abs / ref.n, rtol=1e-12)
        np.testing.assert_allclose(got["rmse"], np.sqrt(ref.sq / ref.n), rtol=1e-12)
        np.testing.assert_allclose(got["mape"], 100 * ref.ape / ref.n_ape, rtol=1e-12)
        assert got["n"] == ref.n.astype(int).tolist()
    rolling = online.rolling()
    both_n = offline["a"].n + offline["b"].n
    np.testing.assert_allclose(rolling["mae"], (offline["a"].abs + offline["b"].abs) / both_n, rtol=1e-12)
    assert rolling["n"] == both_n.astype(int).tolist()


def test_a_missing_target_step_is_not_scored_as_anything() -> None:
    """A target step that never sealed (not possible while the windower seals every step) leaves its
    horizon unscored for that forecast instead of being guessed."""
    horizon, n = 3, 4
    values, mask, forecasts = _data(8, n, horizon, seed=5)
    online = OnlineEvaluator(horizon=horizon, step_ms=STEP, targets=(0,))
    for s in range(8):
        online.record_forecast(T0 + s * STEP, "v", forecasts[s])
        if s != 2:  # step 2 never arrives
            online.observe(T0 + s * STEP, values[s], mask[s])
    # forecasts issued after steps 0..4 complete at steps 3..7; step 2 is the target of issues 0 (h=2) and 1 (h=1)
    ref = HorizonMetrics(horizon)
    for s in range(5):
        keep = mask[s + 1 : s + 1 + horizon].astype(bool).copy()
        if s + 1 <= 2 <= s + horizon:
            keep[2 - s - 1] = False
        ref.update(forecasts[s][None], values[s + 1 : s + 1 + horizon][None], keep[None])
    got = online.cumulative["v"].scores()
    assert got["n"] == ref.n.astype(int).tolist()
    np.testing.assert_allclose(got["mae"], ref.abs / ref.n, rtol=1e-12)
