"""Many MLP trials trained together as one fused program: stacked weights, batched products.

A sweep of small dense networks leaves a GPU idle: every step of one trial is a few tiny kernels,
so a trial is bound by kernel launches, not arithmetic. Here K trials share each step instead.
Their weights are stacked along a leading trial axis, (K, in, out), and every layer is one batched
matrix product (`torch.baddbmm`) for all of them; narrower trials are zero-padded to the widest
and their padded units masked to exactly zero, so a padded unit contributes nothing forwards and
receives no gradient. The optimiser is written for the stacked tensors, with a learning rate and
schedule per trial.

Each trial keeps everything that makes it the trial `training.loop.fit` trains alone under the
same seed: the same initial weights and normalisation (built by `build_classifier` from its own
fold), its own batch order (a generator seeded like the loop's), its own dropout stream (its own
generator, seeded like the loop seeds the default one), its own optimiser state, learning rate and
cosine schedule, its own fold and its own number of epochs. On the CPU, where the loop's dropout
draws can be reproduced, a packed trial's history equals the lone trial's up to float rounding
(batched products sum in another order). On CUDA the loop's fused dropout kernel draws from the
global Philox stream, which no per-trial generator can reproduce, so there the masks differ in
realisation, not in distribution.

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
import torch.nn.functional as F
from torch import Tensor, nn

from digits.config import Recipe
from digits.errors import TrainingDiverged
from digits.models import build_classifier, parse_args
from digits.models.mlp import MLPArgs
from digits.models.pixels import PixelClassifier
from digits.training.loop import EpochStats, autocast
from digits.training.recipe import FoldResult

PackState = Literal["complete", "stopped", "failed"]

# Adam's defaults, as `torch.optim.Adam` uses them (OptimConfig does not expose them).
BETA1, BETA2, EPS = 0.9, 0.999, 1e-8
# Rows (trials x images) per evaluation pass: bounds the memory of a wide pack's validation. On a
# CPU, small enough that its temporaries are reused rather than page-faulted in afresh.
EVAL_ROWS = {"cuda": 65536, "cpu": 4096}


class StopTrial(Exception):
    """Raised by a trial's `on_epoch` callback to stop training that trial (a pruner's decision)."""


@dataclass(frozen=True)
class PackedFit:
    """One trial of a pack: a recipe trained on one fold.

    Attributes:
        recipe: An MLP recipe (`can_pack` is true for it).
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
    """Whether `fit_packed` trains this recipe: an MLP without augmentation or split rates."""
    optim = recipe.optim
    return (
        recipe.model.name == "mlp" and not optim.augment.enabled and optim.backbone_lr_scale == 1.0
    )


def mlp_args(recipe: Recipe) -> MLPArgs:
    """The MLP arguments of a packable recipe, its defaults filled in."""
    args = parse_args(recipe.model.name, recipe.model.args)
    assert isinstance(args, MLPArgs)
    return args


def stack_key(recipe: Recipe) -> tuple[object, ...]:
    """Settings trials must share to take the same steps together (width and rate may differ)."""
    optim = recipe.optim
    momentum = optim.momentum if optim.optimizer == "sgd" else 0.0
    return (
        mlp_args(recipe).depth,
        optim.batch_size,
        optim.optimizer,
        momentum,
        optim.label_smoothing,
    )


def _index(idx: np.ndarray | Tensor, device: torch.device) -> Tensor:
    return torch.as_tensor(np.asarray(idx) if isinstance(idx, np.ndarray) else idx).to(
        device, torch.long
    )


def _activation(name: str) -> Callable[[Tensor], Tensor]:
    return {"relu": torch.relu, "tanh": torch.tanh, "sigmoid": torch.sigmoid}[name]


@dataclass
class _Member:
    """One trial inside a stack, with the state that is not stacked."""

    position: int  # index into the pack's fits
    fit: PackedFit
    model: PixelClassifier
    train_idx: Tensor  # (N_k,)
    val_idx: Tensor | None  # (M_k,)
    order: torch.Generator
    dropout: torch.Generator
    width: int
    p: float
    activation: str


class _Stack:
    """Trials with one `stack_key` and one batch count, trained as one batched network."""

    def __init__(
        self, members: list[_Member], width: int, n_batches: int, device: torch.device
    ) -> None:
        self.members = members
        self.width = width  # every hidden layer padded to this
        self.n_batches = n_batches
        self.device = device
        first = members[0].fit.recipe
        self.depth = mlp_args(first).depth
        self.batch_size = first.optim.batch_size
        self.optimizer = first.optim.optimizer
        self.momentum = first.optim.momentum
        self.label_smoothing = first.optim.label_smoothing
        self.step = 0
        # (K, in, out) transposed weights and (K, 1, out) biases, zero-padded.
        self.params: list[Tensor] = []
        for layer in range(self.depth + 1):
            linears = [self._linear(m, layer) for m in members]
            fan_in = linears[0].in_features if layer == 0 else width
            fan_out = linears[0].out_features if layer == self.depth else width
            weight = torch.zeros(len(members), fan_in, fan_out, device=device)
            bias = torch.zeros(len(members), 1, fan_out, device=device)
            for k, linear in enumerate(linears):
                weight[k, : linear.in_features, : linear.out_features] = linear.weight.detach().T
                bias[k, 0, : linear.out_features] = linear.bias.detach()
            self.params += [weight.requires_grad_(), bias.requires_grad_()]
        self.exp_avg = [torch.zeros_like(p) for p in self.params]
        self.exp_avg_sq = [torch.zeros_like(p) for p in self.params]
        self.buffers: list[Tensor] | None = None  # SGD momentum, created by the first step
        self._per_trial_tables()

    @staticmethod
    def _linear(member: _Member, layer: int) -> nn.Linear:
        linears = [m for m in member.model.network.modules() if isinstance(m, nn.Linear)]
        return linears[layer]  # the hidden layers in order, then the head

    def _per_trial_tables(self) -> None:
        """Per-trial constants, rebuilt whenever a trial leaves."""
        members, device = self.members, self.device
        k = len(members)
        self.mean = torch.stack([m.model.mean for m in members]).to(device)  # (K, 1, C, 1, 1)
        self.std = torch.stack([m.model.std for m in members]).to(device)
        units = torch.arange(self.width, device=device)
        widths = torch.tensor([m.width for m in members], device=device)
        self.padded = any(m.width < self.width for m in members)
        self.unit_mask = (units < widths[:, None]).float()[:, None, :]  # (K, 1, width)
        self.dropout = any(m.p > 0 for m in members)
        # Contiguous runs of one activation (members are sorted by it).
        self.runs: list[tuple[int, int, Callable[[Tensor], Tensor]]] = []
        for i, member in enumerate(members):
            if self.runs and members[self.runs[-1][0]].activation == member.activation:
                start, _, fn = self.runs[-1]
                self.runs[-1] = (start, i + 1, fn)
            else:
                self.runs.append((i, i + 1, _activation(member.activation)))
        # The learning rate of every trial at every step, as the loop's schedule gives it.
        epochs = max(m.fit.recipe.optim.epochs for m in members)
        steps = epochs * self.n_batches
        table = np.zeros((k, steps))
        for i, member in enumerate(members):
            optim = member.fit.recipe.optim
            total = optim.epochs * self.n_batches
            s = np.arange(total)
            if optim.lr_schedule == "cosine":
                table[i, :total] = optim.lr * (1 + np.cos(math.pi * s / total)) / 2
            else:
                table[i, :total] = optim.lr
        # On the device, in float64 like the loop's Python floats: no host copy per step (a copy
        # to a GPU would wait for it), and (K,) float64 arithmetic costs nothing.
        self.lr_table = torch.tensor(table, dtype=torch.float64, device=device)  # (K, steps)
        decays = [m.fit.recipe.optim.weight_decay for m in members]
        self.decays = any(decays)
        self.weight_decay = torch.tensor(decays, dtype=torch.float64, device=device)  # (K,)

    def keep(self, kept: list[int]) -> None:
        """Keep only the members at `kept` (positions within this stack), dropping the rest."""
        self.members = [self.members[i] for i in kept]
        if not kept:
            return
        index = torch.tensor(kept, device=self.device, dtype=torch.long)

        def take(tensors: list[Tensor]) -> list[Tensor]:
            return [t.detach().index_select(0, index) for t in tensors]

        self.params = [p.requires_grad_() for p in take(self.params)]
        self.exp_avg, self.exp_avg_sq = take(self.exp_avg), take(self.exp_avg_sq)
        if self.buffers is not None:
            self.buffers = take(self.buffers)
        self._per_trial_tables()

    # ------------------------------------------------------------------------------ forward

    def forward(self, images: Tensor, masks: Sequence[Tensor | None] | None = None) -> Tensor:
        """(K, B, H, W, C) pixels -> (K, B, classes) logits; `masks[l]` scales hidden layer l."""
        x = images.permute(0, 1, 4, 2, 3).to(torch.float32)  # (K, B, C, H, W)
        # Each trial's own normalisation, the operations of PixelClassifier; in place, because
        # on a CPU fresh (K, B, C, H, W) temporaries cost more in page faults than in arithmetic.
        x = x.div_(255.0).sub_(self.mean).div_(self.std)
        h = x.flatten(start_dim=2)  # (K, B, C*H*W)
        for layer in range(self.depth):
            weight, bias = self.params[2 * layer], self.params[2 * layer + 1]
            z = torch.baddbmm(bias, h, weight)  # (K, B, width)
            if len(self.runs) == 1:
                h = self.runs[0][2](z)
            else:
                h = torch.cat([fn(z[start:end]) for start, end, fn in self.runs])
            mask = masks[layer] if masks is not None else None
            if mask is not None:
                h = h * mask.to(h.dtype)  # dropout noise, and zero at padded units
            elif self.padded:
                h = h * self.unit_mask.to(h.dtype)
        return torch.baddbmm(self.params[-1], h, self.params[-2])  # (K, B, classes)

    def _masks(self, sizes: list[int]) -> list[Tensor | None] | None:
        """Per-layer (K, B, width) masks: each trial's dropout noise, zero at padded units.

        Each trial draws from its own generator, as the loop draws from the default one: on the
        CPU one (B_k, width_k) draw per layer in layer order, which reproduces the loop's masks;
        on CUDA one (depth, B_k, width_k) draw per step (the loop's masks cannot be reproduced
        there, and one draw per trial instead of one per trial and layer saves launches).
        """
        if not self.dropout:
            return None
        k, b = len(self.members), self.batch_size
        masks = self.unit_mask.expand(k, b, self.width).repeat(self.depth, 1, 1, 1)
        for i, member in enumerate(self.members):
            if member.p == 0:
                continue
            shape = (sizes[i], member.width)
            if self.device.type == "cuda":
                noise = torch.empty((self.depth, *shape), device=self.device)
                noise.bernoulli_(1 - member.p, generator=member.dropout).div_(1 - member.p)
                masks[:, i, : shape[0], : shape[1]] = noise
                continue
            for layer in range(self.depth):
                noise = torch.empty(shape, device=self.device)
                noise.bernoulli_(1 - member.p, generator=member.dropout).div_(1 - member.p)
                masks[layer, i, : shape[0], : shape[1]] = noise
        return list(masks)

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
        sizes = counts.long().cpu().tolist() if self.dropout else None
        batch_losses = torch.zeros(k, self.n_batches, device=self.device)
        correct = torch.zeros(k, device=self.device, dtype=torch.long)
        for batch in range(self.n_batches):
            cut = slice(batch * bs, (batch + 1) * bs)
            idx, w = index[:, cut], weights[:, cut]  # (K, B)
            xb, yb = images[idx], labels[idx]  # (K, B, H, W, C) uint8, (K, B)
            masks = self._masks([int(s[batch]) for s in sizes]) if sizes is not None else None
            with autocast(self.device):
                logits = self.forward(xb, masks)  # (K, B, classes)
            losses = F.cross_entropy(
                logits.float().flatten(0, 1),
                yb.flatten(),
                reduction="none",
                label_smoothing=self.label_smoothing,
            ).view(k, -1)  # (K, B)
            loss = (losses * w).sum(dim=1)  # (K,): each trial's mean over its own batch
            for p in self.params:
                p.grad = None
            loss.sum().backward()  # trials share no weights: each gets its own gradient
            self._update([p.grad for p in self.params])  # type: ignore[misc]
            batch_losses[:, batch] = loss.detach()
            hits = (logits.detach().argmax(dim=2) == yb) & (w > 0)
            correct += hits.sum(dim=1)
        return batch_losses, correct

    @torch.no_grad()
    def _update(self, grads: list[Tensor]) -> None:
        """One optimiser step of every member: `torch.optim`'s update with per-trial rates.

        Element-wise the same operations as `torch.optim.Adam`/`AdamW`/`SGD` (single-tensor
        form), over lists of stacked tensors (one `torch._foreach_*` launch per operation where
        shapes allow), with each trial's rate broadcast along its slice.
        """
        k = len(self.members)
        lr = self.lr_table[:, self.step]  # (K,) float64
        self.step += 1
        wd = self.weight_decay

        def per_trial(values: Tensor) -> Tensor:
            return values.to(torch.float32).view(k, 1, 1)

        params = self.params
        if self.decays and self.optimizer in ("adam", "sgd"):  # L2: the decay joins the gradient
            grads = [g + per_trial(wd) * p for g, p in zip(grads, params, strict=True)]
        if self.optimizer == "sgd":
            if self.buffers is None:
                self.buffers = [g.clone() for g in grads]
            else:
                torch._foreach_mul_(self.buffers, self.momentum)
                torch._foreach_add_(self.buffers, grads)
            for p, buf in zip(params, self.buffers, strict=True):
                p.addcmul_(buf, per_trial(-lr))
            return
        if self.decays and self.optimizer == "adamw":  # decoupled: the weights decay themselves
            for p in params:
                p.mul_(per_trial(1 - lr * wd))
        bias1 = 1 - BETA1**self.step
        bias2_sqrt = (1 - BETA2**self.step) ** 0.5
        torch._foreach_lerp_(self.exp_avg, grads, 1 - BETA1)
        torch._foreach_mul_(self.exp_avg_sq, BETA2)
        torch._foreach_addcmul_(self.exp_avg_sq, grads, grads, value=1 - BETA2)
        denom = torch._foreach_sqrt(self.exp_avg_sq)
        torch._foreach_div_(denom, bias2_sqrt)
        torch._foreach_add_(denom, EPS)
        ratio = torch._foreach_div(self.exp_avg, denom)
        step = per_trial(-lr / bias1)
        for p, r in zip(params, ratio, strict=True):
            p.addcmul_(r, step)

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
        for start in range(0, span, chunk):
            idx, ok = index[:, start : start + chunk], valid[:, start : start + chunk]
            yb = labels[idx]
            with autocast(self.device):
                logits = self.forward(images[idx]).float()  # (K, B, classes)
            losses = F.cross_entropy(
                logits.flatten(0, 1),
                yb.flatten(),
                reduction="none",
                label_smoothing=self.label_smoothing,
            ).view(k, -1)
            loss_sum += torch.where(ok, losses, 0.0).sum(dim=1)
            correct += ((logits.argmax(dim=2) == yb) & ok).sum(dim=1)
        return loss_sum, correct

    def unstack(self, i: int) -> PixelClassifier:
        """Member `i`'s trained weights, copied back into its own `PixelClassifier`."""
        member = self.members[i]
        model = member.model
        with torch.no_grad():
            for layer in range(self.depth + 1):
                linear = self._linear(member, layer)
                weight, bias = self.params[2 * layer], self.params[2 * layer + 1]
                linear.weight.copy_(weight[i, : linear.in_features, : linear.out_features].T)
                linear.bias.copy_(bias[i, 0, : linear.out_features])
        return model.eval()


def _members(fits: Sequence[PackedFit], images: Tensor, device: torch.device) -> list[_Member]:
    members = []
    for position, fit in enumerate(fits):
        if not can_pack(fit.recipe):
            raise ValueError(f"fit {position}: only MLPs without augmentation can be packed")
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
        assert isinstance(model, PixelClassifier)
        if model.channels != images.shape[-1] or model.side != images.shape[1]:
            raise ValueError(f"fit {position}: packed MLPs take the images as they are")
        args = mlp_args(fit.recipe)
        members.append(
            _Member(
                position=position,
                fit=fit,
                model=model,
                train_idx=train_idx,
                val_idx=_index(fit.val_idx, device) if fit.val_idx is not None else None,
                order=torch.Generator(device=device).manual_seed(fit.seed),
                dropout=torch.Generator(device=device).manual_seed(fit.seed),
                width=args.width,
                p=args.dropout,
                activation=args.activation,
            )
        )
    return members


def plan_stacks(
    members: list[_Member], device: torch.device, pad_widths: bool | None = None
) -> list[_Stack]:
    """Group members into stacks: one stack per `stack_key` and batch count (and width, unpadded).

    Args:
        pad_widths: Pad every width of a stack to its widest (one product per layer for all:
            best when kernel launches dominate, as on a GPU) or keep one stack per width (no
            wasted arithmetic: best when arithmetic dominates, as on a CPU). None: pad on CUDA.
    """
    pad = device.type == "cuda" if pad_widths is None else pad_widths
    groups: dict[tuple[object, ...], list[_Member]] = {}
    for member in members:
        batch_size = member.fit.recipe.optim.batch_size
        n_batches = math.ceil(member.train_idx.shape[0] / batch_size)
        key = (*stack_key(member.fit.recipe), n_batches, None if pad else member.width)
        groups.setdefault(key, []).append(member)
    stacks = []
    for key, group in groups.items():
        group.sort(key=lambda m: (m.activation, m.position))  # contiguous activation runs
        width = max(m.width for m in group)
        stacks.append(_Stack(group, width, int(key[-2]), device))  # type: ignore[call-overload]
    return stacks


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
        pad_widths: See `plan_stacks`; None pads on CUDA and groups by width on the CPU.

    Returns:
        One `PackedResult` per fit, in the order of `fits`.

    Raises:
        ValueError: when a fit is not an MLP without augmentation (see `can_pack`).
    """
    x = torch.as_tensor(images).to(device)  # (N, H, W, C) uint8, once for every trial
    y = torch.as_tensor(np.asarray(labels) if isinstance(labels, np.ndarray) else labels).to(
        device, torch.long
    )
    results = [PackedResult() for _ in fits]
    members = _members(fits, x, device)
    stacks = plan_stacks(members, device, pad_widths)
    epoch = 0
    while stacks:
        epoch += 1
        started = time.perf_counter()
        outcomes = []
        for stack in stacks:
            losses, correct = stack.train_epoch(x, y)
            outcomes.append((losses, correct))
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
                    member, result, epoch, stack, losses[i], int(correct[i]),
                    float(val_loss[i]), int(val_hits[i]), seconds, train_seconds,
                )  # fmt: skip
                if state == "complete":
                    result.model = stack.unstack(i)
                if state is None:
                    kept.append(i)
                else:
                    result.state = state
            if len(kept) < len(stack.members):
                stack.keep(kept)
        stacks = [stack for stack in stacks if stack.members]
    return results


def _epoch_end(
    member: _Member,
    result: PackedResult,
    epoch: int,
    stack: _Stack,
    losses: Tensor,
    correct: int,
    val_loss_sum: float,
    val_correct: int,
    seconds: float,
    train_seconds: float,
) -> PackState | None:
    """Record one member's epoch as the loop does; the state it leaves in, or None to go on."""
    optim = member.fit.recipe.optim
    finite = torch.isfinite(losses)
    if not bool(finite.all()):
        bad = int((~finite).nonzero()[0])
        result.failure = (
            f"training diverged: non-finite loss {float(losses[bad])} at epoch {epoch}, "
            f"batch {bad + 1} of {stack.n_batches} (lr={optim.lr}, optimizer={optim.optimizer}); "
            "lower the learning rate"
        )
        return "failed"
    n = member.train_idx.shape[0]
    sizes = torch.full((stack.n_batches,), float(optim.batch_size))
    sizes[-1] = n - (stack.n_batches - 1) * optim.batch_size
    val_loss = val_accuracy = float("nan")
    if member.val_idx is not None:
        m = member.val_idx.shape[0]
        val_loss, val_accuracy = val_loss_sum / m, val_correct / m
    stats = EpochStats(
        epoch=epoch,
        train_loss=float((losses * sizes).sum()) / n,
        train_accuracy=correct / n,
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
