"""The study report: the original's four questions answered from this run's files, with provenance.

`read_study` gathers what the stages wrote under `reports/` (each part may be missing: a stage not
run yet is said so, not a crash); `study_markdown` writes `REPORT.md`'s text from it, each figure
and table next to the MLflow run it came from (given by the caller, which reads the tracking
store); `study_html` renders that text as a standalone page. Pure functions of files and values.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from digits.reports.mnist import ORIGINAL_TABLE1, ORIGINAL_TEST_ACCURACY
from digits.studies.svhn_zoo import ORIGINAL_TABLE2, ZooRow, findings

DATASETS = ("mnist", "svhn")
ZOO_DATASETS = ("svhn", "mnist")
THEORY_FIGURES = {
    "Smallest Hessian eigenvalue at random points (Q1)": "theory/hessian_min_eig.png",
    "Loss along the worst segment (Q1)": "theory/slices_logistic.png",
    "Random starts (Q1)": "theory/restarts.png",
    "Gradient against logit (Q1)": "theory/gradient_vs_logit.png",
    "Training from a confidently wrong start (Q1)": "theory/bad_start.png",
    "Sign flip of a linear network (Q2)": "theory/sign_flip.png",
}
MNIST_FIGURES = {
    "Mean CV accuracy per Table 1 cell": "mnist/figures/cv_accuracy.png",
    "Learning curve of the final model": "mnist/figures/learning_curve.png",
    "Confusion matrix of the final model on the test set": "mnist/figures/confusion_matrix.png",
}
ZOO_FIGURES = {
    "Test accuracy vs parameters": "figures/accuracy_vs_parameters.png",
    "Train vs test accuracy": "figures/gap.png",
    "Learning curves": "figures/learning_curves.png",
}


@dataclass(frozen=True)
class RunLink:
    """Where a result was recorded: an MLflow run id, and its page in the MLflow UI ("" if none)."""

    run_id: str
    url: str = ""

    def markdown(self) -> str:
        short = f"`{self.run_id[:12]}`"
        return f"[{short}]({self.url})" if self.url else short


@dataclass
class StudyFiles:
    """What the stages wrote under `reports/`; None where a stage has not run (or failed)."""

    root: Path
    theory: dict[str, Any] | None = None
    mnist: dict[str, Any] | None = None
    tuning: pd.DataFrame | None = None
    zoo: dict[str, pd.DataFrame | None] = field(default_factory=dict)
    zoo_meta: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    validation: dict[str, dict[str, Any] | None] = field(default_factory=dict)

    def exists(self, relative: str) -> bool:
        return (self.root / relative).is_file()


def _json(path: Path) -> dict[str, Any] | None:
    try:
        content = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return content if isinstance(content, dict) else None


def _csv(path: Path) -> pd.DataFrame | None:
    try:
        return pd.read_csv(path)
    except (OSError, ValueError):
        return None


def read_study(root: Path) -> StudyFiles:
    """The study's outputs under `root` (the `reports/` folder); missing or unreadable ones None."""
    files = StudyFiles(root=root)
    files.theory = _json(root / "theory" / "results.json")
    files.mnist = _json(root / "mnist" / "metrics.json")
    files.tuning = _csv(root / "mnist" / "tuning.csv")
    for dataset in ZOO_DATASETS:
        files.zoo[dataset] = _csv(root / dataset / "comparison.csv")
        files.zoo_meta[dataset] = _json(root / dataset / "zoo" / "metrics.json")
    for dataset in DATASETS:
        files.validation[dataset] = _json(root / "validation" / dataset / "summary.json")
    return files


# ----------------------------------------------------------------------------- pieces


def _table(header: Sequence[str], body: Sequence[Sequence[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
        *("| " + " | ".join(cells) + " |" for cells in body),
    ]


def _figures(files: StudyFiles, figures: Mapping[str, str], source: str) -> list[str]:
    lines = []
    for caption, path in figures.items():
        if files.exists(path):
            lines += [f"![{caption}]({path})", "", f"*{caption}.* {source}", ""]
        else:
            lines += [f"*{caption}: `{path}` not written yet.*", ""]
    return lines


def _source(what: str, link: RunLink | None, note: str) -> str:
    return f"Source: {what}; MLflow run: {link.markdown() if link else note}."


def _missing(stage: str, path: str) -> list[str]:
    return [f"**Not available yet:** `{path}` is missing; run `dvc repro {stage}`.", ""]


def _theory_probe(files: StudyFiles, question: int, loss: str) -> dict[str, Any] | None:
    assert files.theory is not None
    return next(
        (
            p
            for p in files.theory.get("probes", [])
            if p.get("question") == question and p.get("loss") == loss
        ),
        None,
    )


def _q1(files: StudyFiles, link: RunLink | None, note: str) -> list[str]:
    lines = ["## Q1. Is the loss of logistic regression convex: cross-entropy or MSE?", ""]
    if files.theory is None:
        return lines + _missing("theory", "reports/theory/results.json")
    verdict = files.theory["verdicts"]["q1"]
    lines += [f"**Answer: {verdict['answer']}** is convex in the weights.", ""]
    body = []
    for loss, name in (("ce", "cross-entropy"), ("mse", "MSE")):
        probe = _theory_probe(files, 1, loss)
        if probe is None:
            continue
        body.append(
            [
                str(probe["model"]),
                name,
                f"{probe['hessian_min_eig']:.3g}",
                f"{probe['hessian_negative']}/{probe['hessian_points']}",
                f"{probe['midpoint_violations']}/{probe['midpoint_segments']}",
                "yes" if verdict["convex"][loss] else "no",
            ]
        )
    header = ["model", "loss", "min Hessian eig", "points with eig < 0", "midpoint violations"]
    lines += [*_table([*header, "convex"], body), ""]
    bad = files.theory.get("bad_start")
    if bad:
        lines += [
            "From a confidently wrong start, gradient descent moves test accuracy from "
            f"{bad['ce']['accuracy_start']:.3f} to {bad['ce']['accuracy_end']:.3f} with "
            f"cross-entropy and from {bad['mse']['accuracy_start']:.3f} to "
            f"{bad['mse']['accuracy_end']:.3f} with MSE: the MSE gradient vanishes where the "
            "sigmoid saturates on the wrong side (initial gradient norm "
            f"{bad['ce']['grad_norm_start']:.3g} against {bad['mse']['grad_norm_start']:.3g}).",
            "",
        ]
    lines += [
        "Why: with logits z = Wx, cross-entropy is log-sum-exp(z) minus a linear term, whose "
        "Hessian is a sum of positive semi-definite terms for any data; MSE on a sigmoid has "
        "negative curvature wherever the prediction is on the wrong side (σ < 1/3 for a "
        "positive example). One measured violation proves MSE non-convex.",
        "",
        _source("`reports/theory/results.json`, `reports/theory/report.md`", link, note),
        "",
    ]
    return lines


def _q2(files: StudyFiles, link: RunLink | None, note: str) -> list[str]:
    lines = [
        "## Q2. With a hidden layer and linear activations, which loss gives a convex problem?",
        "",
    ]
    if files.theory is None:
        return lines + _missing("theory", "reports/theory/results.json")
    verdict = files.theory["verdicts"]["q2"]
    convex = verdict["convex"]
    if not convex["ce"] and not convex["mse"]:
        answer = "(d), neither: no choice of loss guarantees a convex problem"
    else:  # the measurement disagrees with the argument below: say what was measured
        answer = f"measured convex: {verdict['answer']}"
    lines += [
        f"**Answer: {answer}.** The original study answered MSE; that is wrong: the sign flip "
        "below is a measured violation of convexity for MSE.",
        "",
    ]
    body = [
        [
            str(flip["model"]),
            "cross-entropy" if flip["loss"] == "ce" else "MSE",
            f"{flip['loss_trained']:.4f}",
            f"{flip['loss_flipped']:.4f}",
            f"{flip['loss_midpoint']:.4f}",
            f"{flip['midpoint_hessian_min_eig']:.3g} / {flip['midpoint_hessian_max_abs_eig']:.3g}",
        ]
        for flip in files.theory.get("sign_flips", [])
    ]
    header = ["network", "loss", "L(θ)", "L(−W1, −W2)", "L(midpoint)", "Hessian eig min / max"]
    lines += [
        "A trained network and its copy with W1 and W2 negated make the same predictions, so "
        "they have the same loss; their midpoint has W1 = W2 = 0, predicts nothing and has a "
        "higher loss. A convex loss would be at most the common value there:",
        "",
        *_table(header, body),
        "",
        "Why the original's MSE is wrong: either loss is convex (cross-entropy) or not "
        "(MSE on a softmax) in the end-to-end matrix W = W2 W1, but the map (W1, W2) ↦ W2 W1 is "
        "bilinear, not affine, and convexity survives composition only with affine maps. Along "
        "(W1, W2) → (−W1, −W2) the product is (1 − 2t)² W2 W1, which shrinks to zero and grows "
        "back, so the loss rises and falls for MSE exactly as for cross-entropy; at (0, 0) the "
        "Hessian has eigenvalues ±s (a saddle). No choice of loss makes the problem convex in "
        "the parameters.",
        "",
        _source("`reports/theory/results.json`", link, note),
        "",
    ]
    return lines


def _q3(files: StudyFiles, links: Mapping[str, RunLink], note: str) -> list[str]:
    lines = [
        "## Q3. A dense network on MNIST: activation × width, and its test accuracy "
        "(the original's Table 1)",
        "",
    ]
    if files.mnist is None or files.tuning is None:
        return lines + _missing("tune_mnist", "reports/mnist/metrics.json")
    tuning = files.tuning
    body = []
    for (activation, width), original in ORIGINAL_TABLE1.items():
        cell = tuning[(tuning["activation"] == activation) & (tuning["width"] == width)]
        if cell.empty:
            ours = "not run"
        else:
            row = cell.iloc[0]
            ours = f"{row['mean_cv_accuracy']:.4f} ± {row['std_cv_accuracy']:.4f}"
        body.append([activation, str(width), f"{original:.4f}", ours])
    lines += [
        "Mean cross-validated accuracy per cell, the original's figure beside ours "
        f"({files.mnist.get('profile', '?')} profile, {files.mnist.get('trials', '?')} "
        f"configurations; {files.mnist.get('cells_beating_original', 0)} of "
        f"{files.mnist.get('cells_in_original_table', 0)} cells beat the original):",
        "",
        *_table(["activation", "width", "original", "this run (mean ± std)"], body),
        "",
    ]
    best, test = files.mnist.get("best", {}), files.mnist.get("test", {})
    lines += [
        f"Best configuration: **{best.get('name', '?')}** (mean CV accuracy "
        f"{best.get('mean_cv_accuracy', float('nan')):.4f}), retrained on all "
        f"{files.mnist.get('train_images', '?')} training images and tested once:",
        "",
        *_table(
            ["", "accuracy", "precision", "recall", "F1"],
            [
                ["original study", f"{ORIGINAL_TEST_ACCURACY:.4f}", "—", "—", "—"],
                [
                    "this run",
                    *(f"{test.get(k, float('nan')):.4f}" for k in ("accuracy", "precision")),
                    *(f"{test.get(k, float('nan')):.4f}" for k in ("recall", "f1")),
                ],
            ],
        ),
        "",
        "Precision, recall and F1 are macro averages over the ten digits.",
        "",
        _source("`reports/mnist/tuning.csv`", links.get("mnist_sweep"), note),
        "",
        _source("`reports/mnist/metrics.json`", links.get("mnist_final"), note),
        "",
        *_figures(files, MNIST_FIGURES, _source("tune_mnist", links.get("mnist_final"), note)),
    ]
    return lines


def zoo_rows(table: pd.DataFrame) -> list[ZooRow]:
    """The rows of a `comparison.csv` back as `ZooRow`s (the arguments it records)."""
    rows = []
    for record in table.to_dict(orient="records"):
        args: dict[str, Any] = {}
        for key in ("pretrained", "image_size", "stem"):
            value = record.get(key)
            if value is not None and not (isinstance(value, float) and pd.isna(value)):
                args[key] = value
        rows.append(
            ZooRow(
                label=str(record["model"]),
                model=str(record["architecture"]),
                args=args,
                accuracy=float(record["accuracy"]),
                precision=float(record["precision"]),
                recall=float(record["recall"]),
                f1=float(record["f1"]),
                train_accuracy=float(record["train_accuracy"]),
                parameters=int(record["parameters"]),
                train_seconds=float(record["train_seconds"]),
                images_per_second=float(record["images_per_second"]),
                epochs=int(record["epochs"]),
                registered=str(record.get("registered") or ""),
                run_id=str(record.get("run_id") or ""),
            )
        )
    return rows


def _q4(files: StudyFiles, links: Mapping[str, RunLink], note: str) -> list[str]:
    lines = [
        "## Q4. Which pretrained classifier suits SVHN, and why? (the original's Table 2)",
        "",
    ]
    o = ORIGINAL_TABLE2
    original_row = [
        "original study",
        o["model"],
        *(f"{o[k]:.4f}" for k in ("accuracy", "precision", "recall", "f1")),
        "—",
        "—",
    ]
    for dataset in ZOO_DATASETS:
        table = files.zoo.get(dataset)
        name = dataset.upper() if dataset == "svhn" else "MNIST"
        lines += [f"### The zoo on {name}", ""]
        if table is None or table.empty:
            lines += _missing(f"train_zoo@{dataset}", f"reports/{dataset}/comparison.csv")
            if dataset == "svhn":
                lines += [
                    "The original's Table 2, for when it has run:",
                    "",
                    *_table(
                        ["", "model", "accuracy", "precision", "recall", "F1", "gap", "run"],
                        [original_row],
                    ),
                    "",
                ]
            continue
        meta = files.zoo_meta.get(dataset) or {}
        if meta.get("synthetic"):
            lines += [
                f"**Warning: generated {name}-format images, not real {name}; these numbers "
                "say nothing about the question.**",
                "",
            ]
        rows = zoo_rows(table)
        ranked = sorted(rows, key=lambda r: (-r.accuracy, -r.f1, r.parameters))
        body = [
            [
                "this run",
                r.label,
                *(f"{v:.4f}" for v in (r.accuracy, r.precision, r.recall, r.f1)),
                f"{r.gap:+.4f}",
                links[r.run_id].markdown() if r.run_id in links else note,
            ]
            for r in ranked
        ]
        if dataset == "svhn":
            body.insert(0, original_row)
        header = ["", "model", "accuracy", "precision", "recall", "F1", "gap", "MLflow run"]
        lines += [*_table(header, body), ""]
        detail = [
            [
                r.label,
                f"{r.parameters:,}",
                str(r.depth) if r.depth is not None else "?",
                f"{r.train_seconds:.1f}",
                f"{r.images_per_second:,.0f}",
                r.registered or "—",
            ]
            for r in ranked
        ]
        lines += [
            *_table(
                ["model", "parameters", "weight layers", "train s", "images/s", "registered"],
                detail,
            ),
            "",
            *findings(rows, dataset),
            "",
            f"Source: `reports/{dataset}/comparison.csv`; the zoo's own report: "
            f"[`{dataset}/zoo/REPORT.md`]({dataset}/zoo/REPORT.md) (per-model confusion matrices).",
            "",
            *_figures(
                files,
                {
                    f"{caption} ({name})": f"{dataset}/zoo/{path}"
                    for caption, path in ZOO_FIGURES.items()
                },
                "Source: the runs in the table above.",
            ),
        ]
    return lines


def _validation(files: StudyFiles) -> list[str]:
    lines = ["## The data: validation summary", ""]
    body = []
    for dataset in DATASETS:
        summary = files.validation.get(dataset)
        if summary is None:
            body.append([dataset, "not validated yet", "—", "—", "—", "—"])
            continue
        counts = summary.get("counts", {})
        body.append(
            [
                dataset,
                "passed"
                if summary.get("success")
                else "FAILED: " + ", ".join(str(f) for f in summary.get("failed", [])),
                "yes" if summary.get("synthetic") else "no",
                str(counts.get("train", {}).get("images", "?")),
                str(counts.get("test", {}).get("images", "?")),
                str(summary.get("cross_split_duplicates", "?")),
            ]
        )
    header = ["data set", "Great Expectations suite", "synthetic", "train", "test", "dupl."]
    lines += [
        *_table(header, body),
        "",
        "dupl.: test images identical to a training image. Per-check results: "
        "`reports/validation/<dataset>/summary.json` and the Data Docs beside it.",
        "",
    ]
    return lines


def study_markdown(
    files: StudyFiles,
    links: Mapping[str, RunLink],
    store: str,
    profile: str,
) -> str:
    """REPORT.md's text.

    Args:
        files: What the stages wrote (`read_study`).
        links: MLflow runs by key: "theory", "mnist_sweep", "mnist_final", and each zoo row's
            run id.
        store: One sentence on the MLflow store the runs were looked up in (or its absence).
        profile: The params.yaml profile of this run.
    """
    store_note = "not found in the store"
    lines = [
        "# The study, answered",
        "",
        f"Profile `{profile}`. Every figure below is read from the files the DVC stages wrote "
        "under `reports/`, and named with the MLflow run that recorded it (the link opens it "
        f"in the MLflow UI, `make ui`). {store}",
        "",
        *_q1(files, links.get("theory"), store_note),
        *_q2(files, links.get("theory"), store_note),
        *_figures(files, THEORY_FIGURES, _source("theory", links.get("theory"), store_note)),
        *_q3(files, links, store_note),
        *_q4(files, links, store_note),
        *_validation(files),
    ]
    return "\n".join(lines).rstrip() + "\n"


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
