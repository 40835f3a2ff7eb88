"""A client's local training: E epochs of plain SGD from a given global model, on its own shard.

Every random choice of a round (sample order, augmentation, dropout) comes from a seed derived from
(seed, client, round, epoch), so any round can be replayed without saved client state (README, "The algorithm").
How a shard is batched, and how a model is evaluated, the data objects say (Utils/data: ImageData, TextData).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from Utils.data.datasets import ImageData
from Utils.data.text import TextData
from Utils.flat import flatten_model, load_flat_into_model


def derived_seed(*parts: int) -> int:
    """A well-mixed 63-bit seed for a tuple such as (seed, client, round, epoch)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(2, np.uint64)[0] >> 1)


class LocalTrainer:
    """Trains one client's model on its own shard: E epochs of SGD(lr), no momentum, from a given start."""

    def __init__(self, model: nn.Module, data: ImageData | TextData, shard, *, batch_size: int, lr: float,
                 epochs: int, seed: int, client: int):
        self.model = model
        self.epochs = epochs
        self.seed = seed
        self.client = client   # 1..N: with one client per rank, its rank
        self.loss_fn = nn.CrossEntropyLoss()
        self.optimizer = torch.optim.SGD(model.parameters(), lr=lr)
        self.shard = data.client_shard(shard, batch_size, next(model.parameters()).device)

    def train_round(self, start: torch.Tensor, round_number: int) -> tuple[torch.Tensor, float]:
        """Load the global model `start`, train round `round_number` (1..R) for E epochs; return (new flat model,
        mean training loss)."""
        round_index = round_number - 1   # the seeds count rounds from 0, as they always have: same seed, same numbers
        load_flat_into_model(start, self.model)
        self.model.train()
        total_loss, num_batches = torch.zeros((), dtype=torch.float64), 0
        for epoch in range(self.epochs):
            generator = torch.Generator().manual_seed(derived_seed(self.seed, self.client, round_index, epoch))
            torch.manual_seed(derived_seed(self.seed, self.client, round_index, epoch, 1))  # dropout
            for inputs, targets in self.shard.batches(generator):
                self.optimizer.zero_grad(set_to_none=True)
                output = self.model(inputs)
                loss = self.loss_fn(output.reshape(-1, output.shape[-1]), targets)
                loss.backward()
                if self.shard.grad_clip is not None:
                    nn.utils.clip_grad_norm_(self.model.parameters(), self.shard.grad_clip)
                self.optimizer.step()
                total_loss += loss.detach()   # no .item(): no per-batch sync on an accelerator
                num_batches += 1
        return flatten_model(self.model), total_loss.item() / max(num_batches, 1)
