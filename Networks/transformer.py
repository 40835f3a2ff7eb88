"""Transformer word language model after pytorch/examples word_language_model (TransformerModel).

Input: token ids of shape (seq_len, batch); output: logits of shape (seq_len, batch, vocab_size)
(pytorch/examples returns log_softmax; we return logits for nn.CrossEntropyLoss).
"""
import math

import torch
from torch import Tensor, nn

# The paper's sizes (official Utils/Helper.py).
EMSIZE = 200  # embedding and model width
NHEAD = 2
NHID = 200  # feed-forward width
NLAYERS = 2
DROPOUT = 0.2
MAX_LEN = 5000  # longest sequence the positional table covers


def sinusoidal_positions(max_len: int, d_model: int) -> Tensor:
    """Fixed sine/cosine position table of shape (max_len, 1, d_model) (Vaswani et al. 2017, 3.5)."""
    position = torch.arange(max_len, dtype=torch.float).unsqueeze(1)
    inv_freq = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float) * (-math.log(10000.0) / d_model))
    table = torch.zeros(max_len, d_model)
    table[:, 0::2] = torch.sin(position * inv_freq)
    table[:, 1::2] = torch.cos(position * inv_freq)
    return table.unsqueeze(1)


class TransformerModel(nn.Module):
    def __init__(self, vocab_size: int, emsize: int = EMSIZE, nhead: int = NHEAD, nhid: int = NHID,
                 nlayers: int = NLAYERS, dropout: float = DROPOUT):
        super().__init__()
        self.emsize = emsize
        self.embedding = nn.Embedding(vocab_size, emsize)
        # A constant: kept out of state_dict, so it is never sent over the network nor saved.
        self.register_buffer("positions", sinusoidal_positions(MAX_LEN, emsize), persistent=False)
        self.dropout = nn.Dropout(dropout)
        layer = nn.TransformerEncoderLayer(emsize, nhead, nhid, dropout)  # (seq, batch, feature)
        self.encoder = nn.TransformerEncoder(layer, nlayers, enable_nested_tensor=False)
        self.decoder = nn.Linear(emsize, vocab_size)
        self._causal_mask: Tensor | None = None  # plain attribute: rebuilt per length, never saved
        initrange = 0.1
        nn.init.uniform_(self.embedding.weight, -initrange, initrange)
        nn.init.uniform_(self.decoder.weight, -initrange, initrange)
        nn.init.zeros_(self.decoder.bias)

    def causal_mask(self, seq_len: int, like: Tensor) -> Tensor:
        """Additive mask (-inf above the diagonal) on like's device and dtype: i attends to j <= i only."""
        mask = self._causal_mask
        if mask is None or mask.shape[0] != seq_len or (mask.device, mask.dtype) != (like.device, like.dtype):
            mask = nn.Transformer.generate_square_subsequent_mask(seq_len, like.device, like.dtype)
            self._causal_mask = mask
        return mask

    def forward(self, src: Tensor) -> Tensor:
        seq_len = src.size(0)
        if seq_len > MAX_LEN:
            raise ValueError(f"sequence length {seq_len} exceeds the positional table ({MAX_LEN})")
        x = self.embedding(src) * math.sqrt(self.emsize)
        x = self.dropout(x + self.positions[:seq_len])
        x = self.encoder(x, mask=self.causal_mask(seq_len, x), is_causal=True)
        return self.decoder(x)  # logits
