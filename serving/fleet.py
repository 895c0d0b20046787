"""Many networks, one deployment: each network's whole pipeline (ingest → windows → forecasts → Redis,
its retraining loop) runs in its own Ray actor, placed anywhere on the cluster and restarted by Ray.

`NetworkPipeline` is the actor body. It starts serving in a thread of its own as soon as it is created —
also after Ray restarted it (`max_restarts=-1`): a restarted pipeline recovers from the archive and the
committed offsets exactly as a restarted `sensorcast serve` process does, and takes its network's writer
lease back at once (its Ray actor id is the lease owner, and it survives restarts; `serving.lease`). What
happens to one network — a crash, poison input, a retraining job — happens in its actor only.

An unexpected failure ends the actor's process after a short pause, so Ray restarts it; a refused lease
(`LeaseHeld`: another pipeline serves the network) or a lost one (`LeaseLost`) is not retried: the actor
stays up, reports `refused`/`fenced` with the reason, and serves nothing.

`Fleet` is the driver's side (`sensorcast serve --deployment`): it starts one named actor per network,
asks each for its status every few seconds and stops them all at the end.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any

import ray

from serving.config import Settings
from serving.deployment import NetworkPlan
from serving.forecaster import ModelSpec
from serving.lease import LeaseHeld, LeaseLost
from stream.network import Network

log = logging.getLogger(__name__)

NAMESPACE = "sensorcast"
RESTART_PAUSE_S = 3.0  # between an unexpected failure and the process exit that makes Ray restart it


def actor_name(network: str) -> str:
    return f"pipeline:{network}"


class NetworkPipeline:
    """Ray actor body: one network's pipeline, serving from construction until `stop()`."""

    def __init__(self, settings: Settings, network: dict[str, Any], model: str) -> None:
        from serving import logs

        logs.configure("info")
        self.settings = settings
        self.network = Network.from_dict(network)
        self.model = ModelSpec(model)
        self.state = "starting"
        self.error: str | None = None
        self.started = time.time()
        self.running: Any = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name=f"pipeline-{self.network.name}", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        from serving.pipeline import ServePipeline

        try:
            pipeline = ServePipeline(
                self.settings, self.network, self.model, client_id=f"sensorcast-{self.network.name}"
            )
            with pipeline.start(serve_metrics=True) as running:
                self.running, self.state = running, "serving"
                running.run(stop=self._stop)
            self.state = "stopped"
        except LeaseHeld as exc:
            self.state, self.error = "refused", str(exc)
            log.error("pipeline refused", extra={"network": self.network.name, "error": str(exc)})
        except LeaseLost as exc:
            self.state, self.error = "fenced", str(exc)
            log.error("pipeline fenced out", extra={"network": self.network.name, "error": str(exc)})
        except BaseException as exc:  # let Ray restart the whole process: a clean slate, as a new serve
            self.state, self.error = "failed", f"{type(exc).__name__}: {exc}"
            log.error(
                "pipeline failed; restarting",
                extra={
                    "network": self.network.name,
                    "error": repr(exc),
                    "trace": traceback.format_exc(limit=8),
                },
            )
            time.sleep(RESTART_PAUSE_S)
            if not self._stop.is_set():
                os._exit(1)
        finally:
            self.running = None

    def status(self) -> dict[str, Any]:
        """State, where it runs, and the stream's progress as this pipeline sees it."""
        out: dict[str, Any] = {
            "network": self.network.name,
            "state": self.state,
            "error": self.error,
            "node": ray.get_runtime_context().get_node_id(),
            "pid": os.getpid(),
            "up_s": round(time.time() - self.started, 1),
        }
        running = self.running
        if running is not None:  # what the pipeline thread published last: the Kafka client is its own
            health = running.health
            out.update(
                model_version=running.dispatcher.version,
                steps_forecast=running.steps_forecast,
                last_sealed=health.get("last_sealed"),
                lag=sum(health.get("lag", {}).values()),
                metrics_port=running.metrics_port,
                lease=running.lease.token,
            )
        return out

    def latencies_ms(self, clear: bool = False) -> list[float]:
        """Seal→Redis latency of the latest steps (ms), oldest first; `clear` starts a new measurement."""
        running = self.running
        if running is None:
            return []
        out = [1000 * v for v in running.latencies_s]
        if clear:
            running.latencies_s.clear()
        return out

    def stop(self, timeout_s: float = 30.0) -> str:
        self._stop.set()
        self._thread.join(timeout_s)
        return self.state


class Fleet:
    """The driver's handle on a deployment's pipeline actors."""

    def __init__(self, plans: Sequence[NetworkPlan]) -> None:
        self.plans = list(plans)
        self.actors: dict[str, Any] = {}

    def start(self) -> Fleet:
        for plan in self.plans:
            r = plan.settings.ray
            options = {
                "name": actor_name(plan.name),
                "namespace": NAMESPACE,
                "num_cpus": r.pipeline_num_cpus,
                "resources": dict(r.pipeline_resources) or None,
                "max_restarts": -1,
                "max_task_retries": -1,
                "max_concurrency": 4,  # status() and stop() answer while the pipeline thread serves
            }
            try:
                ray.get_actor(actor_name(plan.name), namespace=NAMESPACE)
            except ValueError:
                pass
            else:
                raise LeaseHeld(
                    f"network {plan.name!r} already has a pipeline actor on this Ray cluster "
                    f"({NAMESPACE}/{actor_name(plan.name)}): another `serve --deployment` runs it"
                )
            cls = ray.remote(NetworkPipeline).options(**options)  # type: ignore[arg-type]
            self.actors[plan.name] = cls.remote(plan.settings, plan.network.to_dict(), plan.model.ref)
        return self

    def status(self, timeout_s: float = 5.0) -> dict[str, dict[str, Any]]:
        """Each network's status; an actor that does not answer (restarting, dead) says so."""
        refs = {name: a.status.remote() for name, a in self.actors.items()}
        out: dict[str, dict[str, Any]] = {}
        for name, ref in refs.items():
            try:
                out[name] = ray.get(ref, timeout=timeout_s)
            except Exception as exc:  # RayActorError, ActorUnavailableError, GetTimeoutError
                out[name] = {"network": name, "state": "restarting", "error": type(exc).__name__}
        return out

    def wait_until(
        self, ok: Callable[[dict[str, dict[str, Any]]], bool], timeout_s: float, every_s: float = 1.0
    ) -> dict[str, dict[str, Any]]:
        deadline = time.monotonic() + timeout_s
        while True:
            status = self.status()
            if ok(status) or time.monotonic() > deadline:
                return status
            time.sleep(every_s)

    def stop(self, timeout_s: float = 60.0) -> None:
        refs = [actor.stop.remote() for actor in self.actors.values()]
        for ref in refs:
            with contextlib.suppress(Exception):  # a dead actor has nothing left to stop
                ray.get(ref, timeout=timeout_s)
        for actor in self.actors.values():
            ray.kill(actor, no_restart=True)
        self.actors.clear()
