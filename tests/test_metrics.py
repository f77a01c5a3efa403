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
