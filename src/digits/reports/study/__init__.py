"""The study report: the original's four questions answered from this run's files, with provenance.

`read_study` gathers what the stages wrote under `reports/` (each part may be missing: a stage not
run yet is said so, not a crash); `study_markdown` writes `REPORT.md`'s text from it, each figure
and table next to the MLflow run it came from (given by the caller, which reads the tracking
store); `study_html` renders that text as a standalone page. Pure functions of files and values.

Modules: `files` (reading reports/, markdown pieces), `questions` (Q1-Q3, the data), `zoo` (Q4),
`robustness` (every registered model on changed test sets, and Q4's claim judged on them).
"""

from __future__ import annotations

from collections.abc import Mapping

from digits.reports.study.files import (
    RunLink,
    StudyFiles,
    figure_lines,
    read_study,
    source_line,
)
from digits.reports.study.questions import (
    THEORY_FIGURES,
    q1_section,
    q2_section,
    q3_section,
    validation_section,
)
from digits.reports.study.robustness import (
    ROBUSTNESS_FIGURE,
    robustness_section,
    study_robustness_figure,
)
from digits.reports.study.zoo import q4_section, zoo_rows

__all__ = [
    "ROBUSTNESS_FIGURE",
    "RunLink",
    "StudyFiles",
    "read_study",
    "study_html",
    "study_markdown",
    "study_robustness_figure",
    "zoo_rows",
]


def study_markdown(
    files: StudyFiles,
    links: Mapping[str, RunLink],
    store: str,
    profile: str,
    not_run: Mapping[str, str] | None = None,
) -> str:
    """REPORT.md's text.

    Args:
        files: What the stages wrote (`read_study`).
        links: MLflow runs by key: "theory", "mnist_sweep", "mnist_final", and each zoo row's
            and robustness row's run id.
        store: One sentence on the MLflow store the runs were looked up in (or its absence).
        profile: The params.yaml profile of this run.
        not_run: Stages that could not run (stage -> why, e.g. "was skipped: `pull@svhn`
            failed: ..."), said at the top and where their results would be.
    """
    store_note = "not found in the store"
    lines = [
        "# The study, answered",
        "",
        f"Profile `{profile}`. Every figure below is read from the files the DVC stages wrote "
        "under `reports/`, and named with the MLflow run that recorded it (the link opens it "
        f"in the MLflow UI, `make ui`). {store}",
        "",
        *not_run_section(not_run or {}),
        *q1_section(files, links.get("theory"), store_note),
        *q2_section(files, links.get("theory"), store_note),
        *figure_lines(
            files, THEORY_FIGURES, source_line("theory", links.get("theory"), store_note)
        ),
        *q3_section(files, links, store_note),
        *q4_section(files, links, store_note, not_run),
        *robustness_section(files, links, store_note),
        *validation_section(files),
    ]
    return "\n".join(lines).rstrip() + "\n"


def not_run_section(not_run: Mapping[str, str]) -> list[str]:
    """The stages that could not run, each with why, or nothing when every stage ran."""
    if not not_run:
        return []
    return [
        "## What could not run",
        "",
        "The last `make study` could not run these stages; the rest of this report is from the "
        "stages that did (`make study` prints each stage's whole error):",
        "",
        *(f"- `{stage}` {why}." for stage, why in not_run.items()),
        "",
    ]


def study_html(markdown_text: str, title: str = "The study, answered") -> str:
    """A standalone HTML page of `markdown_text` (tables included; images stay relative links)."""
    import markdown

    body = markdown.markdown(markdown_text, extensions=["tables"], output_format="html")
    style = (
        "body{font-family:system-ui,sans-serif;max-width:60em;margin:2em auto;padding:0 1em;"
        "line-height:1.5}table{border-collapse:collapse;margin:1em 0}"
        "th,td{border:1px solid #ccc;padding:.25em .6em;text-align:left}"
        "img{max-width:100%}code{background:#f4f4f4;padding:0 .2em}"
    )
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{title}</title>\n<style>{style}</style>\n</head>\n<body>\n{body}\n</body>\n"
        "</html>\n"
    )
