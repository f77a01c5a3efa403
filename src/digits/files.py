"""Writes that are complete or absent: a later stage never takes a partial file for a whole one."""

from __future__ import annotations

import errno
import io
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from digits.errors import DiskFull

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def disk_full(error: OSError, path: Path) -> DiskFull | None:
    """`DiskFull` naming `path` when `error` is ENOSPC or EDQUOT; None for any other error."""
    if error.errno not in (errno.ENOSPC, errno.EDQUOT):
        return None
    return DiskFull(
        f"{path}: no space left on the device; free some space (or point the path at another "
        "disk) and run the command again"
    )


@contextmanager
def atomic_target(path: Path) -> Iterator[Path]:
    """A temporary path beside `path` for the block to write; renamed onto `path` when the block
    completes, removed when it raises: a reader sees the old file or the whole new one.

    Every file a stage writes goes through here (`write_atomic` and the helpers below, training
    checkpoints, saved models); `pull` and `prepare` rename whole checked files and folders into
    place the same way.

    Raises:
        DiskFull: the disk filled up in the block or at the rename (the partial file is removed).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
    try:
        with refuse_full_disk(path):
            yield tmp
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file in the same folder, renamed into place.

    A reader sees the old file or the whole new one, never a part.

    Raises:
        DiskFull: the disk filled up (the partial temporary file is removed).
    """
    with atomic_target(path) as tmp, open(tmp, "wb") as stream:
        stream.write(data)


def write_text_atomic(path: Path, text: str) -> None:
    """`write_atomic` for text, encoded as UTF-8 (the reports hold symbols such as ² and ‖)."""
    write_atomic(path, text.encode("utf-8"))


def save_figure_atomic(figure: Figure, path: Path, **savefig: Any) -> None:
    """Render a matplotlib figure in memory, in the format `path`'s suffix names, then
    `write_atomic` it; `savefig` goes to `Figure.savefig` (dpi, ...)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format=path.suffix.lstrip(".") or "png", **savefig)
    write_atomic(path, buffer.getvalue())


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
