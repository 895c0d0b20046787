"""Sensor blocks for the STFormer's scalable spatial attention: a network's sensors split into blocks of one
size, each its own (home) sensors plus a halo of the sensors nearest to them.

Blocks come from the network's graph: its edges, else a k-nearest-neighbour graph of its coordinates, else
its sensor order (a path i – i+1). METIS (pymetis) cuts that graph into parts of about `home_share` ×
`block_size` sensors with few edges between them; each part is then filled up to `block_size` with the
other sensors closest to it — fewest hops on the graph first, then nearest (coordinates, else sensor index)
— so every block has the same size and attention over all of them is one batched product. Each sensor has
exactly one home block, where its forecast is computed; in other blocks' halos it only lends them context.

Pure numpy and pymetis: no torch, no I/O. Computed once when a model is built and saved with its weights.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pymetis

from stream.network import Network

KNN = 8  # neighbours per sensor in the graph built from coordinates
_FAR = np.iinfo(np.int64).max  # hops to a sensor the graph does not reach


@dataclass(frozen=True)
class Blocks:
    """`members [P, S]` sensor indices of each block, its home sensors first, then its halo;
    `home [N]` the position of each sensor's home slot in `members.ravel()`."""

    members: np.ndarray
    home: np.ndarray

    def __post_init__(self) -> None:
        s = self.members.shape[1]
        if self.home.shape != (int(self.members.max()) + 1,) or not np.array_equal(
            self.members.ravel()[self.home], np.arange(len(self.home))
        ):
            raise ValueError("every sensor needs exactly one home slot holding that sensor")
        if any(len(np.unique(row)) != s for row in self.members):
            raise ValueError("a block holds a sensor twice")

    @property
    def count(self) -> int:
        return int(self.members.shape[0])

    @property
    def size(self) -> int:
        return int(self.members.shape[1])

    def home_slots(self) -> np.ndarray:
        """`[P, S]` bool: True where a slot is its sensor's home (the halo is False)."""
        flat = np.zeros(self.members.size, dtype=bool)
        flat[self.home] = True
        return flat.reshape(self.members.shape)


def knn(coords: np.ndarray, k: int, chunk: int = 512) -> np.ndarray:
    """`coords [N, 2]` -> `[N, k]` indices of each point's k nearest others (Euclidean on the raw numbers:
    for lon/lat within a region the distortion is a constant factor per axis)."""
    n = len(coords)
    k = min(k, n - 1)
    out = np.empty((n, k), dtype=np.int64)
    for i in range(0, n, chunk):
        d = ((coords[i : i + chunk, None] - coords[None]) ** 2).sum(-1)  # [chunk, N]
        d[np.arange(len(d)), np.arange(i, i + len(d))] = np.inf
        out[i : i + chunk] = np.argpartition(d, k - 1, axis=1)[:, :k]
    return out


def neighbour_graph(network: Network, k: int = KNN) -> tuple[np.ndarray, np.ndarray]:
    """The network's undirected graph in CSR form, `xadj [N + 1]` and `adjncy [2E]` (no self loops, no
    duplicates): its edges, else k-NN of its coordinates, else a path along the sensor order."""
    n = network.n_sensors
    if network.edges:
        pairs = np.array([(a, b) for a, b, _ in network.edges if a != b], dtype=np.int64).reshape(-1, 2)
    elif network.coords is not None and n > 1:
        nbrs = knn(np.asarray(network.coords, dtype=np.float64), k)  # [N, k]
        pairs = np.stack([np.repeat(np.arange(n), nbrs.shape[1]), nbrs.ravel()], axis=1)
    else:
        pairs = np.stack([np.arange(n - 1), np.arange(1, n)], axis=1)
    pairs = np.unique(np.concatenate([pairs, pairs[:, ::-1]]), axis=0)  # [2E, 2] sorted by source
    xadj = np.searchsorted(pairs[:, 0], np.arange(n + 1)).astype(np.int64)
    return xadj, pairs[:, 1].astype(np.int64)


def _hops(xadj: np.ndarray, adjncy: np.ndarray, sources: np.ndarray, enough: int) -> np.ndarray:
    """`[N]` hops from the nearest of `sources`, breadth first until at least `enough` sensors are reached
    (the rest stay `_FAR`)."""
    n = len(xadj) - 1
    edge_source = np.repeat(np.arange(n), np.diff(xadj))  # [2E]
    hops = np.full(n, _FAR, dtype=np.int64)
    hops[sources] = 0
    frontier = np.zeros(n, dtype=bool)
    frontier[sources] = True
    reached, d = len(sources), 0
    while frontier.any() and reached < enough:
        d += 1
        nxt = np.zeros(n, dtype=bool)
        nxt[adjncy[frontier[edge_source]]] = True
        nxt &= hops == _FAR
        hops[nxt] = d
        reached += int(nxt.sum())
        frontier = nxt
    return hops


def _parts(xadj: np.ndarray, adjncy: np.ndarray, parts: int, block_size: int, seed: int) -> np.ndarray:
    """`[N]` part label of each sensor, no part above `block_size` and none empty (more parts until so)."""
    n = len(xadj) - 1
    while True:
        cut = pymetis.part_graph(parts, xadj=xadj, adjncy=adjncy, options=pymetis.Options(seed=seed))
        labels = np.asarray(cut.vertex_part, dtype=np.int64)
        _, labels = np.unique(labels, return_inverse=True)  # empty parts dropped
        if np.bincount(labels).max() <= block_size or parts >= n:
            return labels
        parts += 1


def partition(network: Network, block_size: int, *, home_share: float = 0.75, seed: int = 0) -> Blocks:
    """Blocks of `block_size` sensors (all sensors in one block when the network is no larger), each about
    `home_share` home sensors and the rest halo."""
    n = network.n_sensors
    if block_size < 1:
        raise ValueError(f"block_size must be positive, got {block_size}")
    if n <= block_size:
        return Blocks(np.arange(n, dtype=np.int64)[None], np.arange(n, dtype=np.int64))
    xadj, adjncy = neighbour_graph(network)
    labels = _parts(xadj, adjncy, math.ceil(n / (home_share * block_size)), block_size, seed)
    # Ties in hops go to the nearest sensor: by coordinates, else by position in the sensor order.
    pos = (
        np.asarray(network.coords, np.float64) if network.coords else np.arange(n, dtype=np.float64)[:, None]
    )
    members = np.empty((labels.max() + 1, block_size), dtype=np.int64)
    home = np.empty(n, dtype=np.int64)
    for p in range(len(members)):
        own = np.flatnonzero(labels == p)
        hops = _hops(xadj, adjncy, own, block_size)
        dist = ((pos - pos[own].mean(axis=0)) ** 2).sum(axis=1)  # [N]
        others = np.flatnonzero(labels != p)
        halo = others[np.lexsort((dist[others], hops[others]))][: block_size - len(own)]
        members[p] = np.concatenate([own, halo])
        home[own] = p * block_size + np.arange(len(own))
    return Blocks(members, home)
