"""What an interrupted sweep leaves for the next run of the same command: finished folds, the study.

A sweep is identified by everything its results depend on: the data (content checksum, subsets),
the search, the base recipe, the folds, the seed and the code of the core (`code_fingerprint`).
Its store is `<checkpoint_dir>/sweeps/<key>/`:

* `folds/<fold key>.json`: each finished fold's result, written by the flow's process as the
  result arrives (atomically: a file is there complete or not at all);
* `study.journal`: the Optuna study (Optuna's journal storage), for the optuna strategy.

Running the command again finds the store under the same key: finished folds are not trained
again and the study continues. Change the data, a setting or the core's code and the key changes,
so nothing stale is reused. The store is removed when the flow completes (`SweepStore.clear`);
what is kept is only what an interrupted run needs.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

import optuna

from digits.errors import DigitsError
from digits.files import write_atomic
from digits.training.recipe import FoldResult

# The core: what a fold's result depends on. The edges and reports record and show results.
_CORE_EXCLUDED = ("edges", "reports")


def code_fingerprint(package_dir: Path | None = None) -> str:
    """SHA-256 over the core's source files (`digits` without `edges/` and `reports/`)."""
    import digits

    root = package_dir or Path(digits.__file__).parent
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root)
        if relative.parts[0] in _CORE_EXCLUDED:
            continue
        digest.update(str(relative).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def stable_key(*parts: Any) -> str:
    """A short hex key of JSON-serialisable `parts` (sorted keys, so dict order does not count)."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


class SweepStore:
    """Finished folds and the Optuna study of one sweep, under `<root>/sweeps/<key>/`.

    Args:
        root: The checkpoint directory (`compute.checkpoint_dir`).
        key: The sweep's identity (see `sweep_key`).
    """

    def __init__(self, root: Path, key: str) -> None:
        self.key = key
        self.directory = Path(root) / "sweeps" / key

    def _fold_path(self, recipe_json: str, fold: int) -> Path:
        return self.directory / "folds" / f"{stable_key(recipe_json, fold)}.json"

    def fold_result(self, recipe_json: str, fold: int) -> FoldResult | None:
        """The stored result of `fold` of the recipe (its JSON), or None when not finished."""
        path = self._fold_path(recipe_json, fold)
        try:
            raw = json.loads(path.read_text())
        except (OSError, ValueError):  # absent, or unreadable: train it again
            return None
        return FoldResult(**raw)

    def save_fold(self, recipe_json: str, fold: int, result: FoldResult) -> None:
        """Keep a finished fold's result (atomically)."""
        data = json.dumps(asdict(result), sort_keys=True).encode()
        write_atomic(self._fold_path(recipe_json, fold), data)

    def finished_folds(self) -> int:
        """How many fold results are stored."""
        return len(list((self.directory / "folds").glob("*.json")))

    def claim(self) -> None:
        """Make this process the sweep's one writer; a killed earlier writer's lock is dropped.

        Raises:
            DigitsError: the sweep is being run by another live process on this host.
        """
        from digits.edges.process import owner_is_gone, process_tags

        owner_file = self.directory / "owner.json"
        self.directory.mkdir(parents=True, exist_ok=True)
        try:
            owner = json.loads(owner_file.read_text())
        except (OSError, ValueError):
            owner = None
        if owner and owner != process_tags() and not owner_is_gone(owner):
            raise DigitsError(
                f"this sweep is already running (process {owner.get('digits.pid')} on "
                f"{owner.get('digits.host')}); wait for it to end, or end it, and run again"
            )
        # Optuna's journal lock of a writer that was killed holding it would block for good.
        (self.directory / "study.journal.lock").unlink(missing_ok=True)
        write_atomic(owner_file, json.dumps(process_tags()).encode())

    def study_storage(self) -> optuna.storages.BaseStorage:
        """Optuna's journal storage in this sweep's folder (created on first use)."""
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        self.directory.mkdir(parents=True, exist_ok=True)
        # An absolute path: Optuna's lock is a symlink to the journal, and a relative target
        # would dangle (its stale-lock timeout then never starts).
        journal = (self.directory / "study.journal").resolve()
        return JournalStorage(JournalFileBackend(str(journal)))

    def clear(self) -> None:
        """Remove the store (the sweep's flow completed: nothing is left to resume)."""
        shutil.rmtree(self.directory, ignore_errors=True)


def sweep_key(**identity: Any) -> str:
    """The key of a sweep from everything its results depend on, the core's code included."""
    return stable_key(identity, code_fingerprint())
