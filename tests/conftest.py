"""Session-scoped real servers for the tests: the embedded Tansu broker, a real Redis server and one local
Ray. Each test takes fresh topic names, key prefixes and archive folders (`fresh_settings`), and waits with
`wait_for`: a bounded poll that says what never arrived.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from serving.config import Settings
from serving.embedded import EmbeddedRuntime
from tests.redis_cluster import redis_cluster  # noqa: F401
from tests.s3 import moto_s3  # noqa: F401

REPO = Path(__file__).resolve().parents[1]
DATASETS = Path(os.environ.get("SENSORCAST_DATASETS", REPO.parent / "shared" / "datasets"))


def wait_for(check: Callable[[], Any], *, timeout_s: float, what: str, interval_s: float = 0.05) -> Any:
    """Poll `check` until it returns something truthy; fail naming `what` never arrived."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval_s)
    pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what} (last check returned {last!r})")


@pytest.fixture(scope="session")
def embedded() -> Iterator[EmbeddedRuntime]:
    with EmbeddedRuntime() as rt:
        yield rt


@pytest.fixture(scope="session")
def ray_local() -> Iterator[None]:
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        yield
    finally:
        ray.shutdown()


def settings_for(rt: EmbeddedRuntime, tmp_path: Path) -> Settings:
    """Settings pointing at `rt`'s servers, with unique topics, group, key prefix and archive."""
    tag = uuid.uuid4().hex[:10]
    return Settings.model_validate(
        {
            "kafka": {
                "bootstrap": rt.bootstrap,
                "readings_topic": f"readings-{tag}",
                "dead_letter_topic": f"dead-{tag}",
                "group_id": f"group-{tag}",
                "partitions": 2,
                "session_timeout_ms": 3000,
            },
            "redis": {"url": rt.redis_url, "key_prefix": f"t{tag}"},
            "ray": {"actor_num_cpus": 0.25},
            "archive": {"root": str(tmp_path / "archive")},
            "window": {"window": 4, "horizon": 3, "allowed_lateness_ms": 0, "idle_timeout_ms": 60_000},
        }
    )


@pytest.fixture
def fresh_settings(embedded: EmbeddedRuntime, tmp_path: Path) -> Settings:
    """Settings for the session's servers, fresh names per test."""
    return settings_for(embedded, tmp_path)


@pytest.fixture
def datasets_dir() -> Path:
    if not DATASETS.exists():
        pytest.skip(f"shared datasets not found at {DATASETS} (set SENSORCAST_DATASETS)")
    return DATASETS


@pytest.fixture
def artifacts_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where a test leaves files worth a look (screenshots, figures): a temp folder, or
    `$SENSORCAST_TEST_ARTIFACTS` when set — tests never write into the repository on their own."""
    chosen = os.environ.get("SENSORCAST_TEST_ARTIFACTS")
    if not chosen:
        return tmp_path_factory.mktemp("artifacts")
    path = Path(chosen)
    path.mkdir(parents=True, exist_ok=True)
    return path
