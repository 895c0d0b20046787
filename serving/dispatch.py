"""Hands windows to the forecaster actors and gets forecasts back, surviving actor failures.

A micro-batch of windows `[B, window, N, F]` is split into contiguous chunks across the replicas (replicas
by step). A replica is one actor, or `shards` actors that split the network's sensors: each shard gets the
whole chunk (put once in the object store), answers its own sensors' forecasts with their indices, and the
answers are put together — every sensor exactly once, or the call fails loudly. A call whose actor died is
re-sent after a backoff until a deadline; an answer made by another version than the one the dispatcher
holds (a restarted actor comes back without a model) triggers a `load()` and a re-send.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import ray
from ray.exceptions import GetTimeoutError, RayActorError

from serving.forecaster import ModelSpec, Shipment
from stream.network import Network

log = logging.getLogger(__name__)

try:  # Ray >= 2.10
    from ray.exceptions import ActorUnavailableError

    _ACTOR_ERRORS: tuple[type[BaseException], ...] = (RayActorError, ActorUnavailableError, GetTimeoutError)
except ImportError:  # pragma: no cover
    _ACTOR_ERRORS = (RayActorError, GetTimeoutError)


# Ray sends call arguments up to 100 KiB inline with the call (`max_direct_call_object_size`), faster than
# an object-store round trip; larger windows are put once and shared by a replica's shards.
INLINE_BYTES = 100 * 1024


class ForecastUnavailable(RuntimeError):
    """No forecaster actor answered before the deadline."""


@dataclass
class Call:
    """A submitted forecast: per replica chunk `(lo, hi)` of the windows, one object ref per shard, and the
    inputs (kept to re-send a chunk whose actor failed)."""

    refs: list[list[Any]]
    chunks: list[tuple[int, int]]
    values: np.ndarray
    mask: np.ndarray
    step_ts: np.ndarray


class Dispatcher:
    def __init__(
        self,
        actors: Sequence[Any],
        shipment: Shipment,
        network: Network,
        *,
        shards: int = 1,
        call_timeout_s: float = 60.0,
        retry_deadline_s: float = 120.0,
    ) -> None:
        if not actors or len(actors) % shards:
            raise ValueError(
                f"the dispatcher needs replicas × {shards} shards forecaster actors, got {len(actors)}"
            )
        self.actors = list(actors)
        # replica r's shards: actors[r * shards : (r + 1) * shards], shard j made with shard=(j, shards)
        self.groups = [self.actors[r : r + shards] for r in range(0, len(self.actors), shards)]
        self.n_sensors = network.n_sensors
        self.shipment = shipment  # kept: a restarted actor is sent it again
        self.network = ray.put(network.to_dict())  # with every load(): a restarted actor needs it again
        self.call_timeout_s = call_timeout_s
        self.retry_deadline_s = retry_deadline_s
        self.version: str = ""
        self.targets: tuple[int, ...] = ()
        self.out_features: tuple[str, ...] = ()
        self.retries = 0
        self.last_infer_ms = 0.0

    def start(self) -> str:
        """Send every actor the shipment and wait until each hosts it; returns the model version. A model
        that cannot load raises here, with the actor's reason."""
        ray.get([self._load(a, self.shipment) for a in self.actors], timeout=self.retry_deadline_s)
        infos = ray.get([a.info.remote() for a in self.actors], timeout=self.retry_deadline_s)
        versions = {i["version"] for i in infos}
        if len(versions) != 1:
            raise RuntimeError(f"forecaster actors disagree on the model version: {sorted(versions)}")
        self.version = versions.pop()
        self.targets = tuple(infos[0]["targets"])
        self.out_features = tuple(infos[0]["out_features"])
        return self.version

    def devices(self) -> list[str]:
        """Per actor, where and how it computes: `cpu (onnx)`, `cpu (torch)`, `cuda:0 (torch)`."""
        return [f"{i['device']} ({i['backend']})" for i in self.infos()]

    def infos(self) -> list[dict[str, Any]]:
        """Per actor (replica by replica, shard by shard): version, device, backend, shard, sensors, Ray
        node id, pid, model load time."""
        return list(ray.get([a.info.remote() for a in self.actors], timeout=self.retry_deadline_s))

    def placement(self) -> dict[str, Any]:
        """The model kind and backend the actors serve, how many shards split each replica's sensors and
        how many each actor forecasts, where they run (Ray node ids) and how long each took to load."""
        infos = self.infos()
        return {
            "kind": infos[0]["kind"],
            "backend": infos[0]["backend"],
            "shards": len(self.groups[0]),
            "sensors": [i["sensors"] for i in infos],  # each actor forecasts
            "nodes": [i["node"] for i in infos],
            "load_ms": [round(i["load_ms"], 1) for i in infos],
        }

    @property
    def spec(self) -> ModelSpec:
        return self.shipment.spec

    def load(self, shipment: Shipment) -> str:
        """Hot swap on every replica; the new version serves from the next call on."""
        refs = [self._load(a, shipment) for a in self.actors]
        versions = set(ray.get(refs, timeout=self.retry_deadline_s))
        if len(versions) != 1:
            raise RuntimeError(f"replicas loaded different versions: {sorted(versions)}")
        self.shipment, self.version = shipment, versions.pop()
        return self.version

    def _load(self, actor: Any, shipment: Shipment) -> Any:
        return actor.load.remote(*shipment.args(), self.network)

    def submit(self, values: np.ndarray, mask: np.ndarray, step_ts: np.ndarray) -> Call:
        """Start a forecast of `values`, `mask` [B, window, N, F] and `step_ts` [B, window] (a chunk per
        replica) without waiting; `collect()` it later, in any order."""
        b = values.shape[0]
        bounds = np.linspace(0, b, min(b, len(self.groups)) + 1).astype(int)
        chunks = [(int(bounds[i]), int(bounds[i + 1])) for i in range(len(bounds) - 1)]
        refs = [self._submit(i, lo, hi, values, mask, step_ts) for i, (lo, hi) in enumerate(chunks)]
        return Call(refs, chunks, values, mask, step_ts)

    def collect(self, call: Call) -> np.ndarray:
        """The forecasts of a submitted call, [B, H, N, out]; a chunk whose actor failed is re-sent."""
        parts = []
        for i, (refs, (lo, hi)) in enumerate(zip(call.refs, call.chunks, strict=True)):
            answers = [
                self._collect(i, j, ref, lo, hi, call.values, call.mask, call.step_ts)
                for j, ref in enumerate(refs)
            ]
            parts.append(self._merge(answers))
        return np.concatenate(parts, axis=0)

    def _merge(self, answers: list[tuple[np.ndarray, np.ndarray | None]]) -> np.ndarray:
        """One replica's shard answers as [b, H, N, out]: each shard's forecasts at its sensors."""
        if len(answers) == 1 and answers[0][1] is None:
            return answers[0][0]
        parts = [(out, own) for out, own in answers if own is None or len(own)]
        out0 = parts[0][0] if parts else None
        if out0 is None:
            raise RuntimeError(f"no shard of model {self.version} forecasts any sensor")
        merged = np.full((*out0.shape[:2], self.n_sensors, out0.shape[3]), np.nan, np.float32)
        seen = np.zeros(self.n_sensors, np.int64)
        for out, own in parts:
            own = np.arange(self.n_sensors) if own is None else own
            merged[:, :, own] = out
            seen[own] += 1
        if not (seen == 1).all():  # a bug, never a silent gap or overlap
            raise RuntimeError(
                f"the shards of model {self.version} forecast {int((seen > 0).sum())} of {self.n_sensors} "
                f"sensors, {int((seen > 1).sum())} of them twice"
            )
        return merged

    def _submit(
        self, i: int, lo: int, hi: int, values: np.ndarray, mask: np.ndarray, step_ts: np.ndarray
    ) -> list[Any]:
        """Replica `i`'s calls, one per shard; windows too large to travel inline with a call are put in
        the object store once for all of them."""
        args: tuple[Any, ...] = (values[lo:hi], mask[lo:hi], step_ts[lo:hi])
        if len(self.groups[i]) > 1:
            args = tuple(ray.put(a) if a.nbytes > INLINE_BYTES else a for a in args)
        return [actor.forecast.remote(*args) for actor in self.groups[i]]

    def _collect(
        self,
        i: int,
        j: int,
        ref: Any,
        lo: int,
        hi: int,
        values: np.ndarray,
        mask: np.ndarray,
        step_ts: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Replica `i` shard `j`'s answer: its forecasts and the sensors they are of (None: all)."""
        actor = self.groups[i][j]
        deadline = time.monotonic() + self.retry_deadline_s
        delay = 0.2
        while True:
            try:
                out, version, infer_ms, own = ray.get(ref, timeout=self.call_timeout_s)
                if version == self.version:
                    self.last_infer_ms = max(self.last_infer_ms, infer_ms) if j else infer_ms
                    return np.asarray(out), own
                log.warning(
                    "actor answered with another version; reloading",
                    extra={"got": version, "want": self.version},
                )
                ray.get(self._load(actor, self.shipment), timeout=self.retry_deadline_s)
            except _ACTOR_ERRORS as exc:
                if time.monotonic() + delay > deadline:
                    raise ForecastUnavailable(
                        f"forecaster actor {i}.{j} unavailable for {self.retry_deadline_s:.0f} s: {exc}"
                    ) from exc
                log.warning(
                    "forecaster actor failed; re-sending",
                    extra={"actor": i, "shard": j, "error": type(exc).__name__},
                )
                time.sleep(delay)
                delay = min(delay * 2, 5.0)
            self.retries += 1
            ref = actor.forecast.remote(values[lo:hi], mask[lo:hi], step_ts[lo:hi])
