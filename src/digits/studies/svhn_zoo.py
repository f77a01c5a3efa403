"""The classifier-zoo study (Q4): which model suits SVHN, and the original's Table 2 to beat.

Training and scoring are the engine's (`digits.training.recipe`); what is particular to this
study is the row a trained model leaves (`ZooRow`), the original paper's numbers, and the findings
drawn from the rows: the best model, the most accurate per parameter, the fastest, and whether the
deepest model's train/test gap supports the original's claim that deep models overfit small images.
Depth is the registry's fact (`ModelEntry.weight_layers`), not a table kept here.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from digits.errors import DigitsError

if TYPE_CHECKING:
    from digits.training.recipe import FinalResult

# Table 2 of the study this project improves on: its best model on SVHN, trained at 32×32 with
# random rotation, random crop and random horizontal flip.
ORIGINAL_TABLE2: dict[str, Any] = {
    "model": "ResNet-101",
    "image_size": 32,
    "augmentation": "random rotation, random crop, random horizontal flip",
    "accuracy": 0.8392,
    "precision": 0.8457,
    "recall": 0.8196,
    "f1": 0.8278,
}
OUR_AUGMENTATION = "no horizontal flip (a mirrored digit is another glyph)"


def weight_layers(model: str, args: Mapping[str, Any]) -> int | None:
    """Weight layers on the longest input-to-output path of a registered architecture.

    The depth the architectures' names count: the "deep models overfit small images" question is
    about depth, and parameter count is a poor stand-in for it (VGG-16 has more parameters than
    ResNet-101). Arguments the architecture does not take (a `comparison.csv` records the zoo's
    columns for every model) are left out; None for an unregistered or badly argued model.
    """
    # Imported here: the registry brings torch, which the reports and figures need only here.
    from digits.models import model_entry

    try:
        entry = model_entry(model)
        own = {key: value for key, value in args.items() if key in entry.args.model_fields}
        return entry.depth(own)
    except DigitsError:
        return None


@dataclass(frozen=True)
class ZooRow:
    """One zoo model, trained on every training image and scored once on the test set.

    Attributes:
        label: The model's key in `zoo.models` (e.g. "resnet18"); names its files and runs.
        model: The registered architecture it builds (e.g. "resnet18", "lenet5").
        args: The architecture's arguments with defaults filled in
            (`parse_args(model, args).model_dump()`): a bare `{}` would hide that the ImageNet
            models default to `pretrained: true`.
        accuracy: Test accuracy in [0, 1].
        precision: Test macro precision.
        recall: Test macro recall.
        f1: Test macro F1.
        train_accuracy: Accuracy on the training images after training (eval mode, no augment).
        parameters: Trainable parameters.
        train_seconds: Wall time of training.
        images_per_second: Training throughput.
        epochs: Epochs trained.
        registered: Registry entry, e.g. "zoo-svhn-resnet18 v3"; "" when not registered.
        run_id: The tracking run that holds its parameters, metrics and artifacts.
        robustness: Accuracy on changed copies of the test set, {`robust/<name>`: accuracy}
            (`digits.robustness`); empty when not scored.
    """

    label: str
    model: str
    args: dict[str, Any]
    accuracy: float
    precision: float
    recall: float
    f1: float
    train_accuracy: float
    parameters: int
    train_seconds: float
    images_per_second: float
    epochs: int
    registered: str = ""
    run_id: str = ""
    robustness: Mapping[str, float] = field(default_factory=dict)

    @classmethod
    def from_final(
        cls,
        label: str,
        model: str,
        args: Mapping[str, Any],
        result: FinalResult,
        registered: str = "",
        run_id: str = "",
    ) -> ZooRow:
        """The row of one `fit_final` result."""
        return cls(
            label=label,
            model=model,
            args=dict(args),
            accuracy=result.metrics.accuracy,
            precision=result.metrics.precision_macro,
            recall=result.metrics.recall_macro,
            f1=result.metrics.f1_macro,
            train_accuracy=result.train_accuracy,
            parameters=result.parameters,
            train_seconds=result.train_seconds,
            images_per_second=result.images_per_second,
            epochs=len(result.history),
            registered=registered,
            run_id=run_id,
            robustness=dict(result.robustness),
        )

    @property
    def gap(self) -> float:
        """Train minus test accuracy: how much better the model does on images it has seen."""
        return self.train_accuracy - self.accuracy

    @functools.cached_property
    def depth(self) -> int | None:
        """Weight layers on the longest path, as its registration counts them; None for an
        architecture not registered.

        Kept once read, and pickled with the row: a process that draws the row's figures then
        needs neither the model registry nor torch.
        """
        return weight_layers(self.model, self.args)


def dataset_name(dataset: str) -> str:
    """The data set as the report writes it ("SVHN")."""
    return dataset.upper()


def ranked(rows: Sequence[ZooRow]) -> list[ZooRow]:
    """Best test accuracy first; ties: higher F1, then fewer parameters."""
    return sorted(rows, key=lambda r: (-r.accuracy, -r.f1, r.parameters))


def millions(parameters: int) -> str:
    """A parameter count in millions, three significant digits ("11.2 M")."""
    return f"{parameters / 1e6:.3g} M"


def findings(rows: Sequence[ZooRow], dataset: str) -> list[str]:
    """Bullets and the closing sentence of "which model suits <dataset> and why"."""
    order = ranked(rows)
    best = order[0]
    efficient = max(rows, key=lambda r: r.accuracy / max(r.parameters, 1))
    fastest = max(rows, key=lambda r: r.images_per_second)
    lines = [
        f"- **Best by test accuracy: {best.label}**, accuracy {best.accuracy:.4f} "
        f"(macro precision {best.precision:.4f}, recall {best.recall:.4f}, F1 {best.f1:.4f}), "
        f"{millions(best.parameters)} parameters.",
        f"- **Most accuracy per million parameters: {efficient.label}**, "
        f"{efficient.accuracy / (efficient.parameters / 1e6):.3f} per M "
        f"(accuracy {efficient.accuracy:.4f} with {millions(efficient.parameters)}).",
        f"- **Fastest to train: {fastest.label}**, {fastest.images_per_second:,.0f} images/s "
        f"({fastest.train_seconds:.1f} s for {fastest.epochs} epochs).",
    ]
    with_depth = [r for r in rows if r.depth is not None]
    if len(with_depth) >= 2:
        deepest = max(with_depth, key=lambda r: (r.depth, r.parameters))
        shallowest = min(with_depth, key=lambda r: (r.depth, r.parameters))
        measure = "weight layers"
    else:  # too few known architectures: fall back on size
        deepest = max(rows, key=lambda r: r.parameters)
        shallowest = min(rows, key=lambda r: r.parameters)
        measure = "parameters"

    def size(row: ZooRow) -> str:
        return f"{row.depth} {measure}" if measure == "weight layers" else millions(row.parameters)

    sentences = []
    if len(rows) >= 2:
        runner_up = order[1]
        sentences.append(
            f"{best.label} has the highest test accuracy on {dataset_name(dataset)}, "
            f"{best.accuracy - runner_up.accuracy:.4f} above the next model ({runner_up.label})."
        )
        if efficient is not best:
            sentences.append(
                f"{efficient.label} reaches {efficient.accuracy / best.accuracy:.1%} of that "
                f"accuracy with {best.parameters / max(efficient.parameters, 1):.1f}× fewer "
                "parameters."
            )
    else:
        sentences.append(
            f"{best.label} is the only model trained, so nothing is compared; its train/test "
            f"gap is {best.gap:+.4f}."
        )
    if deepest is not shallowest:
        lines.append(
            f"- **Train/test gap, deepest vs shallowest (by {measure}):** "
            f"{deepest.label} ({size(deepest)}) {deepest.gap:+.4f} vs "
            f"{shallowest.label} ({size(shallowest)}) {shallowest.gap:+.4f}."
        )
        if deepest.gap > shallowest.gap:
            verdict = "consistent with the original study's claim that deep models overfit"
        else:
            verdict = "evidence against the original study's claim that deep models overfit"
        sentences.append(
            f"The deepest model's train/test gap is {deepest.gap - shallowest.gap:+.4f} "
            f"against the shallowest's: {verdict} small images."
        )
    lines += ["", "What the numbers show: " + " ".join(sentences)]
    return lines
