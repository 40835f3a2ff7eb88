"""Compressed messages (--compress): the math of each format, and the error feedback that makes them lossless
over rounds. Pure functions on flat float32 vectors; how the parts are laid out in a message is
Utils.transport's (pack_payload).

What is compressed is always a difference the receiver can add to a model it already holds
(docs/network.md, "Compression"):
- an upload carries the client's model minus the global model it holds (its progress, in the client merge);
- a download carries the global model minus what the clients hold, so every client and the server's replica
  of them add the same decoded numbers and stay equal bit for bit.

Formats, with the bound on one message's error per number (x a number sent, x' what arrives):
- none: float32, exact.
- fp16: IEEE half precision, round to nearest, saturated at +-65504 (never inf):
  |x - x'| <= 2**-11 |x| for 2**-14 <= |x| <= 65504, <= 2**-25 below.
- int8: blocks of INT8_BLOCK numbers, each with a float32 scale s = max |x| / 127; round to nearest:
  |x - x'| <= s / 2 (plus float32 rounding). 4 bytes per number become 1 + 4 / INT8_BLOCK.
- topk: the k = ceil(ratio * numel) numbers of largest magnitude, as int32 index and float32 value
  (8 bytes each); the kept numbers arrive exactly, the others as 0.

Rounding is to nearest, not stochastic: with error feedback the rounding error of one message is carried to
the next rather than averaged out by chance, so nothing is lost over rounds, and a run needs no shared random
stream to stay deterministic.

Error feedback: a sender keeps what its last message lost (the residual) and adds it to the next one, so
that over R rounds the receiver gets the sum of everything sent, less only the last residual.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

COMPRESSIONS = ("none", "fp16", "int8", "topk")
INT8_BLOCK = 256
FP16_MAX = 65504.0

# One field of a compressed message: its dtype and how many numbers of that dtype it holds.
PartSpec = tuple[torch.dtype, int]


def topk_count(numel: int, ratio: float) -> int:
    """How many numbers a top-k message keeps: ceil(ratio * numel), at least 1."""
    return max(1, min(numel, math.ceil(ratio * numel)))


def part_specs(compression: str, numel: int, topk_ratio: float) -> list[PartSpec]:
    """The fields of a message carrying `numel` numbers in this format, in order."""
    if compression == "none":
        return [(torch.float32, numel)]
    if compression == "fp16":
        return [(torch.float16, numel)]
    if compression == "int8":
        return [(torch.float32, math.ceil(numel / INT8_BLOCK)), (torch.int8, numel)]
    if compression == "topk":
        k = topk_count(numel, topk_ratio)
        return [(torch.int32, k), (torch.float32, k)]
    raise ValueError(f"unknown compression {compression!r}; expected one of {', '.join(COMPRESSIONS)}")


def encode(values: Tensor, compression: str, topk_ratio: float) -> list[Tensor]:
    """The message fields (part_specs) that carry `values` (a flat float32 vector)."""
    if compression == "none":
        return [values]
    if compression == "fp16":
        return [values.clamp(-FP16_MAX, FP16_MAX).to(torch.float16)]
    if compression == "int8":
        blocks = _blocks(values)
        scales = blocks.abs().amax(dim=1) / 127.0
        safe = torch.where(scales > 0, scales, torch.ones_like(scales))
        codes = torch.round(blocks / safe[:, None]).clamp_(-127, 127).to(torch.int8)
        return [scales, codes.reshape(-1)[:values.numel()]]
    if compression == "topk":
        kept = torch.topk(values.abs(), topk_count(values.numel(), topk_ratio), sorted=False).indices
        kept = torch.sort(kept).values   # a fixed order for a fixed set: the message depends on the set only
        return [kept.to(torch.int32), values[kept]]
    raise ValueError(f"unknown compression {compression!r}; expected one of {', '.join(COMPRESSIONS)}")


def decode(parts: list[Tensor], compression: str, numel: int) -> Tensor:
    """The flat float32 vector a message's fields stand for (a new tensor)."""
    if compression == "none":
        return parts[0].clone()
    if compression == "fp16":
        return parts[0].to(torch.float32)
    if compression == "int8":
        scales, codes = parts
        padded = torch.zeros(scales.numel() * INT8_BLOCK, dtype=torch.float32)
        padded[:numel] = codes.to(torch.float32)
        return (padded.view(-1, INT8_BLOCK) * scales[:, None]).reshape(-1)[:numel]
    if compression == "topk":
        indices, kept = parts
        values = torch.zeros(numel, dtype=torch.float32)
        values[indices.to(torch.int64)] = kept
        return values
    raise ValueError(f"unknown compression {compression!r}; expected one of {', '.join(COMPRESSIONS)}")


def _blocks(values: Tensor) -> Tensor:
    count = math.ceil(values.numel() / INT8_BLOCK)
    padded = torch.zeros(count * INT8_BLOCK, dtype=torch.float32)
    padded[:values.numel()] = values
    return padded.view(count, INT8_BLOCK)


def error_bound(values: Tensor, compression: str) -> Tensor:
    """The largest |x - x'| one message of this format allows, per number (top-k: 0 on the kept ones, which
    the caller checks; |x| elsewhere)."""
    if compression == "none":
        return torch.zeros_like(values)
    if compression == "fp16":
        magnitude = values.abs().clamp(max=FP16_MAX)
        return torch.where(magnitude >= 2.0**-14, magnitude * 2.0**-11, torch.full_like(values, 2.0**-25)) \
            + (values.abs() - FP16_MAX).clamp(min=0)
    if compression == "int8":
        scales = _blocks(values).abs().amax(dim=1) / 127.0
        per_number = scales.repeat_interleave(INT8_BLOCK)[:values.numel()]
        return per_number / 2 * (1 + 1e-6) + values.abs() * 1e-7   # float32 rounding of x / s and of q * s
    if compression == "topk":
        return values.abs()
    raise ValueError(f"unknown compression {compression!r}; expected one of {', '.join(COMPRESSIONS)}")


class ErrorFeedback:
    """A sender's residual: compress(delta) sends delta plus what earlier messages lost, and keeps what this
    one loses. With compression "none" it is a pass-through and keeps nothing."""

    def __init__(self, numel: int, compression: str, topk_ratio: float):
        self.compression, self.topk_ratio, self.numel = compression, topk_ratio, numel
        self.residual = torch.zeros(numel) if compression != "none" else None

    def compress(self, delta: Tensor) -> tuple[list[Tensor], Tensor]:
        """(the message's fields, what the receiver will decode from them)."""
        if self.residual is None:
            return encode(delta, "none", self.topk_ratio), delta
        wanted = delta + self.residual
        parts = encode(wanted, self.compression, self.topk_ratio)
        arrives = decode(parts, self.compression, self.numel)
        self.residual = wanted - arrives
        return parts, arrives
