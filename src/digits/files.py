"""Writes that are complete or absent: a later stage never takes a partial file for a whole one."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from digits.errors import DiskFull


def disk_full(error: OSError, path: Path) -> DiskFull | None:
    """`DiskFull` naming `path` when `error` is ENOSPC or EDQUOT; None for any other error."""
    if error.errno not in (errno.ENOSPC, errno.EDQUOT):
        return None
    return DiskFull(
        f"{path}: no space left on the device; free some space (or point the path at another "
        "disk) and run the command again"
    )


def write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file in the same folder, renamed into place.

    A reader sees the old file or the whole new one, never a part.

    Raises:
        DiskFull: the disk filled up (the partial temporary file is removed).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
    try:
        with open(tmp, "wb") as stream:
            stream.write(data)
        os.replace(tmp, path)
    except OSError as error:
        full = disk_full(error, path)
        if full is not None:
            raise full from None
        raise
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def refuse_full_disk(path: Path) -> Iterator[None]:
    """Turn a full disk (ENOSPC, EDQUOT) inside the block into `DiskFull` naming `path`."""
    try:
        yield
    except OSError as error:
        full = disk_full(error, path)
        if full is not None:
            raise full from None
        raise
