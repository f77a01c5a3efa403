"""Many trials of a small model trained together as one program: stacked weights, one forward.

A sweep of small dense networks leaves a GPU idle: every step of one trial is a few tiny kernels,
so a trial is bound by kernel launches, not arithmetic. Here K trials share each step instead.
Each trial's classifier is the registered module `build_classifier` builds; trials of the same
shape are stacked with `torch.func.stack_module_state` into (K, ...) tensors and their forward is
one `torch.vmap` of `torch.func.functional_call` over the stack, so there is one model definition
for the loop and the pack. Trials of different shapes (an MLP's width, depth, activation) go in
separate stacks: vmap needs equal shapes, and the sweep already hands a device a pack of one width
(the sweep's `split_packs`), so padding would buy little and cost masks in every layer.

Each trial keeps everything that makes it the trial `training.loop.fit` trains alone under the
same seed: the same initial weights and normalisation (built from its own fold), its own batch
order (a generator seeded like the loop's), its own dropout stream (its own generator, seeded like
the loop seeds the default one), its own fold and number of epochs, its own learning rate at every
step (the loop's own schedule, `training.optim.scheduled_rates`) and weight decay. The optimiser
is `torch.optim`'s step on the stacked weights with a rate per trial
(`training.stacked_optim`). On the CPU, where the loop's dropout draws can be reproduced, a
packed trial's history equals the lone trial's up to float rounding (batched products sum in
another order). On CUDA the loop's fused dropout kernel draws from the global Philox stream, which
no per-trial generator can reproduce, so there the masks differ in realisation, not in
distribution.

A trial leaves its pack when its epochs are done, when its loss becomes non-finite (it is failed,
the others go on) or when its progress callback raises `StopTrial` (a pruner stopped it).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from torch import Tensor, nn

from digits.config import Recipe
from digits.errors import TrainingDiverged
from digits.models import build_classifier, model_entry, parse_args
from digits.models.mlp import MLPArgs
from digits.training.loop import EpochStats, epoch_train_scores
from digits.training.recipe import FoldResult
from digits.training.trial_stack import Member, TrialStack, shape_key

PackState = Literal["complete", "stopped", "failed"]


class StopTrial(Exception):
    """Raised by a trial's `on_epoch` callback to stop training that trial (a pruner's decision)."""


@dataclass(frozen=True)
class PackedFit:
    """One trial of a pack: a recipe trained on one fold.

    Attributes:
        recipe: A recipe `can_pack` is true for.
        train_idx: (N_k,) indices of its training images into the pack's images.
        val_idx: Optional (M_k,) indices of its validation images, scored after every epoch.
        seed: Fixes the initial weights, batch order and dropout, as for `training.loop.fit`.
        on_epoch: Called with each epoch's `EpochStats`; raising `StopTrial` stops this trial.
    """

    recipe: Recipe
    train_idx: np.ndarray | Tensor
    val_idx: np.ndarray | Tensor | None
    seed: int
    on_epoch: Callable[[EpochStats], None] | None = None


@dataclass
class PackedResult:
    """What happened to one trial of a pack.

    Attributes:
        history: One `EpochStats.as_dict()` per epoch it trained. `seconds` is the pack's epoch
            wall time (every trial of the pack shared it).
        state: "complete" (all its epochs), "stopped" (`StopTrial`) or "failed" (diverged).
        train_seconds: Its share of the pack's wall time (each epoch's time split evenly between
            the trials still training), so the shares of a pack add up to the pack's time.
        failure: Why it failed (the same message `training.loop.fit` raises), for "failed".
        model: The trained `PixelClassifier`, in eval mode on the pack's device, for "complete".
    """

    history: list[dict[str, float]] = field(default_factory=list)
    state: PackState = "complete"
    train_seconds: float = 0.0
    failure: str | None = None
    model: nn.Module | None = None


def can_pack(recipe: Recipe) -> bool:
    """Whether `fit_packed` trains this recipe: a model whose registration says it packs,
    without augmentation or split learning rates."""
    optim = recipe.optim
    return (
        model_entry(recipe.model.name).packs
        and not optim.augment.enabled
        and optim.backbone_lr_scale == 1.0
    )


def mlp_args(recipe: Recipe) -> MLPArgs:
    """The MLP arguments of an MLP recipe, its defaults filled in."""
    args = parse_args(recipe.model.name, recipe.model.args)
    assert isinstance(args, MLPArgs)
    return args


def stack_key(recipe: Recipe) -> tuple[object, ...]:
    """Settings trials must share to take the same steps together, beside their model's shape.

    Learning rate, schedule, weight decay and epochs may differ: each trial has its own.
    """
    optim = recipe.optim
    momentum = optim.momentum if optim.optimizer == "sgd" else 0.0
    return (optim.batch_size, optim.optimizer, momentum, optim.label_smoothing)


def _index(idx: np.ndarray | Tensor, device: torch.device) -> Tensor:
    return torch.as_tensor(np.asarray(idx) if isinstance(idx, np.ndarray) else idx).to(
        device, torch.long
    )


def _members(fits: Sequence[PackedFit], images: Tensor, device: torch.device) -> list[Member]:
    members = []
    for position, fit in enumerate(fits):
        if not can_pack(fit.recipe):
            raise ValueError(
                f"fit {position}: only MLPs (models registered with packs=True) without "
                "augmentation or a backbone rate can be packed"
            )
        optim = fit.recipe.optim
        train_idx = _index(fit.train_idx, device)
        # Built exactly as `training.recipe.train_recipe` builds it: the same initial weights,
        # and normalisation constants from this fold's training images only.
        model = build_classifier(
            fit.recipe.model.name,
            fit.recipe.model.args,
            image_shape=tuple(images.shape[1:]),  # type: ignore[arg-type]
            seed=fit.seed,
            train_images=images[train_idx],
        ).to(device)
        n_batches = math.ceil(train_idx.shape[0] / optim.batch_size)
        members.append(
            Member(
                position=position,
                fit=fit,
                model=model,
                n_batches=n_batches,
                train_idx=train_idx,
                val_idx=_index(fit.val_idx, device) if fit.val_idx is not None else None,
                order=torch.Generator(device=device).manual_seed(fit.seed),
                dropout=torch.Generator(device=device).manual_seed(fit.seed),
            )
        )
    return members


def plan_stacks(
    members: list[Member], image_shape: tuple[int, ...], device: torch.device
) -> list[TrialStack]:
    """Group members into stacks: one per model shape, `stack_key` and batch count."""
    groups: dict[tuple[object, ...], list[Member]] = {}
    for member in members:
        key = (*stack_key(member.fit.recipe), member.n_batches, shape_key(member.model))
        groups.setdefault(key, []).append(member)
    return [TrialStack(group, image_shape, device) for group in groups.values()]


def fit_packed(
    fits: Sequence[PackedFit],
    images: np.ndarray | Tensor,
    labels: np.ndarray | Tensor,
    device: torch.device,
    *,
    pad_widths: bool | None = None,
) -> list[PackedResult]:
    """Train every fit of the pack together; each as `training.loop.fit` would train it alone.

    Args:
        fits: The trials; each names its fold by indices into `images`.
        images: (N, H, W, C) uint8 images every fit draws from (moved to `device` once).
        labels: (N,) integer labels.
        device: Where the pack trains.
        pad_widths: Accepted for existing callers and ignored: trials of different widths always
            train in separate stacks (see the module's docstring).

    Returns:
        One `PackedResult` per fit, in the order of `fits`.

    Raises:
        ValueError: when a fit's recipe cannot be packed (see `can_pack`).
    """
    del pad_widths
    x = torch.as_tensor(images).to(device)  # (N, H, W, C) uint8, once for every trial
    y = torch.as_tensor(np.asarray(labels) if isinstance(labels, np.ndarray) else labels).to(
        device, torch.long
    )
    results = [PackedResult() for _ in fits]
    stacks = plan_stacks(_members(fits, x, device), tuple(x.shape[1:]), device)
    epoch = 0
    while stacks:
        epoch += 1
        started = time.perf_counter()
        outcomes = [stack.train_epoch(x, y) for stack in stacks]
        train_seconds = time.perf_counter() - started
        # The one host sync of the epoch for the whole pack.
        host = [(losses.cpu(), correct.cpu()) for losses, correct in outcomes]
        scores = [stack.evaluate(x, y) for stack in stacks]
        host_scores = [(loss.cpu(), hits.cpu()) for loss, hits in scores]
        seconds = time.perf_counter() - started
        active = sum(len(stack.members) for stack in stacks)
        for stack, (losses, correct), (val_loss, val_hits) in zip(
            stacks, host, host_scores, strict=True
        ):
            kept = []
            for i, member in enumerate(stack.members):
                result = results[member.position]
                result.train_seconds += seconds / active
                state = _epoch_end(
                    member, result, epoch, losses[i], int(correct[i]),
                    float(val_loss[i]), int(val_hits[i]), seconds, train_seconds,
                )  # fmt: skip
                if state is None:
                    kept.append(i)
                    continue
                result.state = state
                if state == "complete":
                    result.model = stack.release(i)
            if len(kept) < len(stack.members):
                stack.keep(kept)
        stacks = [stack for stack in stacks if stack.members]
    return results


def _epoch_end(
    member: Member,
    result: PackedResult,
    epoch: int,
    losses: Tensor,
    correct: int,
    val_loss_sum: float,
    val_correct: int,
    seconds: float,
    train_seconds: float,
) -> PackState | None:
    """Record one member's epoch as the loop does; the state it leaves in, or None to go on."""
    optim = member.fit.recipe.optim
    n = member.train_idx.shape[0]
    try:
        train_loss, train_accuracy = epoch_train_scores(losses, correct, n, optim, epoch)
    except TrainingDiverged as error:
        result.failure = str(error)
        return "failed"
    val_loss = val_accuracy = float("nan")
    if member.val_idx is not None:
        m = member.val_idx.shape[0]
        val_loss, val_accuracy = val_loss_sum / m, val_correct / m
    stats = EpochStats(
        epoch=epoch,
        train_loss=train_loss,
        train_accuracy=train_accuracy,
        val_loss=val_loss,
        val_accuracy=val_accuracy,
        seconds=seconds,
        images_per_second=n / train_seconds,
    )
    result.history.append(stats.as_dict())
    if member.fit.on_epoch is not None:
        try:
            member.fit.on_epoch(stats)
        except StopTrial:
            return "stopped"
    return "complete" if epoch == optim.epochs else None


def evaluate_folds_packed(
    fits: Sequence[PackedFit],
    images: np.ndarray | Tensor,
    labels: np.ndarray | Tensor,
    device: torch.device,
    *,
    pad_widths: bool | None = None,
) -> list[FoldResult | TrainingDiverged | StopTrial]:
    """`training.recipe.evaluate_fold` for every fit of a pack, trained together.

    Args:
        pad_widths: Ignored; see `fit_packed`.

    Returns:
        Per fit, in order: its `FoldResult` (the last epoch's validation scores), or, not raised,
        the `TrainingDiverged` it failed with or the `StopTrial` that stopped it.
    """
    out: list[FoldResult | TrainingDiverged | StopTrial] = []
    for result in fit_packed(fits, images, labels, device, pad_widths=pad_widths):
        if result.state == "failed":
            out.append(TrainingDiverged(result.failure or "training diverged"))
        elif result.state == "stopped":
            out.append(StopTrial(f"stopped after epoch {len(result.history)}"))
        else:
            last = result.history[-1]
            out.append(
                FoldResult(
                    val_accuracy=last["val_accuracy"],
                    val_loss=last["val_loss"],
                    history=result.history,
                    train_seconds=result.train_seconds,
                )
            )
    return out
