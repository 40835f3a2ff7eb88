"""Plain, unoptimised reference versions of the server math, written straight from the README's section "The algorithm".

The project computes these in streaming form (Utils/aggregation.py) and through Optimizer.SGD; the tests
compare against these.
"""
from collections.abc import Sequence

import torch
from torch import Tensor


def weighted_average(tensors: Sequence[Tensor], weights: Sequence[float]) -> Tensor:
    """avg = sum_k p_k L_k, added in list order; zero-weight entries are skipped (even NaN ones)."""
    avg = torch.zeros_like(tensors[0])
    for local, p in zip(tensors, weights, strict=True):
        if p != 0:
            avg.add_(local, alpha=p)
    return avg


def nesterov_reference(w: Tensor, grad: Tensor, momentum_buf: Tensor | None, momentum: float,
                       lr: float) -> tuple[Tensor, Tensor]:
    """One Nesterov step, returns (new w, new buf): buf = mu*buf + g (buf = g on the first step,
    momentum_buf None); w = w - lr * (g + mu*buf). Pure: the inputs are left untouched."""
    buf = grad.clone() if momentum_buf is None else momentum * momentum_buf + grad
    return w - lr * (grad + momentum * buf), buf
