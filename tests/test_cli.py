"""The `sensorcast` CLI as a user runs it: the `models` commands on a local and an S3 registry, the heap
settling every command starts with, and a wrong Ray address as one line. (`demo`: tests/test_demo.py.)"""

from __future__ import annotations

import gc
import logging
import subprocess
import sys
import uuid
import weakref
from pathlib import Path

import pytest

from serving.embedded import EmbeddedRuntime


@pytest.mark.parametrize("store", ["local", "s3"])
def test_models_commands_list_promote_and_rollback(
    store: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """The same commands on a local folder and on S3 (moto), the store reached with settings from the env."""
    from typer.testing import CliRunner

    from serving.cli import app
    from serving.forecaster import ModelSpec
    from serving.lifecycle import bootstrap
    from stream.simulate import simulated_network
    from tests.s3 import MotoServer
    from training.registry import Registry

    root, storage, env = str(tmp_path / "registry"), None, {}
    if store == "s3":
        moto: MotoServer = request.getfixturevalue("moto_s3")
        root, storage = moto.bucket(f"cli-{uuid.uuid4().hex[:12]}") + "/registry", moto.settings
        env = {
            f"SENSORCAST_STORAGE__{k}": v
            for k, v in (
                ("ENDPOINT", moto.endpoint),
                ("REGION", "us-east-1"),
                ("ACCESS_KEY_ID", "test"),
                ("SECRET_ACCESS_KEY", "test"),
            )
        }
    net = simulated_network(4)
    reg = Registry(root, storage)
    bootstrap(reg, ModelSpec("baseline:persistence"), net, 12, 12)
    second = reg.register(reg.champion_uri(), reason="a copy for the test")
    runner = CliRunner(env=env)
    out = runner.invoke(
        app, ["models", "promote", second.version, "--reason", "operator test", "--registry", root]
    )
    assert out.exit_code == 0 and reg.champion().version == second.version, out.output
    out = runner.invoke(app, ["models", "list", "--registry", root])
    assert out.exit_code == 0 and "v0001" in out.output and "v0002" in out.output, out.output
    out = runner.invoke(app, ["models", "rollback", "--registry", root])
    assert out.exit_code == 0 and reg.champion().version == "v0001", out.output
    assert [h["version"] for h in reg.history()] == ["v0001", "v0002", "v0001"]
    out = runner.invoke(app, ["models", "show", "v0002", "--registry", root])
    assert out.exit_code == 0 and "a copy for the test" in out.output
    missing = "s3://no-such-bucket-here/registry" if store == "s3" else str(tmp_path / "nowhere")
    out = runner.invoke(app, ["models", "list", "--registry", missing])
    assert out.exit_code == 2 and ("does not exist" in out.output or "no registry at" in out.output), (
        out.output
    )


def test_settle_heap_freezes_what_a_command_started_with(caplog: pytest.LogCaptureFixture) -> None:
    """Long-running commands freeze their start-up heap once started; the log says how much."""
    from serving.memory import settle_heap

    garbage: list[object] = []
    garbage.append(garbage)  # a cycle: collected first, not frozen
    ref = weakref.ref(Cycle := type("Cycle", (), {}))
    del garbage, Cycle
    try:
        with caplog.at_level(logging.INFO, logger="sensorcast"):
            settle_heap()
        assert ref() is None  # the collection ran before the freeze
        assert gc.get_freeze_count() > 10_000  # this test process's imports
        (rec,) = [r for r in caplog.records if r.getMessage() == "heap settled"]
        assert rec.frozen_objects > 10_000  # type: ignore[attr-defined]
    finally:
        gc.unfreeze()


def test_wrong_ray_address_is_one_line_naming_the_setting(embedded: EmbeddedRuntime, tmp_path: Path) -> None:
    from serving.cluster import RayUnavailable, check_ray_address

    with pytest.raises(RayUnavailable, match="not host:port"):
        check_ray_address("nonsense")
    check_ray_address(None)  # local Ray, and `auto`, are Ray's own business
    cmd = [sys.executable, "-m", "serving.cli", "serve", "--ray-address", "127.0.0.1:1", "--duration", "1"]
    cmd += ["--bootstrap", embedded.bootstrap, "--redis-url", embedded.redis_url, "--log-level", "error"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=tmp_path)  # default data dirs
    out = (proc.stdout + proc.stderr).strip()
    assert proc.returncode == 2, out
    assert out.splitlines() == [out], out  # one line, no traceback
    assert "RayUnavailable: no Ray cluster at 127.0.0.1:1" in out and "SENSORCAST_RAY__ADDRESS" in out
