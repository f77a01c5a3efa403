from __future__ import annotations

import numpy as np
import pytest
from matplotlib.figure import Figure

from digits.metrics import classification_metrics, confusion_matrix_figure


def test_metrics_match_hand_computed_values() -> None:
    y_true = [0, 0, 0, 1, 1, 2]
    y_pred = [0, 0, 1, 1, 2, 2]
    m = classification_metrics(y_true, y_pred, labels=[0, 1, 2])

    # Per class: precision 2/2, 1/2, 1/2; recall 2/3, 1/2, 1/1.
    precision = [1.0, 0.5, 0.5]
    recall = [2 / 3, 0.5, 1.0]
    f1 = [2 * p * r / (p + r) for p, r in zip(precision, recall, strict=True)]
    assert m.accuracy == pytest.approx(4 / 6)
    assert m.precision_macro == pytest.approx(np.mean(precision))
    assert m.recall_macro == pytest.approx(np.mean(recall))
    assert m.f1_macro == pytest.approx(np.mean(f1))
    np.testing.assert_array_equal(m.confusion, [[2, 1, 0], [0, 1, 1], [0, 0, 1]])
    assert m.report["1"]["precision"] == pytest.approx(0.5)
    assert m.report["0"]["support"] == 3
    assert m.scalars()["accuracy"] == pytest.approx(4 / 6)


def test_default_labels_give_a_ten_by_ten_matrix() -> None:
    m = classification_metrics([3, 3, 7], [3, 7, 7])
    assert m.confusion.shape == (10, 10)
    assert m.confusion[3, 7] == 1
    assert m.confusion.sum() == 3


def test_confusion_matrix_figure_annotates_every_cell(tmp_path) -> None:
    cm = np.arange(100).reshape(10, 10)
    fig = confusion_matrix_figure(cm, "test")
    assert isinstance(fig, Figure)
    texts = {t.get_text() for t in fig.axes[0].texts}
    assert {"0", "57", "99"} <= texts
    fig.savefig(tmp_path / "cm.png")
    assert (tmp_path / "cm.png").stat().st_size > 0


@pytest.mark.parametrize(
    ("n", "classes", "labels"),
    [
        (500, 10, None),  # every class present
        (40, 10, None),  # few images: some classes never predicted or never true
        (300, 6, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]),  # classes 6-9 absent: zero division
        (300, 10, [4, 0, 7, 2]),  # labels outside the listed ones, in an unsorted order
    ],
)
def test_metrics_equal_scikit_learns(n: int, classes: int, labels: list[int] | None) -> None:
    from sklearn.metrics import (
        accuracy_score,
        classification_report,
        confusion_matrix,
        precision_recall_fscore_support,
    )

    rng = np.random.default_rng(n + classes)
    y_true = rng.integers(0, classes, n)
    # Mostly right, as a trained model is; the rest spread over every class.
    y_pred = np.where(rng.random(n) < 0.7, y_true, rng.integers(0, classes, n))
    expected_labels = np.arange(10) if labels is None else np.asarray(labels)
    m = classification_metrics(y_true, y_pred, labels=labels)

    precision, recall, f1, _ = precision_recall_fscore_support(
        y_true, y_pred, labels=expected_labels, average="macro", zero_division=0
    )
    assert m.accuracy == pytest.approx(accuracy_score(y_true, y_pred), abs=1e-15)
    assert m.precision_macro == pytest.approx(precision, abs=1e-15)
    assert m.recall_macro == pytest.approx(recall, abs=1e-15)
    assert m.f1_macro == pytest.approx(f1, abs=1e-15)
    np.testing.assert_array_equal(
        m.confusion, confusion_matrix(y_true, y_pred, labels=expected_labels)
    )
    report = classification_report(
        y_true,
        y_pred,
        labels=expected_labels,
        target_names=[str(c) for c in expected_labels],
        output_dict=True,
        zero_division=0,
    )
    assert m.report.keys() == report.keys()
    for key, row in report.items():
        assert m.report[key] == pytest.approx(row, abs=1e-15), key
