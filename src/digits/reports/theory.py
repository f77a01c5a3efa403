"""Turn `TheoryResults` into reports/theory: report.md, the PNG figures and results.json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; no display on the machines this runs on

import matplotlib.pyplot as plt
import numpy as np

from digits.studies.convexity import (
    EIG_RTOL,
    LOSS_LABELS,
    MIDPOINT_RTOL,
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


def _label(probe: ProbeResult | SignFlipProbe) -> str:
    return f"{probe.model}, {LOSS_LABELS[probe.loss]}"


# ----------------------------------------------------------------------------- figures


def _plot_hessian(results: TheoryResults, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(9, 4.8))
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
    fig.savefig(path, dpi=120)
    plt.close(fig)


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


def _save_panels(fig: Any, title: str, path: Path) -> None:
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot_slices(results: TheoryResults, path: Path) -> None:
    probes = [p for p in results.probes if p.question == 1]
    fig, axes = plt.subplots(2, 2, figsize=(10, 7))
    for ax, probe in zip(axes.T.ravel(), probes, strict=False):
        _segment_panel(
            ax, probe.slice_t, probe.slice_loss, probe.midpoint.worst_values,
            COLORS[probe.loss], _label(probe), "t  (weights (1-t) a + t b)", "chord a-b",
        )  # fmt: skip
    _save_panels(fig, "Loss along the random segment with the largest midpoint excess", path)


def _plot_sign_flip(results: TheoryResults, path: Path) -> None:
    fig, axes = plt.subplots(2, 2, figsize=(10, 7))
    for ax, flip in zip(axes.T.ravel(), results.sign_flips, strict=False):
        res = flip.result
        _segment_panel(
            ax, flip.slice_t, flip.slice_loss, (res.loss_a, res.loss_b, res.loss_mid),
            COLORS[flip.loss], _label(flip), "t  (0: trained θ, 1: sign-flipped θ, 0.5: midpoint)",
            "chord",
        )  # fmt: skip
    _save_panels(fig, "Linear networks: a trained solution and its sign-flipped copy", path)


def _plot_gradient(results: TheoryResults, path: Path) -> None:
    grads = results.logit_gradients
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for loss in ("ce", "mse"):
        ax.plot(grads["logit"], grads[loss], color=COLORS[loss], label=LOSS_LABELS[loss])
    ax.axvspan(grads["logit"].min(), 0, color="red", alpha=0.07, label="wrongly classified")
    ax.set_yscale("log")
    ax.set_xlabel("logit z of an example of class 1 (sigmoid output)")
    ax.set_ylabel("|dL/dz|")
    ax.set_title("Gradient with respect to the logit, one example")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot_bad_start(results: TheoryResults, path: Path) -> None:
    curves = results.bad_start
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
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
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot_restarts(results: TheoryResults, path: Path) -> None:
    probes = [p for p in results.probes if p.restarts]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    titles = {"gd": "gradient descent (fixed epochs)", "lbfgs": "L-BFGS (to a stationary point)"}
    for ax, optimizer in zip(axes, ("gd", "lbfgs"), strict=True):
        for i, probe in enumerate(probes):
            losses = probe.restarts[optimizer].final_losses
            ax.scatter(
                np.full(len(losses), i), losses - losses.min(), color=COLORS[probe.loss], s=14
            )
        ax.set_yscale("symlog", linthresh=1e-8)
        ax.set_xticks(range(len(probes)))
        ax.set_xticklabels([_label(p) for p in probes], rotation=30, ha="right", fontsize=7)
        ax.set_title(titles[optimizer], fontsize=9)
    axes[0].set_ylabel("final objective − best over starts")
    fig.suptitle(f"Random starts (objective = loss + {results.restart_l2:g}/2 ‖w‖²)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ----------------------------------------------------------------------------- numbers


def results_summary(results: TheoryResults) -> dict[str, Any]:
    """The numbers of the study as plain JSON-able values."""
    probes = []
    for p in results.probes:
        h, m = p.hessian, p.midpoint
        probes.append(
            {
                "model": p.model,
                "loss": p.loss,
                "question": p.question,
                "dim": p.dim,
                "hessian_min_eig": float(h.min_eig.min()),
                "hessian_min_relative": float(h.relative_min.min()),
                "hessian_points": len(h.min_eig),
                "hessian_negative": h.n_negative,
                "hessian_fraction_negative": h.fraction_negative,
                "midpoint_segments": m.n_segments,
                "midpoint_violations": m.n_violations,
                "midpoint_worst_excess": m.worst_excess,
                "midpoint_worst_values": list(m.worst_values),
                "restarts": {
                    name: {
                        "final_losses": r.final_losses.tolist(),
                        "loss_range": r.loss_range,
                        "weight_spread": r.weight_spread,
                        "max_final_grad_norm": float(r.final_grad_norms.max()),
                        "l2": r.l2,
                    }
                    for name, r in p.restarts.items()
                },
            }
        )
    flips = [
        {
            "model": s.model,
            "loss": s.loss,
            "flipped_layers": [k + 1 for k in s.flipped_layers],
            "loss_trained": s.result.loss_a,
            "loss_flipped": s.result.loss_b,
            "loss_midpoint": s.result.loss_mid,
            "excess": s.result.excess,
            "violates": s.result.violates,
            "midpoint_hessian_min_eig": s.midpoint_min_eig,
            "midpoint_hessian_max_abs_eig": s.midpoint_max_abs_eig,
        }
        for s in results.sign_flips
    ]
    return {
        "pair": list(results.pair),
        "n_samples": results.n_samples,
        "input_dim": results.input_dim,
        "weight_scale": results.weight_scale,
        "restart_l2": results.restart_l2,
        "eig_rtol": EIG_RTOL,
        "midpoint_rtol": MIDPOINT_RTOL,
        "verdicts": {
            f"q{v.question}": {"convex": v.convex, "answer": v.answer} for v in results.verdicts
        },
        "probes": probes,
        "sign_flips": flips,
        "bad_start": {
            loss: {
                "accuracy_start": float(results.bad_start.accuracy[loss][0]),
                "accuracy_end": float(results.bad_start.accuracy[loss][-1]),
                "grad_norm_start": float(results.bad_start.grad_norm[loss][0]),
            }
            for loss in ("ce", "mse")
        },
    }


def flat_metrics(results: TheoryResults) -> dict[str, float]:
    """Scalar metrics with MLflow-safe names, e.g. `q1.logistic_3_vs_8.mse.hessian_negative`."""

    def key(*parts: str) -> str:
        cleaned = [
            "".join(c if c.isalnum() else "_" for c in part).strip("_").lower() for part in parts
        ]
        return ".".join("_".join(filter(None, c.split("_"))) for c in cleaned)

    metrics: dict[str, float] = {}
    for p in results.probes:
        base = (f"q{p.question}", p.model, p.loss)
        metrics[key(*base, "hessian_min_relative")] = float(p.hessian.relative_min.min())
        metrics[key(*base, "hessian_fraction_negative")] = p.hessian.fraction_negative
        metrics[key(*base, "midpoint_violations")] = float(p.midpoint.n_violations)
        metrics[key(*base, "midpoint_worst_excess")] = p.midpoint.worst_excess
        for name, r in p.restarts.items():
            metrics[key(*base, f"{name}_loss_range")] = r.loss_range
            metrics[key(*base, f"{name}_weight_spread")] = r.weight_spread
    for s in results.sign_flips:
        metrics[key("q2", s.model, s.loss, "sign_flip_excess")] = s.result.excess
    for v in results.verdicts:
        for loss, convex in v.convex.items():
            metrics[key(f"q{v.question}", "verdict", loss, "convex")] = float(convex)
    return metrics


# ----------------------------------------------------------------------------- markdown


def _fmt(value: float) -> str:
    return f"{value:.3g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.2e}"


def _probe_table(probes: list[ProbeResult]) -> list[str]:
    lines = [
        "| model | loss | params | min eig | min eig / max abs eig | points with eig < 0 "
        "| midpoint violations | worst L(mid) − chord (L(a), L(b), L(mid)) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for p in probes:
        h, m = p.hessian, p.midpoint
        values = ", ".join(_fmt(v) for v in m.worst_values)
        lines.append(
            f"| {p.model} | {LOSS_LABELS[p.loss]} | {p.dim} | {_fmt(float(h.min_eig.min()))} "
            f"| {_fmt(float(h.relative_min.min()))} | {h.n_negative}/{len(h.min_eig)} "
            f"| {m.n_violations}/{m.n_segments} | {_fmt(m.worst_excess)} ({values}) |"
        )
    return lines


def _restart_table(probes: list[ProbeResult]) -> list[str]:
    lines = [
        "| model | loss | optimiser | final objective: min – max | range | weight spread "
        "| max final grad norm |",
        "|---|---|---|---|---|---|---|",
    ]
    for p in probes:
        for name, r in p.restarts.items():
            lines.append(
                f"| {p.model} | {LOSS_LABELS[p.loss]} | {name} "
                f"| {r.final_losses.min():.6f} – {r.final_losses.max():.6f} "
                f"| {_fmt(r.loss_range)} | {_fmt(r.weight_spread)} "
                f"| {_fmt(float(r.final_grad_norms.max()))} |"
            )
    return lines


def _restart_findings(probes: list[ProbeResult]) -> list[str]:
    """Sentences read off the restart numbers (agreement = range below 1e-6 relative)."""
    lines = []
    for p in probes:
        for name, r in p.restarts.items():
            agree = r.loss_range <= 1e-6 * max(1.0, abs(float(r.final_losses.min())))
            opt = "gradient descent" if name == "gd" else "L-BFGS"
            what = (
                "all starts reach the same objective"
                if agree
                else f"final objectives differ by up to {_fmt(r.loss_range)}"
            )
            lines.append(
                f"- {_label(p)}, {opt}: {what}; final weights differ by up to "
                f"{_fmt(r.weight_spread)} of their norm."
            )
    return lines


def _separability_sentence(results: TheoryResults) -> str:
    pair = f"{results.pair[0]}-vs-{results.pair[1]}"
    fit = (
        f"cross-entropy without it fits the {pair} sample to training accuracy "
        f"{results.pair_train_accuracy:.3f} with ‖w‖ = {results.pair_weight_norm:.3g}"
    )
    if results.pair_train_accuracy == 1.0:
        return (
            f"It is needed: {fit}; the sample is linearly separable, so CE has no minimiser "
            "(the weights grow without bound as long as the optimiser runs) and 'the same "
            "answer' would be undefined."
        )
    return (
        f"Here {fit}: this sample is evidently not linearly separable in these dimensions "
        "(a separable one is fitted to accuracy 1), so CE has a finite minimiser even without "
        "the term; it is kept so both losses are compared on the same objective (on a "
        "separable sample CE alone has none: its weights would grow without bound)."
    )


def _verdict_line(results: TheoryResults, question: int) -> str:
    verdict = next(v for v in results.verdicts if v.question == question)
    found = [LOSS_LABELS[loss] for loss, convex in verdict.convex.items() if not convex]
    kept = [LOSS_LABELS[loss] for loss, convex in verdict.convex.items() if convex]
    parts = []
    if found:
        parts.append(f"a convexity violation was measured for {' and '.join(found)}")
    if kept:
        parts.append(f"none was found for {' and '.join(kept)}")
    return f"**Verdict: {verdict.answer}** is convex in the weights ({'; '.join(parts)})."


def _markdown(results: TheoryResults) -> str:
    q1 = [p for p in results.probes if p.question == 1]
    q2 = [p for p in results.probes if p.question == 2]
    bad = results.bad_start
    n_points = len(results.probes[0].hessian.min_eig)
    out = [
        "# Is the loss convex in the weights?",
        "",
        f"Measured on real MNIST training images: {results.n_samples} images of the digits "
        f"{results.pair[0]} and {results.pair[1]} for the binary problem and {results.n_samples} "
        "images of all ten digits for the 10-class problems, each reduced by PCA to "
        f"{results.input_dim - 1} whitened components plus a constant 1 (the bias), so the models "
        "are small enough for exact float64 Hessians.",
        "",
        "Probes, each run on every model and loss:",
        "",
        f"- **Hessian**: the exact Hessian (torch.func, float64) at {n_points} random points, "
        f"weights ~ N(0, {results.weight_scale:g}²). An eigenvalue counts as negative below "
        f"−{EIG_RTOL:g} × the largest |eigenvalue| at that point (far above float64 rounding).",
        "- **Midpoint**: along random segments [a, b] with both ends ~ "
        f"N(0, {results.weight_scale:g}²), a violation is L((a+b)/2) > (L(a)+L(b))/2 + "
        f"{MIDPOINT_RTOL:g} × max(1, |chord|).",
        "",
        "A single violation proves a loss non-convex; finding none is evidence, which the argument "
        "under each question turns into a statement.",
        "",
        "## Question 1: logistic regression",
        "",
        _verdict_line(results, 1),
        "",
        *_probe_table(q1),
        "",
        f"![Smallest Hessian eigenvalues]({FIGURES['hessian']})",
        "",
        f"![Loss along the worst segment]({FIGURES['slices']})",
        "",
        "**Why.** With logits z = Wx, cross-entropy is a log-sum-exp of z minus a linear term, "
        "so its Hessian is Σₙ (diag(pₙ) − pₙpₙᵀ) ⊗ xₙxₙᵀ / N, a sum of positive semi-definite "
        "terms: convex in W for any data. For MSE on a sigmoid, one example of class 1 has "
        "ℓ(z) = (1 − σ(z))², whose second derivative −2σ(1 − σ)²(1 − 3σ) is negative wherever "
        "σ(z) < 1/3, i.e. on the wrong side: composed with the linear map z = wᵀx this gives "
        "negative curvature along x, so MSE is not convex in w.",
        "",
        "### Random starts",
        "",
        f"Both losses carry an L2 term {results.restart_l2:g}/2 ‖w‖² here. "
        + _separability_sentence(results)
        + " With it the CE objective is strictly convex and has exactly one minimiser. "
        "Gradient descent uses the study's "
        "fixed budget (epochs, learning rate); L-BFGS runs until the gradient vanishes, so "
        "differences there are between stationary points, not unfinished runs.",
        "",
        *_restart_table(q1),
        "",
        *_restart_findings(q1),
        "",
        "Distinct stationary points are a consequence of non-convexity, not a test of it: a "
        "non-convex loss may still reach one minimum from every start sampled, which is why the "
        "verdict rests on the Hessian and midpoint probes.",
        "",
        f"![Random starts]({FIGURES['restarts']})",
        "",
        "### Confidently wrong predictions",
        "",
        "For one example the gradient of MSE with respect to its logit, 2(σ − y)σ(1 − σ), "
        "vanishes as the sigmoid saturates on the wrong side; that of cross-entropy, σ − y, "
        "tends to 1.",
        "",
        f"![Gradient against logit]({FIGURES['gradient']})",
        "",
        "Starting gradient descent from a confidently wrong solution (the best CE solution, "
        f"negated and scaled to a median |logit| of {bad.start_logit:g}): accuracy goes from "
        f"{bad.accuracy['ce'][0]:.3f} to {bad.accuracy['ce'][-1]:.3f} with cross-entropy and "
        f"from {bad.accuracy['mse'][0]:.3f} to {bad.accuracy['mse'][-1]:.3f} with MSE in "
        f"{len(bad.accuracy['ce']) - 1} epochs; the initial gradient norm is "
        f"{_fmt(float(bad.grad_norm['ce'][0]))} for CE against "
        f"{_fmt(float(bad.grad_norm['mse'][0]))} for MSE.",
        "",
        f"![Training from a bad start]({FIGURES['bad_start']})",
        "",
        "## Question 2: linear network f(x) = W2 W1 x (and W3 W2 W1 x)",
        "",
        _verdict_line(results, 2),
        "",
        "**Sign flip.** Train the network, negate W1 and W2 (two layers, so the product and every "
        "prediction are unchanged): both points have the same loss. Their midpoint has "
        "W1 = W2 = 0, so f = 0 and the loss of predicting uniform probabilities, which is worse. "
        "A convex loss would be at most the common value there.",
        "",
        "| model | loss | L(θ) | L(flipped θ) | L(midpoint) | L(mid) − chord "
        "| min / max abs Hessian eig at midpoint |",
        "|---|---|---|---|---|---|---|",
        *[
            f"| {s.model} | {LOSS_LABELS[s.loss]} | {s.result.loss_a:.6f} | "
            f"{s.result.loss_b:.6f} | {s.result.loss_mid:.6f} | {_fmt(s.result.excess)} "
            f"| {_fmt(s.midpoint_min_eig)} / {_fmt(s.midpoint_max_abs_eig)} |"
            for s in results.sign_flips
        ],
        "",
        f"![Sign flip]({FIGURES['sign_flip']})",
        "",
        "Random probes of the same networks:",
        "",
        *_probe_table(q2),
        "",
        "**Why.** Cross-entropy is convex in the end-to-end matrix W = W2 W1 (question 1; MSE "
        "on a softmax is not convex even there). But convexity in W does not carry over to the "
        "parameters: a convex function composed with an affine map is convex, and "
        "(W1, W2) ↦ W2 W1 is not affine (it is bilinear). Along the segment from (W1, W2) to "
        "(−W1, −W2) the product is (1 − 2t)² W2 W1, which shrinks to 0 and grows back, so the "
        "loss rises and falls again. At (0, 0) the Hessian of a two-layer network has "
        "eigenvalues ±sᵢ, the singular values of the loss gradient ∂L/∂W at W = 0 (the "
        "symmetric spectra in the table), so it is a saddle whenever predicting nothing is not "
        "already optimal; with three layers the same holds at (0, 0, W3). So neither loss is "
        "convex in the parameters of a linear network, of any depth ≥ 2; the earlier study's "
        "answer, MSE, is wrong.",
        "",
        "Files: `results.json` holds every number above.",
        "",
    ]
    return "\n".join(out)


def write_report(results: TheoryResults, out_dir: Path) -> list[Path]:
    """Write report.md, the figures and results.json into out_dir (created if missing).

    Returns:
        The paths written, report.md first.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    plotters = {
        "hessian": _plot_hessian,
        "slices": _plot_slices,
        "sign_flip": _plot_sign_flip,
        "gradient": _plot_gradient,
        "bad_start": _plot_bad_start,
        "restarts": _plot_restarts,
    }
    figures = []
    for name, plot in plotters.items():
        path = out_dir / FIGURES[name]
        plot(results, path)
        figures.append(path)
    report = out_dir / "report.md"
    report.write_text(_markdown(results))
    summary = out_dir / "results.json"
    summary.write_text(json.dumps(results_summary(results), indent=2))
    return [report, *figures, summary]
