"""A model as one flat float32 vector: what a message carries and what the server's math works on."""
from __future__ import annotations

import torch
from torch import nn


def shared_tensors(model: nn.Module) -> list[torch.Tensor]:
    """The tensors a message carries: parameters, then persistent buffers (BatchNorm statistics).

    Constant tables registered with persistent=False (the Transformer's positional encoding) stay home.
    """
    persistent = set(model.state_dict().keys())
    buffers = [b for name, b in model.named_buffers() if name in persistent]
    return [p for p in model.parameters()] + buffers


def model_size(model: nn.Module) -> int:
    """How many numbers flatten_model(model) holds."""
    return sum(t.numel() for t in shared_tensors(model))


def flatten_model(model: nn.Module) -> torch.Tensor:
    """A new float32 CPU tensor holding the model's shared tensors one after another."""
    return torch.cat([t.detach().reshape(-1).to("cpu", torch.float32) for t in shared_tensors(model)])


@torch.no_grad()
def load_flat_into_model(flat: torch.Tensor, model: nn.Module) -> None:
    """Copy the leading model_size(model) numbers of `flat` into the model's shared tensors."""
    offset = 0
    for tensor in shared_tensors(model):
        count = tensor.numel()
        tensor.copy_(flat[offset:offset + count].view_as(tensor))
        offset += count
