"""Random probes of a loss's convexity: exact Hessian spectra, midpoint checks, line slices.

A found violation (a negative Hessian eigenvalue, a midpoint above its chord) proves non-convexity;
finding none is evidence of convexity, not a proof.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from digits.studies.convexity.losses import LossFn

# An eigenvalue counts as negative only below -EIG_RTOL * max|eig| at that point: float64
# rounding in an exact Hessian of a convex loss stays many orders of magnitude above this.
EIG_RTOL = 1e-10
# A midpoint counts as above its chord only by more than MIDPOINT_RTOL * max(1, chord value).
MIDPOINT_RTOL = 1e-9


def normal_points(n: int, dim: int, scale: float, generator: torch.Generator) -> Tensor:
    """(n, dim) float64 points drawn from N(0, scale^2 I) with `generator`."""
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
    smallest, largest = hessian_eigenvalues(loss_fn, normal_points(n_points, dim, scale, generator))
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
    ends_a = normal_points(n_segments, dim, scale, generator)
    ends_b = normal_points(n_segments, dim, scale, generator)
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
