"""The server update shared by FedAvg and Overlap-FedAvg (DESIGN §3), as pure math on flat tensors.

Notation: clients k with n_k samples, p_k = n_k / sum(n); L_k the uploaded local models; `prev` the
global model the uploads started from; `w` the current global model.

    avg  = sum_k p_k L_k
    g    = prev - avg                      pseudo-gradient of the uploads
    v    = sum_k p_k (prev - L_k)^2        elementwise spread of the client updates
    g_c  = g + C * (w - prev)              compensation for one-version staleness
    buf  = mu * buf + g_c ;  w = w - server_lr * (g_c + mu * buf)      (Nesterov)

Nothing here touches torch.distributed or devices; the server (Characters/) feeds uploads in.
"""
import math
from collections.abc import Sequence

import torch
from torch import Tensor

from Optimizer.SGD import SGD

COMPENSATIONS = ("official", "dcasgd", "full", "none")

# Weights are p_k = n_k / sum(n); their float sum may miss 1 by rounding, never by more than this.
_WEIGHT_SUM_TOLERANCE = 1e-6


def client_weights(num_samples: Sequence[int]) -> list[float]:
    """p_k = n_k / sum(n), the FedAvg weight of each client."""
    if any(n < 0 for n in num_samples):
        raise ValueError(f"sample counts must be >= 0, got {list(num_samples)}")
    total = sum(num_samples)
    if total == 0:
        raise ValueError(f"sample counts must add up to more than 0, got {list(num_samples)}")
    return [n / total for n in num_samples]


def _check_weights(weights: Sequence[float]) -> None:
    if any(p < 0 for p in weights):
        raise ValueError(f"client weights must be >= 0, got {list(weights)}")
    if not math.isclose(sum(weights), 1.0, rel_tol=0.0, abs_tol=_WEIGHT_SUM_TOLERANCE):
        raise ValueError(f"client weights must add up to 1 (p_k = n_k / sum n, see client_weights), "
                         f"they add up to {sum(weights)}")


class StreamingMoments:
    """Accumulates avg = sum p_k L_k and spread v = sum p_k (prev - L_k)^2 one upload at a time, in
    O(model) memory.

    `start` is `prev`, the global model the uploads started from; it is referenced, not copied, so it
    must not change while uploads are added. The sum is taken in the order the uploads are added.
    """

    def __init__(self, start: Tensor):
        self.start = start
        self._avg = torch.zeros_like(start)
        self._spread = torch.zeros_like(start)
        self._weights: list[float] = []

    def add(self, local: Tensor, weight: float) -> None:
        """Adds one upload L_k with weight p_k (a zero weight changes nothing)."""
        if local.shape != self.start.shape:
            raise ValueError(f"upload of shape {tuple(local.shape)} does not match the model's "
                             f"shape {tuple(self.start.shape)}")
        if weight < 0:
            raise ValueError(f"client weights must be >= 0, got {weight}")
        self._weights.append(weight)
        if weight == 0:
            return
        self._avg.add_(local, alpha=weight)
        update = self.start - local
        self._spread.addcmul_(update, update, value=weight)

    @property
    def num_added(self) -> int:
        return len(self._weights)

    def result(self) -> tuple[Tensor, Tensor]:
        """(avg, spread). Raises if nothing was added or the weights do not add up to 1."""
        if not self._weights:
            raise RuntimeError("StreamingMoments.result() called before any upload was added")
        _check_weights(self._weights)
        return self._avg, self._spread


def _check_compensation(mode: str) -> None:
    if mode not in COMPENSATIONS:
        raise ValueError(f"unknown compensation {mode!r}; choose one of {', '.join(COMPENSATIONS)}")


def compensation_coefficient(mode: str, spread: Tensor, lambd: float) -> Tensor | float:
    """C of g_c = g + C * (w - prev): official lambda*v*v, dcasgd lambda*v, full 1, none 0."""
    _check_compensation(mode)
    if mode == "official":
        return lambd * spread * spread
    if mode == "dcasgd":
        return lambd * spread
    return 1.0 if mode == "full" else 0.0


def compensated_gradient(prev: Tensor, avg: Tensor, current: Tensor, spread: Tensor,
                         mode: str, lambd: float) -> Tensor:
    """g_c = g + C * (w - prev) with g = prev - avg; w is `current`. No input is modified."""
    coef = compensation_coefficient(mode, spread, lambd)
    pseudo_grad = prev - avg
    if mode == "none":
        return pseudo_grad
    return pseudo_grad + coef * (current - prev)


class ServerUpdate:
    """The one server update shared by FedAvg and Overlap-FedAvg (DESIGN §3).

    Holds the current global model w (flat), the model the uploads started from, and an Optimizer.SGD
    (lr=server_lr, momentum=mu, Nesterov when mu > 0) over w: w, prev, the momentum buffer and one
    round's avg and v, so O(model) memory whatever the number of clients.

    stale=False (FedAvg): the uploads started from w, so w - prev = 0 and the compensation is void.
    stale=True (Overlap): the uploads of update u started from G_0 for u = 1, 2 and G_{u-2} after.

    Use per update: ``m = s.new_round()``, ``m.add(L_k, p_k)`` for every upload, ``s.apply(m)``.
    """

    def __init__(self, initial: Tensor, *, stale: bool, momentum: float = 0.0, server_lr: float = 1.0,
                 compensation: str = "none", lambd: float = 0.0):
        _check_compensation(compensation)
        if lambd < 0:
            raise ValueError(f"lambda must be >= 0, got {lambd}")
        self.stale = stale
        self.compensation = compensation
        self.lambd = lambd
        self.num_updates = 0
        self._w = initial.detach().clone()
        # prev is only needed when stale; otherwise the uploads start from w itself.
        self._prev = self._w.clone() if stale else None
        self._optimizer = SGD([self._w], lr=server_lr, momentum=momentum, nesterov=momentum > 0)

    @property
    def current(self) -> Tensor:
        """w, the current global model. A live tensor: apply() updates it in place, so copy it to keep
        a snapshot (e.g. before an asynchronous send)."""
        return self._w

    @property
    def upload_start(self) -> Tensor:
        """The model the next batch of uploads started from: w if not stale, else prev (G_{u-2}).
        When stale, apply() replaces this tensor rather than modifying it."""
        return self._prev if self.stale else self._w

    def new_round(self) -> StreamingMoments:
        """An accumulator for the uploads of the next update, relative to upload_start."""
        return StreamingMoments(self.upload_start)

    def apply(self, moments: StreamingMoments) -> Tensor:
        """g_c from the uploads, prev = w, then one Nesterov step on w; returns the new w (live)."""
        if moments.start is not self.upload_start:
            raise ValueError("apply() needs the accumulator of this update: call new_round() after "
                             "the previous apply()")
        avg, spread = moments.result()
        grad = compensated_gradient(self.upload_start, avg, self._w, spread, self.compensation, self.lambd)
        if self.stale:
            self._prev = self._w.clone()
        self._optimizer.step(grads=[grad])
        self.num_updates += 1
        return self._w
