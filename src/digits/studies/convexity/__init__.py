"""Is a loss convex in the weights? Measured with exact Hessians, midpoint checks and restarts.

Every loss here is a function of one flat float64 parameter vector, so `torch.func` gives its exact
Hessian. The inputs of every model end in a constant 1 (see `reduce_inputs`), so biases are weights
of the first layer and a linear network f(x) = W_L ... W_1 x realises any affine map of
bounded rank; flipping the sign of two of its layers leaves f, and so the loss, unchanged.

A found violation (a negative Hessian eigenvalue, a midpoint above its chord) proves non-convexity;
finding none is evidence of convexity, not a proof, which is why the report states the argument too.

Modules: `losses` (the models and their losses), `probes` (Hessians, midpoints, slices, sign
flips), `restarts` (minimisation from random starts), `bad_start` (gradients at wrong logits),
`study` (`run_theory`: every probe, in a fixed order of random draws, and the verdicts).
"""

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
    EIG_RTOL,
    MIDPOINT_RTOL,
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
    Optimizer,
    RestartResult,
    gradient_descent,
    minimize_lbfgs,
    random_restarts,
)
from digits.studies.convexity.study import (
    ProbeResult,
    Progress,
    SignFlipProbe,
    TheoryResults,
    Verdict,
    run_theory,
)

__all__ = [
    "EIG_RTOL",
    "LOSSES",
    "LOSS_LABELS",
    "MIDPOINT_RTOL",
    "N_CLASSES",
    "RESTART_L2",
    "BadStartCurves",
    "HessianResult",
    "LinearNetwork",
    "LossFn",
    "LossName",
    "MidpointResult",
    "Optimizer",
    "ProbeResult",
    "Progress",
    "RestartResult",
    "SignFlipProbe",
    "SignFlipResult",
    "TheoryResults",
    "Verdict",
    "bad_start_curves",
    "gradient_descent",
    "gradient_vs_logit",
    "hessian_eigenvalues",
    "hessian_min_eigenvalues",
    "linear_network_loss",
    "logistic_loss",
    "loss_slice",
    "midpoint_violations",
    "minimize_lbfgs",
    "random_restarts",
    "reduce_inputs",
    "run_theory",
    "sign_flip_violation",
    "softmax_loss",
]
