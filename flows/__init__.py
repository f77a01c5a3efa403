"""The project's Prefect flows and DVC stage scripts.

Prefect reads its settings (its home folder, telemetry) once, when `prefect` is first imported, so
the project's defaults are set here, before any flow module imports it: the one place they are set.
"""

from digits.edges.prefect_server import set_prefect_defaults

set_prefect_defaults()
