"""Many trials of a small model trained together as one program: stacked weights, one forward.

A sweep of small dense networks leaves a GPU idle: every step of one trial is a few tiny kernels,
so a trial is bound by kernel launches, not arithmetic. Here K trials share each step instead.
Each trial's classifier is the registered module `build_classifier` builds; trials of the same
shape are stacked with `torch.func.stack_module_state` into (K, ...) tensors and their forward is
one `torch.vmap` of `torch.func.functional_call` over the stack, so there is one model definition
for the loop and the pack. Trials of different shapes (an MLP's width, depth, activation) go in
separate stacks: vmap needs equal shapes, and the sweep already hands a device a pack of one width
(`flows/_packing.split_packs`), so padding would buy little and cost masks in every layer.

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

import copy
import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state

from digits.config import Recipe
from digits.errors import TrainingDiverged
from digits.models import build_classifier, model_entry, parse_args
from digits.models.mlp import MLPArgs
from digits.training.loop import EpochStats, autocast, epoch_train_scores
from digits.training.optim import scheduled_rates
from digits.training.recipe import FoldResult
from digits.training.stacked_optim import StackedOptimizer

PackState = Literal["complete", "stopped", "failed"]

# Rows (trials x images) per evaluation pass: bounds the memory of a wide pack's validation. On a
# CPU, small enough that its temporaries are reused rather than page-faulted in afresh.
EVAL_ROWS = {"cuda": 65536, "cpu": 4096}


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


def shape_key(model: nn.Module) -> tuple[object, ...]:
    """What `torch.vmap` needs equal across a stack: module types, parameter and buffer shapes."""
    modules = tuple((name, type(module).__name__) for name, module in model.named_modules())
    tensors = tuple(
        (name, tuple(t.shape), t.dtype)
        for name, t in (*model.named_parameters(), *model.named_buffers())
    )
    return modules, tensors


def _index(idx: np.ndarray | Tensor, device: torch.device) -> Tensor:
    return torch.as_tensor(np.asarray(idx) if isinstance(idx, np.ndarray) else idx).to(
        device, torch.long
    )


@dataclass
class _Member:
    """One trial inside a stack, with the state that is not stacked."""

    position: int  # index into the pack's fits
    fit: PackedFit
    model: nn.Module  # its PixelClassifier, as built; trained weights copied back at the end
    n_batches: int
    train_idx: Tensor  # (N_k,)
    val_idx: Tensor | None  # (M_k,)
    order: torch.Generator
    dropout: torch.Generator


class _Stack:
    """Trials of one shape, `stack_key` and batch count, trained as one vmapped network."""

    def __init__(
        self, members: list[_Member], image_shape: tuple[int, ...], device: torch.device
    ) -> None:
        self.members = members
        self.device = device
        first = members[0]
        self.n_batches = first.n_batches
        self.batch_size = first.fit.recipe.optim.batch_size
        self.label_smoothing = first.fit.recipe.optim.label_smoothing
        # The module the stacked weights are called through: structure only, no storage.
        self.template = copy.deepcopy(first.model).to("meta")
        found = _dropout_layers(self.template, image_shape)
        self.dropout_names = [name for name, _ in found]
        self.dropout_shapes = [shape for _, shape in found]  # per image, without the batch axis
        self.dropouts = [self.template.get_submodule(name) for name in self.dropout_names]
        self._stack()

    def _stack(self) -> None:
        """Stack the members' weights, optimiser and per-trial rates."""
        params, self.buffers = stack_module_state([m.model for m in self.members])
        self.params = {name: p.detach() for name, p in params.items()}  # (K, ...) each
        first = self.members[0].fit.recipe.optim
        self.optimizer = StackedOptimizer(
            list(self.params.values()), first.optimizer, first.momentum
        )
        self.step = 0
        self._per_trial_tables()

    def _per_trial_tables(self) -> None:
        """Each trial's rate at every step and its weight decay, rebuilt when a trial leaves."""
        steps = max(m.fit.recipe.optim.epochs for m in self.members) * self.n_batches
        table = torch.zeros(len(self.members), steps, dtype=torch.float64)
        for i, member in enumerate(self.members):
            rates = scheduled_rates(member.fit.recipe.optim, self.n_batches)
            table[i, : len(rates)] = torch.tensor(rates, dtype=torch.float64)
        # On the device, in float64 like the loop's Python floats: no host copy per step.
        self.rates_table = table.to(self.device)  # (K, steps)
        decays = [m.fit.recipe.optim.weight_decay for m in self.members]
        self.weight_decay = torch.tensor(decays, dtype=torch.float64, device=self.device)
        # Each member's dropout probability per dropout layer, in the order the layers run.
        self.dropout_rates = [
            [float(m.model.get_submodule(name).p) for name in self.dropout_names]  # type: ignore[arg-type]
            for m in self.members
        ]

    def keep(self, kept: list[int]) -> None:
        """Keep only the members at `kept` (positions within this stack), dropping the rest."""
        self.members = [self.members[i] for i in kept]
        if not self.members:
            return
        index = torch.tensor(kept, device=self.device, dtype=torch.long)
        self.params = {name: p.index_select(0, index) for name, p in self.params.items()}
        self.buffers = {name: b.index_select(0, index) for name, b in self.buffers.items()}
        self.optimizer.keep(index, list(self.params.values()))
        self._per_trial_tables()

    @torch.no_grad()
    def release(self, i: int) -> nn.Module:
        """Member `i`'s trained weights, copied back into its own model, in eval mode."""
        model = self.members[i].model
        for name, param in model.named_parameters():
            param.copy_(self.params[name][i])
        return model.eval()

    # ------------------------------------------------------------------------------ forward

    def logits(
        self, params: dict[str, Tensor], images: Tensor, masks: list[Tensor] | None = None
    ) -> Tensor:
        """(K, B, H, W, C) pixels -> (K, B, classes) logits; `masks[l]` replaces dropout layer l."""

        def one(
            params: dict[str, Tensor], buffers: dict[str, Tensor], x: Tensor, masks: list[Tensor]
        ) -> Tensor:
            with _dropout_masks(self.dropouts, masks):
                return functional_call(self.template, (params, buffers), (x,))

        return torch.vmap(one)(params, self.buffers, images, masks or [])

    def _masks(self, sizes: list[int]) -> list[Tensor] | None:
        """Per dropout layer, (K, B, *features) masks: each trial's dropout noise, 1 elsewhere.

        Each trial draws from its own generator as the loop draws from the default one, with
        `F.dropout`'s arithmetic (Bernoulli(1 - p) / (1 - p)): on the CPU one (B_k, *features)
        draw per layer in the order the layers run, which reproduces the loop's masks.
        """
        if not self.dropouts:
            return None
        k, b = len(self.members), self.batch_size
        masks = [torch.ones(k, b, *shape, device=self.device) for shape in self.dropout_shapes]
        for i, member in enumerate(self.members):
            for layer, p in enumerate(self.dropout_rates[i]):
                if p == 0:  # F.dropout draws nothing at p = 0
                    continue
                shape = (sizes[i], *self.dropout_shapes[layer])
                noise = torch.empty(shape, device=self.device)
                noise.bernoulli_(1 - p, generator=member.dropout).div_(1 - p)
                masks[layer][i, : sizes[i]] = noise
        return masks

    # ------------------------------------------------------------------------------ training

    def epoch_order(self) -> tuple[Tensor, Tensor]:
        """This epoch's batches: (K, n_batches*B) image indices and their 0/1 validity."""
        span = self.n_batches * self.batch_size
        index = torch.zeros(len(self.members), span, dtype=torch.long, device=self.device)
        valid = torch.zeros(len(self.members), span, device=self.device)
        for i, member in enumerate(self.members):
            n = member.train_idx.shape[0]
            order = torch.randperm(n, device=self.device, generator=member.order)  # (N_k,)
            index[i, :n] = member.train_idx[order]
            valid[i, :n] = 1.0
        return index, valid

    def train_epoch(self, images: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """One epoch of every member: (K, n_batches) mean batch losses, (K,) correct counts."""
        k, bs = len(self.members), self.batch_size
        index, valid = self.epoch_order()
        counts = valid.view(k, self.n_batches, bs).sum(dim=2)  # (K, n_batches)
        weights = (valid.view(k, self.n_batches, bs) / counts.clamp(min=1)[..., None]).view(k, -1)
        # Batch sizes for the dropout draws: one host read per epoch, only when there is dropout.
        sizes = counts.long().cpu().tolist() if self.dropouts else None
        batch_losses = torch.zeros(k, self.n_batches, device=self.device)
        correct = torch.zeros(k, device=self.device, dtype=torch.long)
        self.template.train()
        for layer in self.template.modules():
            if isinstance(layer, nn.Dropout):
                layer.eval()  # its masks come from `_masks`, drawn per trial
        for batch in range(self.n_batches):
            cut = slice(batch * bs, (batch + 1) * bs)
            idx, w = index[:, cut], weights[:, cut]  # (K, B)
            xb, yb = images[idx], labels[idx]  # (K, B, H, W, C) uint8, (K, B)
            masks = self._masks([int(s[batch]) for s in sizes]) if sizes is not None else None
            # Fresh leaves over the stacked weights, so the optimiser updates plain tensors.
            leaves = {name: p.detach().requires_grad_() for name, p in self.params.items()}
            with autocast(self.device):
                logits = self.logits(leaves, xb, masks)  # (K, B, classes)
            losses = F.cross_entropy(
                logits.float().flatten(0, 1),
                yb.flatten(),
                reduction="none",
                label_smoothing=self.label_smoothing,
            ).view(k, -1)  # (K, B)
            loss = (losses * w).sum(dim=1)  # (K,): each trial's mean over its own batch
            loss.sum().backward()  # trials share no weights: each gets its own gradient
            grads = [leaf.grad for leaf in leaves.values()]
            self.optimizer.step(grads, self.rates_table[:, self.step], self.weight_decay)
            self.step += 1
            batch_losses[:, batch] = loss.detach()
            hits = (logits.detach().argmax(dim=2) == yb) & (w > 0)
            correct += hits.sum(dim=1)
        return batch_losses, correct

    @torch.no_grad()
    def evaluate(self, images: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """(K,) summed validation loss and (K,) correct counts, in eval mode (no dropout)."""
        k = len(self.members)
        sizes = [m.val_idx.shape[0] if m.val_idx is not None else 0 for m in self.members]
        span = max(sizes)
        index = torch.zeros(k, span, dtype=torch.long, device=self.device)
        valid = torch.zeros(k, span, dtype=torch.bool, device=self.device)
        for i, member in enumerate(self.members):
            if member.val_idx is not None:
                index[i, : sizes[i]] = member.val_idx
                valid[i, : sizes[i]] = True
        chunk = min(
            min(m.fit.recipe.optim.eval_batch_size for m in self.members),
            max(EVAL_ROWS.get(self.device.type, 4096) // k, 1),
        )
        loss_sum = torch.zeros(k, device=self.device)
        correct = torch.zeros(k, device=self.device, dtype=torch.long)
        self.template.eval()
        for start in range(0, span, chunk):
            idx, ok = index[:, start : start + chunk], valid[:, start : start + chunk]
            yb = labels[idx]
            with autocast(self.device):
                logits = self.logits(self.params, images[idx]).float()  # (K, B, classes)
            losses = F.cross_entropy(
                logits.flatten(0, 1),
                yb.flatten(),
                reduction="none",
                label_smoothing=self.label_smoothing,
            ).view(k, -1)
            loss_sum += torch.where(ok, losses, 0.0).sum(dim=1)
            correct += ((logits.argmax(dim=2) == yb) & ok).sum(dim=1)
        return loss_sum, correct


def _dropout_layers(
    template: nn.Module, image_shape: tuple[int, ...]
) -> list[tuple[str, tuple[int, ...]]]:
    """(name, per-image input shape) of every dropout layer, in the order the forward runs them.

    Found by one forward of the meta-device template (shapes only, no arithmetic).
    """
    names = {module: name for name, module in template.named_modules()}
    seen: list[tuple[str, tuple[int, ...]]] = []
    handles = [
        module.register_forward_hook(
            lambda module, inputs, output: seen.append((names[module], tuple(inputs[0].shape[1:])))
        )
        for module in template.modules()
        if isinstance(module, nn.Dropout)
    ]
    try:
        with torch.no_grad():
            template.eval()(torch.zeros(1, *image_shape, device="meta"))
    finally:
        for handle in handles:
            handle.remove()
    return seen


@contextmanager
def _dropout_masks(layers: Sequence[nn.Module], masks: Sequence[Tensor]) -> Iterator[None]:
    """While open, dropout layer l (in eval mode: the identity) outputs its input times masks[l].

    The product is `F.dropout`'s own last operation, so the loop's arithmetic is kept.
    """
    handles = [
        layer.register_forward_hook(lambda _layer, inputs, _output, mask=mask: inputs[0] * mask)
        for layer, mask in zip(layers, masks, strict=False)
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _members(fits: Sequence[PackedFit], images: Tensor, device: torch.device) -> list[_Member]:
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
            _Member(
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
    members: list[_Member], image_shape: tuple[int, ...], device: torch.device
) -> list[_Stack]:
    """Group members into stacks: one per model shape, `stack_key` and batch count."""
    groups: dict[tuple[object, ...], list[_Member]] = {}
    for member in members:
        key = (*stack_key(member.fit.recipe), member.n_batches, shape_key(member.model))
        groups.setdefault(key, []).append(member)
    return [_Stack(group, image_shape, device) for group in groups.values()]


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
    member: _Member,
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
