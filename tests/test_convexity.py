"""Convexity probes: they tell known convex from known non-convex functions, and give the expected
answers for logistic regression and linear networks on small synthetic data."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from digits.config import TheoryConfig
from digits.reports.theory import FIGURES, write_report
from digits.studies.convexity import (
    LinearNetwork,
    TheoryResults,
    gradient_descent,
    gradient_vs_logit,
    hessian_eigenvalues,
    hessian_min_eigenvalues,
    linear_network_loss,
    logistic_loss,
    midpoint_violations,
    random_restarts,
    run_theory,
    sign_flip_violation,
    softmax_loss,
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """Tiny problems: intra-op threads only add synchronisation cost (as in `run_theory`)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def binary_data() -> tuple[torch.Tensor, torch.Tensor]:
    """60 points in 3 dims plus a bias column; labels from a noisy linear rule (not separable)."""
    g = _generator(1)
    features = torch.randn(60, 3, generator=g, dtype=torch.float64)
    x = torch.cat([features, torch.ones(60, 1, dtype=torch.float64)], dim=1)
    noise = 0.8 * torch.randn(60, generator=g, dtype=torch.float64)
    y = (features[:, 0] - features[:, 1] + noise > 0).to(torch.float64)
    return x, y


@pytest.fixture(scope="module")
def multiclass_data() -> tuple[torch.Tensor, torch.Tensor]:
    """60 points in 3 dims plus a bias column, 3 classes."""
    g = _generator(2)
    features = torch.randn(60, 3, generator=g, dtype=torch.float64)
    x = torch.cat([features, torch.ones(60, 1, dtype=torch.float64)], dim=1)
    return x, features.argmax(dim=1)


# ----------------------------------------------------------------------------- the probes


def test_probes_find_no_violation_for_a_convex_function() -> None:
    def squared_norm(t: torch.Tensor) -> torch.Tensor:
        return (t * t).sum()

    hessian = hessian_min_eigenvalues(squared_norm, 4, 10, 1.0, _generator())
    midpoint = midpoint_violations(squared_norm, 4, 50, 1.0, _generator())
    assert hessian.n_negative == 0
    np.testing.assert_allclose(hessian.min_eig, 2.0)  # Hessian of ||t||^2 is 2 I
    assert midpoint.n_violations == 0
    assert midpoint.worst_excess < 0


@pytest.mark.parametrize(
    "fn",
    [lambda t: -(t * t).sum(), lambda t: torch.sin(t).sum()],
    ids=["negative-square", "sine"],
)
def test_probes_detect_a_nonconvex_function(fn) -> None:
    hessian = hessian_min_eigenvalues(fn, 4, 10, 2.0, _generator())
    midpoint = midpoint_violations(fn, 4, 50, 2.0, _generator())
    assert hessian.n_negative > 0
    assert midpoint.n_violations > 0
    loss_a, loss_b, loss_mid = midpoint.worst_values
    assert loss_mid - (loss_a + loss_b) / 2 == pytest.approx(midpoint.worst_excess)
    assert midpoint.worst_excess > 0


def test_concave_function_violates_everywhere() -> None:
    # -||t||^2 is strictly concave: every point and every segment must be flagged.
    hessian = hessian_min_eigenvalues(lambda t: -(t * t).sum(), 3, 8, 1.0, _generator())
    midpoint = midpoint_violations(lambda t: -(t * t).sum(), 3, 30, 1.0, _generator())
    assert hessian.fraction_negative == 1.0
    assert midpoint.n_violations == 30


# ----------------------------------------------------------------------------- question 1


def _probe_logistic(model: str, loss: str, binary_data, multiclass_data):  # type: ignore[no-untyped-def]
    """Hessian and midpoint probes of binary or 3-class logistic regression under `loss`."""
    if model == "binary":
        x, y = binary_data
        loss_fn, dim = logistic_loss(x, y, loss), 4
    else:
        x, y = multiclass_data
        loss_fn, dim = softmax_loss(x, y, loss, n_classes=3), 12
    hessian = hessian_min_eigenvalues(loss_fn, dim, 20, 3.0, _generator())
    midpoint = midpoint_violations(loss_fn, dim, 200, 3.0, _generator())
    return hessian, midpoint


@pytest.mark.parametrize("model", ["binary", "softmax"])
def test_cross_entropy_of_logistic_regression_shows_no_violation(
    model: str, binary_data, multiclass_data
) -> None:
    hessian, midpoint = _probe_logistic(model, "ce", binary_data, multiclass_data)
    assert hessian.n_negative == 0
    assert midpoint.n_violations == 0


@pytest.mark.parametrize("model", ["binary", "softmax"])
def test_mse_of_logistic_regression_violates(model: str, binary_data, multiclass_data) -> None:
    hessian, midpoint = _probe_logistic(model, "mse", binary_data, multiclass_data)
    assert hessian.n_negative > 0
    assert midpoint.n_violations > 0


def test_cross_entropy_restarts_reach_one_minimiser(binary_data) -> None:
    x, y = binary_data
    result = random_restarts(
        logistic_loss(x, y, "ce"), 4, 4, 3.0, 200, 0.5, _generator(), optimizer="lbfgs"
    )
    assert result.loss_range < 1e-10
    assert result.weight_spread < 1e-5
    assert result.final_grad_norms.max() < 1e-6


def test_mse_gradient_vanishes_when_confidently_wrong() -> None:
    grads = gradient_vs_logit(torch.tensor([-10.0, 0.0, 10.0], dtype=torch.float64))
    # class 1 at logit -10: CE's gradient sigma - 1 is about -1, MSE's 2(sigma-1)sigma(1-sigma) ~ 0
    assert grads["ce"][0] == pytest.approx(1.0, abs=1e-4)
    assert grads["mse"][0] < 1e-3
    assert grads["mse"][1] == pytest.approx(0.25)  # 2 * 0.5 * 0.5 * 0.5 at z = 0


# ----------------------------------------------------------------------------- question 2


@pytest.mark.parametrize("loss", ["ce", "mse"])
@pytest.mark.parametrize("widths", [(4, 2, 3), (4, 2, 2, 3)], ids=["W2W1", "W3W2W1"])
def test_linear_network_sign_flip_violates_convexity(loss, widths, multiclass_data) -> None:
    x, y = multiclass_data
    network = LinearNetwork(widths)
    loss_fn = linear_network_loss(x, y, loss, network)
    start = 0.5 * torch.randn(network.dim, generator=_generator(), dtype=torch.float64)
    trained, _ = gradient_descent(loss_fn, start, 200, 0.5)
    signs = network.sign_flip((0, 1))

    result = sign_flip_violation(loss_fn, trained, signs)

    # the flipped copy computes the same function, so the same loss
    assert result.loss_b == pytest.approx(result.loss_a, rel=1e-12)
    assert result.violates
    assert result.loss_mid > result.loss_a
    mid = (trained + signs * trained) / 2  # W1 = W2 = 0
    assert network.layers(mid)[0].abs().max() == 0
    smallest, largest = hessian_eigenvalues(loss_fn, mid.unsqueeze(0))
    assert smallest[0] < -1e-3 * largest[0]  # a saddle, not a minimum
    if len(widths) == 3:  # two layers at (0, 0): eigenvalues +-s_i, a symmetric spectrum
        assert smallest[0] == pytest.approx(-largest[0])


def test_sign_flip_of_a_convex_model_is_no_violation(binary_data) -> None:
    # the probe itself must not always report a violation: for logistic CE, L(-w) differs
    # from L(w) and the midpoint 0 lies below the chord
    x, y = binary_data
    loss_fn = logistic_loss(x, y, "ce")
    w = torch.tensor([1.0, -1.0, 0.5, 0.2], dtype=torch.float64)
    result = sign_flip_violation(loss_fn, w, -torch.ones(4, dtype=torch.float64))
    assert not result.violates


# ----------------------------------------------------------------------------- the study


def _tiny_images(n: int = 400, seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """(n, 8, 8, 1) uint8 images: a bright class-dependent pixel pattern plus noise."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 10
    patterns = rng.uniform(0, 200, size=(10, 8, 8, 1))
    images = patterns[labels] + rng.uniform(0, 55, size=(n, 8, 8, 1))
    return images.astype(np.uint8), labels.astype(np.int64)


@pytest.fixture(scope="module")
def tiny_results() -> TheoryResults:
    images, labels = _tiny_images()
    cfg = TheoryConfig(
        n_samples=60, pca_dims=3, hidden=2, n_points=4, n_segments=40, n_starts=2, epochs=60
    )
    messages: list[str] = []
    results = run_theory(images, labels, cfg, seed=0, progress=messages.append)
    assert messages  # progress was reported
    return results


@pytest.mark.slow
def test_run_theory_derives_the_verdicts(tiny_results: TheoryResults) -> None:
    verdicts = {v.question: v for v in tiny_results.verdicts}
    assert set(verdicts) == {1, 2}
    assert verdicts[1].convex["ce"]
    assert not verdicts[2].convex["ce"] and not verdicts[2].convex["mse"]
    assert verdicts[2].answer == "neither"
    assert len(tiny_results.probes) == 8
    assert all(s.result.violates for s in tiny_results.sign_flips)
    # verdicts follow the measurements, not a fixed answer
    q1_mse = [p for p in tiny_results.probes if p.question == 1 and p.loss == "mse"]
    assert verdicts[1].convex["mse"] == (not any(p.violation_found for p in q1_mse))


@pytest.mark.slow
def test_write_report_writes_markdown_figures_and_numbers(
    tiny_results: TheoryResults, tmp_path: Path
) -> None:
    paths = write_report(tiny_results, tmp_path / "theory")

    report = tmp_path / "theory" / "report.md"
    assert paths[0] == report
    text = report.read_text()
    assert "Verdict" in text and "Question 2" in text
    for name in FIGURES.values():
        png = tmp_path / "theory" / name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({name})" in text  # embedded by relative path
    numbers = json.loads((tmp_path / "theory" / "results.json").read_text())
    assert numbers["verdicts"]["q2"]["answer"] == "neither"
    assert len(numbers["sign_flips"]) == 4
