"""What a flow prints to the terminal: its own lines, warnings and errors; the rest is recorded.

A stage's terminal shows one progress bar, one line per finished trial or model and every
warning and error. Everything else the libraries say at INFO (Dask's worker start-up and
shutdown, Prefect's task-run lines, each epoch of each fit) still goes where it is read: the
Prefect API (each task run's logs in the UI) and MLflow (the curves). `DIGITS_VERBOSE=1`, or
`--verbose` on a flow, prints it all.

Prefect reads its logging configuration when `prefect` is first imported, in the flow's process
and in every Dask worker, so `quiet_terminal_defaults` names the project's configuration
(`prefect_logging.yml`: Prefect's own, with `TerminalFilter` on the console handler) in the
environment the workers inherit. Dask's loggers print through the same console handler.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

VERBOSE_ENV = "DIGITS_VERBOSE"
LOGGING_CONFIG = Path(__file__).with_name("prefect_logging.yml")
# The flow's own logger: its INFO lines (placement, each trial's and model's score) are the
# terminal's content; task runs log every epoch, for the Prefect UI.
FLOW_RUN_LOGGER = "prefect.flow_runs"


def is_verbose() -> bool:
    """Whether the terminal should show every INFO line (``DIGITS_VERBOSE`` set, not 0)."""
    return os.environ.get(VERBOSE_ENV, "").strip().lower() not in ("", "0", "false", "no")


class TerminalFilter(logging.Filter):
    """Passes warnings and errors, and the flow run's own INFO lines; everything when verbose.

    Installed on Prefect's console handler only (the API handler keeps every line).
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING or record.name == FLOW_RUN_LOGGER:
            return True
        return is_verbose()  # read per record: `--verbose` sets it after logging is configured


def quiet_terminal_defaults() -> None:
    """Environment defaults for a quiet terminal; call before `prefect` or `mlflow` is imported.

    Names the project's Prefect logging configuration (unless ``PREFECT_LOGGING_CONFIG_PATH``
    is set) and turns off MLflow's artifact download bars, which registration draws for every
    model; MLflow's INFO lines are kept to WARNING unless verbose.
    """
    os.environ.setdefault("PREFECT_LOGGING_CONFIG_PATH", str(LOGGING_CONFIG))
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    if not is_verbose():
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")


def set_verbose() -> None:
    """Print every INFO line from here on, in this process and the workers it starts."""
    os.environ[VERBOSE_ENV] = "1"
    if os.environ.get("MLFLOW_LOGGING_LEVEL") == "WARNING":
        os.environ["MLFLOW_LOGGING_LEVEL"] = "INFO"  # read when mlflow is first imported
    logging.getLogger("mlflow").setLevel(logging.INFO)
