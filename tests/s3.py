"""A real S3 endpoint for the tests: moto's server in a subprocess, reached through `stream.storage` like
AWS or MinIO would be. `MotoServer.start` returns it running; the session fixture `moto_s3` shares one per
test session (each test takes its own uuid-named bucket). `pause()`/`resume()` freeze and thaw the server
(SIGSTOP/SIGCONT) for fault tests: requests then hang until the client's timeouts, as with a dead store.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pyarrow.fs as pafs
import pytest
from pydantic import SecretStr

from stream.config import StorageSettings

START_TIMEOUT_S = 30.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _answers(endpoint: str) -> bool:
    try:
        with urllib.request.urlopen(endpoint, timeout=1) as response:
            return bool(response.status)
    except urllib.error.HTTPError:
        return True  # an HTTP error is an answer
    except OSError:
        return False


class MotoServer:
    """A running moto S3 server; build it with `MotoServer.start(log_dir)`."""

    def __init__(self, process: subprocess.Popen[bytes], port: int, log: Path) -> None:
        self.process = process
        self.port = port
        self.log = log
        self.endpoint = f"http://127.0.0.1:{port}"
        self.settings = StorageSettings(
            endpoint=self.endpoint,
            region="us-east-1",
            access_key_id=SecretStr("test"),
            secret_access_key=SecretStr("test"),
        )

    @classmethod
    def start(cls, log_dir: Path) -> MotoServer:
        """Start the server on a free port and wait (bounded) until it answers HTTP."""
        port = _free_port()
        log = Path(log_dir) / f"moto-{port}.log"
        with open(log, "wb") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C of pytest is not delivered to it; stop() ends it
            )
        server = cls(process, port, log)
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _answers(server.endpoint):
            if process.poll() is not None or time.monotonic() > deadline:
                server.stop()
                tail = log.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"moto server on port {port} never answered HTTP; its log:\n{tail}")
            time.sleep(0.1)
        return server

    def bucket(self, name: str) -> str:
        """Create bucket `name`; returns its URI `s3://name`."""
        fs = pafs.S3FileSystem(
            endpoint_override=f"127.0.0.1:{self.port}",
            scheme="http",
            access_key="test",
            secret_key="test",
            region="us-east-1",
            allow_bucket_creation=True,
        )
        fs.create_dir(name)
        return f"s3://{name}"

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): connections are accepted by the kernel, never answered."""
        os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.process.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self.process.poll() is not None:
            return
        self.resume()  # a stopped process would hold SIGTERM until continued
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)


def start_moto(tmp_dir: Path) -> tuple[str, Callable[[], None]]:
    """Start a moto S3 server; returns (endpoint, stop)."""
    server = MotoServer.start(tmp_dir)
    return server.endpoint, server.stop


@pytest.fixture(scope="session")
def moto_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    """One moto S3 server for the test session; take a fresh bucket per test with `bucket(uuid)`."""
    server = MotoServer.start(tmp_path_factory.mktemp("moto"))
    try:
        yield server
    finally:
        server.stop()
