"""Turn `TheoryResults` into reports/theory: report.md, the PNG figures and results.json.

Modules: `figures` (one `Figure` per plot), `numbers` (results.json, MLflow metrics), `markdown`.
"""

from __future__ import annotations

import json
from pathlib import Path

from digits.files import save_figure_atomic, write_text_atomic
from digits.reports.theory.figures import FIGURES, PLOTS
from digits.reports.theory.markdown import theory_markdown
from digits.reports.theory.numbers import flat_metrics, results_summary
from digits.studies.convexity import TheoryResults

__all__ = ["FIGURES", "flat_metrics", "results_summary", "theory_markdown", "write_report"]


def write_report(results: TheoryResults, out_dir: Path) -> list[Path]:
    """Write report.md, the figures and results.json into out_dir (created if missing), each
    file whole or not at all.

    Returns:
        The paths written, report.md first.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    figures = []
    for name, plot in PLOTS.items():
        path = out_dir / FIGURES[name]
        save_figure_atomic(plot(results), path, dpi=120)
        figures.append(path)
    report = out_dir / "report.md"
    write_text_atomic(report, theory_markdown(results))
    summary = out_dir / "results.json"
    write_text_atomic(summary, json.dumps(results_summary(results), indent=2))
    return [report, *figures, summary]
