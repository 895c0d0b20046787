"""sensorcast on a real multi-node Ray cluster whose worker nodes cannot read the driver's files.

`tests.cluster.RayCluster` starts a head and isolated nodes (private mount namespaces with tmpfs over the
driver's data folder and /tmp); the object store is a real S3 endpoint (moto's server). Drivers run as
subprocesses (the pytest process holds a local Ray of its own).

- default suite: forecaster actors pinned to the isolated node serve a checkpoint given as an `s3://` URI
  (read on that node) and one on the driver's disk (shipped as bytes through Ray's object store), with
  the same numbers as a local predictor, and refuse an object whose sha256 is not the recorded one;
- `slow`: `sensorcast serve` with retraining, unchanged, on the cluster — readings → forecasts from actors
  on an isolated node → a Ray Train job on the isolated nodes → gate → promotion → hot swap, then the
  node hosting the actors is killed; every step is forecast exactly once, read back with raw redis-py.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis

from serving.config import Settings
from serving.embedded import EmbeddedRuntime
from serving.keys import Keys
from stream.kafka_io import ReadingProducer, ensure_topics
from stream.simulate import Simulator, SimulatorConfig, simulated_network
from tests.cluster import RayCluster, unshare_permitted
from tests.conftest import REPO, wait_for
from tests.s3 import MotoServer
from training.checkpoint import load_checkpoint, save_checkpoint
from training.predictor import Predictor

CHECKPOINT = REPO / "benchmarks" / "results" / "stformer-los-loop.pt"

pytestmark = pytest.mark.skipif(
    not unshare_permitted(), reason="unshare --mount is not permitted here (needs root or user namespaces)"
)

ACTORS = r"""
import json, sys
import numpy as np, ray
from serving.config import RaySettings
from serving.forecaster import ModelSpec, make_actor, ship
from stream.config import StorageSettings
from stream.network import Network

storage = StorageSettings.model_validate_json(sys.argv[1])
specs = json.loads(sys.argv[2])
net = Network.from_dict(json.loads(sys.argv[3]))
x = np.load(sys.argv[4])
ray.init(log_to_driver=False, configure_logging=False)
pinned = {"actor_resources": {"sc_isolated": 1}, "actor_num_cpus": 0.25, "cpu_backend": "torch"}
out = {"driver_node": ray.get_runtime_context().get_node_id()}
for name, (ref, sha) in specs.items():
    shipment = ship(ModelSpec(ref, sha), storage)
    settings = RaySettings(**pinned, actor_max_restarts=0 if name == "replaced" else 5)
    actor = make_actor(settings, 12, 12, storage)
    try:
        ray.get(actor.load.remote(*shipment.args(), net.to_dict()), timeout=120)
        info = ray.get(actor.info.remote(), timeout=120)
        y, version, _, _ = ray.get(actor.forecast.remote(x["values"], x["mask"], x["step_ts"]), timeout=120)
        out[name] = {"node": info["node"], "version": version, "load_ms": info["load_ms"],
                     "as_bytes": shipment.blob is not None, "forecast": y.tolist()}
    except Exception as exc:
        out[name] = {"error": str(exc)[-600:]}
if len(sys.argv) > 5:  # a blocks model in two sensor shards, one on each node, merged by the dispatcher
    from serving.dispatch import Dispatcher
    ref, sha = json.loads(sys.argv[5])
    actors = [
        make_actor(RaySettings(**{**pinned, "actor_resources": {res: 1}}), 12, 12, storage, (j, 2))
        for j, res in enumerate(("sc_isolated", "sc_head"))
    ]
    dispatcher = Dispatcher(actors, ship(ModelSpec(ref, sha), storage), net, shards=2)
    dispatcher.start()
    y = dispatcher.collect(dispatcher.submit(x["values"], x["mask"], x["step_ts"]))
    out["sharded"] = {**dispatcher.placement(), "forecast": y.tolist()}
print(json.dumps(out))
"""


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[RayCluster]:
    data = tmp_path / "driver-data"
    data.mkdir()
    with RayCluster.start(
        tmp_path / "cluster", isolated_nodes=1, hidden=[data], head_resources={"sc_head": 100}
    ) as c:
        yield c


def test_isolated_node_actors_serve_uri_and_shipped_checkpoints(
    cluster: RayCluster, moto_s3: MotoServer, tmp_path: Path
) -> None:
    if not CHECKPOINT.exists():
        pytest.skip(f"{CHECKPOINT} is missing")
    local = tmp_path / "driver-data" / "model.pt"  # hidden from the isolated node
    shutil.copy(CHECKPOINT, local)
    ckpt = load_checkpoint(local)
    uri = save_checkpoint(
        ckpt, moto_s3.bucket(f"ck-{uuid.uuid4().hex[:10]}") + "/models/model.pt", moto_s3.settings
    )
    rng = np.random.default_rng(0)
    n = ckpt.network.n_sensors
    values = (rng.random((2, 12, n, 1)) * 60).astype(np.float32)  # [B, T, N, F]
    mask = np.ones_like(values, np.uint8)
    step_ts = (1_330_560_000_000 + 300_000 * (np.arange(12)[None] + np.arange(2)[:, None])).astype(np.int64)
    np.savez(tmp_path / "x.npz", values=values, mask=mask, step_ts=step_ts)  # the driver is on the host
    specs = {"uri": [uri, ckpt.sha256], "local": [str(local), ckpt.sha256], "replaced": [uri, "0" * 64]}
    blocks = tmp_path / "driver-data" / "blocks.pt"  # also hidden: shipped as bytes to both shards
    blocks_ckpt = _blocks_checkpoint(ckpt.network, blocks)
    out = cluster.driver(
        ACTORS,
        moto_s3.settings.model_dump_json(),
        json.dumps(specs),
        json.dumps(ckpt.network.to_dict()),
        str(tmp_path / "x.npz"),
        json.dumps([str(blocks), blocks_ckpt.sha256]),
        timeout_s=300,
    )
    expected = Predictor.from_checkpoint(local, backend="torch").predict(values, mask, step_ts)
    print(
        {
            k: {kk: vv for kk, vv in v.items() if kk != "forecast"}
            for k, v in out.items()
            if isinstance(v, dict)
        }
    )
    for name, shipped_as_bytes in (("uri", False), ("local", True)):
        got = out[name]
        assert "error" not in got, got
        assert got["node"] == cluster.node_ids[0] != out["driver_node"], (
            "the actor did not run on the isolated node"
        )
        assert got["as_bytes"] == shipped_as_bytes and got["version"] == ckpt.version
        np.testing.assert_allclose(np.array(got["forecast"], np.float32), expected, rtol=1e-5, atol=1e-4)
    assert "is not the checkpoint the registry recorded" in out["replaced"]["error"]
    sharded = out["sharded"]  # one shard on the isolated node, one on the head: every sensor once
    assert sharded["nodes"][0] == cluster.node_ids[0] != sharded["nodes"][1], sharded["nodes"]
    assert sharded["shards"] == 2 and sum(sharded["sensors"]) == n and min(sharded["sensors"]) > 0
    whole = Predictor.from_checkpoint(blocks, backend="torch").predict(values, mask, step_ts)
    np.testing.assert_allclose(np.array(sharded["forecast"], np.float32), whole, rtol=1e-5, atol=1e-4)


def _blocks_checkpoint(network: Any, path: Path) -> Any:
    """An untrained "blocks" STFormer (blocks of 64: several for 207 sensors) saved at `path`."""
    import torch

    from training.checkpoint import Checkpoint
    from training.partition import partition
    from training.scaler import StandardScaler
    from training.stformer import STFormer, STFormerConfig

    torch.manual_seed(0)
    parts = partition(network, 64)
    config = STFormerConfig(
        n_nodes=network.n_sensors, block_size=64, n_blocks=parts.count, temporal_layers=1, spatial_layers=1
    )
    ckpt = Checkpoint.from_model(
        "stformer",
        STFormer(config).set_blocks(parts),
        scaler=StandardScaler([50.0], [10.0]),
        network=network,
        targets=(network.feature_names[0],),
        window=12,
        horizon=12,
        version="blocks-cluster",
    )
    save_checkpoint(ckpt, path)
    return load_checkpoint(path)


STEP = 1_800_000  # 30 min: a day is 48 steps, so the first job sees ten daily cycles
T0 = 1_767_225_600_000


def _serve_env(cluster: RayCluster, embedded: EmbeddedRuntime, moto: MotoServer, tag: str) -> dict[str, str]:
    """`sensorcast serve --retrain` configured for the cluster by environment only, as an operator would."""
    bucket = moto.bucket(f"cl-{tag}")
    pinned = json.dumps({cluster.node_resource: 1})
    settings = {
        "KAFKA__BOOTSTRAP": embedded.bootstrap,
        "KAFKA__READINGS_TOPIC": f"readings-{tag}",
        "KAFKA__DEAD_LETTER_TOPIC": f"dead-{tag}",
        "KAFKA__GROUP_ID": f"group-{tag}",
        "KAFKA__PARTITIONS": "2",
        "KAFKA__SESSION_TIMEOUT_MS": "3000",
        "REDIS__URL": embedded.redis_url,
        "REDIS__KEY_PREFIX": f"t{tag}",
        "REDIS__STREAM_MAXLEN": "100000",
        "WINDOW__WINDOW": "12",
        "WINDOW__HORIZON": "6",
        "WINDOW__ALLOWED_LATENESS_MS": "0",
        "WINDOW__IDLE_TIMEOUT_MS": "60000",
        "ONLINE__HEALTH_INTERVAL_S": "0.5",
        "ARCHIVE__ROOT": f"{bucket}/archive",
        "STORAGE__ENDPOINT": moto.endpoint,
        "STORAGE__REGION": "us-east-1",
        "STORAGE__ACCESS_KEY_ID": "test",
        "STORAGE__SECRET_ACCESS_KEY": "test",
        "RAY__ACTOR_RESOURCES": pinned,
        "RAY__ACTOR_NUM_CPUS": "0.25",
        "RETRAIN__ENABLED": "true",
        "RETRAIN__REGISTRY": f"{bucket}/registry",
        "RETRAIN__MIN_STEPS": "480",
        "RETRAIN__HOLDOUT_STEPS": "48",
        "RETRAIN__HISTORY_STEPS": "480",
        "RETRAIN__EVERY_STEPS": "528",
        "RETRAIN__EPOCHS": "30",
        "RETRAIN__TIME_BUDGET_S": "90",
        "RETRAIN__WORKERS": "2",
        "RETRAIN__CPUS_PER_WORKER": "0.5",
        "RETRAIN__RESOURCES_PER_WORKER": pinned,
        "RETRAIN__BACKOFF_S": "5",
        "RETRAIN__DRIFT_PATIENCE": "100000",
    }
    env = {k: v for k, v in cluster.env.items() if not k.startswith("SENSORCAST_")}
    return {
        **env,
        "SENSORCAST_RAY__ADDRESS": cluster.address,
        **{f"SENSORCAST_{k}": v for k, v in settings.items()},
    }


def _events(r: redis.Redis, prefix: str, net: str) -> list[dict[str, Any]]:
    out = []
    for _, f in r.xrange(Keys(prefix, net).events):
        e = {k.decode(): v.decode() for k, v in f.items()}
        e["detail"] = json.loads(e.get("detail") or "{}")
        out.append(e)
    return out


@pytest.mark.slow
def test_serve_with_retraining_on_a_cluster_without_shared_filesystem(
    embedded: EmbeddedRuntime, moto_s3: MotoServer, tmp_path: Path
) -> None:
    driver_dir = tmp_path / "driver-data"  # the driver's cwd and files: hidden from the isolated nodes
    driver_dir.mkdir()
    tag = uuid.uuid4().hex[:10]
    network = simulated_network(8, name="cluster", step_ms=STEP)
    network.save(driver_dir / "network.toml")
    with RayCluster.start(tmp_path / "cluster", isolated_nodes=2, hidden=[driver_dir]) as cluster:
        env = _serve_env(cluster, embedded, moto_s3, tag)
        prefix = env["SENSORCAST_REDIS__KEY_PREFIX"]
        s = Settings.model_validate(
            {"kafka": {"bootstrap": embedded.bootstrap, "readings_topic": f"readings-{tag}", "partitions": 2}}
        )
        ensure_topics(s.kafka, {s.kafka.readings_topic: 2})
        log = (tmp_path / "serve.log").open("wb")
        serve = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "serving.cli",
                "serve",
                "--network",
                str(driver_dir / "network.toml"),
                "--log-level",
                "info",
            ],
            cwd=driver_dir,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        r = redis.Redis.from_url(embedded.redis_url)
        sim = Simulator(network, seed=5, config=SimulatorConfig(noise=1.0, dropout=0.01, incident_rate=0.0))
        stop, sent = threading.Event(), [0]

        def feed() -> None:
            with ReadingProducer(s.kafka, network) as producer:
                while not stop.wait(1 / 20):
                    ts = T0 + sent[0] * STEP
                    producer.send_step(ts, *sim.step(ts))
                    producer.flush()
                    sent[0] += 1

        def alive_events() -> list[dict[str, Any]]:
            if serve.poll() is not None:
                pytest.fail(
                    f"sensorcast serve exited {serve.returncode}:\n{(tmp_path / 'serve.log').read_text()[-4000:]}"
                )
            return _events(r, prefix, "cluster")

        feeder = threading.Thread(target=feed, daemon=True)
        observed: dict[str, Any] = {"isolated": cluster.node_ids, "head": cluster.head_node_id}
        try:
            first = wait_for(
                lambda: [e for e in alive_events() if e["type"] == "serving"],
                timeout_s=180,
                what="the serving event of the seed model",
            )
            observed["seed_nodes"] = first[0]["detail"]["nodes"]
            feeder.start()
            promoted = wait_for(
                lambda: [e for e in alive_events() if e["type"] == "promoted"],
                timeout_s=480,
                what="a challenger trained on the cluster and promoted",
            )
            swapped = wait_for(
                lambda: [
                    e
                    for e in alive_events()
                    if e["type"] == "serving" and e["detail"].get("why") == "promoted"
                ],
                timeout_s=60,
                what="the hot swap to the promoted model",
            )
            observed["promoted"] = promoted[0]["model_version"]
            observed["train_node"] = promoted[0]["detail"]["train"].get("node")
            observed["swap_nodes"] = swapped[0]["detail"]["nodes"]
            victim = cluster.node_ids.index(observed["swap_nodes"][0])
            at_kill = sent[0]
            killed_at = time.monotonic()
            observed["node_dead_after_s"] = round(cluster.kill_node(victim), 1)
            recovered = wait_for(
                lambda: [e for e in alive_events() if e["type"] == "actors_recovered"],
                timeout_s=180,
                what="the forecaster actors recovered after the node loss",
            )
            observed["recovered_nodes"] = recovered[0]["detail"]["nodes"]
            observed["forecasting_again_after_s"] = round(time.monotonic() - killed_at, 1)
            wait_for(lambda: sent[0] >= at_kill + 60, timeout_s=60, what="60 more steps produced")
            stop.set()
            feeder.join(10)
            # the newest steps stay open until later readings seal them: all but the last two must arrive
            last = T0 + (sent[0] - 3) * STEP
            wait_for(lambda: _latest(r, prefix) >= last, timeout_s=120, what=f"the forecast of step {last}")
        finally:
            stop.set()
            serve.send_signal(signal.SIGINT)
            try:
                serve.wait(60)
            except subprocess.TimeoutExpired:
                serve.kill()
            log.close()
        entries = [
            (int(f[b"step_ts"]), f[b"model_version"].decode())
            for _, f in r.xrange(Keys(prefix, "cluster").stream)
        ]
    steps = [t for t, _ in entries]
    want = [T0 + t * STEP for t in range(11, (max(steps) - T0) // STEP + 1)]
    observed["forecast"] = len(steps)
    observed["distinct"] = len(set(steps))
    observed["missing"] = len(set(want) - set(steps))
    observed["versions"] = sorted({v for _, v in entries})
    print("observed:", json.dumps(observed, indent=1))
    assert set(observed["seed_nodes"]) <= set(cluster.node_ids) and set(observed["swap_nodes"]) <= set(
        cluster.node_ids
    )
    assert observed["train_node"] in cluster.node_ids, "the Ray Train job did not run on an isolated node"
    assert observed["recovered_nodes"] == [n for n in cluster.node_ids if n != cluster.node_ids[victim]]
    assert steps == want, f"{observed['missing']} steps missing, {len(steps) - len(set(steps))} doubled"
    assert observed["promoted"] in observed["versions"]


def _latest(r: redis.Redis, prefix: str) -> int:
    raw = r.hget(Keys(prefix, "cluster").latest_meta, "step_ts")
    return int(raw) if raw is not None else -1
