"""Settings precedence and secrecy; and the deployment files kept honest: docker-compose.yml, the Dockerfile
and .dockerignore against the settings model, the Ray pin in pyproject.toml and each other.

No Docker daemon runs here, so the image is never built: these tests check what can be read. The compose
file is checked by `docker-compose config` where that binary is installed.
"""

from __future__ import annotations

import fnmatch
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import types
import typing
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from pydantic import BaseModel

from serving.config import ConfigError, Settings, load_settings

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]
# Values for the variables docker-compose.yml requires from .env (the runbook generates real ones).
COMPOSE_ENV = {"RAY_AUTH_TOKEN": "test-token", "MINIO_ROOT_PASSWORD": "test-password"}
SENSORCAST_IMAGE_SERVICES = ("ray-head", "ray-worker", "serve", "simulate")
DRIVER = "serve"


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


def test_invalid_settings_are_one_line_naming_the_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SENSORCAST_CONFIG", raising=False)
    monkeypatch.setenv("SENSORCAST_KAFKA__PARTITIONS", "0")
    with pytest.raises(ConfigError) as exc:
        load_settings()
    assert str(exc.value).startswith("setting kafka.partitions (SENSORCAST_KAFKA__PARTITIONS")
    assert "greater than or equal to 1" in str(exc.value) and "\n" not in str(exc.value)
    monkeypatch.delenv("SENSORCAST_KAFKA__PARTITIONS")
    # a value that may be a secret is never echoed
    monkeypatch.setenv("SENSORCAST_KAFKA__SASL_PASSWORD", "hunter2")
    monkeypatch.setenv("SENSORCAST_KAFKA__SASL_MECHANISM", "NOPE")
    with pytest.raises(ConfigError) as exc:
        load_settings(kafka={"sasl_password": ["hunter2"]})
    assert "hunter2" not in str(exc.value), exc.value
    monkeypatch.delenv("SENSORCAST_KAFKA__SASL_MECHANISM")
    bad = tmp_path / "bad.toml"
    bad.write_text("[kafka\nbootstrap = 1\n")
    with pytest.raises(ConfigError, match=r"bad.toml is not valid TOML"):
        load_settings(bad)
    monkeypatch.delenv("SENSORCAST_CONFIG", raising=False)


def test_secrets_never_show(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SENSORCAST_REDIS__URL", "redis://user:hunter2@h:6379/0")
    monkeypatch.setenv("SENSORCAST_KAFKA__SASL_PASSWORD", "s3cret")
    s = Settings()
    assert "hunter2" not in repr(s) and "s3cret" not in repr(s)
    assert "hunter2" not in str(s.model_dump())
    assert s.redis.url is not None and "hunter2" in s.redis.url.get_secret_value()


# --- reading the deployment files ---------------------------------------------------------------------


def _compose() -> dict[str, Any]:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


def _interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's variable substitution: ${X}, ${X:-default}, ${X-default}, ${X:?error}, ${X?error}, $$."""

    def one(m: re.Match[str]) -> str:
        name, op, arg = m["name"], m["op"] or "", m["arg"] or ""
        if name in env and (env[name] or op in ("-", "?")):
            return env[name]
        if op.endswith("?"):
            raise AssertionError(f"docker-compose.yml needs {name} set: {arg}")
        return arg if op.endswith("-") else ""

    pattern = r"\$\{(?P<name>\w+)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}"
    return "$".join(re.sub(pattern, one, part) for part in value.split("$$"))


def _environment(svc: dict[str, Any]) -> dict[str, str]:
    env = svc.get("environment") or {}
    if isinstance(env, list):  # the KEY=VALUE list form
        env = dict(item.partition("=")[::2] for item in env)
    return {k: _interpolate(str(v), COMPOSE_ENV) for k, v in env.items()}


def _command(svc: dict[str, Any]) -> str:
    cmd = svc.get("command") or ""
    return cmd if isinstance(cmd, str) else " ".join(str(c) for c in cmd)


def _is_setting(path: list[str]) -> bool:
    """Whether `SENSORCAST_A__B__C` names a field: each part but the last must be a nested model."""
    model: type[BaseModel] = Settings
    for i, part in enumerate(path):
        field = model.model_fields.get(part)
        if field is None:
            return False
        if i < len(path) - 1:
            nested = [
                t
                for t in (field.annotation, *typing.get_args(field.annotation))
                if isinstance(t, type) and not isinstance(t, types.GenericAlias) and issubclass(t, BaseModel)
            ]
            if not nested:
                return False
            model = nested[0]
    return True


def _settings_from(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The settings a container with this environment builds (values validated by the model)."""
    for name in list(os.environ):
        if name.startswith("SENSORCAST_"):
            monkeypatch.delenv(name)
    for name, value in env.items():
        if name.startswith("SENSORCAST_"):
            monkeypatch.setenv(name, value)
    return Settings()


def _ray_pin() -> str:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    (ray,) = [r for r in map(Requirement, project["dependencies"]) if r.name == "ray"]
    (spec,) = list(ray.specifier)
    assert spec.operator == "==", f"pyproject.toml must pin ray exactly (every node runs it), not {ray}"
    return spec.version


def _dockerfile() -> tuple[dict[str, str], str, list[str]]:
    """(ARG defaults before FROM, the FROM image with those substituted, the instructions after FROM)."""
    text = re.sub(r"\\\n", " ", (REPO / "Dockerfile").read_text())
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    args: dict[str, str] = {}
    for i, line in enumerate(lines):
        keyword, _, rest = line.partition(" ")
        if keyword == "ARG":
            name, _, default = rest.partition("=")
            args[name] = default
        elif keyword == "FROM":
            image = re.sub(r"\$\{(\w+)\}", lambda m: args[m[1]], rest.split()[0])
            return args, image, lines[i + 1 :]
    raise AssertionError("Dockerfile has no FROM")


def _published(svc: dict[str, Any]) -> list[tuple[str, int]]:
    """(host address, host port) of each published port ("ADDR:HOST:CONTAINER")."""
    out = []
    for p in svc.get("ports") or []:
        parts = str(p).split(":")
        assert len(parts) == 3, f"publish {p!r} as 127.0.0.1:HOST:CONTAINER"
        out.append((parts[0], int(parts[1])))
    return out


# --- the image --------------------------------------------------------------------------------------


def test_image_is_the_ray_image_of_the_pinned_version() -> None:
    pin = _ray_pin()
    assert importlib.metadata.version("ray") == pin  # the tests run against the Ray the nodes run
    _, image, after = _dockerfile()
    m = re.fullmatch(r"rayproject/ray:(?P<ray>[^-]+)-py3(?P<minor>\d+)-(?P<platform>cpu|gpu)", image)
    assert m, f"FROM {image}: want rayproject/ray:<ray>-py3XX-<cpu|gpu>"
    assert m["ray"] == pin, f"Dockerfile FROM Ray {m['ray']}, pyproject.toml pins {pin}"
    requires = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"]
    assert f"3.{m['minor']}" in SpecifierSet(requires)
    runs = " ".join(line for line in after if line.startswith("RUN "))
    for platform in ("cpu", "gpu"):  # both variants of the build arg install a torch
        assert f"{platform})" in runs and "torch==" in runs
    pip = re.search(r"pip install[^&;]*\scrc32c\s[^&;]*", runs)
    assert pip and re.search(r"\s\.(\s|$)", pip[0]), "the image installs crc32c and sensorcast itself (.)"
    assert "ray.__version__ == '${RAY_VERSION}'" in runs  # the build fails if pip replaced Ray


def test_dockerignore_keeps_what_the_image_copies() -> None:
    patterns = [
        ln.strip()
        for ln in (REPO / ".dockerignore").read_text().splitlines()
        if ln.strip() and not ln.startswith("#")
    ]

    def ignored(path: str) -> bool:
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        return any(
            fnmatch.fnmatch(pre, pat.removeprefix("**/")) or fnmatch.fnmatch(pre, pat)
            for pat in patterns
            for pre in prefixes
        )

    _, _, after = _dockerfile()
    copied = [src for line in after if line.startswith("COPY ") for src in line.split()[1:-1]]
    copied = [c for c in copied if not c.startswith("--")]
    assert {"pyproject.toml", "README.md", "stream", "training", "serving"} <= set(copied)
    for src in copied:
        assert not ignored(src), f".dockerignore drops {src}, which the Dockerfile copies"
    for path in (".git", ".venv", ".env", "test-artifacts", "benchmarks/results/x.pt", "stream/__pycache__"):
        assert ignored(path), f".dockerignore lets {path} into the build context"


# --- the compose file -------------------------------------------------------------------------------


def test_compose_sensorcast_variables_are_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    services = _compose()["services"]
    seen = 0
    for name, svc in services.items():
        env = _environment(svc)
        for var in env:
            if var.startswith("SENSORCAST_"):
                path = var.removeprefix("SENSORCAST_").lower().split("__")
                assert _is_setting(path), f"{name}: {var} is not a sensorcast setting"
                seen += 1
        if any(v.startswith("SENSORCAST_") for v in env):
            _settings_from(env, monkeypatch)  # and every value is valid for its setting
    assert seen >= 10


def test_compose_driver_reaches_declared_services(monkeypatch: pytest.MonkeyPatch) -> None:
    doc = _compose()
    services = doc["services"]
    driver = services[DRIVER]
    s = _settings_from(_environment(driver), monkeypatch)
    assert "controller" in services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"]  # KRaft
    assert "zookeeper" not in services

    head = re.search(r"ray start --address=([\w-]+):(\d+)", _command(driver))
    assert head, "the driver joins the cluster as a Ray node before it serves"
    assert _command(driver).index("ray start") < _command(driver).index("sensorcast serve")
    assert s.ray.address == "auto"  # the local node that `ray start` began
    assert f"--port={head[2]}" in _command(services[head[1]]) and "--head" in _command(services[head[1]])

    assert s.kafka.bootstrap and s.redis.url and s.storage.endpoint
    needs = {
        "kafka.bootstrap": s.kafka.bootstrap.split(",")[0].rsplit(":", 1)[0],
        "redis.url": urlsplit(s.redis.url.get_secret_value()).hostname,
        "storage.endpoint": urlsplit(s.storage.endpoint).hostname,
        "ray head": head[1],
    }
    assert set(needs.values()) == {"kafka", "redis", "minio", "ray-head"}
    waits = set(driver["depends_on"])
    for setting, host in needs.items():
        assert host in services, f"{DRIVER} needs {host} ({setting}), which docker-compose.yml lacks"
        assert host in waits or f"{host}-init" in waits, f"{DRIVER} does not wait for {host}"
    assert driver["depends_on"]["minio-init"]["condition"] == "service_completed_successfully"

    # Archive, registry and Ray Train storage are in the bucket that minio-init creates; retraining is on.
    bucket = re.search(r"mc mb --ignore-existing \w+/([\w.-]+)", _command(services["minio-init"]))
    assert bucket
    assert s.retrain.enabled
    for where in (s.archive.root, s.retrain.registry, s.retrain.storage_path):
        assert where and where.startswith(f"s3://{bucket[1]}/"), where


def test_compose_one_image_and_gpu_consistent(monkeypatch: pytest.MonkeyPatch) -> None:
    services = _compose()["services"]
    args, _, after = _dockerfile()
    image, build = services[DRIVER]["image"], services[DRIVER]["build"]
    for name in SENSORCAST_IMAGE_SERVICES:
        svc = services[name]
        assert (svc.get("image"), svc.get("build")) == (image, build), f"{name} does not run the one image"
    declared = set(args) | {ln.split()[1].partition("=")[0] for ln in after if ln.startswith("ARG ")}
    assert set(build["args"]) <= declared, "compose passes a build arg the Dockerfile does not declare"

    worker = services["ray-worker"]
    assert "container_name" not in worker and not worker.get("ports"), "--scale ray-worker=N would collide"
    devices = (worker.get("deploy") or {}).get("resources", {}).get("reservations", {}).get("devices", [])
    gpu_reserved = any("gpu" in d.get("capabilities", []) for d in devices)
    for name in SENSORCAST_IMAGE_SERVICES:
        if name != "ray-worker":
            assert "deploy" not in services[name], f"{name} reserves devices; Ray places work on ray-worker"
    actor_gpus = _settings_from(_environment(services[DRIVER]), monkeypatch).ray.actor_num_gpus
    platform = build["args"]["PLATFORM"]
    assert image.endswith(f":{platform}")
    # A GPU reserved for a CPU image, or actors asking Ray for GPUs no worker has, is a half-made edit.
    assert gpu_reserved == (platform == "gpu") == (actor_gpus > 0), (gpu_reserved, platform, actor_gpus)


def test_compose_volumes_and_ports() -> None:
    doc = _compose()
    services, named = doc["services"], set(doc.get("volumes") or {})
    users: dict[str, list[str]] = {}
    for name, svc in services.items():
        for v in svc.get("volumes") or []:
            source = v.get("source") if isinstance(v, dict) else str(v).split(":")[0]
            if source in named:
                users.setdefault(source, []).append(name)
    shared = {vol: who for vol, who in users.items() if len(who) > 1}
    assert not shared, f"services share a volume: {shared}"
    for name in SENSORCAST_IMAGE_SERVICES:  # what Ray nodes read travels through MinIO, not a disk
        assert not services[name].get("volumes"), f"{name} mounts a volume"

    published = {port: name for name, svc in services.items() for _, port in _published(svc)}
    assert all(addr == "127.0.0.1" for svc in services.values() for addr, _ in _published(svc))
    readme = (REPO / "README.md").read_text()
    at_scale = readme[readme.index("## At scale") :]
    at_scale = at_scale[: at_scale.find("\n## ", 3)]
    for port, name in published.items():
        assert str(port) in at_scale, f"README's At scale does not say that {name} listens on {port}"
    for command in ("docker compose build", "docker compose up -d", "--scale ray-worker="):
        assert command in at_scale


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose CLI not installed")
def test_compose_config_validates(tmp_path: Path) -> None:
    """`docker-compose config` accepts the file; without the secrets from .env it refuses to start."""
    no_env_file = tmp_path / "empty.env"  # a developer's own .env must not decide the outcome
    no_env_file.write_text("")
    cmd = ["docker-compose", "--env-file", str(no_env_file), "-f", str(REPO / "docker-compose.yml"), "config"]
    env = {k: v for k, v in os.environ.items() if k not in COMPOSE_ENV}
    out = subprocess.run(
        cmd, cwd=REPO, capture_output=True, text=True, timeout=60, env={**env, **COMPOSE_ENV}
    )
    assert out.returncode == 0, out.stderr
    assert set(yaml.safe_load(out.stdout)["services"]) == set(_compose()["services"])
    missing = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=60, env=env)
    assert missing.returncode != 0 and "in .env (README, At scale)" in missing.stderr
