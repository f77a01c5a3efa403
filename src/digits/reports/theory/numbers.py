"""The convexity study's numbers: results.json and the scalar metrics recorded with the run."""

from __future__ import annotations

from typing import Any

from digits.studies.convexity import EIG_RTOL, MIDPOINT_RTOL, TheoryResults


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
