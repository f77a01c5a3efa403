"""Is a loss convex in the weights? Measured with exact Hessians, midpoint checks and restarts.

Every loss here is a function of one flat float64 parameter vector, so `torch.func` gives its exact
Hessian. The inputs of every model end in a constant 1 (see `reduce_inputs`), so biases are weights
of the first layer and a linear network f(x) = W_L ... W_1 x realises any affine map of
bounded rank; flipping the sign of two of its layers leaves f, and so the loss, unchanged.

A found violation (a negative Hessian eigenvalue, a midpoint above its chord) proves non-convexity;
finding none is evidence of convexity, not a proof, which is why the report states the argument too.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.decomposition import PCA
from torch import Tensor

from digits.config import TheoryConfig

LossName = Literal["ce", "mse"]
LossFn = Callable[[Tensor], Tensor]
Progress = Callable[[str], None]

LOSSES: tuple[LossName, LossName] = ("ce", "mse")
LOSS_LABELS: dict[str, str] = {"ce": "cross-entropy", "mse": "MSE"}
N_CLASSES = 10
# An eigenvalue counts as negative only below -EIG_RTOL * max|eig| at that point: float64
# rounding in an exact Hessian of a convex loss stays many orders of magnitude above this.
EIG_RTOL = 1e-10
# A midpoint counts as above its chord only by more than MIDPOINT_RTOL * max(1, chord value).
MIDPOINT_RTOL = 1e-9
# The L2 term that makes the cross-entropy minimiser unique (the pair is linearly separable, so
# without it the weights grow without bound); applied to both losses in the restarts.
RESTART_L2 = 1e-3


# ----------------------------------------------------------------------------- data


def reduce_inputs(images: Tensor, dims: int) -> Tensor:
    """Flatten images, project on `dims` whitened principal components, append a constant 1.

    Args:
        images: (N, ...) pixel values, any dtype.
        dims: number of principal components kept (at most N and the number of pixels).

    Returns:
        (N, dims + 1) float64: unit-variance components, then a column of ones.
    """
    flat = images.reshape(images.shape[0], -1).to(torch.float64).numpy()
    components = PCA(n_components=dims, whiten=True, svd_solver="full").fit_transform(flat)
    ones = np.ones((flat.shape[0], 1))
    return torch.from_numpy(np.hstack([components, ones]))


# ----------------------------------------------------------------------------- losses


def _binary_loss(logits: Tensor, y: Tensor, loss: LossName) -> Tensor:
    # logits (N,), y (N,) in {0, 1}
    if loss == "ce":
        return (F.softplus(logits) - y * logits).mean()
    return ((torch.sigmoid(logits) - y) ** 2).mean()


def _multiclass_loss(logits: Tensor, y: Tensor, loss: LossName) -> Tensor:
    # logits (N, K), y (N,) class indices
    if loss == "ce":
        return F.cross_entropy(logits, y)
    target = F.one_hot(y, logits.shape[1]).to(logits.dtype)
    return ((torch.softmax(logits, dim=1) - target) ** 2).sum(dim=1).mean()


def logistic_loss(x: Tensor, y: Tensor, loss: LossName) -> LossFn:
    """Binary logistic regression: loss of sigmoid(x @ w) against y.

    Args:
        x: (N, D) inputs (last column constant 1).
        y: (N,) labels in {0, 1}, float64.
        loss: "ce" (binary cross-entropy on the logit) or "mse" (squared error of the sigmoid).

    Returns:
        A function of w, shape (D,), giving the mean loss as a 0-d tensor.
    """
    return lambda w: _binary_loss(x @ w, y, loss)


def softmax_loss(x: Tensor, y: Tensor, loss: LossName, n_classes: int = N_CLASSES) -> LossFn:
    """Multinomial logistic regression: loss of softmax(x @ W.T) against one-hot y.

    Args:
        x: (N, D) inputs (last column constant 1).
        y: (N,) int64 class indices.
        loss: "ce" or "mse" (squared error of the softmax against the one-hot target, summed over
            classes).

    Returns:
        A function of the flat W, shape (n_classes * D,), giving the mean loss.
    """
    d = x.shape[1]
    return lambda w: _multiclass_loss(x @ w.reshape(n_classes, d).T, y, loss)


@dataclass(frozen=True)
class LinearNetwork:
    """f(x) = W_L ... W_1 x with no activation, parameters in one flat vector (W_1 first).

    Attributes:
        widths: [input dim, hidden..., output dim]; an output of 1 means a sigmoid (binary) head.
    """

    widths: tuple[int, ...]

    @property
    def shapes(self) -> list[tuple[int, int]]:
        """(out, in) of each layer, W_1 first."""
        return [(o, i) for i, o in zip(self.widths[:-1], self.widths[1:], strict=True)]

    @property
    def dim(self) -> int:
        return sum(o * i for o, i in self.shapes)

    def layers(self, theta: Tensor) -> list[Tensor]:
        """Split a flat (dim,) vector into the weight matrices, W_1 first."""
        sizes = [o * i for o, i in self.shapes]
        return [
            part.reshape(shape)
            for part, shape in zip(torch.split(theta, sizes), self.shapes, strict=True)
        ]

    def forward(self, theta: Tensor, x: Tensor) -> Tensor:
        """(N, widths[0]) -> (N, widths[-1]) logits."""
        out = x
        for weight in self.layers(theta):
            out = out @ weight.T
        return out

    def sign_flip(self, layers: Sequence[int]) -> Tensor:
        """(dim,) vector of +-1 that negates the given layers (0-based); an even count keeps f."""
        signs = [
            torch.full((o * i,), -1.0 if k in layers else 1.0, dtype=torch.float64)
            for k, (o, i) in enumerate(self.shapes)
        ]
        return torch.cat(signs)


def linear_network_loss(x: Tensor, y: Tensor, loss: LossName, network: LinearNetwork) -> LossFn:
    """Loss of a linear network: a sigmoid head if its output width is 1, else softmax.

    Args:
        x: (N, widths[0]) inputs.
        y: (N,) labels: {0, 1} float64 for a width-1 output, int64 class indices otherwise.
        loss: "ce" or "mse".
        network: the layer widths.

    Returns:
        A function of the flat parameters, shape (network.dim,), giving the mean loss.
    """
    if network.widths[-1] == 1:
        return lambda theta: _binary_loss(network.forward(theta, x)[:, 0], y, loss)
    return lambda theta: _multiclass_loss(network.forward(theta, x), y, loss)


# ----------------------------------------------------------------------------- probes


def _normal(n: int, dim: int, scale: float, generator: torch.Generator) -> Tensor:
    return scale * torch.randn(n, dim, generator=generator, dtype=torch.float64)


def hessian_eigenvalues(loss_fn: LossFn, points: Tensor, chunk: int = 20) -> tuple[Tensor, Tensor]:
    """Smallest Hessian eigenvalue and largest |eigenvalue| at each point.

    Args:
        loss_fn: function of a flat float64 parameter vector.
        points: (P, dim) float64.
        chunk: points whose Hessians are built in one vectorised call (memory: chunk * dim^2).

    Returns:
        (P,) smallest eigenvalues and (P,) largest absolute eigenvalues.
    """
    # Reverse-over-reverse, vectorised over points, is the fastest exact Hessian on a CPU here.
    hessians = torch.func.vmap(torch.func.jacrev(torch.func.jacrev(loss_fn)))
    smallest, largest = [], []
    for batch in torch.split(points, chunk):
        eig = torch.linalg.eigvalsh(hessians(batch))  # (chunk, dim), ascending
        smallest.append(eig[:, 0])
        largest.append(eig.abs().amax(dim=1))
    return torch.cat(smallest), torch.cat(largest)


@dataclass(frozen=True)
class HessianResult:
    """Hessian spectra at random points: the smallest eigenvalue and the scale it is judged by."""

    min_eig: np.ndarray  # (P,)
    max_abs_eig: np.ndarray  # (P,)

    @property
    def relative_min(self) -> np.ndarray:
        """min eig / max |eig| per point (0 where the Hessian vanishes)."""
        return np.divide(
            self.min_eig,
            self.max_abs_eig,
            out=np.zeros_like(self.min_eig),
            where=self.max_abs_eig > 0,
        )

    @property
    def n_negative(self) -> int:
        return int((self.min_eig < -EIG_RTOL * self.max_abs_eig).sum())

    @property
    def fraction_negative(self) -> float:
        return self.n_negative / len(self.min_eig)


def hessian_min_eigenvalues(
    loss_fn: LossFn, dim: int, n_points: int, scale: float, generator: torch.Generator
) -> HessianResult:
    """Exact Hessian spectra at `n_points` points drawn from N(0, scale^2 I) in R^dim."""
    smallest, largest = hessian_eigenvalues(loss_fn, _normal(n_points, dim, scale, generator))
    return HessianResult(smallest.numpy(), largest.numpy())


@dataclass(frozen=True)
class MidpointResult:
    """Midpoint-convexity checks L((a+b)/2) <= (L(a)+L(b))/2 along random segments.

    Attributes:
        n_segments: segments checked.
        n_violations: segments whose midpoint lies above the chord by more than the tolerance.
        worst_excess: max over segments of L(mid) - (L(a)+L(b))/2 (negative if none is above).
        worst_a, worst_b: endpoints of that segment, (dim,).
        worst_values: (L(a), L(b), L(mid)) on that segment.
    """

    n_segments: int
    n_violations: int
    worst_excess: float
    worst_a: np.ndarray
    worst_b: np.ndarray
    worst_values: tuple[float, float, float]


def midpoint_violations(
    loss_fn: LossFn,
    dim: int,
    n_segments: int,
    scale: float,
    generator: torch.Generator,
    tol: float = MIDPOINT_RTOL,
) -> MidpointResult:
    """Check midpoint convexity on segments with both ends drawn from N(0, scale^2 I).

    A segment violates when L(mid) - chord > tol * max(1, |chord|), chord = (L(a)+L(b))/2.
    """
    ends_a = _normal(n_segments, dim, scale, generator)
    ends_b = _normal(n_segments, dim, scale, generator)
    with torch.no_grad():
        batched = torch.func.vmap(loss_fn)
        values = torch.stack(
            [batched(ends_a), batched(ends_b), batched((ends_a + ends_b) / 2)], dim=1
        )  # (S, 3): L(a), L(b), L(mid)
    chord = (values[:, 0] + values[:, 1]) / 2
    excess = values[:, 2] - chord
    violations = excess > tol * chord.abs().clamp(min=1.0)
    worst = int(torch.argmax(excess))
    return MidpointResult(
        n_segments=n_segments,
        n_violations=int(violations.sum()),
        worst_excess=float(excess[worst]),
        worst_a=ends_a[worst].numpy(),
        worst_b=ends_b[worst].numpy(),
        worst_values=(
            float(values[worst, 0]),
            float(values[worst, 1]),
            float(values[worst, 2]),
        ),
    )


def gradient_descent(
    loss_fn: LossFn, theta: Tensor, epochs: int, lr: float, l2: float = 0.0
) -> tuple[Tensor, np.ndarray]:
    """Full-batch gradient descent on loss_fn(theta) + l2/2 * ||theta||^2.

    Returns:
        The final parameters (dim,) and the objective before each step and after the last,
        shape (epochs + 1,).
    """

    def objective(t: Tensor) -> Tensor:
        return loss_fn(t) + 0.5 * l2 * (t * t).sum()

    step = torch.func.grad_and_value(objective)
    history = []
    for _ in range(epochs):
        grad, value = step(theta)
        history.append(float(value))
        theta = theta - lr * grad
    history.append(float(objective(theta)))
    return theta.detach(), np.asarray(history)


def minimize_lbfgs(
    loss_fn: LossFn, theta: Tensor, max_iter: int, l2: float = 0.0
) -> tuple[Tensor, np.ndarray]:
    """L-BFGS with a strong-Wolfe line search on loss_fn(theta) + l2/2 * ||theta||^2, run until
    the gradient vanishes (to float64 precision) or `max_iter` iterations.

    Returns:
        The final parameters (dim,) and the objective at each function evaluation.
    """
    theta = theta.clone().requires_grad_(True)
    optimizer = torch.optim.LBFGS(
        [theta],
        lr=1.0,
        max_iter=max_iter,
        tolerance_grad=1e-12,
        tolerance_change=1e-15,
        history_size=20,
        line_search_fn="strong_wolfe",
    )
    history: list[float] = []

    def closure() -> Tensor:
        optimizer.zero_grad()
        value = loss_fn(theta) + 0.5 * l2 * (theta * theta).sum()
        value.backward()
        history.append(float(value.detach()))
        return value

    optimizer.step(closure)
    return theta.detach(), np.asarray(history)


Optimizer = Literal["gd", "lbfgs"]


@dataclass(frozen=True)
class RestartResult:
    """Minimisation from several random starts.

    Attributes:
        optimizer: "gd" (full-batch gradient descent, fixed epochs and lr) or "lbfgs" (run to a
            stationary point).
        final_losses: (S,) final objective (loss + l2 term) of each start.
        final_grad_norms: (S,) gradient norm of the objective at the end.
        final_weights: (S, dim).
        curves: objective during training, one array per start.
        l2: the L2 coefficient used.
    """

    optimizer: Optimizer
    final_losses: np.ndarray
    final_grad_norms: np.ndarray
    final_weights: np.ndarray
    curves: list[np.ndarray]
    l2: float

    @property
    def loss_range(self) -> float:
        return float(self.final_losses.max() - self.final_losses.min())

    @property
    def weight_spread(self) -> float:
        """Largest distance between two final weight vectors over their mean norm."""
        w = self.final_weights
        distances = np.linalg.norm(w[:, None, :] - w[None, :, :], axis=-1)
        return float(distances.max() / max(np.linalg.norm(w, axis=1).mean(), 1e-300))


def random_restarts(
    loss_fn: LossFn,
    dim: int,
    n_starts: int,
    scale: float,
    epochs: int,
    lr: float,
    generator: torch.Generator,
    l2: float = RESTART_L2,
    optimizer: Optimizer = "gd",
) -> RestartResult:
    """Minimise loss + l2/2 ||w||^2 from `n_starts` points drawn from N(0, scale^2 I).

    With "gd", `epochs` steps of size `lr`; with "lbfgs", at most `epochs` iterations (lr unused).
    """
    runs = [
        gradient_descent(loss_fn, start, epochs, lr, l2)
        if optimizer == "gd"
        else minimize_lbfgs(loss_fn, start, epochs, l2)
        for start in _normal(n_starts, dim, scale, generator)
    ]
    objective_grad = torch.func.grad(lambda t: loss_fn(t) + 0.5 * l2 * (t * t).sum())
    return RestartResult(
        optimizer=optimizer,
        final_losses=np.array([curve[-1] for _, curve in runs]),
        final_grad_norms=np.array([float(objective_grad(theta).norm()) for theta, _ in runs]),
        final_weights=np.stack([theta.numpy() for theta, _ in runs]),
        curves=[curve for _, curve in runs],
        l2=l2,
    )


def loss_slice(loss_fn: LossFn, a: Tensor, b: Tensor, ts: Tensor) -> Tensor:
    """Loss along the line through a (t=0) and b (t=1): L((1 - t) a + t b) for each t in ts."""
    with torch.no_grad():
        return torch.func.vmap(loss_fn)((1 - ts)[:, None] * a + ts[:, None] * b)


@dataclass(frozen=True)
class SignFlipResult:
    """A trained solution a, its sign-flipped copy b (same function), and their midpoint."""

    loss_a: float
    loss_b: float
    loss_mid: float

    @property
    def excess(self) -> float:
        """L(mid) - (L(a) + L(b)) / 2; positive means convexity is violated."""
        return self.loss_mid - (self.loss_a + self.loss_b) / 2

    @property
    def violates(self) -> bool:
        chord = (self.loss_a + self.loss_b) / 2
        return self.excess > MIDPOINT_RTOL * max(1.0, abs(chord))


def sign_flip_violation(loss_fn: LossFn, theta: Tensor, signs: Tensor) -> SignFlipResult:
    """Compare L(theta), L(signs * theta) and L at their midpoint (signs is a +-1 vector)."""
    with torch.no_grad():
        flipped = signs * theta
        return SignFlipResult(
            float(loss_fn(theta)), float(loss_fn(flipped)), float(loss_fn((theta + flipped) / 2))
        )


# ----------------------------------------------------------------------------- the study


def gradient_vs_logit(logits: Tensor) -> dict[str, np.ndarray]:
    """|dL/dz| for one example of class 1 at each logit z (z < 0 is confidently wrong).

    Returns:
        {"logit": (M,), "ce": (M,), "mse": (M,)}.
    """
    target = torch.ones(1, dtype=torch.float64)
    out: dict[str, np.ndarray] = {"logit": logits.numpy()}
    for loss in LOSSES:
        grad = torch.func.vmap(torch.func.grad(lambda z, loss=loss: _binary_loss(z, target, loss)))
        out[loss] = grad(logits.reshape(-1, 1)).abs().reshape(-1).numpy()
    return out


@dataclass(frozen=True)
class BadStartCurves:
    """Training from a confidently wrong start: every example on the wrong side, |logit| large.

    Attributes:
        start_logit: median |logit| of the start.
        loss: {"ce": (E+1,), "mse": (E+1,)} each loss during its own training.
        accuracy: {"ce": (E+1,), "mse": (E+1,)} training accuracy.
        grad_norm: {"ce": (E+1,), "mse": (E+1,)} gradient norm.
    """

    start_logit: float
    loss: dict[str, np.ndarray]
    accuracy: dict[str, np.ndarray]
    grad_norm: dict[str, np.ndarray]


def bad_start_curves(
    x: Tensor, y: Tensor, reference: Tensor, epochs: int, lr: float, start_logit: float = 8.0
) -> BadStartCurves:
    """Train binary logistic regression with each loss from -c * reference, c making the median
    |logit| equal `start_logit`, so a good solution turned confidently wrong."""
    c = start_logit / float((x @ reference).abs().median())
    start = -c * reference
    loss_curves: dict[str, np.ndarray] = {}
    accuracies: dict[str, np.ndarray] = {}
    grad_norms: dict[str, np.ndarray] = {}
    for loss in LOSSES:
        loss_fn = logistic_loss(x, y, loss)
        step = torch.func.grad_and_value(loss_fn)
        theta, values, acc, norms = start.clone(), [], [], []
        for epoch in range(epochs + 1):
            grad, value = step(theta)
            values.append(float(value))
            norms.append(float(grad.norm()))
            acc.append(float(((x @ theta > 0).to(torch.float64) == y).to(torch.float64).mean()))
            if epoch < epochs:
                theta = theta - lr * grad
        loss_curves[loss], accuracies[loss] = np.asarray(values), np.asarray(acc)
        grad_norms[loss] = np.asarray(norms)
    return BadStartCurves(start_logit, loss_curves, accuracies, grad_norms)


@dataclass(frozen=True)
class ProbeResult:
    """All random probes of one loss on one model."""

    model: str
    loss: LossName
    question: int
    dim: int
    hessian: HessianResult
    midpoint: MidpointResult
    restarts: dict[str, RestartResult]  # optimizer -> result; empty for the linear networks
    slice_t: np.ndarray  # (M,) along the worst midpoint segment, a at t=0, b at t=1
    slice_loss: np.ndarray  # (M,)

    @property
    def violation_found(self) -> bool:
        return self.hessian.n_negative > 0 or self.midpoint.n_violations > 0


@dataclass(frozen=True)
class SignFlipProbe:
    """The sign-flip construction on a trained linear network, with the Hessian at the midpoint."""

    model: str
    loss: LossName
    flipped_layers: tuple[int, ...]
    result: SignFlipResult
    midpoint_min_eig: float
    midpoint_max_abs_eig: float
    slice_t: np.ndarray  # (M,) t=0 trained, t=1 flipped, t=0.5 midpoint
    slice_loss: np.ndarray


@dataclass(frozen=True)
class Verdict:
    """Which losses the measurements leave convex for one question."""

    question: int
    convex: dict[str, bool]  # loss -> no violation found on any model of the question

    @property
    def answer(self) -> str:
        ce, mse = self.convex["ce"], self.convex["mse"]
        if ce and mse:
            return "both"
        if ce:
            return "cross-entropy only"
        if mse:
            return "MSE only"
        return "neither"


@dataclass(frozen=True)
class TheoryResults:
    """Everything the convexity study measured, with verdicts derived from the measurements."""

    pair: tuple[int, int]
    n_samples: int
    input_dim: int
    weight_scale: float
    restart_l2: float
    pair_train_accuracy: float  # of the unregularised CE fit; 1.0 means the sample is separable
    pair_weight_norm: float  # ||w|| of that fit, which grows without bound when separable
    probes: list[ProbeResult]
    sign_flips: list[SignFlipProbe]
    logit_gradients: dict[str, np.ndarray]
    bad_start: BadStartCurves
    verdicts: list[Verdict] = field(default_factory=list)


def _verdicts(probes: list[ProbeResult], sign_flips: list[SignFlipProbe]) -> list[Verdict]:
    verdicts = []
    for question in sorted({p.question for p in probes}):
        convex: dict[str, bool] = {}
        for loss in LOSSES:
            asked = [p for p in probes if p.question == question and p.loss == loss]
            found = any(p.violation_found for p in asked)
            found |= any(
                s.result.violates
                for s in sign_flips
                if s.loss == loss and question == 2  # sign flips exist only for the networks
            )
            convex[loss] = not found
        verdicts.append(Verdict(question, convex))
    return verdicts


@dataclass(frozen=True)
class _Model:
    name: str
    question: int
    build: Callable[[LossName], LossFn]
    dim: int
    network: LinearNetwork | None = None


@contextmanager
def _one_thread() -> Iterator[None]:
    # The problems are tiny (a few hundred parameters): with several intra-op threads each small
    # op costs more in synchronisation than it saves, 10-100x more on a busy 2-core machine.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _rows(array: Tensor | np.ndarray, index: Tensor) -> Tensor:
    # Index before converting, so a memory-mapped split is read only where needed.
    if isinstance(array, Tensor):
        return array[index]
    return torch.from_numpy(np.ascontiguousarray(array[index.numpy()]))


def run_theory(
    x: Tensor | np.ndarray,
    y: Tensor | np.ndarray,
    cfg: TheoryConfig,
    seed: int,
    progress: Progress | None = None,
) -> TheoryResults:
    """Measure the convexity of cross-entropy and MSE for logistic regression and linear networks.

    Args:
        x: (N, ...) images (any dtype), at least `cfg.n_samples` of the pair and of all classes.
        y: (N,) int64 digit labels.
        cfg: sizes of the problems and of the probes.
        seed: seeds the subsets, the random points, segments and starts.
        progress: called with a short message before each stage.

    Returns:
        The measurements, the curves for plots, and a verdict per question.
    """
    with _one_thread():
        return _run_theory(x, y, cfg, seed, progress or (lambda _message: None))


def _run_theory(
    x: Tensor | np.ndarray, y: Tensor | np.ndarray, cfg: TheoryConfig, seed: int, say: Progress
) -> TheoryResults:
    generator = torch.Generator().manual_seed(seed)
    labels = torch.as_tensor(np.asarray(y)) if isinstance(y, np.ndarray) else y

    in_pair = torch.nonzero((labels == cfg.pair[0]) | (labels == cfg.pair[1])).squeeze(1)
    pair_idx = in_pair[torch.randperm(len(in_pair), generator=generator)[: cfg.n_samples]]
    all_idx = torch.randperm(len(labels), generator=generator)[: cfg.n_samples]
    xb = reduce_inputs(_rows(x, pair_idx), cfg.pca_dims)  # (n, d)
    yb = (labels[pair_idx] == cfg.pair[1]).to(torch.float64)  # (n,)
    xm = reduce_inputs(_rows(x, all_idx), cfg.pca_dims)
    ym = labels[all_idx].to(torch.int64)
    d = cfg.pca_dims + 1

    pair_name = f"{cfg.pair[0]} vs {cfg.pair[1]}"
    net2 = LinearNetwork((d, cfg.hidden, N_CLASSES))
    net3 = LinearNetwork((d, cfg.hidden, cfg.hidden, N_CLASSES))
    models = [
        _Model(f"logistic, {pair_name}", 1, lambda loss: logistic_loss(xb, yb, loss), d),
        _Model("softmax, 10 classes", 1, lambda loss: softmax_loss(xm, ym, loss), N_CLASSES * d),
        _Model(
            "linear net W2 W1, 10 classes",
            2,
            lambda loss: linear_network_loss(xm, ym, loss, net2),
            net2.dim,
            net2,
        ),
        _Model(
            "linear net W3 W2 W1, 10 classes",
            2,
            lambda loss: linear_network_loss(xm, ym, loss, net3),
            net3.dim,
            net3,
        ),
    ]

    probes: list[ProbeResult] = []
    sign_flips: list[SignFlipProbe] = []
    ts = torch.linspace(-0.5, 1.5, 81, dtype=torch.float64)
    for model in models:
        for loss in LOSSES:
            say(f"{model.name}, {LOSS_LABELS[loss]}: Hessians at {cfg.n_points} points")
            loss_fn = model.build(loss)
            hessian = hessian_min_eigenvalues(
                loss_fn, model.dim, cfg.n_points, cfg.weight_scale, generator
            )
            say(f"{model.name}, {LOSS_LABELS[loss]}: {cfg.n_segments} midpoint checks")
            midpoint = midpoint_violations(
                loss_fn, model.dim, cfg.n_segments, cfg.weight_scale, generator
            )
            restarts = {}
            if model.network is None:
                say(f"{model.name}, {LOSS_LABELS[loss]}: {cfg.n_starts} restarts")
                for optimizer in ("gd", "lbfgs"):
                    restarts[optimizer] = random_restarts(
                        loss_fn,
                        model.dim,
                        cfg.n_starts,
                        cfg.weight_scale,
                        cfg.epochs,
                        cfg.lr,
                        generator,
                        optimizer=optimizer,
                    )
            a, b = torch.from_numpy(midpoint.worst_a), torch.from_numpy(midpoint.worst_b)
            probes.append(
                ProbeResult(
                    model=model.name,
                    loss=loss,
                    question=model.question,
                    dim=model.dim,
                    hessian=hessian,
                    midpoint=midpoint,
                    restarts=restarts,
                    slice_t=ts.numpy(),
                    slice_loss=loss_slice(loss_fn, a, b, ts).numpy(),
                )
            )
            if model.network is not None:
                say(f"{model.name}, {LOSS_LABELS[loss]}: sign flip")
                sign_flips.append(_sign_flip_probe(model, loss, loss_fn, cfg, generator, ts))

    say("gradient against logit, training from a confidently wrong start")
    reference = next(p for p in probes if p.question == 1 and p.loss == "ce").restarts["lbfgs"]
    best = torch.from_numpy(reference.final_weights[int(np.argmin(reference.final_losses))])
    bad_start = bad_start_curves(xb, yb, best, cfg.epochs, cfg.lr)
    logits = torch.linspace(-12.0, 12.0, 241, dtype=torch.float64)
    # Without an L2 term: on a separable sample CE has no minimiser and the weights keep growing.
    unregularised, _ = minimize_lbfgs(
        logistic_loss(xb, yb, "ce"), torch.zeros(d, dtype=torch.float64), cfg.epochs
    )
    pair_accuracy = float(((xb @ unregularised > 0).to(torch.float64) == yb).double().mean())

    return TheoryResults(
        pair=cfg.pair,
        n_samples=cfg.n_samples,
        input_dim=d,
        weight_scale=cfg.weight_scale,
        restart_l2=RESTART_L2,
        pair_train_accuracy=pair_accuracy,
        pair_weight_norm=float(unregularised.norm()),
        probes=probes,
        sign_flips=sign_flips,
        logit_gradients=gradient_vs_logit(logits),
        bad_start=bad_start,
        verdicts=_verdicts(probes, sign_flips),
    )


def _sign_flip_probe(
    model: _Model,
    loss: LossName,
    loss_fn: LossFn,
    cfg: TheoryConfig,
    generator: torch.Generator,
    ts: Tensor,
) -> SignFlipProbe:
    network = model.network
    assert network is not None
    # A small start (std 1/sqrt(fan-in) scaled down) keeps gradient descent stable on the product.
    start = torch.cat(
        [
            0.5 / math.sqrt(i) * torch.randn(o * i, generator=generator, dtype=torch.float64)
            for o, i in network.shapes
        ]
    )
    trained, _ = gradient_descent(loss_fn, start, cfg.epochs, cfg.lr)
    flipped_layers = (0, 1)  # W1 and W2: the product, and so every prediction, is unchanged
    signs = network.sign_flip(flipped_layers)
    result = sign_flip_violation(loss_fn, trained, signs)
    mid = (trained + signs * trained) / 2
    smallest, largest = hessian_eigenvalues(loss_fn, mid.unsqueeze(0))
    return SignFlipProbe(
        model=model.name,
        loss=loss,
        flipped_layers=flipped_layers,
        result=result,
        midpoint_min_eig=float(smallest[0]),
        midpoint_max_abs_eig=float(largest[0]),
        slice_t=ts.numpy(),
        slice_loss=loss_slice(loss_fn, trained, signs * trained, ts).numpy(),
    )
