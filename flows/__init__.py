"""The project's Prefect flows and DVC stage scripts.

Prefect reads its settings (its home folder, telemetry, logging) once, when `prefect` is first
imported, so the project's defaults are set here, before any flow module imports it: the one place
they are set.
"""

from digits.edges.prefect_server import set_prefect_defaults
from digits.edges.terminal import quiet_terminal_defaults

set_prefect_defaults()
quiet_terminal_defaults()
