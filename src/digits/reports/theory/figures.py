"""The convexity study's figures, drawn on `matplotlib.figure.Figure` objects (no pyplot state)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from digits.studies.convexity import (
    EIG_RTOL,
    LOSS_LABELS,
    ProbeResult,
    SignFlipProbe,
    TheoryResults,
)

COLORS = {"ce": "tab:blue", "mse": "tab:orange"}
FIGURES = {
    "hessian": "hessian_min_eig.png",
    "slices": "slices_logistic.png",
    "sign_flip": "sign_flip.png",
    "gradient": "gradient_vs_logit.png",
    "bad_start": "bad_start.png",
    "restarts": "restarts.png",
}


def probe_label(probe: ProbeResult | SignFlipProbe) -> str:
    """The "model, loss" label the figures and tables give a probe."""
    return f"{probe.model}, {LOSS_LABELS[probe.loss]}"


def _plot_hessian(results: TheoryResults) -> Figure:
    fig = Figure(figsize=(9, 4.8))
    ax = fig.subplots()
    for i, probe in enumerate(results.probes):
        rel = probe.hessian.relative_min
        jitter = np.linspace(-0.25, 0.25, len(rel))
        ax.scatter(i + jitter, rel, s=8, alpha=0.6, color=COLORS[probe.loss])
    ax.axhline(-EIG_RTOL, color="k", lw=0.8, ls="--", label=f"negative threshold -{EIG_RTOL:g}")
    ax.axhline(0, color="grey", lw=0.5)
    ax.set_yscale("symlog", linthresh=1e-12)
    ax.set_xticks(range(len(results.probes)))
    ax.set_xticklabels(
        [f"{p.model}\n{LOSS_LABELS[p.loss]}" for p in results.probes],
        rotation=35,
        ha="right",
        fontsize=7,
    )
    ax.set_ylabel("min eigenvalue / max |eigenvalue|")
    ax.set_title(
        f"Smallest Hessian eigenvalue at {len(results.probes[0].hessian.min_eig)} random points "
        f"(weights ~ N(0, {results.weight_scale:g}²))"
    )
    for loss, color in COLORS.items():
        ax.scatter([], [], color=color, label=LOSS_LABELS[loss])
    ax.legend(fontsize=8, loc="center right")
    fig.tight_layout()
    return fig


def _segment_panel(
    ax: Any,
    t: Any,
    values: Any,
    ends: tuple[float, float, float],
    color: str,
    title: str,
    xlabel: str,
    chord_label: str,
) -> None:
    """The loss along a segment, the chord between its ends and the loss at its midpoint."""
    loss_a, loss_b, loss_mid = ends
    ax.plot(t, values, color=color, label="loss")
    ax.plot([0, 1], [loss_a, loss_b], "k--", lw=1, label=chord_label)
    ax.plot([0.5], [loss_mid], "ko", ms=4, label="midpoint")
    ax.set_title(title, fontsize=9)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("loss")
    ax.legend(fontsize=7)


def _titled(fig: Figure, title: str) -> Figure:
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def _plot_slices(results: TheoryResults) -> Figure:
    probes = [p for p in results.probes if p.question == 1]
    fig = Figure(figsize=(10, 7))
    axes = fig.subplots(2, 2)
    for ax, probe in zip(axes.T.ravel(), probes, strict=False):
        _segment_panel(
            ax, probe.slice_t, probe.slice_loss, probe.midpoint.worst_values,
            COLORS[probe.loss], probe_label(probe), "t  (weights (1-t) a + t b)", "chord a-b",
        )  # fmt: skip
    return _titled(fig, "Loss along the random segment with the largest midpoint excess")


def _plot_sign_flip(results: TheoryResults) -> Figure:
    fig = Figure(figsize=(10, 7))
    axes = fig.subplots(2, 2)
    for ax, flip in zip(axes.T.ravel(), results.sign_flips, strict=False):
        res = flip.result
        _segment_panel(
            ax, flip.slice_t, flip.slice_loss, (res.loss_a, res.loss_b, res.loss_mid),
            COLORS[flip.loss], probe_label(flip),
            "t  (0: trained θ, 1: sign-flipped θ, 0.5: midpoint)", "chord",
        )  # fmt: skip
    return _titled(fig, "Linear networks: a trained solution and its sign-flipped copy")


def _plot_gradient(results: TheoryResults) -> Figure:
    grads = results.logit_gradients
    fig = Figure(figsize=(6.5, 4))
    ax = fig.subplots()
    for loss in ("ce", "mse"):
        ax.plot(grads["logit"], grads[loss], color=COLORS[loss], label=LOSS_LABELS[loss])
    ax.axvspan(grads["logit"].min(), 0, color="red", alpha=0.07, label="wrongly classified")
    ax.set_yscale("log")
    ax.set_xlabel("logit z of an example of class 1 (sigmoid output)")
    ax.set_ylabel("|dL/dz|")
    ax.set_title("Gradient with respect to the logit, one example")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _plot_bad_start(results: TheoryResults) -> Figure:
    curves = results.bad_start
    fig = Figure(figsize=(13, 3.8))
    axes = fig.subplots(1, 3)
    for loss in ("ce", "mse"):
        epochs = np.arange(len(curves.loss[loss]))
        kw = {"color": COLORS[loss], "label": LOSS_LABELS[loss]}
        axes[0].plot(epochs, curves.loss[loss] / curves.loss[loss][0], **kw)
        axes[1].plot(epochs, curves.accuracy[loss], **kw)
        axes[2].plot(epochs, curves.grad_norm[loss], **kw)
    axes[0].set_ylabel("loss / initial loss")
    axes[1].set_ylabel("training accuracy")
    axes[2].set_ylabel("gradient norm")
    axes[2].set_yscale("log")
    for ax in axes:
        ax.set_xlabel("gradient-descent epoch")
        ax.legend(fontsize=8)
    fig.suptitle(
        f"Logistic regression {results.pair[0]} vs {results.pair[1]} from a confidently wrong "
        f"start (median |logit| {curves.start_logit:g}, every example on the wrong side)",
        fontsize=10,
    )
    fig.tight_layout()
    return fig


def _plot_restarts(results: TheoryResults) -> Figure:
    probes = [p for p in results.probes if p.restarts]
    fig = Figure(figsize=(11, 4.2))
    axes = fig.subplots(1, 2, sharey=True)
    titles = {"gd": "gradient descent (fixed epochs)", "lbfgs": "L-BFGS (to a stationary point)"}
    for ax, optimizer in zip(axes, ("gd", "lbfgs"), strict=True):
        for i, probe in enumerate(probes):
            losses = probe.restarts[optimizer].final_losses
            ax.scatter(
                np.full(len(losses), i), losses - losses.min(), color=COLORS[probe.loss], s=14
            )
        ax.set_yscale("symlog", linthresh=1e-8)
        ax.set_xticks(range(len(probes)))
        ax.set_xticklabels([probe_label(p) for p in probes], rotation=30, ha="right", fontsize=7)
        ax.set_title(titles[optimizer], fontsize=9)
    axes[0].set_ylabel("final objective − best over starts")
    fig.suptitle(f"Random starts (objective = loss + {results.restart_l2:g}/2 ‖w‖²)", fontsize=10)
    fig.tight_layout()
    return fig


PLOTS: dict[str, Callable[[TheoryResults], Figure]] = {
    "hessian": _plot_hessian,
    "slices": _plot_slices,
    "sign_flip": _plot_sign_flip,
    "gradient": _plot_gradient,
    "bad_start": _plot_bad_start,
    "restarts": _plot_restarts,
}
