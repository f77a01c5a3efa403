"""Long-running service processes: started detached with a pid file and a log, health-checked,
stopped by signal (twice, then killed).

A service's pid file is ``<state>/run/<name>.pid``; its log ``<state>/logs/<name>.log``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from digits.errors import DigitsError


def port_taken(host: str, port: int) -> bool:
    """Whether something already listens on (host, port)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(0.5)
        return probe.connect_ex((host, port)) == 0


def pid_alive(pid: int) -> bool:
    """Whether process `pid` runs (a zombie does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError, IndexError):
        if Path(f"/proc/{pid}/stat").read_text().split(")", 1)[1].split()[0] == "Z":
            return False
    return True


def read_pid(pid_file: Path) -> int | None:
    """The pid in `pid_file` when that process still runs, else None."""
    try:
        pid = int(pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return pid if pid_alive(pid) else None


def start_daemon(
    name: str,
    command: Sequence[str],
    state: Path,
    env: dict[str, str],
    cwd: Path | None = None,
) -> int:
    """Start `command` detached (its own session), output to its log; returns its pid."""
    log_file = state / "logs" / f"{name}.log"
    log_file.parent.mkdir(parents=True, exist_ok=True)
    (state / "run").mkdir(parents=True, exist_ok=True)
    with open(log_file, "ab") as log:
        process = subprocess.Popen(
            list(command),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a terminal's Ctrl-C is not for the services
            env=env,
            cwd=cwd,
        )
    (state / "run" / f"{name}.pid").write_text(f"{process.pid}\n")
    return process.pid


def wait_healthy(
    name: str, healthy: Callable[[], bool], pid: int | None, log_file: Path, timeout_s: float
) -> float:
    """Wait until `healthy()`; returns the seconds waited.

    Raises:
        DigitsError: the process ended, or `timeout_s` passed, first (its log is named).
    """
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if healthy():
            return time.monotonic() - started
        if pid is not None and not pid_alive(pid):
            raise DigitsError(f"{name} exited while starting: see {log_file}")
        time.sleep(0.2)
    raise DigitsError(f"{name} did not answer within {timeout_s:.0f} s: see {log_file}")


def stop_pid(pid: int, timeout_s: float = 20.0) -> None:
    """Stop process `pid` and its session: SIGTERM, again after a while, then SIGKILL.

    Some servers ignore a first SIGTERM while idle, so it is sent twice before the kill.
    """
    for attempt in range(3):
        sig = signal.SIGKILL if attempt == 2 else signal.SIGTERM
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        deadline = time.monotonic() + timeout_s / 2
        while time.monotonic() < deadline:
            if not pid_alive(pid):
                return
            time.sleep(0.1)


def process_memory_mb(pid: int) -> float:
    """Memory of `pid` and its descendants, in MiB (0 when it is gone).

    Proportional set sizes, so memory the processes share (PostgreSQL's buffers, a forking
    server's pages) counts once, not once per process.
    """
    import psutil

    try:
        root = psutil.Process(pid)
        family = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0.0
    total = 0
    for process in family:
        with contextlib.suppress(psutil.Error):
            total += process.memory_full_info().pss
    return total / 2**20
