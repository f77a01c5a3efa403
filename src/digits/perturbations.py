"""The changes a trained classifier is scored on, by name: the catalogue without torch.

`digits.robustness` applies them (see its docstring for what each one does); reports and figures
read their names, families and strengths from here, without importing torch.
"""

from __future__ import annotations

from dataclasses import dataclass

ROBUST_PREFIX = "robust/"


@dataclass(frozen=True)
class Family:
    """A kind of change whose strength varies: what the strength measures and its no-change value.

    Attributes:
        name: "shift", "rotate", "noise", "thin", "thick", "lowres" or "invert".
        unit: What the strength is measured in, for an axis label.
        identity: The strength that changes nothing (where `clean` sits on the family's curve).
    """

    name: str
    unit: str
    identity: float = 0.0


FAMILIES: dict[str, Family] = {
    family.name: family
    for family in (
        Family("shift", "pixels"),
        Family("rotate", "degrees"),
        Family("noise", "noise standard deviation (grey levels of 255)"),
        Family("thin", "pixels of stroke width removed"),
        Family("thick", "pixels of stroke width added"),
        Family("lowres", "downsampling factor", identity=1.0),
        Family("invert", "inverted (0 no, 1 yes)"),
    )
}


@dataclass(frozen=True)
class Perturbation:
    """One named change of the test set (see the module).

    Attributes:
        name: Stable identifier, e.g. "shift_2px"; the metric is `robust/<name>`.
        family: Key of `FAMILIES`, or "clean" for the unchanged set.
        strength: Pixels, degrees, grey levels or a factor, in the family's unit.
    """

    name: str
    family: str
    strength: float

    @property
    def metric(self) -> str:
        """The metric name under which its accuracy is logged, e.g. "robust/shift_2px"."""
        return f"{ROBUST_PREFIX}{self.name}"


CLEAN = Perturbation("clean", "clean", 0.0)
_COMMON = (
    CLEAN,
    Perturbation("shift_2px", "shift", 2),
    Perturbation("shift_4px", "shift", 4),
    Perturbation("rotate_10deg", "rotate", 10),
    Perturbation("rotate_20deg", "rotate", 20),
    Perturbation("noise_sd25", "noise", 25),
    Perturbation("noise_sd50", "noise", 50),
    Perturbation("thin_1px", "thin", 1),
    Perturbation("thin_2px", "thin", 2),
    Perturbation("thick_1px", "thick", 1),
    Perturbation("thick_2px", "thick", 2),
    Perturbation("lowres_2x", "lowres", 2),
    Perturbation("lowres_4x", "lowres", 4),
)
_INVERT = Perturbation("invert", "invert", 1)


def perturbations(dataset: str) -> tuple[Perturbation, ...]:
    """The perturbations scored for `dataset` ("mnist" or "svhn"), `clean` first, in a fixed order.

    MNIST adds `invert`: its digits are always light on black, so a dark digit on paper is new to
    a model trained on it; SVHN holds both polarities already.
    """
    if dataset not in ("mnist", "svhn"):
        raise ValueError(f"unknown data set {dataset!r}; expected 'mnist' or 'svhn'")
    return (*_COMMON, _INVERT) if dataset == "mnist" else _COMMON
