"""The convexity study's report.md: the probes, the tables, and the argument under each question."""

from __future__ import annotations

from digits.reports.theory.figures import FIGURES, probe_label
from digits.studies.convexity import (
    EIG_RTOL,
    LOSS_LABELS,
    MIDPOINT_RTOL,
    ProbeResult,
    TheoryResults,
)


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
                f"- {probe_label(p)}, {opt}: {what}; final weights differ by up to "
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


def _introduction(results: TheoryResults) -> list[str]:
    """The title, the data and what each probe counts as a violation."""
    n_points = len(results.probes[0].hessian.min_eig)
    return [
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
    ]


def _question1(results: TheoryResults) -> list[str]:
    """Logistic regression: verdict, probe table, figures, the argument."""
    q1 = [p for p in results.probes if p.question == 1]
    return [
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
    ]


def _random_starts(results: TheoryResults) -> list[str]:
    """Question 1's restarts: both optimisers, the table and what it shows."""
    q1 = [p for p in results.probes if p.question == 1]
    return [
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
    ]


def _confidently_wrong(results: TheoryResults) -> list[str]:
    """Question 1's gradients at wrong logits and training from a bad start."""
    bad = results.bad_start
    return [
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
    ]


def _question2(results: TheoryResults) -> list[str]:
    """Linear networks: verdict, the sign flip, probe table, the argument."""
    q2 = [p for p in results.probes if p.question == 2]
    return [
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


def theory_markdown(results: TheoryResults) -> str:
    """report.md: the probes, a verdict, table, figures and argument per question."""
    sections = (_introduction, _question1, _random_starts, _confidently_wrong, _question2)
    return "\n".join(line for section in sections for line in section(results))
