"""Optimizers. SGD accepts externally supplied gradients (the server's pseudo-gradient)."""
from Optimizer.SGD import SGD

__all__ = ["SGD"]
