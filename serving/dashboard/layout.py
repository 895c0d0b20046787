"""Sensor positions for the dashboard's map: the network's own coordinates when it has them, otherwise a
force-directed layout of its edges (Fruchterman–Reingold, deterministic). Pure numpy, no I/O.

Positions come back normalised to the unit square with `y` pointing up (lat-like), so the page draws every
network the same way.
"""

from __future__ import annotations

import numpy as np

from stream.network import Network


def _normalise(xy: np.ndarray) -> np.ndarray:
    """[N, 2] -> [N, 2] in [0, 1] per axis, aspect ratio kept (the longer side spans 0..1)."""
    lo, hi = xy.min(axis=0), xy.max(axis=0)
    span = float(max((hi - lo).max(), 1e-12))
    out = (xy - lo) / span
    out += (1.0 - out.max(axis=0)) / 2  # centre the shorter side
    return out


def force_layout(
    n: int, edges: list[tuple[int, int, float]], *, iterations: int = 200, seed: int = 0
) -> np.ndarray:
    """Fruchterman–Reingold positions `[N, 2]` for `n` nodes; edges pull, every pair pushes."""
    if n == 1:
        return np.array([[0.5, 0.5]])
    rng = np.random.default_rng(seed)
    angle = np.linspace(0, 2 * np.pi, n, endpoint=False)
    pos = np.stack([np.cos(angle), np.sin(angle)], axis=1) + rng.normal(0, 0.01, (n, 2))  # [N, 2]
    k = 1.0 / np.sqrt(n)  # ideal edge length in a unit area
    adj = np.zeros((n, n))
    for a, b, w in edges:
        if a != b:
            adj[a, b] = adj[b, a] = max(adj[a, b], abs(w) or 1.0)
    temperature = 0.1
    for _ in range(iterations):
        delta = pos[:, None, :] - pos[None, :, :]  # [N, N, 2]
        dist = np.maximum(np.linalg.norm(delta, axis=-1), 1e-3)  # [N, N]
        force = k * k / dist - adj * dist * dist / k  # repulsion minus attraction along each pair
        np.fill_diagonal(force, 0.0)
        disp = (delta / dist[..., None] * force[..., None]).sum(axis=1)  # [N, 2]
        length = np.maximum(np.linalg.norm(disp, axis=1, keepdims=True), 1e-9)
        pos += disp / length * np.minimum(length, temperature)
        temperature *= 0.98
    return pos


def positions(network: Network) -> tuple[np.ndarray, bool]:
    """Unit-square positions `[N, 2]` and whether they are real coordinates (False = force layout)."""
    if network.coords is not None:
        xy = np.asarray(network.coords, dtype=np.float64)  # [N, 2] (lon, lat) or (x, y)
        if np.isfinite(xy).all():
            return _normalise(xy), True
    return _normalise(force_layout(network.n_sensors, list(network.edges))), False
