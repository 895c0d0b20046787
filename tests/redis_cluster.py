"""A real Redis Cluster on loopback for the tests: three `redis-server --cluster-enabled yes` masters with
one replica each, joined by `redis-cli --cluster create`, each node in a temporary folder with persistence
off. `LocalCluster.start` returns it once every node reports `cluster_state:ok` and every replica is in
sync; the session fixture `redis_cluster` shares one per test session (tests take uuid-named networks) and
stops every process at the end. Also what the tests do to it: find the master serving a key's slot, fail
it over to its replica (`CLUSTER FAILOVER`), wait until the cluster agrees. `standalone` starts one plain
server with extra options (a password) for the start-error tests.

Skips (not fails) when `redis-server` or `redis-cli` is not installed.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from serving.embedded import _die_with_parent, free_port

START_TIMEOUT_S = 30.0
PLAIN = ("--save", "", "--appendonly", "no", "--daemonize", "no")  # memory only, in the foreground
NODE_TIMEOUT_MS = 2_000  # failure detection; a manual failover does not wait for it


@dataclass
class Node:
    port: int
    process: subprocess.Popen[bytes]
    log: Path

    def client(self) -> redis.Redis:
        # no retries of redis-py's own (seconds of backoff on a refused connection): callers poll
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5, retry=Retry(NoBackoff(), 0))

    def info(self, section: str) -> dict[str, str]:
        with self.client() as c:
            return {k: str(v) for k, v in c.info(section).items()}

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


class LocalCluster:
    """Six running nodes (three masters, three replicas); build it with `LocalCluster.start(folder)`."""

    def __init__(self, nodes: list[Node]) -> None:
        self.nodes = nodes

    @property
    def url(self) -> str:
        """A startup node's URL: the client discovers the others from it."""
        return f"redis://127.0.0.1:{self.nodes[0].port}/0"

    @classmethod
    def start(cls, folder: Path) -> LocalCluster:
        cli = shutil.which("redis-cli")
        if not cli:
            pytest.skip("redis-cli (Debian's redis-tools) is needed to create the Redis Cluster")
        nodes: list[Node] = []
        try:
            for _ in range(6):
                cluster_args = ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]
                cluster_args += ["--cluster-node-timeout", str(NODE_TIMEOUT_MS)]
                nodes.append(standalone(folder, *cluster_args, "--cluster-port", str(free_port())))
            cluster = cls(nodes)
            addresses = [f"127.0.0.1:{n.port}" for n in nodes]
            create = subprocess.run(
                [cli, "--cluster", "create", *addresses, "--cluster-replicas", "1", "--cluster-yes"],
                capture_output=True,
                text=True,
                timeout=START_TIMEOUT_S,
            )
            if create.returncode != 0:
                raise RuntimeError(
                    f"redis-cli --cluster create failed: {create.stdout[-2000:]}{create.stderr}"
                )
            cluster.wait_settled(START_TIMEOUT_S)
            return cluster
        except BaseException:
            cls(nodes).stop()
            raise

    def wait_settled(self, timeout_s: float) -> None:
        """Until every node says `cluster_state:ok`, knows all six, and agrees on three masters, each with
        an in-sync replica."""
        deadline, last = time.monotonic() + timeout_s, ""
        while time.monotonic() < deadline:
            last = self._unsettled()
            if not last:
                return
            time.sleep(0.1)
        raise RuntimeError(f"the Redis Cluster did not settle within {timeout_s:.0f} s: {last}")

    def _unsettled(self) -> str:
        for node in self.nodes:
            try:
                with node.client() as c:
                    info = c.cluster("INFO")
                    if info["cluster_state"] != "ok" or int(info["cluster_known_nodes"]) != 6:
                        return (
                            f"node {node.port}: {info['cluster_state']}, knows {info['cluster_known_nodes']}"
                        )
                    if c.info("replication")["role"] == "slave" and (
                        c.info("replication")["master_link_status"] != "up"
                    ):
                        return f"replica {node.port} not in sync"
            except redis.RedisError as exc:
                return f"node {node.port}: {exc}"
        masters = {n.port for n in self.nodes if n.info("replication")["role"] == "master"}
        return "" if len(masters) == 3 else f"{len(masters)} masters"

    def master_of(self, key: str) -> Node:
        """The node serving `key`'s slot now, as every node agrees."""
        owners = self._owners(key)
        if len(owners) != 1:
            raise RuntimeError(f"the nodes disagree on who serves {key!r}: ports {sorted(owners)}")
        return next(n for n in self.nodes if n.port in owners)

    def _owners(self, key: str) -> set[int]:
        """The master port each node names for `key`'s slot."""
        owners = set()
        for node in self.nodes:
            with node.client() as c:
                slot = int(c.cluster("KEYSLOT", key))
                for start, end, master, *_ in c.cluster("SLOTS"):
                    if int(start) <= slot <= int(end):
                        owners.add(int(master[1]))
        return owners

    def replica_of(self, master: Node) -> Node:
        for node in self.nodes:
            info = node.info("replication")
            if info["role"] == "slave" and int(info["master_port"]) == master.port:
                return node
        raise RuntimeError(f"master {master.port} has no replica")

    def failover(self, key: str, timeout_s: float = 15.0) -> tuple[Node, Node]:
        """`CLUSTER FAILOVER` on the replica of the master serving `key` (the coordinated manual failover:
        the master stops taking writes, the replica catches up with it, then takes its slots). Returns
        (old master, new master) once every node names the new one for the slot and the cluster is ok."""
        master = self.master_of(key)
        replica = self.replica_of(master)
        with replica.client() as c:
            c.cluster("FAILOVER")
        deadline = time.monotonic() + timeout_s
        while self._owners(key) != {replica.port} or self._unsettled():
            if time.monotonic() > deadline:
                raise RuntimeError(f"replica {replica.port} did not take over within {timeout_s:.0f} s")
            time.sleep(0.02)
        return master, replica

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def standalone(folder: Path, *options: str) -> Node:
    """One running `redis-server` on a free loopback port with `options` added, persistence off."""
    server = shutil.which("redis-server")
    if not server:
        pytest.skip("redis-server is needed for the Redis Cluster tests")
    port = free_port()
    home = folder / f"node-{port}"
    home.mkdir(parents=True)
    log = home / "redis.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [server, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(home), *PLAIN, *options],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=_die_with_parent,  # the embedded runtime's guard: no server outlives the tests
            start_new_session=True,  # a Ctrl-C of pytest is not delivered to it; stop() ends it
        )
    node = Node(port, process, log)
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        try:
            with node.client() as c:
                c.ping()
            return node
        except redis.AuthenticationError:  # up, and asking for the password it was given
            return node
        except redis.RedisError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"redis-server on port {port} never answered: {log.read_text()[-2000:]}")
        time.sleep(0.05)


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """One Redis Cluster for the test session; tests take their own network names (hash tags)."""
    cluster = LocalCluster.start(tmp_path_factory.mktemp("redis-cluster"))
    try:
        yield cluster
    finally:
        cluster.stop()
