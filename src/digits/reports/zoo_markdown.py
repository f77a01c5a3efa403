"""The classifier zoo's REPORT.md text, from measured numbers only (`zoo_markdown`).

`digits.reports.zoo` writes it beside the tables and figures.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from digits.reports.robustness import robustness_table
from digits.studies.svhn_zoo import (
    ORIGINAL_TABLE2,
    OUR_AUGMENTATION,
    ZooRow,
    dataset_name,
    findings,
    ranked,
)


def _relative(value: float, reference: float) -> str:
    return f"{value - reference:+.4f}"


def _markdown_table(header: Sequence[str], body: Sequence[Sequence[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
        *("| " + " | ".join(cells) + " |" for cells in body),
    ]


def _input_size(row: ZooRow) -> str:
    size = row.args.get("image_size")
    return f"{size}×{size}" if size else "native"


def _results_table(rows: Sequence[ZooRow]) -> list[str]:
    header = [
        "model",
        "architecture",
        "pretrained",
        "input",
        "accuracy",
        "precision",
        "recall",
        "F1",
        "parameters",
        "train acc.",
        "gap",
        "train s",
        "images/s",
        "epochs",
        "registered",
    ]
    body = [
        [
            r.label,
            r.model,
            "yes" if r.args.get("pretrained", False) else "no",
            _input_size(r),
            f"{r.accuracy:.4f}",
            f"{r.precision:.4f}",
            f"{r.recall:.4f}",
            f"{r.f1:.4f}",
            f"{r.parameters:,}",
            f"{r.train_accuracy:.4f}",
            f"{r.gap:+.4f}",
            f"{r.train_seconds:.1f}",
            f"{r.images_per_second:,.0f}",
            str(r.epochs),
            r.registered or "—",
        ]
        for r in ranked(rows)
    ]
    return _markdown_table(header, body)


def _original_table(rows: Sequence[ZooRow], synthetic: bool, augmentation: str) -> list[str]:
    """Table 2 of the original study next to every model of ours, best first."""
    o = ORIGINAL_TABLE2
    order = ranked(rows)
    header = ["", "model", "input", "augmentation", "accuracy", "precision", "recall", "F1"]
    body = [
        [
            "original study",
            o["model"],
            f"{o['image_size']}×{o['image_size']}",
            o["augmentation"],
            *(f"{o[k]:.4f}" for k in ("accuracy", "precision", "recall", "f1")),
        ]
    ]
    body += [
        [
            "this project",
            r.label,
            _input_size(r),
            augmentation,
            f"{r.accuracy:.4f}",
            f"{r.precision:.4f}",
            f"{r.recall:.4f}",
            f"{r.f1:.4f}",
        ]
        for r in order
    ]
    lines = [
        "### Against the original study (Table 2)",
        "",
        *_markdown_table(header, body),
        "",
        "Precision, recall and F1 are macro averages over the ten classes.",
    ]
    same = [r for r in rows if r.model == "resnet101"]
    if same:
        ours = same[0]
        lines.append(
            f"Our {ours.label} against the original ResNet-101: accuracy "
            f"{_relative(ours.accuracy, o['accuracy'])}, F1 {_relative(ours.f1, o['f1'])}."
        )
    best = order[0]
    if best.model != "resnet101":
        lines.append(
            f"Our best model ({best.label}) against the original ResNet-101: accuracy "
            f"{_relative(best.accuracy, o['accuracy'])}, F1 {_relative(best.f1, o['f1'])}."
        )
    if synthetic:
        lines.append(
            "These differences compare generated images with real SVHN: they mean nothing."
        )
    return lines


def zoo_markdown(
    dataset: str,
    rows: Sequence[ZooRow],
    figures: Mapping[str, str],
    synthetic: bool,
    profile: str,
    augmentation: str = OUR_AUGMENTATION,
) -> str:
    """REPORT.md's text: which model suits `dataset` and why, from the measured numbers only.

    Args:
        dataset: "svhn" or "mnist"; the original study's Table 2 is shown for "svhn" only.
        rows: One per model.
        figures: Caption -> path relative to REPORT.md.
        synthetic: The images were generated, not the real data set: a warning heads the text.
        profile: The params.yaml profile the run used.
        augmentation: How our models' training images were augmented, for the Table 2 comparison.
    """
    name = dataset_name(dataset)
    lines = [f"## Classifier zoo on {name}: which model suits it and why", ""]
    if synthetic:
        lines += [
            f"**Warning: trained on generated {name}-format images, not real {name}: "
            f"the numbers say nothing about {name}.**",
            "",
        ]
    lines += [
        f"{len(rows)} model{'s' if len(rows) != 1 else ''}, profile `{profile}`, scored once on "
        "the test set after training on every training image. The gap is train minus test "
        "accuracy.",
        "",
        *findings(rows, dataset),
        "",
        *_results_table(rows),
        "",
    ]
    if dataset == "svhn":
        lines += [*_original_table(rows, synthetic, augmentation), ""]
    robust = {r.label: r.robustness for r in ranked(rows) if r.robustness}
    if robust:
        lines += [
            "### Robustness",
            "",
            "Test accuracy on changed copies of the test set (`digits.robustness`); `clean` is "
            "the test set unchanged.",
            "",
            robustness_table(robust),
        ]
    lines += ["### Figures", ""]
    for caption, path in figures.items():
        lines += [f"![{caption}]({path})", ""]
    return "\n".join(lines)
