"""A local Ray instance that dies with the process that started it, however that process ends.

`ray.init()` without an address starts a Ray head as children of the driver — gcs_server, raylet, the
dashboard and the monitors, each with PR_SET_PDEATHSIG, so the kernel kills them when the driver dies —
and, below the raylet, the dashboard and runtime-env agents and the workers holding the actors. Those
grandchildren are not covered: after a SIGKILL of the driver the workers notice the raylet is gone, but
the agents block on a GCS that no longer answers and live on for about a minute (measured with Ray 2.60:
~55 s, ~180 MB), and a supervisor restarting a crashing `sensorcast serve` stacks them up. Rather than
rely on how each Ray version ends each of its processes, the watchdog below ends whatever is left.

`Watchdog.start()` (after `ray.init`) forks a small stdlib-only process, `python -m serving.ray_local
SESSION_DIR PID`, in a session of its own (a process-group kill or Ctrl-C does not reach it). It holds the
read end of a pipe whose only write end is ours, so it sees EOF when we close it or when we die, however
(the kernel closes a dead process's descriptors); it also checks once a second that we are still its
parent, for a forked child that inherited the write end. Then it sweeps: SIGKILL to every process that
has a file under the instance's session directory open for writing — every Ray process of that instance
writes its logs there (agents and workers too, whose command line and environment Ray rewrites), and a
subprocess of an actor inherits its log files — and again until none is left. Readers of those logs
(`tail -f`) are left alone; another instance's processes write elsewhere.

Only an instance this process started is watched: when `ray.init()` connected to an existing cluster
(`--ray-address`, `RAY_ADDRESS`, a `ray start` on this machine) no process of it is our child, and no
watchdog starts. A crash inside `ray.init` itself is left to Ray's own PR_SET_PDEATHSIG.

Linux only (`/proc`); elsewhere `Watchdog.start()` returns None. Must not import Ray at module level:
the watchdog process runs this module and nothing else.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

log = logging.getLogger(__name__)

_PROC = Path("/proc")
_SESSION = re.compile(r"^(/.*/session_[^/]+)/")


def _fds_under(pid: int, root: str) -> list[tuple[str, str]]:
    """(fd, path) of the files `pid` has open below `root` (which ends with '/'); [] if unreadable."""
    fd_dir = _PROC / str(pid) / "fd"
    out = []
    try:
        for fd in os.listdir(fd_dir):
            with contextlib.suppress(OSError):
                target = os.readlink(fd_dir / fd)
                if target.startswith(root):
                    out.append((fd, target))
    except OSError:  # gone, or another user's process
        return []
    return out


def _writes(pid: int, fd: str) -> bool:
    try:
        info = (_PROC / str(pid) / "fdinfo" / fd).read_text()
    except OSError:
        return False
    flags = re.search(r"^flags:\s*([0-7]+)", info, re.MULTILINE)
    return flags is not None and int(flags.group(1), 8) & os.O_ACCMODE in (os.O_WRONLY, os.O_RDWR)


def _pids() -> list[int]:
    return [int(name) for name in os.listdir(_PROC) if name.isdigit()]


def writers(session_dir: str | Path) -> set[int]:
    """Processes with a file under `session_dir` open for writing: the Ray processes of that instance."""
    root = str(session_dir).rstrip("/") + "/"
    return {pid for pid in _pids() if any(_writes(pid, fd) for fd, _ in _fds_under(pid, root))}


def parent_of(pid: int) -> int | None:
    try:
        stat = (_PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    return int(stat.rpartition(")")[2].split()[1])  # the command may contain spaces and parentheses


def sessions_started_by(pid: int, ray_temp_dir: str | Path = "/tmp/ray") -> set[str]:
    """Session directories of the Ray instances whose processes are children of `pid`."""
    root = str(ray_temp_dir).rstrip("/") + "/"
    out = set()
    for child in (p for p in _pids() if parent_of(p) == pid):
        for _, path in _fds_under(child, root):
            match = _SESSION.match(path)
            if match:
                out.add(match.group(1))
    return out


def sweep(session_dir: str | Path, *, spare: set[int], timeout_s: float = 10.0) -> int:
    """SIGKILL the instance's processes (but `spare`) until none is left; return how many were killed."""
    killed: set[int] = set()
    deadline = time.monotonic() + timeout_s
    while True:
        left = writers(session_dir) - spare - {os.getpid()}
        if not left or time.monotonic() > deadline:
            return len(killed)
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
                killed.add(pid)
        time.sleep(0.1)


class Watchdog:
    """The watchdog process of the local Ray instance this process started; `close()` after ray.shutdown."""

    def __init__(self, proc: subprocess.Popen[bytes], session_dir: str) -> None:
        self.proc = proc
        self.session_dir = session_dir

    @classmethod
    def start(cls) -> Watchdog | None:
        """Watch the instance `ray.init()` started in this process; None when it connected to another one."""
        import ray

        if not sys.platform.startswith("linux"):
            return None
        ctx = ray.get_runtime_context()
        session_dir = str(Path(ctx.get_temp_dir()) / ctx.get_session_name())
        if not any(parent_of(pid) == os.getpid() for pid in writers(session_dir)):
            return None  # an existing cluster's processes: never ours to stop
        proc = subprocess.Popen(
            [sys.executable, "-m", __name__, session_dir, str(os.getpid())],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.info("local ray watched", extra={"session_dir": session_dir, "watchdog_pid": proc.pid})
        return cls(proc, session_dir)

    def close(self, timeout_s: float = 15.0) -> None:
        """End the watch: the watchdog sweeps what `ray.shutdown()` left behind, and exits."""
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            log.warning("ray watchdog still sweeping", extra={"session_dir": self.session_dir})


def _watch(session_dir: str, parent: int) -> None:  # pragma: no cover - runs in the watchdog process
    while os.getppid() == parent:
        readable, _, _ = select.select([0], [], [], 1.0)
        if readable and not os.read(0, 4096):
            break
    sweep(session_dir, spare={parent})


if __name__ == "__main__":  # pragma: no cover
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _watch(sys.argv[1], int(sys.argv[2]))
