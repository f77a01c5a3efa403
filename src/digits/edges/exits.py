"""How a command ends: a user-caused problem is one line on stderr and exit code 2.

Never a traceback for a bad parameter, a missing or corrupt file, no network or a full disk;
Ctrl-C and SIGTERM end in one line too, with the shell's exit code for the signal.
"""

from __future__ import annotations

import errno
import signal
import sys
from collections.abc import Callable
from typing import NoReturn, TypeVar

from digits.errors import DigitsError

T = TypeVar("T")


def run_or_exit(action: Callable[[], T]) -> T:
    """Run `action`; a DigitsError becomes one line on stderr and exit code 2.

    Ctrl-C and SIGTERM end in one line too, with the shell's exit code for the signal (130, 143).
    """
    try:
        return action()
    except DigitsError as error:
        fail(str(error))
    except Exception as error:
        full = disk_full_cause(error)
        if full is None:
            raise
        fail(full)
    except KeyboardInterrupt as interrupt:
        number = getattr(interrupt, "signal_number", signal.SIGINT)
        fail(
            f"interrupted ({signal.Signals(number).name}); runs in progress were ended KILLED. "
            "Run the same command again to resume",
            code=128 + number,
        )


def disk_full_cause(error: BaseException) -> str | None:
    """One line when `error`, or what caused it, is a full disk (a file, or SQLite's database).

    Libraries wrap the `OSError` (MLflow's store raises SQLAlchemy's error around SQLite's), so
    the chain of causes is searched.
    """
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            where = f" writing {seen.filename}" if seen.filename else ""
            return f"no space left on the device{where}; free some space and run the command again"
        if "database or disk is full" in str(seen):
            return (
                "no space left on the device for the tracking database (SQLite: database or disk "
                "is full); free some space and run the command again"
            )
        seen = seen.__cause__ or seen.__context__
    return None


def fail(message: str, code: int = 2) -> NoReturn:
    """Print `message` as the command's one line of error and exit with `code`."""
    print(f"digits: error: {message}", file=sys.stderr)
    raise SystemExit(code)
