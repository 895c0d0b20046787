"""Deployment files: defaults shared, per-network shortcuts and settings, paths relative to the file, and
one clear error naming the file, the entry and the field for what cannot be served."""

from __future__ import annotations

from pathlib import Path

import pytest

from serving.config import ConfigError, Settings
from serving.deployment import load_deployment
from stream.network import Network


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "deploy.toml"
    path.write_text(text)
    return path


def test_defaults_shortcuts_and_per_network_settings(tmp_path: Path) -> None:
    Network.simple("la-file-name", 5, ["speed"], step_ms=300_000).save(tmp_path / "la.toml")
    path = _write(
        tmp_path,
        """
[defaults]
kafka.bootstrap = "kafka:9092"
retrain.enabled = true
archive.root = "s3://bucket/archive"

[[networks]]
name = "la"
network = "la.toml"
registry = "reg/la"
model = "baseline:persistence"

[[networks]]
name = "bay"
simulate = 30
step_minutes = 15
topic = "bay.readings"
key_prefix = "city"
[networks.settings]
retrain.every_steps = 96
window.horizon = 6
ray.shards = 2
""",
    )
    la, bay = load_deployment(path, Settings())
    assert la.name == "la" and la.network.n_sensors == 5  # the entry's name, not the file's
    assert la.settings.kafka.bootstrap == "kafka:9092" and bay.settings.kafka.bootstrap == "kafka:9092"
    assert la.settings.kafka.readings_topic == "sensorcast.la.readings"
    assert la.settings.kafka.dead_letter_topic == "sensorcast.la.readings.dead-letter"
    assert la.settings.kafka.group_id == "sensorcast-la"
    assert la.settings.archive.root == "s3://bucket/archive/la"  # URIs stay URIs
    assert la.settings.retrain.registry == str(tmp_path / "reg" / "la")  # relative to the file
    assert la.settings.retrain.enabled and la.settings.retrain.every_steps == 0
    assert bay.network.n_sensors == 30 and bay.network.step_ms == 900_000
    assert bay.settings.kafka.readings_topic == "bay.readings"
    assert bay.settings.redis.key_prefix == "city" and la.settings.redis.key_prefix == "sc"
    assert bay.settings.retrain.every_steps == 96 and bay.settings.window.horizon == 6
    assert la.settings.window.horizon == 12
    assert bay.settings.ray.shards == 2 and la.settings.ray.shards == 1  # bay's sensors on two actors
    assert la.model.ref == "baseline:persistence"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[[networks]]\nname = "a"\n', r"networks\[0\]: Value error, give exactly one of `network`"),
        ('[[networks]]\nname = "a"\nsimulate = 5\ntopicc = "x"\n', r"networks\[0\]\.topicc: Extra inputs"),
        (
            '[[networks]]\nname = "a"\nsimulate = 5\n[[networks]]\nname = "a"\nsimulate = 6\n',
            "network names must be unique; repeated: a",
        ),
        (
            '[[networks]]\nname = "a"\nsimulate = 5\ntopic = "t"\n[[networks]]\nname = "b"\nsimulate = 6\n'
            'topic = "t"\n',
            "networks share the topic t",
        ),
        (
            '[[networks]]\nname = "a"\nsimulate = 5\n[networks.settings]\nwindow.window = 0\n',
            r"networks\[0\] \(a\): setting window\.window: Input should be greater than or equal to 1",
        ),
        (
            '[[networks]]\nname = "a"\nsimulate = 5\n[networks.settings]\nray.shards = 0\n',
            r"networks\[0\] \(a\): setting ray\.shards: Input should be greater than or equal to 1",
        ),
        ('[[networks]]\nname = "a"\nnetwork = "missing.toml"\n', r"networks\[0\] \(a\): network: no network"),
        ("networks = []\n", "networks: List should have at least 1 item"),
        ("[[networks]\n", "is not valid TOML"),
    ],
)
def test_bad_deployment_is_one_error_naming_the_entry(tmp_path: Path, text: str, message: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError, match=message) as err:
        load_deployment(path, Settings())
    assert str(path) in str(err.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_deployment(tmp_path / "nope.toml")
