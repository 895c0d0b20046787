"""The multi-node test cluster itself (tests/cluster.py): an isolated node really cannot see the driver's
files, a killed node is reported dead, and `stop` leaves no process behind. The cluster tests that prove
sensorcast needs no shared filesystem rest on these three facts.

One cluster lives through all of it (start, probe, kill, stop) in a module fixture that records what it
observed; each test asserts one part of that record. Drivers run as subprocesses: the pytest process may
already hold the session's local Ray, and one process can join only one Ray.
"""

from __future__ import annotations

import json
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.cluster import UNSHARE_SKIP_REASON, RayCluster, unshare_permitted

pytestmark = pytest.mark.skipif(not unshare_permitted(), reason=UNSHARE_SKIP_REASON)

# One probe actor on the isolated node and, as the control showing the probe can see the files at all,
# one on the head. argv[1]: {"resource", "head", "paths", "driver_tmp_entries"}.
PROBE_DRIVER = """
import json, os, sys, tempfile
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

params = json.loads(sys.argv[1])
ray.init(log_to_driver=False)


@ray.remote(num_cpus=0.25)
class Probe:
    def look(self, paths, driver_tmp_entries):
        tmp_entries = set(os.listdir(tempfile.gettempdir()))
        return {
            "node_id": ray.get_runtime_context().get_node_id(),
            "exists": {name: os.path.exists(path) for name, path in paths.items()},
            "tmp_entries": sorted(tmp_entries),
            "driver_tmp_entries_visible": sorted(tmp_entries & set(driver_tmp_entries)),
            "cwd": os.getcwd(),
        }


isolated = Probe.options(resources={params["resource"]: 1}).remote()
head = Probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(params["head"], soft=False)).remote()
args = (params["paths"], params["driver_tmp_entries"])
print(json.dumps({
    "driver_node_id": ray.get_runtime_context().get_node_id(),
    "nodes": [{"node_id": n["NodeID"], "alive": n["Alive"]} for n in ray.nodes()],
    "isolated": ray.get(isolated.look.remote(*args), timeout=90),
    "head": ray.get(head.look.remote(*args), timeout=90),
}))
"""

NODES_DRIVER = """
import json, ray
ray.init(log_to_driver=False)
print(json.dumps([{"node_id": n["NodeID"], "alive": n["Alive"]} for n in ray.nodes()]))
"""


def _running(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _naming_port(gcs_port: int) -> list[psutil.Process]:
    """Live processes whose command line names the GCS port (raylets, GCS, workers, agents, monitors),
    found independently of the sessions `stop` relies on."""
    found = []
    for proc in psutil.process_iter(["name", "cmdline", "status"]):
        cmdline = proc.info["cmdline"] or []
        if proc.info["status"] != psutil.STATUS_ZOMBIE and any(
            arg.endswith((f":{gcs_port}", f"={gcs_port}")) for arg in cmdline
        ):
            found.append(proc)
    return found


@pytest.fixture(scope="module")
def observed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Start a cluster with one isolated node, probe what that node sees, kill it, stop the cluster;
    return (and print) everything observed on the way."""
    tmp = tmp_path_factory.mktemp("cluster-infra")
    # The driver's data folder, under /tmp like the driver's temp files ...
    data = tmp / "data"
    data.mkdir()
    marker = data / f"marker-{uuid.uuid4().hex}.txt"
    marker.write_text("only the driver's disk has this")
    # ... and a folder outside /tmp, which only the `hidden` mount (not the /tmp tmpfs) can hide.
    with (
        tempfile.TemporaryDirectory(prefix="sc-hidden-", dir="/var/tmp") as outside,
        tempfile.NamedTemporaryFile(prefix="sc-driver-tmp-") as tmp_file,  # in the driver's temp folder
    ):
        outside_marker = Path(outside) / "marker.txt"
        outside_marker.write_text("only the driver's disk has this")
        paths = {
            "data_marker": str(marker),
            "outside_folder": outside,
            "outside_marker": str(outside_marker),
            "driver_tmp_file": tmp_file.name,
        }
        driver_tmp_entries = sorted(p.name for p in Path(tempfile.gettempdir()).iterdir())

        started = time.monotonic()
        cluster = RayCluster.start(tmp / "cluster", hidden=[data, Path(outside)])
        start_s = time.monotonic() - started
        gcs_port = int(cluster.address.rsplit(":", 1)[1])
        try:
            daemons = [p for p in _naming_port(gcs_port) if p.info["name"] in {"raylet", "gcs_server"}]
            params = {
                "resource": cluster.node_resource,
                "head": cluster.head_node_id,
                "paths": paths,
                "driver_tmp_entries": driver_tmp_entries,
            }
            probe = cluster.driver(PROBE_DRIVER, json.dumps(params))
            kill_to_dead_s = cluster.kill_node(0)
            nodes_after_kill = cluster.driver(NODES_DRIVER)
        finally:
            started = time.monotonic()
            cluster.stop()
            stop_s = time.monotonic() - started

    record = {
        "start_s": round(start_s, 2),
        "head_node_id": cluster.head_node_id,
        "isolated_node_id": cluster.node_ids[0],
        "driver_node_id": probe["driver_node_id"],
        "daemons": sorted(p.info["name"] for p in daemons),
        "nodes_before_kill": probe["nodes"],
        "driver_tmp_entries": len(driver_tmp_entries),
        "isolated": probe["isolated"],
        # the control; its listings only as counts (they show the host's whole /tmp)
        "head": {
            **probe["head"],
            **{k: len(probe["head"][k]) for k in ("tmp_entries", "driver_tmp_entries_visible")},
        },
        "kill_to_dead_s": round(kill_to_dead_s, 2),
        "nodes_after_kill": nodes_after_kill,
        "stop_s": round(stop_s, 2),
        "left_daemons": [f"{p.pid} {p.info['name']}" for p in daemons if _running(p)],
        "left_session_processes": [f"{p.pid} {p.name()}" for p in cluster.processes()],
        "left_naming_gcs_port": [f"{p.pid} {p.info['name']}" for p in _naming_port(gcs_port)],
    }
    print(json.dumps(record, indent=2))
    return record


def test_isolated_node_cannot_see_driver_files(observed: dict[str, Any]) -> None:
    isolated, head = observed["isolated"], observed["head"]
    assert observed["driver_node_id"] == observed["head_node_id"]
    assert isolated["node_id"] == observed["isolated_node_id"] != observed["head_node_id"]
    assert head["node_id"] == observed["head_node_id"]
    # The control: on the head the probe sees everything the driver wrote.
    assert all(head["exists"].values()), head["exists"]
    # On the isolated node the data folder and the driver's temp file are gone; the folder outside /tmp
    # is still there (its mount point) but empty.
    assert isolated["exists"] == {
        "data_marker": False,
        "outside_folder": True,
        "outside_marker": False,
        "driver_tmp_file": False,
    }
    # Its /tmp holds only its own Ray temp dir, which shares the name `ray` with a local Ray's.
    assert set(isolated["tmp_entries"]) <= {"ray"}
    assert set(isolated["driver_tmp_entries_visible"]) <= {"ray"}
    assert isolated["cwd"] == "/tmp"  # the node-local tmpfs, not a handle on the host's folders


def test_killed_node_is_reported_dead(observed: dict[str, Any]) -> None:
    head, isolated = observed["head_node_id"], observed["isolated_node_id"]
    assert observed["daemons"] == ["gcs_server", "raylet", "raylet"]
    assert {n["node_id"]: n["alive"] for n in observed["nodes_before_kill"]} == {head: True, isolated: True}
    assert {n["node_id"]: n["alive"] for n in observed["nodes_after_kill"]} == {head: True, isolated: False}


def test_stop_leaves_no_process(observed: dict[str, Any]) -> None:
    assert observed["left_daemons"] == []
    assert observed["left_session_processes"] == []
    assert observed["left_naming_gcs_port"] == []
