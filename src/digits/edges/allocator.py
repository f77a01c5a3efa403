"""One steady memory allocator for a process that trains on the CPU (glibc's malloc, mallopt(3)).

By default glibc decides at run time whether a tensor's memory is mapped afresh from the kernel
(and page-faulted in again at every batch) or reused from its heap, and each thread gets an arena
of its own whose heaps are unmapped whenever they empty. Which way a training run goes depends on
the order its first tensors happen to be freed in: the same LeNet-5 epochs on MNIST took 8.9 s
with 0.2 million page faults in one process and 14.0 s with 4.2 million in the next, with nothing
else changed. A task that trains in a thread of its own (the flow's in-process Dask worker) met
the slow case most often.

`steady_allocator` fixes the choice for the whole process: one arena for every thread, tensors up
to 32 MiB (glibc's most) kept in the heap, and free memory handed back only past 256 MiB. The
same three settings reach Dask worker processes as environment variables (`ALLOCATOR_ENV`), which
glibc reads when a process starts (`digits.edges.dask_runner` sets them before a worker is
spawned). Elsewhere than glibc, nothing changes.
"""

from __future__ import annotations

import ctypes
import ctypes.util

# mallopt(3)'s parameters, and the values both ways of setting them use.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8
ARENAS = 1
MMAP_THRESHOLD = 32 << 20  # glibc refuses more (half its 64 MiB heap)
TRIM_THRESHOLD = 256 << 20
ALLOCATOR_ENV = {
    "MALLOC_ARENA_MAX": str(ARENAS),
    "MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD),
    "MALLOC_TRIM_THRESHOLD_": str(TRIM_THRESHOLD),
}


def steady_allocator() -> bool:
    """Set this process's allocator as the module says; True when glibc took all three settings.

    Call it before the process starts threads: a thread that already has an arena of its own
    keeps it.
    """
    path = ctypes.util.find_library("c")
    if path is None:
        return False
    try:
        mallopt = ctypes.CDLL(path).mallopt
    except (OSError, AttributeError):  # not glibc (musl, macOS)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    settings = (
        (_M_ARENA_MAX, ARENAS),
        (_M_MMAP_THRESHOLD, MMAP_THRESHOLD),
        (_M_TRIM_THRESHOLD, TRIM_THRESHOLD),
    )
    return all(mallopt(parameter, value) == 1 for parameter, value in settings)
