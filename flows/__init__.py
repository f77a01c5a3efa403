"""The project's Prefect flows and DVC stage scripts.

Prefect reads its settings (its home folder, telemetry, logging) once, when `prefect` is first
imported, so the project's defaults are set here, before any flow module imports it: the one place
they are set. So is the choice of services (``DIGITS_SERVICES=team``: the team's MLflow, Prefect
and Dask from `.team/client.env`), which Prefect and Dask read then too.
"""

from digits.edges.exits import run_or_exit
from digits.edges.prefect_server import set_prefect_defaults
from digits.edges.services import use_chosen_services
from digits.edges.terminal import quiet_terminal_defaults

run_or_exit(use_chosen_services)
set_prefect_defaults()
quiet_terminal_defaults()
