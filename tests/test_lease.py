"""The writer lease on a real Redis: one pipeline per network, a duplicate refused after the TTL naming
the holder, a restarted owner taking its lease back at once with a new fencing epoch, the old token then
refused, a lapsed lease taken back only while nobody acquired it since, and a serving pipeline (real Kafka
and Ray) fenced out the moment its lease holds another token."""

from __future__ import annotations

import time
import uuid

import pytest
import redis

from serving.config import Settings
from serving.embedded import EmbeddedRuntime
from serving.forecaster import ModelSpec
from serving.keys import Keys
from serving.lease import Lease, LeaseHeld, LeaseLost
from serving.pipeline import ServePipeline
from stream.kafka_io import ReadingProducer, ensure_topics
from stream.simulate import Simulator, simulated_network
from tests.conftest import wait_for


@pytest.fixture
def keys() -> Keys:
    return Keys(f"lease{uuid.uuid4().hex[:8]}", "net")


@pytest.fixture
def client(embedded: EmbeddedRuntime) -> redis.Redis:
    return redis.Redis.from_url(str(embedded.redis_url))


def test_a_second_owner_is_refused_naming_the_holder(client: redis.Redis, keys: Keys) -> None:
    first = Lease(client, keys, ttl_s=5, owner="serve-a")
    token = first.acquire()
    assert token == "1:serve-a" and client.get(keys.lease) == b"1:serve-a"
    t0 = time.monotonic()
    with pytest.raises(LeaseHeld) as err:
        Lease(client, keys, ttl_s=5, owner="serve-b").acquire(wait_s=1.0)
    waited = time.monotonic() - t0
    assert 0.9 <= waited < 3.0, waited
    assert "already served by another pipeline" in str(err.value) and "1:serve-a" in str(err.value)
    first.release()
    assert client.get(keys.lease) is None
    assert Lease(client, keys, ttl_s=5, owner="serve-b").acquire(wait_s=0) == "2:serve-b"


def test_the_same_owner_takes_over_and_fences_its_previous_incarnation(
    client: redis.Redis, keys: Keys
) -> None:
    old = Lease(client, keys, ttl_s=30, owner="actor-1")
    old.acquire()
    new = Lease(client, keys, ttl_s=30, owner="actor-1")  # the restarted actor: same id, no wait
    t0 = time.monotonic()
    assert new.acquire(wait_s=0) == "2:actor-1"
    assert time.monotonic() - t0 < 0.5
    with pytest.raises(LeaseLost):
        old.renew(every_s=0)
    new.renew(every_s=0)
    old.release()  # releasing a lease it no longer holds changes nothing
    assert client.get(keys.lease) == b"2:actor-1"


def test_a_lapsed_lease_is_taken_back_unless_someone_acquired_since(client: redis.Redis, keys: Keys) -> None:
    lease = Lease(client, keys, ttl_s=0.2, owner="slow")
    lease.acquire()
    time.sleep(0.4)  # a long cycle: the lease lapsed, nobody took it
    assert client.get(keys.lease) is None
    lease.renew(every_s=0)
    assert client.get(keys.lease) == b"1:slow"
    time.sleep(0.4)
    Lease(client, keys, ttl_s=5, owner="other").acquire(wait_s=0)  # lapsed again, and taken this time
    with pytest.raises(LeaseLost, match="expired or was taken over"):
        lease.renew(every_s=0)


@pytest.mark.usefixtures("ray_local")
def test_a_pipeline_whose_lease_was_taken_over_stops_writing(fresh_settings: Settings) -> None:
    """A serving pipeline, then someone else's token in its lease (as after a pause past the TTL): its next
    cycle raises LeaseLost and the network's Redis stream gets nothing more from it."""
    s = fresh_settings
    network = simulated_network(6, name="fenced", step_ms=300_000)
    k = s.kafka
    ensure_topics(k, {k.readings_topic: k.partitions, k.dead_letter_topic: 1})
    keys = Keys(s.redis.key_prefix, network.name)
    r = redis.Redis.from_url(str(s.redis.url.get_secret_value() if s.redis.url else ""))
    pipe = ServePipeline(s, network, ModelSpec("baseline:persistence"), client_id="fenced").start()
    t0 = 1_767_225_600_000
    sim = Simulator(network, seed=0)
    try:
        with ReadingProducer(k, network) as producer:
            for t in range(12):
                producer.send_step(t0 + t * network.step_ms, *sim.step(t0 + t * network.step_ms))
        wait_for(
            lambda: pipe.poll_once(100) >= 0 and r.xlen(keys.stream) >= 4, timeout_s=60, what="forecasts"
        )
        assert r.get(keys.lease) == pipe.lease.token.encode()  # type: ignore[union-attr]
        r.set(keys.lease, "99:someone-else")
        before = r.xlen(keys.stream)
        with ReadingProducer(k, network) as producer:
            for t in range(12, 24):
                producer.send_step(t0 + t * network.step_ms, *sim.step(t0 + t * network.step_ms))
        with pytest.raises(LeaseLost, match="expired or was taken over"):
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                pipe.poll_once(100)
        assert r.xlen(keys.stream) == before  # nothing written once the lease was gone
        assert r.get(keys.lease) == b"99:someone-else"
    finally:
        pipe.close()
    assert r.get(keys.lease) == b"99:someone-else"  # closing does not release someone else's lease
