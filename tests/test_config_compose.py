"""Settings precedence and secrecy, and the docker-compose file: structure, and every SENSORCAST_ variable
it sets names a real setting."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from serving.config import ConfigError, Settings, load_settings

REPO = Path(__file__).resolve().parents[1]


def test_precedence_defaults_toml_env_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    toml = tmp_path / "sensorcast.toml"
    toml.write_text('[kafka]\nbootstrap = "toml:1"\nreadings_topic = "from-toml"\n[window]\nwindow = 24\n')
    monkeypatch.setenv("SENSORCAST_KAFKA__BOOTSTRAP", "env:2")
    monkeypatch.delenv("SENSORCAST_CONFIG", raising=False)
    s = load_settings(toml)
    assert s.kafka.bootstrap == "env:2"  # env beats TOML
    assert s.kafka.readings_topic == "from-toml"  # TOML beats defaults
    assert s.window.window == 24
    assert s.window.horizon == 12  # default kept
    s = load_settings(toml, kafka={"bootstrap": "cli:3", "group_id": None})
    assert s.kafka.bootstrap == "cli:3"  # CLI beats env
    assert s.kafka.group_id == "sensorcast-ingest"  # an unset flag does not erase
    monkeypatch.delenv("SENSORCAST_CONFIG", raising=False)


def test_missing_config_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.toml")


def test_secrets_never_show(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SENSORCAST_REDIS__URL", "redis://user:hunter2@h:6379/0")
    monkeypatch.setenv("SENSORCAST_KAFKA__SASL_PASSWORD", "s3cret")
    s = Settings()
    assert "hunter2" not in repr(s) and "s3cret" not in repr(s)
    assert "hunter2" not in str(s.model_dump())
    assert s.redis.url is not None and "hunter2" in s.redis.url.get_secret_value()


def _is_setting(path: list[str]) -> bool:
    model: type[BaseModel] = Settings
    for i, part in enumerate(path):
        field = model.model_fields.get(part)
        if field is None:
            return False
        ann = field.annotation
        if i < len(path) - 1:
            if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
                return False
            model = ann
    return True


def test_compose_structure_and_settings() -> None:
    doc = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    services = doc["services"]
    assert {"kafka", "redis", "ray-head", "serve"} <= set(services)
    kafka_env = services["kafka"]["environment"]
    assert "controller" in kafka_env["KAFKA_PROCESS_ROLES"]  # KRaft, no ZooKeeper
    assert "zookeeper" not in services
    gpu = services["serve"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["capabilities"] == ["gpu"]
    seen = 0
    for name, svc in services.items():
        for var in svc.get("environment", {}) or {}:
            if var.startswith("SENSORCAST_"):
                path = var.removeprefix("SENSORCAST_").lower().split("__")
                assert _is_setting(path), f"{name}: {var} is not a sensorcast setting"
                seen += 1
    assert seen >= 5
    env = services["serve"]["environment"]
    assert env["SENSORCAST_KAFKA__BOOTSTRAP"].split(":")[0] == "kafka"
    assert env["SENSORCAST_REDIS__URL"].startswith("redis://redis:")


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose CLI not installed")
def test_compose_config_validates() -> None:
    out = subprocess.run(
        ["docker-compose", "config", "-q"], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
