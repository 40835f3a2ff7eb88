"""A model as one flat float32 vector: what a message carries and what the server's math works on."""
from __future__ import annotations

import torch
from torch import nn


def shared_buffers(model: nn.Module) -> list[torch.Tensor]:
    """The buffers a message carries: persistent floating-point ones (BatchNorm running statistics).

    Constant tables registered with persistent=False (the Transformer's positional encoding) stay home,
    and so do integer buffers (BatchNorm's num_batches_tracked): a float32 message would round them.
    """
    persistent = set(model.state_dict().keys())
    return [b for name, b in model.named_buffers() if name in persistent and b.is_floating_point()]


def shared_tensors(model: nn.Module) -> list[torch.Tensor]:
    """The tensors a message carries: parameters, then shared_buffers (last, so the server can tell them
    apart: it averages buffers plainly, outside compensation and momentum)."""
    return list(model.parameters()) + shared_buffers(model)


def buffer_size(model: nn.Module) -> int:
    """How many of flatten_model(model)'s numbers, at its end, are buffers rather than parameters."""
    return sum(b.numel() for b in shared_buffers(model))


def model_size(model: nn.Module) -> int:
    """How many numbers flatten_model(model) holds."""
    return sum(t.numel() for t in shared_tensors(model))


def cpu_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state_dict on the CPU: saved like this, a model trained on a GPU loads on a machine without
    one (torch.load(weights_only=True), no map_location)."""
    return {name: tensor.detach().cpu() for name, tensor in model.state_dict().items()}


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
