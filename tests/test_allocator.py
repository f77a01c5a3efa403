"""The steady allocator (`digits.edges.allocator`): glibc takes its three settings, in this
process and in local Dask workers.

Read through glibc's own accounting (mallinfo2): a 16 MiB block allocated in a new thread comes
from the main arena's heap, not from a mapping of its own or another arena, and stays in the heap
once freed. By default the same block is mapped afresh, which the probe also checks: a probe that
could not tell the two apart would prove nothing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PROBE = r"""
import ctypes, json, sys, tempfile, threading
from digits.edges.allocator import steady_allocator

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd",
        "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
libc.fopen.restype, libc.fopen.argtypes = ctypes.c_void_p, [ctypes.c_char_p, ctypes.c_char_p]
libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
libc.fclose.argtypes = [ctypes.c_void_p]
took = steady_allocator() if sys.argv[1] == "steady" else None
seen = {}

def arenas():
    with tempfile.NamedTemporaryFile(suffix=".xml") as report:
        stream = libc.fopen(report.name.encode(), b"w")
        libc.malloc_info(0, stream)
        libc.fclose(stream)
        return open(report.name).read().count("<heap nr=")

def block():
    before = libc.mallinfo2()
    pointer = libc.malloc(16 << 20)
    during = libc.mallinfo2()
    seen["arenas"] = arenas()
    libc.free(pointer)
    after = libc.mallinfo2()
    seen.update(
        took=took,
        mapped=during.hblkhd - before.hblkhd,
        heap_kept=after.arena - before.arena,
    )

thread = threading.Thread(target=block)
thread.start()
thread.join()
print(json.dumps(seen))
"""


def _probe(mode: str) -> dict[str, int]:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    for name in ("MALLOC_ARENA_MAX", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"):
        env.pop(name, None)
    done = subprocess.run(
        [sys.executable, "-c", PROBE, mode], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


@pytest.mark.skipif(sys.platform != "linux", reason="glibc's allocator")
def test_a_threads_tensor_sized_block_stays_in_the_main_heap_with_the_steady_allocator() -> None:
    default = _probe("default")
    assert default["mapped"] >= 16 << 20  # glibc's default: mapped afresh, page-faulted again
    assert default["arenas"] >= 2  # and the thread has an arena of its own
    steady = _probe("steady")
    assert steady["took"] is True
    assert steady["mapped"] == 0
    assert steady["arenas"] == 1  # one arena for every thread
    assert steady["heap_kept"] >= 16 << 20  # freed, but not handed back to the kernel
