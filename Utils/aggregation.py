"""The server update shared by FedAvg and Overlap-FedAvg (README, "The algorithm"), as pure math on flat tensors.

Notation: clients k with n_k samples, p_k = n_k / sum(n); L_k the uploaded local models; `prev` the
global model the uploads started from; `w` the current global model.

    avg  = sum_k p_k L_k
    g    = prev - avg                      pseudo-gradient of the uploads
    v    = sum_k p_k (prev - L_k)^2        elementwise spread of the client updates
    g_c  = g + C * (w - prev)              compensation for one-version staleness
    buf  = mu * buf + g_c ;  w = w - server_lr * (g_c + mu * buf)      (Nesterov)

The client-side merge (`local`) moves the staleness correction to the clients: in round r client k uploads
U_k = G_{r-1} + (L_k - x_k), its round's progress on top of the newest global model G_{r-1} it holds, and
starts its next round from x_k = G_{r-1} + b (U_k - G_{r-1}). The uploads are then relative to w itself, so the server
runs FedAvg's update (no compensation; with mu and server_lr, FedAvgM's step).

Nothing here touches torch.distributed or devices; the server (Characters/) feeds uploads in.
"""
import math
from collections.abc import Sequence

import torch
from torch import Tensor

from Optimizer.SGD import SGD

# How C of g_c = g + C * (w - prev) is set; "secant" estimates it every update (ADAPTIVE_COMPENSATIONS).
# CLIENT_MERGE is no server-side form: the clients correct the staleness (merged_upload, merged_start).
SERVER_COMPENSATIONS = ("official", "dcasgd", "full", "none", "constant", "secant")
CLIENT_MERGE = "local"
COMPENSATIONS = (*SERVER_COMPENSATIONS, CLIENT_MERGE)
ADAPTIVE_COMPENSATIONS = ("secant",)
# The forms whose C is built from the spread v; the others never need it, so their rounds skip computing it.
SPREAD_COMPENSATIONS = ("official", "dcasgd")

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
    with_spread=False skips v (a difference and a product per upload, on the server's critical path) for
    the forms that do not use it; result() then gives None for it.
    """

    def __init__(self, start: Tensor, with_spread: bool = True):
        self.start = start
        self._avg = torch.zeros_like(start)
        self._spread = torch.zeros_like(start) if with_spread else None
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
        if self._spread is not None:
            update = self.start - local
            self._spread.addcmul_(update, update, value=weight)

    @property
    def num_added(self) -> int:
        return len(self._weights)

    def result(self) -> tuple[Tensor, Tensor | None]:
        """(avg, spread; None without it). Raises if nothing was added or the weights do not add up to 1."""
        if not self._weights:
            raise RuntimeError("StreamingMoments.result() called before any upload was added")
        _check_weights(self._weights)
        return self._avg, self._spread


def _check_compensation(mode: str) -> None:
    if mode not in COMPENSATIONS:
        raise ValueError(f"unknown compensation {mode!r}; choose one of {', '.join(COMPENSATIONS)}")


def uploads_are_stale(overlap: bool, compensation: str) -> bool:
    """Whether the server's uploads started from an older global model than its current one: Overlap-FedAvg's
    uploads do, one version behind, unless the clients merge (their uploads are progress on top of w)."""
    _check_compensation(compensation)
    return overlap and compensation != CLIENT_MERGE


def merged_upload(global_model: Tensor, local: Tensor, start: Tensor) -> Tensor:
    """U = G + (L - x): what a merging client uploads after a round that trained `start` (x) into `local`
    (L), with G the newest global model it holds (G_{r-1} after round r). The server averages these like
    FedAvg's models."""
    return torch.sub(local, start).add_(global_model)   # (L - x) + G: one new tensor, the same numbers


def merged_start(global_model: Tensor, upload: Tensor, merge_weight: float) -> Tensor:
    """x = G + b (U - G) = (1 - b) G + b U: where a merging client trains its next round from, with U its
    merged_upload built on G and b the merge weight. b = 1 keeps all of the client's own progress (x = U
    exactly), b = 0 drops it (x = G: the `none` form, up to rounding), between them the mix of the two.
    At b = 1 the result is `upload` itself, not a copy: callers read it, never change it."""
    if not 0.0 <= merge_weight <= 1.0:
        raise ValueError(f"the merge weight b must be between 0 and 1, got {merge_weight}")
    if merge_weight == 1.0:
        return upload   # what lerp gives at b = 1, without a pass over the model on the client's critical path
    return torch.lerp(global_model, upload, merge_weight)   # exactly G at b = 0


def compensation_coefficient(mode: str, spread: Tensor | None, lambd: float,
                             constant: float = 0.0) -> Tensor | float:
    """C of g_c = g + C * (w - prev) for the fixed forms: official lambda*v*v, dcasgd lambda*v, full 1,
    none 0, constant `constant`; the client merge 0 (its uploads are not stale). The adaptive forms are
    estimated by ServerUpdate (secant_coefficient). `spread` may be None for the forms that do not use it."""
    _check_compensation(mode)
    if mode in ADAPTIVE_COMPENSATIONS:
        raise ValueError(f"{mode!r} is estimated from the updates (see secant_coefficient), not fixed")
    if mode in SPREAD_COMPENSATIONS and spread is None:
        raise ValueError(f"the {mode!r} compensation is built from the spread v: accumulate it (with_spread)")
    if mode == "official":
        return lambd * spread * spread
    if mode == "dcasgd":
        return lambd * spread
    return {"full": 1.0, "none": 0.0, "constant": constant, CLIENT_MERGE: 0.0}[mode]


def secant_coefficient(pseudo_grad: Tensor, last_pseudo_grad: Tensor, start: Tensor,
                       last_start: Tensor) -> float | None:
    """C = <g_u - g_{u-1}, prev_u - prev_{u-1}> / |prev_u - prev_{u-1}|^2, clipped to [0, 1].

    On a quadratic, K local SGD steps give g(w) = g(prev) + A (w - prev) with A = I - (I - lr H)^K, so
    the exact compensation is A; this is its scalar secant estimate from the last two updates (g_u:
    the pseudo-gradient of update u, prev_u: the model its uploads started from). None when the start
    did not move (the first two updates both start from G_0), so there is nothing to estimate from.
    """
    step = start - last_start
    step_norm2 = torch.dot(step, step).item()
    if step_norm2 == 0.0:
        return None
    estimate = torch.dot(pseudo_grad - last_pseudo_grad, step).item() / step_norm2
    return min(max(estimate, 0.0), 1.0)


def compensated_gradient(prev: Tensor, avg: Tensor, current: Tensor, coef: Tensor | float) -> Tensor:
    """g_c = g + C * (w - prev) with g = prev - avg; w is `current`, C is `coef`. No input is modified."""
    pseudo_grad = prev - avg
    if isinstance(coef, float) and coef == 0.0:
        return pseudo_grad
    return pseudo_grad + coef * (current - prev)


class ServerUpdate:
    """The one server update shared by FedAvg and Overlap-FedAvg (README, "The algorithm").

    Holds the current global model w (flat), the model the uploads started from, and an Optimizer.SGD
    (lr=server_lr, momentum=mu, Nesterov when mu > 0) over w: w, prev, the momentum buffer and one
    round's avg (and v, for the forms built on it), so O(model) memory whatever the number of clients
    (the secant form keeps the last update's g and prev too).

    stale=False (FedAvg): the uploads started from w, so w - prev = 0 and the compensation is void.
    stale=True (Overlap): the uploads of update u started from G_0 for u = 1, 2 and G_{u-2} after.
    compensation=CLIENT_MERGE: the clients merged (uploads_are_stale is False), so stale must be False.
    comp_coef: C of the `constant` form, and the secant form's value until it has two starts to compare.
    num_buffers: the last entries of the flat model are buffers (BatchNorm statistics), not parameters:
    they are set to the clients' plain average, outside compensation and momentum.

    Use per update: ``m = s.new_round()``, ``m.add(L_k, p_k)`` for every upload, ``s.apply(m)``.
    """

    def __init__(self, initial: Tensor, *, stale: bool, momentum: float = 0.0, server_lr: float = 1.0,
                 compensation: str = "none", lambd: float = 0.0, comp_coef: float = 0.5,
                 num_buffers: int = 0):
        _check_compensation(compensation)
        if lambd < 0:
            raise ValueError(f"lambda must be >= 0, got {lambd}")
        if not 0.0 <= comp_coef <= 1.0:
            raise ValueError(f"the compensation coefficient C must be between 0 and 1, got {comp_coef}")
        if stale and compensation == CLIENT_MERGE:
            raise ValueError(f"--compensation {CLIENT_MERGE}: the clients merge, so the uploads are not stale "
                             f"(see uploads_are_stale)")
        if not 0 <= num_buffers < initial.numel():
            raise ValueError(f"num_buffers must be between 0 and the model size {initial.numel() - 1}, "
                             f"got {num_buffers}")
        self.stale = stale
        self.compensation = compensation
        self.lambd = lambd
        self.comp_coef = comp_coef
        self.num_updates = 0
        self.last_comp_coef: float | None = None   # the scalar C of the last update (None: elementwise)
        self._w = initial.detach().clone()
        self._num_params = initial.numel() - num_buffers
        # prev is only needed when stale; otherwise the uploads start from w itself.
        self._prev = self._w.clone() if stale else None
        self._last_pseudo_grad: Tensor | None = None   # secant form: g and prev of the last update
        self._last_start: Tensor | None = None
        self._optimizer = SGD([self._w[:self._num_params]], lr=server_lr, momentum=momentum,
                              nesterov=momentum > 0)

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
        return StreamingMoments(self.upload_start, with_spread=self.compensation in SPREAD_COMPENSATIONS)

    def apply(self, moments: StreamingMoments) -> Tensor:
        """g_c from the uploads, prev = w, then one Nesterov step on w; returns the new w (live)."""
        if moments.start is not self.upload_start:
            raise ValueError("apply() needs the accumulator of this update: call new_round() after "
                             "the previous apply()")
        avg, spread = moments.result()
        params = slice(0, self._num_params)
        start, w = self.upload_start[params], self._w[params]
        coef = self._coefficient(start, avg[params], None if spread is None else spread[params])
        grad = compensated_gradient(start, avg[params], w, coef)
        self.last_comp_coef = coef if isinstance(coef, float) else None
        if self.stale:
            self._prev = self._w.clone()
        self._optimizer.step(grads=[grad])
        self._w[self._num_params:] = avg[self._num_params:]   # buffers: the plain average
        self.num_updates += 1
        return self._w

    def state_dict(self) -> dict:
        """Everything the next updates depend on: w, prev, the momentum buffer, the secant form's last g and
        prev, the update count. load_state_dict restores it exactly. w and the momentum buffer are copied
        (apply() changes them in place); prev and the secant tensors are shared, since apply() replaces
        them and never modifies them."""
        buffer = self._optimizer.state.get(self._optimizer.param_groups[0]["params"][0], {}).get("momentum_buffer")
        return {"current": self._w.clone(), "prev": self._prev,
                "momentum_buffer": None if buffer is None else buffer.clone(),
                "last_pseudo_grad": self._last_pseudo_grad, "last_start": self._last_start,
                "num_updates": self.num_updates, "last_comp_coef": self.last_comp_coef}

    def load_state_dict(self, state: dict) -> None:
        """Continue from a state_dict() of an update with the same settings and model size; ValueError else."""
        if state["current"].shape != self._w.shape:
            raise ValueError(f"the saved model has {state['current'].numel():,} numbers, this one "
                             f"{self._w.numel():,}: it is another model")
        if (state["prev"] is not None) != self.stale:
            raise ValueError("the saved update is " + ("Overlap-FedAvg's" if state["prev"] is not None else
                                                       "FedAvg's") + ", this one is not")
        self._w.copy_(state["current"])   # in place: the optimizer holds a view of w
        self._prev = None if state["prev"] is None else state["prev"].clone()
        param = self._optimizer.param_groups[0]["params"][0]
        if state["momentum_buffer"] is not None:
            self._optimizer.state[param]["momentum_buffer"] = state["momentum_buffer"].clone()
        self._last_pseudo_grad, self._last_start = state["last_pseudo_grad"], state["last_start"]
        self.num_updates, self.last_comp_coef = state["num_updates"], state["last_comp_coef"]

    def _coefficient(self, start: Tensor, avg: Tensor, spread: Tensor | None) -> Tensor | float:
        if self.compensation not in ADAPTIVE_COMPENSATIONS:
            return compensation_coefficient(self.compensation, spread, self.lambd, self.comp_coef)
        pseudo_grad, estimate = start - avg, None
        if self._last_pseudo_grad is not None:
            estimate = secant_coefficient(pseudo_grad, self._last_pseudo_grad, start, self._last_start)
        self._last_pseudo_grad, self._last_start = pseudo_grad, start.clone()
        return self.comp_coef if estimate is None else estimate
