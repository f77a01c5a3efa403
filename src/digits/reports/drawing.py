"""Figures drawn in a child process, while the process that asked for them goes on.

A report's figures cost a small stage seconds at its end: importing matplotlib, then laying out
and rendering each figure. `FigureProcess` starts a Python child as soon as a flow knows it will
draw: the child imports the figure module while the flow trains, then draws and saves what one
`submit` sends, while the flow records and registers. `wait` returns once every file is written,
or raises the child's error in one line. `draw_figures` is the same drawing in this process.

    with FigureProcess("digits.reports.zoo_figures") as figures:
        ...  # train
        figures.submit("zoo_figures", {"gap": path, ...}, dataset="mnist", rows=rows, ...)
        ...  # record, register
        figures.wait()

    python -m digits.reports.drawing MODULE   (the child; reads one job on stdin)
"""

from __future__ import annotations

import importlib
import os
import pickle
import struct
import subprocess
import sys
import threading
import traceback
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from digits.errors import DigitsError

# A job on the child's stdin: its length (8 bytes, big-endian), then the pickle.
_LENGTH = struct.Struct(">Q")
DPI = 120


def draw_figures(
    module: str, function: str, paths: Mapping[str, Path], dpi: int = DPI, **kwargs: Any
) -> list[Path]:
    """Draw `module.function(**kwargs)`'s figures and save each, atomically, at its key's path.

    Args:
        module: The module holding `function`, e.g. ``digits.reports.zoo_figures``.
        function: Returns a list of (key, matplotlib `Figure`).
        paths: Key -> the file the figure goes to (its suffix names the format).
        dpi: Dots per inch of every figure.

    Returns:
        The paths written, in the order the figures came.

    Raises:
        KeyError: a figure whose key has no path.
    """
    from digits.files import save_figure_atomic  # matplotlib comes with the figure module

    written = []
    for key, figure in getattr(importlib.import_module(module), function)(**kwargs):
        save_figure_atomic(figure, paths[key], dpi=dpi)
        written.append(paths[key])
    return written


class FigureProcess:
    """A child Python process that imports `module` now and draws one job's figures later.

    Args:
        module: The figure module the job's function lives in (imported by the child at once).
    """

    def __init__(self, module: str) -> None:
        self.module = module
        self._submitted = self._ended = False
        # The child sees this process's import path, whatever started it (`python -m`, pytest).
        paths = [entry for entry in sys.path if entry]
        env = os.environ | {"PYTHONPATH": os.pathsep.join(paths)}
        self._child = subprocess.Popen(
            [sys.executable, "-m", "digits.reports.drawing", module],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )

    def submit(
        self, function: str, paths: Mapping[str, Path], dpi: int = DPI, **kwargs: Any
    ) -> None:
        """Send the child its job (`draw_figures`' arguments); returns at once.

        Raises:
            DigitsError: a job was already sent (the child draws one).
        """
        if self._submitted:
            raise DigitsError(f"figures of {self.module}: a figure process draws one job")
        self._submitted = True
        job = pickle.dumps((function, dict(paths), dpi, kwargs))
        assert self._child.stdin is not None
        try:
            self._child.stdin.write(_LENGTH.pack(len(job)) + job)
            self._child.stdin.flush()
        except BrokenPipeError:  # the child ended already: `wait` says why
            pass

    def wait(self, timeout: float | None = None) -> list[Path]:
        """The paths written, once the child has saved every figure.

        Raises:
            DigitsError: no job was sent, the child failed (its last error line), or it ran past
                `timeout` seconds (then it is stopped).
        """
        if not self._submitted:
            raise DigitsError(f"figures of {self.module}: nothing was submitted to wait for")
        try:
            out, err = self._child.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.close()
            raise DigitsError(
                f"figures of {self.module}: not drawn after {timeout:.0f} s; stopped"
            ) from None
        self._ended = True
        if self._child.returncode != 0:
            lines = err.decode(errors="replace").strip().splitlines() or ["no error printed"]
            raise DigitsError(
                f"figures of {self.module}: the drawing process failed "
                f"(exit {self._child.returncode}): {lines[-1]}"
            )
        return [Path(path) for path in pickle.loads(out)]

    def close(self) -> None:
        """Stop the child if it is still running (a flow that failed before `wait`)."""
        if self._ended:
            return
        self._ended = True
        if self._child.poll() is None:
            self._child.kill()
        self._child.communicate()

    def __enter__(self) -> FigureProcess:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.close()


def _read_job(into: list[bytes]) -> None:
    stream = sys.stdin.buffer
    header = stream.read(_LENGTH.size)
    if len(header) == _LENGTH.size:
        into.append(stream.read(_LENGTH.unpack(header)[0]))


def _child(module: str) -> int:
    """Import `module`, then draw the one job read from stdin; the paths written go to stdout."""
    job: list[bytes] = []
    reader = threading.Thread(target=_read_job, args=(job,), daemon=True)
    reader.start()  # stdin is read while the module imports: the parent never blocks on it
    importlib.import_module(module)
    reader.join()
    if not job:
        return 0  # closed without a job: the flow ended before it drew
    function, paths, dpi, kwargs = pickle.loads(job[0])
    try:
        written = draw_figures(module, function, paths, dpi, **kwargs)
    except Exception:
        traceback.print_exc()
        return 1
    sys.stdout.buffer.write(pickle.dumps([str(path) for path in written]))
    return 0


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1]))
