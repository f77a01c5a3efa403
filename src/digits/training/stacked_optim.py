"""`torch.optim`'s Adam, AdamW and SGD steps for stacked weights, every row at its own rate.

A pack (`digits.training.packed`) stacks K trials' weights into (K, ...) tensors and trains row k
as trial k. `torch.optim` takes one learning rate per parameter group, and a group holds whole
tensors, so it cannot give the rows of one tensor K rates; one optimiser per trial over views of
the rows can, but costs K times the operations per step, which on a CPU costs more than the
arithmetic. So this is the single-tensor step of `torch.optim.Adam`/`AdamW`/`SGD` (the one the loop
runs on the CPU) operation for operation, in public tensor operations on the stacked tensors, with
the scalar rate and weight decay replaced by per-row columns. tests/test_packed.py holds every
optimiser to the loop's `torch.optim` to float rounding.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

OptimizerName = Literal["adam", "adamw", "sgd"]
# torch.optim.Adam's defaults (OptimConfig does not expose them).
BETA1, BETA2, EPS = 0.9, 0.999, 1e-8


class StackedOptimizer:
    """One optimiser state for stacked parameters whose leading axis is K independent trials.

    Args:
        params: (K, ...) leaf tensors, updated in place by `step`.
        name: "adam" (L2 decay joins the gradient), "adamw" (decoupled decay) or "sgd".
        momentum: SGD's momentum, shared by the rows (0: no momentum buffer, as torch.optim).
    """

    def __init__(self, params: list[Tensor], name: OptimizerName, momentum: float = 0.0) -> None:
        self.params = params
        self.name = name
        self.momentum = momentum
        self.steps = 0
        self.exp_avg = [torch.zeros_like(p) for p in params] if name != "sgd" else []
        self.exp_avg_sq = [torch.zeros_like(p) for p in params] if name != "sgd" else []
        self.buffers: list[Tensor | None] = [None] * len(params)  # SGD momentum, made by step 1

    def keep(self, index: Tensor, params: list[Tensor]) -> None:
        """Keep the rows at `index` (K',) of every state; `params` are the kept parameters."""
        self.params = params
        self.exp_avg = [s.index_select(0, index) for s in self.exp_avg]
        self.exp_avg_sq = [s.index_select(0, index) for s in self.exp_avg_sq]
        self.buffers = [b.index_select(0, index) if b is not None else None for b in self.buffers]

    @torch.no_grad()
    def step(self, grads: list[Tensor], lr: Tensor, weight_decay: Tensor) -> None:
        """One step of every row.

        Args:
            grads: One gradient per parameter, of its shape.
            lr: (K,) float64 learning rate of every row at this step (its schedule's value).
            weight_decay: (K,) float64 weight decay of every row.
        """
        self.steps += 1
        decays = bool((weight_decay != 0).any())
        for i, (param, grad) in enumerate(zip(self.params, grads, strict=True)):

            def column(values: Tensor, param: Tensor = param) -> Tensor:
                """(K,) float64 -> (K, 1, ...) in the parameter's dtype, to scale its rows."""
                return values.to(param.dtype).view((-1,) + (1,) * (param.ndim - 1))

            if decays and self.name != "adamw":  # L2: the decay joins the gradient
                grad = grad + column(weight_decay) * param
            if self.name == "sgd":
                grad = self._momentum(i, grad)
                param.add_(grad * column(-lr))
                continue
            if decays and self.name == "adamw":  # decoupled: the weights decay themselves
                param.mul_(column(1 - lr * weight_decay))
            exp_avg, exp_avg_sq = self.exp_avg[i], self.exp_avg_sq[i]
            exp_avg.lerp_(grad, 1 - BETA1)
            exp_avg_sq.mul_(BETA2).addcmul_(grad, grad, value=1 - BETA2)
            bias_correction1 = 1 - BETA1**self.steps
            bias_correction2_sqrt = (1 - BETA2**self.steps) ** 0.5
            denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(EPS)
            param.add_(column(-lr / bias_correction1) * exp_avg / denom)

    def _momentum(self, i: int, grad: Tensor) -> Tensor:
        """SGD's momentum buffer after this gradient (no dampening, no Nesterov, as configured)."""
        if self.momentum == 0:
            return grad
        buffer = self.buffers[i]
        if buffer is None:
            buffer = self.buffers[i] = grad.clone()
        else:
            buffer.mul_(self.momentum).add_(grad)
        return buffer
