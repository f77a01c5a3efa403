"""The convexity study: every probe on logistic regression and linear networks, with verdicts."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from digits.config import TheoryConfig
from digits.studies.convexity.bad_start import BadStartCurves, bad_start_curves, gradient_vs_logit
from digits.studies.convexity.losses import (
    LOSS_LABELS,
    LOSSES,
    N_CLASSES,
    LinearNetwork,
    LossFn,
    LossName,
    linear_network_loss,
    logistic_loss,
    reduce_inputs,
    softmax_loss,
)
from digits.studies.convexity.probes import (
    HessianResult,
    MidpointResult,
    SignFlipResult,
    hessian_eigenvalues,
    hessian_min_eigenvalues,
    loss_slice,
    midpoint_violations,
    sign_flip_violation,
)
from digits.studies.convexity.restarts import (
    RESTART_L2,
    RestartResult,
    gradient_descent,
    minimize_lbfgs,
    random_restarts,
)

Progress = Callable[[str], None]


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
    # Every random draw comes from `generator`, in this order: the subsets, then per model and
    # loss the Hessian points, the midpoint segments, the restarts' starts and the sign-flip start.
    generator = torch.Generator().manual_seed(seed)
    xb, yb, xm, ym = _subsets(x, y, cfg, generator)
    d = cfg.pca_dims + 1

    probes: list[ProbeResult] = []
    sign_flips: list[SignFlipProbe] = []
    ts = torch.linspace(-0.5, 1.5, 81, dtype=torch.float64)
    for model in _models(xb, yb, xm, ym, cfg):
        for loss in LOSSES:
            loss_fn = model.build(loss)
            probes.append(_probe(model, loss, loss_fn, cfg, generator, ts, say))
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


def _subsets(
    x: Tensor | np.ndarray, y: Tensor | np.ndarray, cfg: TheoryConfig, generator: torch.Generator
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The pair's sample: xb (n, d), yb (n,) in {0, 1}; the 10-class one: xm (n, d), ym (n,)."""
    labels = torch.as_tensor(np.asarray(y)) if isinstance(y, np.ndarray) else y
    in_pair = torch.nonzero((labels == cfg.pair[0]) | (labels == cfg.pair[1])).squeeze(1)
    pair_idx = in_pair[torch.randperm(len(in_pair), generator=generator)[: cfg.n_samples]]
    all_idx = torch.randperm(len(labels), generator=generator)[: cfg.n_samples]
    xb = reduce_inputs(_rows(x, pair_idx), cfg.pca_dims)  # (n, d)
    yb = (labels[pair_idx] == cfg.pair[1]).to(torch.float64)  # (n,)
    xm = reduce_inputs(_rows(x, all_idx), cfg.pca_dims)
    ym = labels[all_idx].to(torch.int64)
    return xb, yb, xm, ym


def _models(xb: Tensor, yb: Tensor, xm: Tensor, ym: Tensor, cfg: TheoryConfig) -> list[_Model]:
    """Question 1's convex candidates (logistic, softmax), then question 2's linear networks."""
    d = cfg.pca_dims + 1
    pair_name = f"{cfg.pair[0]} vs {cfg.pair[1]}"
    net2 = LinearNetwork((d, cfg.hidden, N_CLASSES))
    net3 = LinearNetwork((d, cfg.hidden, cfg.hidden, N_CLASSES))
    return [
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


def _probe(
    model: _Model,
    loss: LossName,
    loss_fn: LossFn,
    cfg: TheoryConfig,
    generator: torch.Generator,
    ts: Tensor,
    say: Progress,
) -> ProbeResult:
    """Hessians, midpoint checks and (for the models without hidden layers) restarts."""
    say(f"{model.name}, {LOSS_LABELS[loss]}: Hessians at {cfg.n_points} points")
    hessian = hessian_min_eigenvalues(loss_fn, model.dim, cfg.n_points, cfg.weight_scale, generator)
    say(f"{model.name}, {LOSS_LABELS[loss]}: {cfg.n_segments} midpoint checks")
    midpoint = midpoint_violations(loss_fn, model.dim, cfg.n_segments, cfg.weight_scale, generator)
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
    return ProbeResult(
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
