"""Ctrl-C and SIGTERM: unwind the program so that runs end KILLED and servers stop in order.

Python's default for SIGTERM ends the process at once, which leaves MLflow runs RUNNING and the
temporary Prefect server listening. Here both signals raise in the main thread instead
(`Terminated` for SIGTERM, a `KeyboardInterrupt`), and a loop that waits on tasks can ask for a
first signal to be held until it reaches a safe point (`deferred_interrupts`).

What a deferring block has received is kept on the handler installed for the signals, not in
this module: the process's signal table is the one place that state can belong to.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType


class TaskInterrupted(Exception):
    """Raised in a task running in the interrupted flow's own process, between two epochs.

    An `Exception` (not a `KeyboardInterrupt`, which would unwind the worker's event loop): the
    task fails, and is not retried (`flows.main.retry_unless_diverged`).
    """


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread, so that cleanup runs as for Ctrl-C."""

    signal_number = signal.SIGTERM


def _interrupt(signum: int) -> KeyboardInterrupt:
    return Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


class InterruptHandler:
    """The handler `handle_interrupts` installs for SIGINT and SIGTERM.

    Attributes:
        deferring: How many `deferred_interrupts` blocks are open.
        pending: A signal received inside one, not raised yet (at most one).
    """

    def __init__(self) -> None:
        self.deferring = 0
        self.pending: list[int] = []

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        if self.deferring and not self.pending:
            self.pending.append(signum)  # raised by `raise_if_interrupted` at the next safe point
            return
        raise _interrupt(signum)  # outside a deferring block, or a second signal: at once


def installed_handler() -> InterruptHandler | None:
    """The handler `handle_interrupts` installed, or None when it did not run."""
    handler = signal.getsignal(signal.SIGINT)
    return handler if isinstance(handler, InterruptHandler) else None


def handle_interrupts() -> None:
    """Make Ctrl-C and SIGTERM unwind the program: `finally` blocks and context managers run.

    Call in the main thread (signals arrive there); a flow calls `reclaim_sigterm` inside
    (Prefect installs a SIGTERM handler of its own for the run).
    """
    handler = installed_handler() or InterruptHandler()
    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


def reclaim_sigterm() -> None:
    """Inside a flow run: take SIGTERM back from Prefect's handler, when `handle_interrupts` ran.

    Prefect's own handler raises wherever the main thread is; this one can wait for a safe point.
    """
    handler = installed_handler()
    if handler is None:
        return
    with contextlib.suppress(ValueError):  # not the main thread: not ours to handle here
        signal.signal(signal.SIGTERM, handler)


@contextmanager
def deferred_interrupts() -> Iterator[None]:
    """Inside, a first Ctrl-C or SIGTERM waits for `raise_if_interrupted` (a safe point).

    An interruption raised in the middle of a library call (a task being serialised for Dask,
    say) can be caught and wrapped by the library, and end as some other error. A loop that
    calls `raise_if_interrupted` often (a sweep waiting on its tasks) raises it where it is safe.
    Without `handle_interrupts` there is nothing to defer. Usable as a decorator.
    """
    handler = installed_handler()
    if handler is None:
        yield
        return
    handler.deferring += 1
    try:
        yield
    finally:
        handler.deferring -= 1
    raise_if_interrupted()


def raise_if_interrupted() -> None:
    """Raise the interruption received inside `deferred_interrupts`, if any."""
    handler = installed_handler()
    if handler is not None and handler.pending:
        raise _interrupt(handler.pending.pop())


def interrupt_pending() -> bool:
    """Whether a signal waits for `raise_if_interrupted`; from any thread, and left pending.

    A task running in a thread of the flow's process (`Placement.in_process`) asks it between
    epochs, so that an interrupted flow does not wait for the fit to end.
    """
    handler = installed_handler()
    return handler is not None and bool(handler.pending)
