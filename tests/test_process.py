"""Process edge: ownership tags, and children inspected while they end."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import types
from collections.abc import Iterator

import psutil
import pytest
from tests import faultkit

from digits.edges.process import (
    children,
    children_with_commands,
    command_line,
    kill,
    owner_is_gone,
    process_tags,
)

MARK = "spawn_main"  # what `faultkit.dask_workers` looks for in a Dask worker's command line


def _zombie(marker: str = MARK) -> subprocess.Popen[bytes]:
    """A child that has exited and is not reaped: a zombie until `wait` is called."""
    child = subprocess.Popen([sys.executable, "-c", "pass", marker])
    deadline = time.monotonic() + 30
    while psutil.Process(child.pid).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline, "the child did not exit"
        time.sleep(0.01)
    return child


@pytest.fixture
def live_and_zombie() -> Iterator[tuple[subprocess.Popen[bytes], subprocess.Popen[bytes]]]:
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", MARK])
    zombie = _zombie()
    yield live, zombie
    live.kill()
    live.wait()
    zombie.wait()


def test_a_zombie_child_is_inspected_without_raising(live_and_zombie) -> None:  # type: ignore[no-untyped-def]
    live, zombie = live_and_zombie
    assert zombie.pid in {p.pid for p in children(os.getpid())}  # still listed, as a zombie
    found = {child.pid: child.cmdline for child in children_with_commands(os.getpid())}
    assert zombie.pid not in found  # it runs nothing any more
    assert MARK in found[live.pid]
    assert command_line(psutil.Process(zombie.pid)) == ()


def test_faultkit_finds_the_live_workers_and_not_a_zombie(live_and_zombie) -> None:  # type: ignore[no-untyped-def]
    live, _ = live_and_zombie
    me = types.SimpleNamespace(pid=os.getpid())
    assert [worker.pid for worker in faultkit.dask_workers(me)] == [live.pid]  # type: ignore[arg-type]


def test_a_child_gone_since_it_was_listed_is_inspected_without_raising() -> None:
    child = _zombie()
    handle = psutil.Process(child.pid)
    child.wait()  # reaped: the pid names no process now
    assert command_line(handle) == ()
    assert kill(handle) is False
    assert children(child.pid) == []


def test_the_owner_of_a_reaped_process_is_gone_and_ours_is_not() -> None:
    child = _zombie()
    child.wait()
    tags = {**process_tags(), "digits.pid": str(child.pid)}
    assert owner_is_gone(tags)
    assert not owner_is_gone(process_tags())
    assert not owner_is_gone({**tags, "digits.host": "another-machine"})  # unknowable: kept
