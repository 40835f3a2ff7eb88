"""SGD with (Nesterov) momentum that can also take its gradients from the caller.

The server of Overlap-FedAvg has no autograd graph: its "gradient" is the compensated pseudo-gradient
g_c of the uploaded models (README, "The algorithm"). ``step(grads=[g_c])`` feeds it in directly, and otherwise the
optimizer behaves exactly like ``torch.optim.SGD`` (same update, same state layout):

    d    = g + weight_decay * p
    buf  = d                                    on the first step
    buf  = momentum * buf + (1 - dampening) * d afterwards
    d    = d + momentum * buf   (nesterov)   or   d = buf   (heavy ball)
    p    = p - lr * d
"""
from collections.abc import Callable, Sequence

import torch
from torch import Tensor


class SGD(torch.optim.Optimizer):
    """torch.optim.SGD whose ``step`` optionally takes one explicit gradient per parameter."""

    def __init__(self, params, lr: float, momentum: float = 0.0, dampening: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False):
        if lr < 0.0:
            raise ValueError(f"Invalid learning rate: {lr} (must be >= 0)")
        if momentum < 0.0:
            raise ValueError(f"Invalid momentum value: {momentum} (must be >= 0)")
        if weight_decay < 0.0:
            raise ValueError(f"Invalid weight_decay value: {weight_decay} (must be >= 0)")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum > 0 and zero dampening")
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening,
                        weight_decay=weight_decay, nesterov=nesterov)
        super().__init__(params, defaults)

    def __setstate__(self, state):
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("nesterov", False)

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None,
             grads: Sequence[Tensor | None] | None = None) -> Tensor | None:
        """One update; returns the closure's loss, if a closure was given.

        grads: one gradient per parameter, in param_groups order across all groups (None skips that
        parameter). Without it each parameter's ``.grad`` is used and parameters without one are skipped.
        The given gradients are never modified.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()

        num_params = sum(len(group["params"]) for group in self.param_groups)
        if grads is not None and len(grads) != num_params:
            raise ValueError(f"grads has {len(grads)} entries, expected one per parameter "
                             f"({num_params}, in param_groups order)")
        given = iter(grads) if grads is not None else None
        work = []
        for group in self.param_groups:
            for p in group["params"]:
                grad = p.grad if given is None else next(given)
                if grad is None:
                    continue
                if grad.shape != p.shape:
                    raise ValueError(f"gradient of shape {tuple(grad.shape)} given for a parameter "
                                     f"of shape {tuple(p.shape)}")
                work.append((p, grad, group))
        for p, grad, group in work:  # checked everything first, so an error never leaves a half step
            self._update(p, grad, group)
        return loss

    def _update(self, p: Tensor, grad: Tensor, group: dict) -> None:
        """The torch.optim.SGD update of one parameter (formulas in the module docstring)."""
        momentum = group["momentum"]
        if group["weight_decay"] != 0:
            grad = grad.add(p, alpha=group["weight_decay"])
        if momentum != 0:
            state = self.state[p]
            buf = state.get("momentum_buffer")
            if buf is None:
                buf = state["momentum_buffer"] = grad.detach().clone()
            else:
                buf.mul_(momentum).add_(grad, alpha=1 - group["dampening"])
            grad = grad.add(buf, alpha=momentum) if group["nesterov"] else buf
        p.add_(grad, alpha=-group["lr"])
