"""DVC stage `report`: reports/REPORT.md and REPORT.html, the study's four questions answered.

Reads what the other stages wrote under `reports/` and finds, in the MLflow store, the run behind
each result (read only: with no store the report says so, and none is created). It computes
nothing and schedules nothing, so it is a plain script rather than a Prefect flow.

    python -m flows.report [--params params.yaml] [--mlflow-ui http://127.0.0.1:5000]
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from digits.config import Params, load_params
from digits.edges.exits import run_or_exit
from digits.edges.tracking import (
    PREFECT_FLOW_RUN_TAG,
    TRAINED_RUN_TAG,
    TrackingStore,
    open_tracking_store,
)
from digits.errors import DigitsError
from digits.files import save_figure_atomic, write_text_atomic
from digits.reports.study import (
    ROBUSTNESS_FIGURE,
    RunLink,
    StudyFiles,
    read_study,
    study_html,
    study_markdown,
    study_robustness_figure,
)

REPORTS = Path("reports")
MLFLOW_UI = "http://127.0.0.1:5000"


def run_links(files: StudyFiles, params: Params, ui: str) -> tuple[dict[str, RunLink], str]:
    """The MLflow run of each result, and one sentence on where they were looked up."""
    try:
        store = open_tracking_store(params.tracking, mode="read")
    except DigitsError as error:
        return {}, f"MLflow runs are not named: {error}."

    def link(run_id: str, experiment_id: str, trained_in: str = "") -> RunLink:
        url = f"{ui.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}" if ui else ""
        return RunLink(run_id, url, trained_in)

    links: dict[str, RunLink] = {}
    if files.theory is not None:
        found = store.runs.latest_run("theory", {"profile": params.profile})
        if found:
            links["theory"] = link(*found)
    if files.mnist is not None:
        tags = {"profile": params.profile, "stage": "final"}
        if files.mnist.get("data_checksum"):
            tags["data_checksum"] = str(files.mnist["data_checksum"])
        for key, run_id, experiment_id, trained_in in _mnist_runs(store, tags):
            links[key] = link(run_id, experiment_id, trained_in)
    tables = [*files.zoo.values(), files.mnist_robustness]
    zoo_ids = [
        str(run_id)
        for table in tables
        if table is not None and "run_id" in table
        for run_id in table["run_id"].dropna()
    ]
    in_store = store.runs.run_experiments(zoo_ids)
    for run_id, experiment_id in in_store.items():
        links[run_id] = link(run_id, experiment_id)
    # A model trained in another store and restored from models/ (`make study`) has a new run
    # that names the one that trained it.
    missing = [run_id for run_id in zoo_ids if run_id not in in_store]
    for trained, (run_id, experiment_id) in store.runs.runs_tagged(
        TRAINED_RUN_TAG, missing
    ).items():
        links[trained] = link(run_id, experiment_id, trained)
    return links, (
        f"Runs were looked up in {store.uri}; a model restored from `models/` links to its "
        "restored run, which names the run that trained it; a result whose run is not there "
        "came with the checkout or from another store (`dvc repro` of its stage records one)."
    )


def _mnist_runs(store: TrackingStore, tags: Mapping[str, str]) -> list[tuple[str, str, str, str]]:
    """(key, run id, experiment id, trained in) of the newest Table 1 final fit carrying `tags`,
    its sweep, and the refining search and refined final fit of the same flow run, where there
    are some.

    Both final fits carry `stage: final`; the refined one is named `refined-...` (its parent
    the `refine-...` run), Table 1's `final-...`. A final fit restored from `models/` names the
    run that trained it ("trained in"); its searches ran in that run's store, not this one.
    """
    finals = [
        run
        for run in store.runs.runs_of("mnist")  # newest first
        if run.info.status == "FINISHED"
        and all(run.data.tags.get(key) == value for key, value in tags.items())
    ]
    table1 = next((r for r in finals if not r.info.run_name.startswith("refined-")), None)
    if table1 is None:
        return []
    out = [("mnist_final", *_restored_ids(table1.info, table1.data.tags))]
    sweep = store.runs.parent_run_id(table1.info.run_id)
    if sweep:
        out.append(("mnist_sweep", sweep, table1.info.experiment_id, ""))
    flow_run = table1.data.tags.get(PREFECT_FLOW_RUN_TAG)
    refined = next(
        (
            r
            for r in finals
            if r.info.run_name.startswith("refined-")
            and r.data.tags.get(PREFECT_FLOW_RUN_TAG) == flow_run
        ),
        None,
    )
    if refined is not None:
        out.append(("mnist_refined", *_restored_ids(refined.info, refined.data.tags)))
        search = store.runs.parent_run_id(refined.info.run_id)
        if search:
            out.append(("mnist_refine", search, refined.info.experiment_id, ""))
    return out


def _restored_ids(info: Any, tags: Mapping[str, str]) -> tuple[str, str, str]:
    """(run id, experiment id, the run that trained it when the run is a restored model)."""
    return str(info.run_id), str(info.experiment_id), tags.get(TRAINED_RUN_TAG, "")


INPUTS_MARK = "<!-- report inputs: "


def write_report(
    params: Params,
    reports: Path = REPORTS,
    ui: str = MLFLOW_UI,
    not_run: Mapping[str, str] | None = None,
    inputs: str = "",
) -> Mapping[str, Path]:
    """Write REPORT.md, REPORT.html and the robustness figure under `reports`; returns their
    paths.

    Args:
        params: The study's parameters.
        reports: The reports folder.
        ui: The MLflow UI's address, for run links.
        not_run: Stages that could not run, and why (said in the report).
        inputs: A fingerprint of what the report was written from, kept in REPORT.md as a
            comment (`written_from` reads it back), when it is written outside `dvc repro`.
    """
    files = read_study(reports)
    links, note = run_links(files, params, ui)
    paths = {
        "markdown": reports / "REPORT.md",
        "html": reports / "REPORT.html",
        "robustness": reports / ROBUSTNESS_FIGURE,
    }
    # Before the text, which shows the figure only when its file is there.
    save_figure_atomic(study_robustness_figure(files), paths["robustness"], dpi=120)
    text = study_markdown(files, links, note, params.profile, not_run)
    if inputs:
        text += f"\n{INPUTS_MARK}{inputs} -->\n"
    write_text_atomic(paths["markdown"], text)
    write_text_atomic(paths["html"], study_html(text))
    return paths


def written_from(path: Path) -> str | None:
    """The inputs fingerprint `write_report` kept in REPORT.md at `path`, if any."""
    try:
        last = path.read_text(encoding="utf-8").rstrip().rsplit("\n", 1)[-1]
    except OSError:
        return None
    if not last.startswith(INPUTS_MARK):
        return None
    return last.removeprefix(INPUTS_MARK).removesuffix(" -->")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--reports", type=Path, default=REPORTS)
    parser.add_argument("--mlflow-ui", default=MLFLOW_UI, help="MLflow UI address for run links")
    args = parser.parse_args()
    paths = run_or_exit(
        lambda: write_report(load_params(args.params), args.reports, args.mlflow_ui)
    )
    print(f"wrote {paths['markdown']} and {paths['html']}")


if __name__ == "__main__":
    main()
