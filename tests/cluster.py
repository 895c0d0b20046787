"""A real multi-node Ray cluster on one machine whose worker nodes cannot see the driver's files.

Tests use it to prove that sensorcast assumes no shared filesystem: whatever crosses to Ray must travel
with the call (a URI or `ray.put` bytes), never as a path only the driver's disk has.

`RayCluster.start` runs a head node (`ray start --head`, one CPU, no custom resource) and N *isolated*
worker nodes. Each isolated node runs `ray start --address … --block` inside a private mount namespace
(`unshare --mount --propagation private`) with a fresh tmpfs over every `hidden` folder and over /tmp,
and with its working directory on that tmpfs. On that node the driver's data folder and the driver's
temp folder look empty; Python, the venv and the repo stay visible, because the node has to run Ray and
import sensorcast like a real machine built from the same image. /dev/shm is not hidden: Ray's object
store lives there. Node i advertises `{node_resource: 100, f"{node_resource}_{i}": 100}`, so a test pins
actors or Ray Train workers to the isolated nodes (or to one of them) by resource.

Every node gets its own block of ports (GCS, node manager, object manager, agents, metrics, workers)
below Linux's ephemeral range and above Ray's default worker range, so clusters, the session's local Ray
and other tests on the same host do not collide. Each `ray start --block` is a session leader; every Ray
process of that node stays in its session (workers get their own process group, not their own session),
which is how `kill_node` and `stop` find them. Ray runs with token auth off (loopback test cluster) and
with faster GCS health checks, so a killed node is reported dead in about 5 s instead of about 15.

What it must not do:
- run `ray stop`: it kills every Ray process on the machine, including the pytest session's local Ray
  and other tests' clusters. `stop` signals this cluster's sessions only;
- write to the default /tmp/ray: the head's temp dir is private, so a `ray.init()` without an address
  elsewhere keeps starting its own local Ray instead of joining this cluster;
- connect the calling process to the cluster: one process can join only one Ray, and the pytest process
  may already hold one. Drivers run as subprocesses (`driver`, or your own with `env`); the helper itself
  talks to the GCS through a bare `GcsClient`.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import functools
import json
import os
import random
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import psutil
from ray.exceptions import RayError

from tests.conftest import REPO, wait_for

RAY = Path(sys.executable).with_name("ray")

# Ports are handed out in blocks from here: below Linux's ephemeral range (32768+), where outgoing
# connections take their ports, and above Ray's default worker ports (10002-19999) used by local Rays.
_PORT_LOW, _PORT_HIGH = 20_000, 32_000
_FIXED_PORTS = 9  # per node: 0-5 in `_node_flags`, 6-8 the head's GCS, dashboard and autoscaler metrics
_WORKER_PORTS = 100  # one per worker process (idle, task, actor, Train worker) a node may run at once
_SLOT_PORTS = 128  # the block of ports reserved per node
_OBJECT_STORE_BYTES = 200_000_000
_ALIVE = 0  # GcsNodeInfo.GcsNodeState.ALIVE

# The GCS declares a node dead after `threshold` failed health checks `period` apart (Ray's defaults:
# 3 s x 5). Faster here so a killed node is reported dead in seconds; the timeout stays well above a
# busy 2-core machine's scheduling hiccups so a live node is never declared dead.
_HEALTH_CHECK_ENV = {
    "RAY_health_check_period_ms": "1000",
    "RAY_health_check_timeout_ms": "3000",
    "RAY_health_check_failure_threshold": "5",
}


class ClusterError(RuntimeError):
    """The test cluster could not be started, reached or stopped; the message says which step and why."""


@functools.cache
def unshare_permitted() -> bool:
    """Whether this process may create a private mount namespace and mount a tmpfs in it (root or
    CAP_SYS_ADMIN, and a kernel/container that allows it). Tests skip with this reason otherwise."""
    if shutil.which("unshare") is None or shutil.which("mount") is None:
        return False
    with tempfile.TemporaryDirectory(prefix="sc-unshare-") as probe:
        Path(probe, "marker").touch()  # must vanish under the tmpfs, or the mount did not take
        script = f"mount -t tmpfs tmpfs {shlex.quote(probe)} && test ! -e {shlex.quote(probe)}/marker"
        try:
            done = subprocess.run(
                ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", script],
                capture_output=True,
                timeout=20,
            )
        except (OSError, subprocess.TimeoutExpired):
            return False
    return done.returncode == 0


UNSHARE_SKIP_REASON = (
    "isolated Ray nodes need `unshare --mount` and `mount -t tmpfs` (root or CAP_SYS_ADMIN in a "
    "container that allows mount namespaces); not permitted here"
)


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("", port))
        except OSError:
            return False
    return True


def _reserve_ports() -> tuple[list[int], IO[str]]:
    """A block of ports for one node: free now, and reserved against every other cluster this helper
    starts (in any process) by an exclusive lock on the block's file, held until the lock file is closed.
    A free-now check alone is not enough: a node binds its worker ports only as workers start."""
    lock_dir = Path(tempfile.gettempdir(), "sensorcast-ray-ports")
    lock_dir.mkdir(exist_ok=True)
    slots = list(range((_PORT_HIGH - _PORT_LOW) // _SLOT_PORTS))
    random.shuffle(slots)
    for slot in slots:
        lock = (lock_dir / f"{slot}.lock").open("w")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            continue
        base = _PORT_LOW + slot * _SLOT_PORTS
        block = list(range(base, base + _FIXED_PORTS + _WORKER_PORTS))
        if all(_bindable(port) for port in block):
            return block, lock
        lock.close()
    raise ClusterError(f"no free block of ports left in {_PORT_LOW}-{_PORT_HIGH}; too many clusters running?")


def _node_flags(block: list[int]) -> list[str]:
    """Flags giving one node its own ports, so several nodes on one host never bind the same one."""
    workers = block[_FIXED_PORTS:]
    return [
        "--node-manager-port",
        str(block[0]),
        "--object-manager-port",
        str(block[1]),
        "--runtime-env-agent-port",
        str(block[2]),
        "--dashboard-agent-listen-port",
        str(block[3]),
        "--dashboard-agent-grpc-port",
        str(block[4]),
        "--metrics-export-port",
        str(block[5]),
        "--min-worker-port",
        str(workers[0]),
        "--max-worker-port",
        str(workers[-1]),
        "--object-store-memory",
        str(_OBJECT_STORE_BYTES),
        "--disable-usage-stats",
        "--block",
    ]


def _session_processes(leader_pid: int) -> list[psutil.Process]:
    """Every live process in the session led by `leader_pid` (the leader may already be gone)."""
    found = []
    for proc in psutil.process_iter():
        try:
            if os.getsid(proc.pid) == leader_pid and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except (ProcessLookupError, PermissionError, psutil.Error):
            continue
    return found


def _kill(procs: list[psutil.Process]) -> list[psutil.Process]:
    """SIGKILL `procs`, wait up to 10 s for them to go; return the survivors."""
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    return psutil.wait_procs(procs, timeout=10)[1]


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"(no log: {exc})"


@dataclass
class _Node:
    index: int  # -1 for the head
    proc: subprocess.Popen[bytes]
    log_path: Path
    log: IO[bytes]
    node_id: str = ""  # hex, set once the GCS lists the node

    @property
    def name(self) -> str:
        return "head node" if self.index < 0 else f"isolated node {self.index}"

    def is_listed_as(self, info: dict[str, Any], node_resource: str) -> bool:
        """Whether the GCS entry `info` (see `RayCluster.nodes`) is this node."""
        return info["is_head"] if self.index < 0 else f"{node_resource}_{self.index}" in info["resources"]


@dataclass
class RayCluster:
    """A running cluster: a head and `len(node_ids)` isolated nodes, all alive when `start` returns.

    `address` ("127.0.0.1:PORT") is the GCS address for `ray.init(address=...)`,
    `SENSORCAST_RAY__ADDRESS` or `RAY_ADDRESS`; `env` is the environment a driver subprocess needs;
    `head_node_id` and `node_ids[i]` are Ray node ids (hex); `node_resource` pins work to the isolated
    nodes, `f"{node_resource}_{i}"` to node i.
    """

    address: str
    env: dict[str, str]
    node_resource: str
    head_node_id: str
    node_ids: list[str]
    tmp_dir: Path
    _head: _Node
    _nodes: list[_Node]
    _head_temp: Path
    _port_locks: list[IO[str]] = field(repr=False)
    _stopped: bool = field(default=False, repr=False)
    _gcs_client: Any = field(default=None, repr=False)

    @classmethod
    def start(
        cls,
        tmp_dir: Path,
        *,
        isolated_nodes: int = 1,
        node_resource: str = "sc_isolated",
        hidden: list[Path],
        timeout_s: float = 90.0,
        head_resources: dict[str, float] | None = None,
    ) -> RayCluster:
        """Start a head and `isolated_nodes` isolated nodes and wait until all are alive.

        `hidden` are folders the isolated nodes must not see (typically the driver's data folder); they
        must exist and must not contain this Python or the repo. `tmp_dir` receives each node's
        `ray start` output (`head.log`, `node-<i>.log`). `head_resources` are custom resources of the head
        (to pin work next to the driver, for comparisons). Raises ClusterError (after cleaning up) when a
        node does not come up within `timeout_s`.
        """
        if not unshare_permitted():
            raise ClusterError(UNSHARE_SKIP_REASON)
        hidden = [Path(h).resolve() for h in hidden]
        for folder in hidden:
            if not folder.is_dir():
                raise ClusterError(f"hidden folder {folder} does not exist; create it before starting")
        for needed in (REPO, Path(sys.prefix).resolve(), Path(sys.executable).resolve()):
            for folder in [*hidden, Path("/tmp").resolve()]:
                if needed.is_relative_to(folder):
                    raise ClusterError(
                        f"{needed} is inside {folder}, which the isolated nodes hide; they could not run "
                        "Ray. Keep the repo and the venv outside hidden folders and /tmp"
                    )
        tmp_dir.mkdir(parents=True, exist_ok=True)
        # Ray's Unix sockets live under the temp dir and a socket path may not exceed 107 bytes;
        # pytest's tmp_path is too long for that, hence a short private folder for the head.
        head_temp = Path(tempfile.mkdtemp(prefix="scray-", dir="/tmp"))

        head_ports, head_lock = _reserve_ports()
        gcs_port, dashboard_port, autoscaler_metrics_port = head_ports[6:9]
        address = f"127.0.0.1:{gcs_port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "RAY_AUTH_TOKEN"))}
        # Token auth stays on in production (Ray's default for new clusters, and `ray.init()` in this
        # very process may have set RAY_AUTH_MODE=token); this cluster only listens on the test host, so
        # it runs without it and every process that talks to it is told so.
        env.update(RAY_AUTH_MODE="disabled", **_HEALTH_CHECK_ENV)
        head_env = {**env, "AUTOSCALER_METRIC_PORT": str(autoscaler_metrics_port)}
        head_cmd = [
            str(RAY),
            "start",
            "--head",
            "--port",
            str(gcs_port),
            "--num-cpus",
            "1",
            "--include-dashboard=false",
            "--dashboard-port",
            str(dashboard_port),  # unused with the dashboard off; never the shared 8265
            "--temp-dir",
            str(head_temp),
            *_node_flags(head_ports),
            *(["--resources", json.dumps(head_resources)] if head_resources else []),
        ]
        head = _spawn(head_cmd, head_env, -1, tmp_dir / "head.log")
        nodes: list[_Node] = []
        cluster = cls(
            address=address,
            env={**env, "RAY_ADDRESS": address, "SENSORCAST_RAY__ADDRESS": address},
            node_resource=node_resource,
            head_node_id="",
            node_ids=[],
            tmp_dir=tmp_dir,
            _head=head,
            _nodes=nodes,
            _head_temp=head_temp,
            _port_locks=[head_lock],
        )
        atexit.register(cluster.stop)
        try:
            cluster._wait_alive([head], timeout_s)
            for i in range(isolated_nodes):
                ports, lock = _reserve_ports()
                cluster._port_locks.append(lock)
                resources = json.dumps({node_resource: 100, f"{node_resource}_{i}": 100})
                ray_cmd = [
                    str(RAY),
                    "start",
                    "--address",
                    address,
                    "--num-cpus",
                    "2",
                    "--resources",
                    resources,
                    "--temp-dir",
                    "/tmp/ray",
                    *_node_flags(ports),
                ]
                mounts = [f"mount -t tmpfs tmpfs {shlex.quote(str(folder))}" for folder in hidden]
                # Hidden folders first: one below /tmp would vanish under the /tmp tmpfs before its own
                # mount. `cd /tmp` last, so no process on the node keeps a handle on the host's cwd.
                script = "; ".join(
                    ["set -e", *mounts, "mount -t tmpfs tmpfs /tmp", "cd /tmp", f"exec {shlex.join(ray_cmd)}"]
                )
                cmd = ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", script]
                nodes.append(_spawn(cmd, env, i, tmp_dir / f"node-{i}.log"))
            cluster._wait_alive(nodes, timeout_s)
        except BaseException:
            cluster.stop()
            raise
        cluster.head_node_id = head.node_id
        cluster.node_ids = [node.node_id for node in nodes]
        return cluster

    def __enter__(self) -> RayCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- observing -------------------------------------------------------------------------------------

    def nodes(self) -> list[dict[str, Any]]:
        """The GCS's view of every node, alive or dead: `{node_id, alive, is_head, resources}`."""
        infos = self._gcs().get_all_node_info(timeout=10).values()
        return [
            {
                "node_id": info.node_id.hex(),
                "alive": info.state == _ALIVE,
                "is_head": info.is_head_node,
                "resources": dict(info.resources_total),
            }
            for info in infos
        ]

    def wait_nodes(self, n: int, timeout_s: float = 60.0) -> list[dict[str, Any]]:
        """Wait until exactly `n` nodes (head included) are alive; return them."""

        def alive() -> list[dict[str, Any]]:
            try:
                found = [node for node in self.nodes() if node["alive"]]
            except (OSError, RayError):  # the GCS not answering yet is what this waits out
                return []
            return found if len(found) == n else []

        return wait_for(
            alive, timeout_s=timeout_s, what=f"exactly {n} alive nodes in the cluster at {self.address}"
        )

    def processes(self) -> list[psutil.Process]:
        """Every live process of this cluster (all nodes' sessions)."""
        return [proc for node in (self._head, *self._nodes) for proc in _session_processes(node.proc.pid)]

    # -- acting ----------------------------------------------------------------------------------------

    def driver(self, code: str, *args: str, timeout_s: float = 120.0) -> Any:
        """Run `code` as a Ray driver in a separate Python process (`python -c code *args`, cwd: the repo)
        and return the JSON value of its last stdout line. `RAY_ADDRESS` is set, so `ray.init()` there
        joins this cluster."""
        try:
            done = subprocess.run(
                [sys.executable, "-c", code, *args],
                cwd=REPO,
                env=self.env,
                capture_output=True,
                text=True,
                timeout=timeout_s,
            )
        except subprocess.TimeoutExpired as exc:
            stderr = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else exc.stderr
            raise ClusterError(f"driver did not finish within {timeout_s:.0f} s; stderr:\n{stderr}") from exc
        lines = done.stdout.strip().splitlines()
        if done.returncode != 0 or not lines:
            raise ClusterError(
                f"driver exited {done.returncode}; stdout:\n{done.stdout[-3000:]}\n"
                f"stderr:\n{done.stderr[-3000:]}"
            )
        return json.loads(lines[-1])

    def kill_node(self, i: int, *, timeout_s: float = 60.0) -> float:
        """Kill every process of isolated node i with SIGKILL (a machine crash: no goodbye to the GCS) and
        wait until the GCS reports the node dead. Returns the seconds from the kill until it did."""
        node = self._nodes[i]
        killed_at = time.monotonic()
        survivors = _kill(_session_processes(node.proc.pid))
        node.proc.wait(timeout=10)  # our child: reap it; init reaps the rest
        if survivors:
            raise ClusterError(f"{node.name}: processes survived SIGKILL: {survivors}")

        def dead() -> bool:
            try:
                return any(n["node_id"] == node.node_id and not n["alive"] for n in self.nodes())
            except (OSError, RayError):  # a GCS hiccup is retried until the deadline
                return False

        wait_for(dead, timeout_s=timeout_s, what=f"the GCS to report {node.name} ({node.node_id}) dead")
        return time.monotonic() - killed_at

    def stop(self) -> None:
        """Tear everything down: SIGKILL every process of every node, reap, remove the head's temp dir.
        Idempotent. Raises ClusterError if a process survives.

        SIGKILL, not SIGTERM: on SIGTERM Ray 2.60 drains for up to 30 s, and a `ray start` still starting
        up ignores it and leaves its children unreaped; a test cluster has nothing worth a graceful end.
        Not `ray stop`, which kills every Ray on the machine."""
        if self._stopped:
            return
        self._stopped = True
        atexit.unregister(self.stop)
        survivors = _kill(self.processes())
        for node in (self._head, *self._nodes):
            with contextlib.suppress(subprocess.TimeoutExpired):
                node.proc.wait(timeout=10)
            node.log.close()
        shutil.rmtree(self._head_temp, ignore_errors=True)
        for lock in self._port_locks:
            lock.close()  # after the processes are gone: only then are the ports free again
        if survivors:
            raise ClusterError(f"Ray processes survived SIGKILL: {survivors}")

    # -- internals -------------------------------------------------------------------------------------

    def _gcs(self) -> Any:
        """A GCS client (no driver: this process stays free to hold its own Ray). Its constructor blocks
        ~30 s on a GCS that is not listening, so it is only built once the port accepts connections."""
        if self._gcs_client is None:
            from ray._raylet import GcsClient  # type: ignore[attr-defined]

            host, port = self.address.rsplit(":", 1)
            socket.create_connection((host, int(port)), timeout=2).close()  # OSError while not listening
            self._gcs_client = GcsClient(address=self.address)
        return self._gcs_client

    def _wait_alive(self, nodes: Sequence[_Node], timeout_s: float) -> None:
        """Wait until the GCS lists each of `nodes` alive and record its node id; fail at once, with the
        node's log, if its `ray start` exits."""
        pending = list(nodes)

        def joined() -> bool:
            for node in pending:
                if node.proc.poll() is not None:
                    raise ClusterError(
                        f"{node.name} exited with {node.proc.returncode} while starting; "
                        f"{node.log_path}:\n{_tail(node.log_path)}"
                    )
            try:
                alive = [n for n in self.nodes() if n["alive"]]
            except (OSError, RayError):  # GCS not up yet
                return False
            for node in list(pending):
                found = [n["node_id"] for n in alive if node.is_listed_as(n, self.node_resource)]
                if found:
                    node.node_id = found[0]
                    pending.remove(node)
            return not pending

        names = ", ".join(node.name for node in nodes)
        logs = ", ".join(str(node.log_path) for node in nodes)
        wait_for(
            joined, timeout_s=timeout_s, interval_s=0.2, what=f"{names} to join the cluster (logs: {logs})"
        )


def _spawn(cmd: list[str], env: dict[str, str], index: int, log_path: Path) -> _Node:
    log = log_path.open("wb")
    # A new session per node: all of the node's Ray processes inherit it, so the node can be found and
    # killed as a whole even after `ray start` itself is gone.
    proc = subprocess.Popen(
        cmd, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    return _Node(index=index, proc=proc, log_path=log_path, log=log)
