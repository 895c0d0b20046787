"""The Ray command lines of docker-compose.yml, run for real without Docker.

No Docker daemon runs on these machines, so the compose file's Ray wiring is exercised in private Linux
namespaces instead of containers: a fresh PID namespace (every process ends with the test), a mount
namespace with its own /tmp (Ray's session files; `/etc/hosts` names `ray-head`) and a network namespace
with only loopback (the compose ports, 6379 included, are free there). The head's, the worker's and the
driver's `ray start` commands and the head's healthcheck are taken from the compose file as they are, with
the compose token authentication; only per-node port flags are added (the three nodes share one loopback
here, where compose gives each container its own address) and `--block` is dropped so that the nodes start
one after the other. The driver then connects with `SENSORCAST_RAY__ADDRESS` (`auto`) and places an actor
shaped like a forecaster actor.

What it must not do: touch Ray processes or files outside its namespaces (no `ray stop`).
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
from typing import Any

import pytest
import yaml

from tests.test_config_compose import COMPOSE_ENV, REPO, _environment

# A fresh PID namespace (its processes end with it), private mounts and a loopback-only network.
NAMESPACES = ("unshare", "--pid", "--fork", "--mount-proc", "--mount", "--net", "--propagation", "private")

PROBE = r"""
import json, os, time, ray
ray.init(address=os.environ["SENSORCAST_RAY__ADDRESS"], log_to_driver=False, configure_logging=False)
deadline = time.monotonic() + 60
while True:  # a joined node may take a moment to show as alive
    nodes = {n["NodeID"]: n["Resources"].get("CPU", 0.0) for n in ray.nodes() if n["Alive"]}
    if len(nodes) >= 3 or time.monotonic() > deadline:
        break
    time.sleep(0.5)

@ray.remote(num_cpus=0.25)
class Probe:
    def node(self):
        return ray.get_runtime_context().get_node_id()

where = ray.get(Probe.remote().node.remote(), timeout=60)
print("PROBE " + json.dumps({"cpus": sorted(nodes.values()), "actor_node_cpus": nodes[where]}))
"""


def _namespaces_permitted() -> bool:
    if not (shutil.which("unshare") and shutil.which("ip") and shutil.which("mount")):
        return False
    done = subprocess.run(
        [*NAMESPACES, "true"],
        capture_output=True,
        timeout=20,
    )
    return done.returncode == 0


def _ports(first: int) -> str:
    """Flags giving a node its own ports (compose nodes have their own addresses; these share one)."""
    names = (
        "node-manager",
        "object-manager",
        "runtime-env-agent",
        "dashboard-agent-listen",
        "dashboard-agent-grpc",
        "metrics-export",
    )
    flags = [f"--{name}-port={first + i}" for i, name in enumerate(names)]
    return " ".join([*flags, f"--min-worker-port={first + 100}", f"--max-worker-port={first + 199}"])


@pytest.mark.skipif(
    not _namespaces_permitted(), reason="needs unshare --pid --mount --net (root) and ip; no Docker here"
)
def test_compose_ray_commands_form_a_cluster_the_driver_joins() -> None:
    services = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]
    head, worker, driver = services["ray-head"], services["ray-worker"], services["serve"]
    env = _environment(driver)
    auth = {k: v for k, v in env.items() if k.startswith("RAY_AUTH")}
    assert auth.get("RAY_AUTH_MODE") == "token" and auth["RAY_AUTH_TOKEN"] == COMPOSE_ENV["RAY_AUTH_TOKEN"]
    assert _environment(head) == auth and _environment(worker) == auth  # one token on every node

    shell, dash_c, driver_line = driver["command"]
    assert (shell, dash_c) == ("sh", "-c")
    driver_ray, _, serve = driver_line.partition(" && exec ")
    assert serve.startswith("sensorcast serve")
    health = head["healthcheck"]["test"]
    assert health[0] == "CMD"
    quiet = "--object-store-memory=100000000 --disable-usage-stats"

    def unblocked(svc: dict[str, Any]) -> list[str]:
        # `--block` keeps a container's main process in the foreground; here the nodes start one after
        # the other (two raylets starting at once on one address mistake each other's registration).
        assert "--block" in svc["command"]
        return [arg for arg in svc["command"] if arg != "--block"]

    script = f"""
set -e
mount -t tmpfs tmpfs /tmp && cd /tmp
trap 'tail -n 15 *.log' ERR
ip link set lo up
printf '127.0.0.1 localhost ray-head\\n' > /tmp/hosts && mount --bind /tmp/hosts /etc/hosts
export PATH={shlex.quote(str(REPO / ".venv" / "bin"))}:$PATH
{shlex.join(unblocked(head))} {quiet} > head.log 2>&1
for i in $(seq 90); do {shlex.join(health[1:])} >/dev/null 2>&1 && break; sleep 1; done
{shlex.join(health[1:])} >/dev/null 2>&1 && echo HEAD_HEALTHY
env -u RAY_AUTH_TOKEN {shlex.join(health[1:])} >/dev/null 2>&1 || echo TOKENLESS_REFUSED
{shlex.join(unblocked(worker))} {quiet} {_ports(7000)} > worker.log 2>&1
{driver_ray} {quiet} {_ports(8000)} > driver.log 2>&1
{shlex.quote(sys.executable)} -c {shlex.quote(PROBE)}
"""
    run_env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/tmp", **auth}
    run_env["SENSORCAST_RAY__ADDRESS"] = env["SENSORCAST_RAY__ADDRESS"]
    done = subprocess.run(
        [*NAMESPACES, "bash", "-c", script], capture_output=True, text=True, timeout=300, env=run_env
    )
    out = done.stdout + done.stderr
    assert "HEAD_HEALTHY" in out, f"the head's compose healthcheck never passed:\n{out[-3000:]}"
    assert "TOKENLESS_REFUSED" in out, "the head answered a client without the Ray token"
    probe = [line for line in out.splitlines() if line.startswith("PROBE ")]
    assert probe, f"the driver could not join and place an actor:\n{out[-3000:]}"
    seen = json.loads(probe[0].removeprefix("PROBE "))
    # Head and driver nodes offer no CPU (--num-cpus=0); the worker takes the forecaster-shaped actor.
    assert sorted(seen["cpus"])[:2] == [0.0, 0.0] and len(seen["cpus"]) == 3, seen
    assert seen["actor_node_cpus"] > 0, seen
