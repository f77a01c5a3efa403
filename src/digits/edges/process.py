"""Processes: who owns a run or a sweep, and the children a process started.

The only module of the project that imports `psutil`. A process inspected here may end while it
is being looked at (a Dask worker killed a moment ago is a zombie until its nanny reaps it, then
gone): every helper tolerates that, and reports what it could read.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import psutil

# Tags naming the process that owns a run or a sweep, so that one left behind by a process that
# no longer exists can be told from one still being recorded elsewhere.
PID_TAG, HOST_TAG, PROCESS_START_TAG = "digits.pid", "digits.host", "digits.process_start"
# What psutil raises for a process that ended, is a zombie, or is not ours to read.
_VANISHED = (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied)


def process_start(pid: int) -> str | None:
    """Start time of process `pid` (seconds since the epoch, 2 decimals); None when it is gone."""
    try:
        return f"{psutil.Process(pid).create_time():.2f}"
    except _VANISHED:
        return None


def process_tags() -> dict[str, str]:
    """This process's pid, host and start time, as tags of the runs and sweeps it owns."""
    pid = os.getpid()
    return {
        PID_TAG: str(pid),
        HOST_TAG: socket.gethostname(),
        PROCESS_START_TAG: process_start(pid) or "",
    }


def owner_is_gone(tags: Mapping[str, str]) -> bool:
    """Whether the process named by `process_tags` has ended (on this host; else unknowable: False).

    The start time tells a reused pid from the original process.
    """
    if tags.get(HOST_TAG) != socket.gethostname() or not tags.get(PID_TAG, "").isdigit():
        return False
    started = process_start(int(tags[PID_TAG]))
    return started is None or started != tags.get(PROCESS_START_TAG)


@dataclass(frozen=True)
class Child:
    """A child process as it was when looked at.

    Attributes:
        process: The psutil handle (it may have ended since).
        cmdline: Its command line; empty when it ended or became a zombie while being read.
    """

    process: psutil.Process
    cmdline: tuple[str, ...]

    @property
    def pid(self) -> int:
        """Its process id."""
        return int(self.process.pid)


def children(pid: int, recursive: bool = True) -> list[psutil.Process]:
    """The processes `pid` started (and theirs, when `recursive`); empty when `pid` is gone."""
    try:
        return list(psutil.Process(pid).children(recursive=recursive))
    except _VANISHED:
        return []


def command_line(process: psutil.Process) -> tuple[str, ...]:
    """The command line of `process`; empty when it ended, is a zombie, or cannot be read."""
    try:
        return tuple(process.cmdline())
    except _VANISHED:
        return ()


def children_with_commands(pid: int, recursive: bool = True) -> list[Child]:
    """The live children of `pid` with their command lines.

    A child that ends or becomes a zombie while it is being read is left out: it runs nothing.
    """
    found = []
    for process in children(pid, recursive):
        cmdline = command_line(process)
        if cmdline:
            found.append(Child(process, cmdline))
    return found


def wait_gone(processes: Iterable[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Wait up to `timeout` seconds for `processes` to end; returns those still alive."""
    _, alive = psutil.wait_procs(list(processes), timeout=timeout)
    return list(alive)


def kill(process: psutil.Process) -> bool:
    """SIGKILL `process`; returns False when it had ended already (nothing was killed)."""
    try:
        process.kill()
    except _VANISHED:
        return False
    return True
