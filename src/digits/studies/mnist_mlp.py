"""The dense-network study on MNIST (Q3): Table 1 is a search over the MLP's activation × width;
a second search (`mnist.refine`) then refines the best cell's recipe: augmentation, epochs,
width, depth, dropout, learning rate.

Training, cross-validation and the final fit are the engine's (`digits.training.recipe`,
`digits.sweep`); what is particular to this study is how a trial is named and laid out in its
tables.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from digits.config import Recipe
from digits.models import parse_args
from digits.models.mlp import MLPArgs
from digits.sweep.scheduler import Trial


def _mlp_args(recipe: Recipe) -> MLPArgs:
    """The recipe's MLP arguments with the registry's defaults filled in for those it leaves out."""
    args = parse_args(recipe.model.name, recipe.model.args)
    assert isinstance(args, MLPArgs), f"Table 1 is about the MLP, not {recipe.model.name}"
    return args


def cell_name(recipe: Recipe) -> str:
    """The Table 1 cell of an MLP recipe: `relu-w256-d3-lr0.003-bs512-e20`."""
    args, optim = _mlp_args(recipe), recipe.optim
    return (
        f"{args.activation}-w{args.width}-d{args.depth}"
        f"-lr{optim.lr:g}-bs{optim.batch_size}-e{optim.epochs}"
    )


def table1_fields(recipe: Recipe) -> dict[str, Any]:
    """The MLP's shape and the optimisation settings Table 1 shows, by their short names."""
    args = _mlp_args(recipe)
    return {
        "activation": args.activation,
        "width": args.width,
        "depth": args.depth,
        "dropout": args.dropout,
        "lr": recipe.optim.lr,
        "batch_size": recipe.optim.batch_size,
        "epochs": recipe.optim.epochs,
    }


def table1_rows(trials: Iterable[Trial]) -> list[Mapping[str, Any]]:
    """The completed trials as `digits.reports.mnist.tuning_table` takes them."""
    return [
        {
            "name": cell_name(t.recipe),
            **table1_fields(t.recipe),
            "fold_accuracies": [t.scores[k] for k in sorted(t.scores)],
        }
        for t in trials
        if t.state == "complete"
    ]


def augment_summary(recipe: Recipe) -> str:
    """The recipe's augmentation as `translate=2 rotate_deg=10 ...` (its non-zero settings), or
    `none`."""
    changes = {k: v for k, v in recipe.optim.augment.model_dump().items() if v}
    return " ".join(f"{k}={v:g}" for k, v in changes.items()) or "none"


def refined_name(recipe: Recipe) -> str:
    """A refined recipe's name: its cell name, with `-aug` when it augments its training images."""
    return f"{cell_name(recipe)}{'-aug' if recipe.optim.augment.enabled else ''}"


def refine_rows(trials: Iterable[Trial]) -> list[Mapping[str, Any]]:
    """The completed trials of the refining search, as `digits.reports.mnist.refine_table` takes
    them: each trial's searched values, its whole recipe in short names, its fold accuracies."""
    return [
        {
            "trial": t.name,
            "name": refined_name(t.recipe),
            **table1_fields(t.recipe),
            "weight_decay": t.recipe.optim.weight_decay,
            "augment": augment_summary(t.recipe),
            "fold_accuracies": [t.scores[k] for k in sorted(t.scores)],
        }
        for t in trials
        if t.state == "complete"
    ]
