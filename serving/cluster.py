"""What running on a Ray cluster of several nodes requires of the configuration, checked at start.

No node can read another's disk, so everything handed to Ray travels by URI or through Ray's object store
(see `serving.forecaster.ship` and `training.ray_train`); what cannot travel that way — the archive the
training workers read, the registry, Ray Train's storage — must be a location every node reaches.
"""

from __future__ import annotations

import socket

from serving.config import ConfigError, Settings
from stream.storage import is_uri

ADDRESS_SETTING = "setting ray.address: --ray-address or SENSORCAST_RAY__ADDRESS"


class RayUnavailable(ConfigError):
    """No Ray cluster answers at the configured address."""


def check_ray_address(address: str | None, timeout_s: float = 3.0) -> None:
    """Before `ray.init`: an address nothing accepts connections at is one line naming the setting
    (`ray.init` itself retries for minutes, logging from its C++ core). None and `auto` are left to Ray."""
    if address is None or address == "auto":
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise RayUnavailable(
            f"Ray address {address!r} is not host:port, ray://host:port or auto ({ADDRESS_SETTING})"
        )
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise RayUnavailable(
            f"no Ray cluster at {address} ({ADDRESS_SETTING}): {exc.strerror or exc} — start one with "
            "`ray start --head`, or fix the address"
        ) from None


def require_shared_storage(settings: Settings) -> None:
    """Retraining on a Ray cluster of several nodes needs storage every node reads: refuse a bare local
    path there (a `file://` URI says the folder is mounted on every node, e.g. NFS)."""
    import ray

    if not ray.is_initialized():
        return
    nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
    r = settings.retrain
    for setting, where in (
        ("archive.root", settings.archive.root),
        ("retrain.registry", r.registry),
        ("retrain.storage_path", r.storage_path),
    ):
        if nodes > 1 and where is not None and not is_uri(where):
            env = "SENSORCAST_" + setting.upper().replace(".", "__")
            raise ConfigError(
                f"{setting}={where} is a folder on this machine, but the Ray cluster has {nodes} nodes whose "
                f"training workers cannot read it: set {env}=s3://bucket/prefix (or file:///… for a folder "
                "every node mounts)"
            )
