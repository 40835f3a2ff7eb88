"""A client's local training (E epochs of plain SGD from a given global model) and model evaluation.

Every random choice of a round (sample order, augmentation, dropout) comes from a seed derived from
(seed, client, round, epoch), so any round can be replayed without saved client state (README, "The algorithm").
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch
from torch import nn

from Utils.data.datasets import ImageData, augment_batch
from Utils.data.text import BPTT, TextData, batchify, get_bptt_batch
from Utils.flat import flatten_model, load_flat_into_model

TEXT_GRAD_CLIP = 0.25   # pytorch/examples word_language_model, as the official code
TEXT_EVAL_BATCH = 10
IMAGE_EVAL_BATCH = 1000


def derived_seed(*parts: int) -> int:
    """A well-mixed 63-bit seed for a tuple such as (seed, client, round, epoch)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(2, np.uint64)[0] >> 1)


class LocalTrainer:
    """Trains one client's model on its own shard: E epochs of SGD(lr), no momentum, from a given start."""

    def __init__(self, model: nn.Module, data: ImageData | TextData, shard, *, batch_size: int, lr: float,
                 epochs: int, seed: int, client: int):
        self.model = model
        self.text = isinstance(data, TextData)
        self.augment = not self.text and data.augment
        self.batch_size = batch_size
        self.epochs = epochs
        self.seed = seed
        self.client = client   # 1..N: with one client per rank, its rank
        self.device = next(model.parameters()).device
        self.loss_fn = nn.CrossEntropyLoss()
        self.optimizer = torch.optim.SGD(model.parameters(), lr=lr)
        if isinstance(data, TextData):
            start, stop = shard
            self.tokens = batchify(data.train_tokens[start:stop], batch_size).to(self.device)
            self.num_samples = stop - start
        else:
            index = torch.as_tensor(np.asarray(shard), dtype=torch.long)
            # One gather and normalisation up front: every batch then indexes a small contiguous tensor,
            # and the rank keeps no reference to the rest of the training set.
            self.images = data.normalise(data.train_images[index].to(self.device))
            self.labels = data.train_labels[index].to(self.device)
            self.num_samples = len(index)

    def train_round(self, start: torch.Tensor, round_index: int) -> tuple[torch.Tensor, float]:
        """Load the global model `start`, train E epochs; return (new flat model, mean training loss)."""
        load_flat_into_model(start, self.model)
        self.model.train()
        total_loss, num_batches = torch.zeros((), dtype=torch.float64), 0
        for epoch in range(self.epochs):
            generator = torch.Generator().manual_seed(derived_seed(self.seed, self.client, round_index, epoch))
            torch.manual_seed(derived_seed(self.seed, self.client, round_index, epoch, 1))  # dropout
            batches = self._text_batches(generator) if self.text else self._image_batches(generator)
            for inputs, targets in batches:
                self.optimizer.zero_grad(set_to_none=True)
                output = self.model(inputs)
                loss = self.loss_fn(output.reshape(-1, output.shape[-1]), targets)
                loss.backward()
                if self.text:
                    nn.utils.clip_grad_norm_(self.model.parameters(), TEXT_GRAD_CLIP)
                self.optimizer.step()
                total_loss += loss.detach()   # no .item(): no per-batch sync on an accelerator
                num_batches += 1
        return flatten_model(self.model), total_loss.item() / max(num_batches, 1)

    def _image_batches(self, generator: torch.Generator):
        order = torch.randperm(self.num_samples, generator=generator)
        for begin in range(0, self.num_samples, self.batch_size):
            batch = order[begin:begin + self.batch_size]
            images = self.images[batch]
            if self.augment:
                images = augment_batch(images, generator)
            yield images, self.labels[batch]

    def _text_batches(self, generator: torch.Generator):
        # The Transformer carries no state between chunks, so their order can be shuffled like samples.
        starts = torch.arange(0, self.tokens.size(0) - 1, BPTT)
        for i in starts[torch.randperm(len(starts), generator=generator)].tolist():
            yield get_bptt_batch(self.tokens, i)


def stage_test_set(data: ImageData | TextData, device: torch.device) -> ImageData | TextData:
    """The same data with its test split moved to `device` once (the evaluator's GPU), so that evaluating a
    round copies nothing from the host; on the CPU the data itself."""
    if device.type == "cpu":
        return data
    if isinstance(data, TextData):
        return dataclasses.replace(data, test_tokens=data.test_tokens.to(device))
    return dataclasses.replace(data, test_images=data.test_images.to(device), test_labels=data.test_labels.to(device))


@torch.no_grad()
def evaluate(model: nn.Module, data: ImageData | TextData) -> dict[str, float]:
    """Test-set metrics: {"accuracy", "test_loss"} for images, {"perplexity", "test_loss"} for text."""
    model.eval()
    device = next(model.parameters()).device
    loss_fn = nn.CrossEntropyLoss(reduction="sum")
    if isinstance(data, TextData):
        source = batchify(data.test_tokens, TEXT_EVAL_BATCH).to(device)
        total_loss, count = 0.0, 0
        for i in range(0, source.size(0) - 1, BPTT):
            inputs, targets = get_bptt_batch(source, i)
            output = model(inputs)
            total_loss += loss_fn(output.reshape(-1, output.shape[-1]), targets).item()
            count += targets.numel()
        mean_loss = total_loss / count
        return {"perplexity": math.exp(min(mean_loss, 700.0)), "test_loss": mean_loss}
    total_loss, correct, count = 0.0, 0, len(data.test_labels)
    for begin in range(0, count, IMAGE_EVAL_BATCH):
        images = data.normalise(data.test_images[begin:begin + IMAGE_EVAL_BATCH].to(device))
        labels = data.test_labels[begin:begin + IMAGE_EVAL_BATCH].to(device)
        logits = model(images)
        total_loss += loss_fn(logits, labels).item()
        correct += (logits.argmax(dim=1) == labels).sum().item()
    return {"accuracy": correct / count, "test_loss": total_loss / count}
