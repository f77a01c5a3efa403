"""K trials of one model shape trained as one network: stacked weights, one vmapped forward.

`digits.training.packed` groups a pack's trials into `TrialStack`s and drives them; a stack holds
what its trials share. Their weights are stacked with `torch.func.stack_module_state` into
(K, ...) tensors and the forward is one `torch.vmap` of `torch.func.functional_call` of the
registered module (a meta-device copy of the first trial's classifier: structure, no storage).
Dropout is the module's own layers, run as the identity with each trial's mask multiplied in by a
forward hook: vmap cannot draw from K generators, and the loop's draws are reproduced on the CPU
only when each trial draws from its own.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state

from digits.training.loop import autocast
from digits.training.optim import scheduled_rates
from digits.training.stacked_optim import StackedOptimizer

if TYPE_CHECKING:
    from digits.training.packed import PackedFit


# Rows (trials x images) per evaluation pass: bounds the memory of a wide pack's validation. On a
# CPU, small enough that its temporaries are reused rather than page-faulted in afresh.
EVAL_ROWS = {"cuda": 65536, "cpu": 4096}


def shape_key(model: nn.Module) -> tuple[object, ...]:
    """What `torch.vmap` needs equal across a stack: module types, parameter and buffer shapes."""
    modules = tuple((name, type(module).__name__) for name, module in model.named_modules())
    tensors = tuple(
        (name, tuple(t.shape), t.dtype)
        for name, t in (*model.named_parameters(), *model.named_buffers())
    )
    return modules, tensors


@dataclass
class Member:
    """One trial inside a stack, with the state that is not stacked."""

    position: int  # index into the pack's fits
    fit: PackedFit
    model: nn.Module  # its PixelClassifier, as built; trained weights copied back at the end
    n_batches: int
    train_idx: Tensor  # (N_k,)
    val_idx: Tensor | None  # (M_k,)
    order: torch.Generator
    dropout: torch.Generator


class TrialStack:
    """Trials of one shape, `stack_key` and batch count, trained as one vmapped network."""

    def __init__(
        self, members: list[Member], image_shape: tuple[int, ...], device: torch.device
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
