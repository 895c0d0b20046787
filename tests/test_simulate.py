"""The simulator: deterministic per seed, plausible speeds, dropouts, and a regime change that matters."""

from __future__ import annotations

import numpy as np

from stream.simulate import Simulator, simulated_network

T0 = 1_767_225_600_000  # 2026-01-01 00:00 UTC, a Thursday


def _run(sim: Simulator, steps: int) -> tuple[np.ndarray, np.ndarray]:
    out = [sim.step(T0 + i * sim.network.step_ms) for i in range(steps)]
    return np.stack([v for v, _ in out]), np.stack([p for _, p in out])


def test_deterministic_per_seed_and_plausible() -> None:
    net = simulated_network(30)
    a_vals, a_pres = _run(Simulator(net, seed=3), 288)
    b_vals, b_pres = _run(Simulator(net, seed=3), 288)
    c_vals, _ = _run(Simulator(net, seed=4), 288)
    np.testing.assert_array_equal(a_vals, b_vals)
    np.testing.assert_array_equal(a_pres, b_pres)
    assert not np.allclose(a_vals, c_vals)
    assert a_vals.shape == (288, 30, 1)
    assert a_vals.min() >= 1.0 and a_vals.max() <= 110.0
    assert 0.005 < 1 - a_pres.mean() < 0.05  # about 2 % dropouts
    hourly = a_vals[:, :, 0].mean(axis=1).reshape(24, 12).mean(axis=1)  # [24] mean speed per hour
    assert hourly[8] < hourly[3] - 3  # morning rush is slower than the night


def test_regime_change_slows_a_sector() -> None:
    net = simulated_network(20)
    sim = Simulator(net, seed=0)
    before = sim.expected(T0 + 3 * 3_600_000)
    sim.set_regime(1)
    after = sim.expected(T0 + 3 * 3_600_000)
    slowed = after < before - 1e-9
    assert 0 < slowed.sum() < 20
    np.testing.assert_allclose(after[slowed] / before[slowed], 0.65)
