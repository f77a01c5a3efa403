"""The project's services: where every run's records go, whichever way the run was started.

A stage may run in the checkout (`dvc repro`, `python -m flows.tune_mnist`) or in a workspace DVC
makes for an experiment (`dvc exp run --temp`, `dvc exp run --queue` + `dvc queue start`), which
DVC deletes afterwards. Records must outlive that workspace: the MLflow store, the Prefect
database, the sweep store and the checkpoints are the *project's*, found from ``DVC_ROOT`` (the
checkout DVC was started in; DVC sets it for every stage) rather than from the working folder.
DVC's experiment name (``DVC_EXP_NAME``) travels with every run as a tag, so a person goes from
`dvc exp show` to the MLflow runs and back.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DVC_ROOT_ENV = "DVC_ROOT"
DVC_EXPERIMENT_ENV = "DVC_EXP_NAME"
EXPERIMENT_TAG = "dvc_experiment"


@dataclass(frozen=True)
class Project:
    """The checkout whose stores a run records into.

    Attributes:
        root: The project's folder (``DVC_ROOT`` under DVC, else the working folder).
        experiment: DVC's experiment name when the run is one, else None.
    """

    root: Path
    experiment: str | None = None

    def path(self, path: str | Path) -> Path:
        """`path` (a store's setting) in the project: a relative one is taken from the project's
        folder (left relative when that is the working folder, as MLflow's own settings are)."""
        path = Path(path).expanduser()
        if path.is_absolute() or self.root == Path.cwd().resolve():
            return path
        return self.root / path

    def sqlite_uri(self, uri: str) -> str:
        """A ``sqlite:///relative.db`` URI made absolute under the project; others unchanged."""
        if not uri.startswith("sqlite:///") or uri.startswith("sqlite:////"):
            return uri
        return f"sqlite:///{self.path(uri.removeprefix('sqlite:///'))}"

    def tags(self) -> dict[str, str]:
        """Tags every run of this process carries (the DVC experiment's name, when there is one)."""
        return {EXPERIMENT_TAG: self.experiment} if self.experiment else {}


def current_project() -> Project:
    """The project of this process: DVC's root and experiment name when DVC started it."""
    root = os.environ.get(DVC_ROOT_ENV)
    folder = Path(root) if root and Path(root).is_dir() else Path.cwd()
    return Project(root=folder.resolve(), experiment=os.environ.get(DVC_EXPERIMENT_ENV) or None)
