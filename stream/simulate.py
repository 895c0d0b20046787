"""The built-in simulator: a synthetic road network whose sensors behave like loop detectors.

Speeds (mph) follow a daily cycle with morning and evening rush hours, a weaker weekend cycle, a
per-sensor free-flow level, spatially correlated noise diffused along the network's edges, incidents that
slow a sensor and its upstream neighbours for a while, and sensor dropouts (missing readings). A switchable
**regime** (e.g. roadworks: one sector slows down and its rush hour shifts) lets drift tests change the
data mid-run. Deterministic for a seed. Pure numpy: no Kafka here (see `stream.produce` for publishing).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from stream.network import Feature, Network

DAY_MS = 86_400_000
WEEK_MS = 7 * DAY_MS


def simulated_network(
    n_sensors: int = 20, *, name: str = "sim", step_ms: int = 300_000, seed: int = 0
) -> Network:
    """A ring road with a few chords: sensor i flows into i+1; coordinates on a circle (lon/lat-like)."""
    if n_sensors < 2:
        raise ValueError("a simulated network needs at least 2 sensors")
    rng = np.random.default_rng(seed)
    edges: list[tuple[int, int, float]] = [(i, (i + 1) % n_sensors, 1.0) for i in range(n_sensors)]
    for _ in range(max(1, n_sensors // 10)):
        a, b = rng.choice(n_sensors, size=2, replace=False)
        edges.append((int(a), int(b), 0.5))
    angle = np.linspace(0, 2 * math.pi, n_sensors, endpoint=False)
    coords = tuple((float(-118.3 + 0.1 * math.cos(a)), float(34.05 + 0.1 * math.sin(a))) for a in angle)
    return Network(
        name=name,
        sensors=tuple(f"s{i:04d}" for i in range(n_sensors)),
        features=(Feature("speed", "mph", 0.0, 120.0),),
        step_ms=step_ms,
        coords=coords,
        edges=tuple(edges),
    )


def road_network(
    n_sensors: int, *, name: str = "road", step_ms: int = 300_000, seed: int = 0, spacing: float = 0.005
) -> Network:
    """A planar street grid of any size: sensors at the junctions of a jittered grid about `spacing` degrees
    (~500 m) apart, numbered row by row; one-way streets alternate direction row by row and column by
    column, about 15 % of street segments are missing (never leaving a junction with fewer than 2), and
    about 5 % of blocks have a diagonal avenue (weight 0.5). Coordinates are lon/lat-like around Los Angeles."""
    if n_sensors < 2:
        raise ValueError("a road network needs at least 2 sensors")
    rng = np.random.default_rng(seed)
    cols = math.ceil(math.sqrt(n_sensors))
    row, col = np.divmod(np.arange(n_sensors), cols)
    streets: list[tuple[int, int]] = []
    for i in range(n_sensors):
        r, c = int(row[i]), int(col[i])
        if c + 1 < cols and i + 1 < n_sensors:  # east-west street: even rows flow east
            streets.append((i, i + 1) if r % 2 == 0 else (i + 1, i))
        if i + cols < n_sensors:  # north-south street: even columns flow north
            streets.append((i, i + cols) if c % 2 == 0 else (i + cols, i))
    degree = np.zeros(n_sensors, dtype=np.int64)
    for a, b in streets:
        degree[a] += 1
        degree[b] += 1
    edges: list[tuple[int, int, float]] = []
    for a, b in streets:
        if rng.random() < 0.15 and degree[a] > 2 and degree[b] > 2:
            degree[a] -= 1
            degree[b] -= 1
            continue
        edges.append((a, b, 1.0))
    for i in range(n_sensors):  # one diagonal per block at most: the grid stays planar
        if col[i] + 1 < cols and i + cols + 1 < n_sensors and rng.random() < 0.05:
            edges.append((i, i + cols + 1, 0.5))
    jitter = rng.uniform(-0.3, 0.3, size=(n_sensors, 2)) * spacing
    lon = -118.5 + spacing * col + jitter[:, 0]
    lat = 33.9 + spacing * row + jitter[:, 1]
    return Network(
        name=name,
        sensors=tuple(f"s{i:05d}" for i in range(n_sensors)),
        features=(Feature("speed", "mph", 0.0, 120.0),),
        step_ms=step_ms,
        coords=tuple((float(x), float(y)) for x, y in zip(lon, lat, strict=True)),
        edges=tuple(edges),
    )


@dataclass
class SimulatorConfig:
    noise: float = 2.0  # mph, innovation of the correlated noise
    dropout: float = 0.02  # probability that a sensor's reading is missing in a step
    incident_rate: float = 0.002  # per sensor and step
    incident_steps: int = 6
    regime_sector: float = 0.3  # share of sensors affected by the regime change
    regime_slowdown: float = 0.35  # the sector's speeds drop by this share in regime 1
    regime_rush_shift_h: float = 1.0  # the evening rush comes this many hours earlier in regime 1


class Simulator:
    """Generates one step `[N, F]` at a time for `network` (features: only the first is simulated as speed;
    further features are derived: flow ~ speed-dependent, occupancy ~ inverse)."""

    def __init__(self, network: Network, *, seed: int = 0, config: SimulatorConfig | None = None) -> None:
        self.network = network
        self.config = config or SimulatorConfig()
        self.rng = np.random.default_rng(seed)
        n = network.n_sensors
        self.free_flow = self.rng.uniform(55.0, 70.0, size=n)  # [N]
        self.rush_depth = self.rng.uniform(0.2, 0.5, size=n)  # [N] share of speed lost at rush hour
        self.noise_state = np.zeros(n)  # [N]
        self.incident_left = np.zeros(n, dtype=np.int64)  # [N] steps an incident still lasts
        self.regime = 0
        self._sector = np.arange(n) < round(self.config.regime_sector * n)  # [N] bool
        upstream = [[] for _ in range(n)]  # type: list[list[int]]
        for a, b, _ in network.edges:
            upstream[b].append(a)
        self._upstream = upstream
        # Row-normalised diffusion over the edges, both ways, self loops 1 (an edge's weight replaces
        # them): sparse, so a network of 8,600 sensors needs a few hundred KB, not two dense [N, N] arrays.
        adj = {(i, i): 1.0 for i in range(n)}
        for a, b, w in network.edges:
            adj[a, b] = adj[b, a] = w
        rows, cols = (np.array(c, dtype=np.int64) for c in zip(*adj, strict=True))  # [E']
        weights = np.fromiter(adj.values(), dtype=np.float64, count=len(adj))  # [E']
        self._diffuse = (rows, cols, weights / np.bincount(rows, weights, minlength=n)[rows])

    def set_regime(self, regime: int) -> None:
        """0 = normal; 1 = roadworks in a sector: 35 % slower and the evening rush an hour earlier."""
        self.regime = int(regime)

    def expected(self, step_ts: int) -> np.ndarray:
        """Noise-free speed `[N]` at `step_ts` under the current regime (what a perfect model would learn)."""
        hour = (step_ts % DAY_MS) / 3_600_000
        weekday = int(((step_ts // DAY_MS) + 3) % 7)  # 1970-01-01 was a Thursday -> Monday = 0
        weekend = weekday >= 5
        evening = 17.5 - (self.config.regime_rush_shift_h if self.regime == 1 else 0.0)
        rush = math.exp(-((hour - 8.0) ** 2) / 1.5) + math.exp(-((hour - evening) ** 2) / 2.0)
        if weekend:
            rush *= 0.3
        speed = self.free_flow * (1.0 - self.rush_depth * rush)  # [N]
        if self.regime == 1:
            speed = np.where(self._sector, speed * (1.0 - self.config.regime_slowdown), speed)
        return speed

    def step(self, step_ts: int) -> tuple[np.ndarray, np.ndarray]:
        """Values `[N, F]` float64 and a present mask `[N, F]` bool for the step starting at `step_ts`."""
        n, f = self.network.n_sensors, self.network.n_features
        cfg = self.config
        rows, cols, weights = self._diffuse
        diffused = np.bincount(rows, weights * self.noise_state[cols], minlength=n)  # [N]
        self.noise_state = 0.8 * diffused + self.rng.normal(0, cfg.noise, n)
        new = (self.rng.random(n) < cfg.incident_rate) & (self.incident_left == 0)
        for i in np.flatnonzero(new):
            self.incident_left[i] = cfg.incident_steps
            for j in self._upstream[i]:
                self.incident_left[j] = max(self.incident_left[j], cfg.incident_steps // 2)
        speed = self.expected(step_ts) + self.noise_state
        speed = np.where(self.incident_left > 0, speed * 0.4, speed)
        self.incident_left = np.maximum(self.incident_left - 1, 0)
        speed = np.clip(speed, 1.0, 110.0)
        values = np.empty((n, f))  # [N, F]
        values[:, 0] = speed
        for k in range(1, f):  # derived features keep multi-feature networks plausible
            values[:, k] = np.clip(speed * (30.0 / k) * (1.2 - speed / 110.0), 0.0, None)
        present = self.rng.random((n, f)) >= cfg.dropout  # [N, F]
        return values, present
