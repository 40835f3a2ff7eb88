"""Word-level corpora as in pytorch/examples word_language_model: TextData, tokenise, batchify, bptt chunks."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from Utils.data.errors import DatasetCorruptError

BPTT = 35
EOS = "<eos>"


@dataclass(frozen=True, eq=False)   # eq=False: tensors do not compare with ==
class TextData:
    name: str
    train_tokens: Tensor   # int64 1-D
    valid_tokens: Tensor
    test_tokens: Tensor
    vocab: list[str]       # index -> word, "<eos>" included (as pytorch/examples word_language_model)

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)


def load_text_corpus(paths: Sequence[str | Path], name: str) -> TextData:
    """Tokenise the train, valid and test files `paths`: each line's words then "<eos>".

    The vocabulary is every word of train, valid and test in first-seen order, as pytorch/examples.
    """
    word_to_index: dict[str, int] = {}
    train, valid, test = (_tokenize(Path(path), word_to_index, name) for path in paths)
    return TextData(name, train, valid, test, vocab=list(word_to_index))


def _tokenize(path: Path, word_to_index: dict[str, int], name: str) -> Tensor:
    fix = f"delete it and run `python prepare_data.py --dataset {name}`"
    ids: list[int] = []
    try:
        with open(path, encoding="utf8") as lines:   # iterate lines exactly as pytorch/examples does
            for line in lines:
                for word in line.split() + [EOS]:
                    ids.append(word_to_index.setdefault(word, len(word_to_index)))
    except UnicodeDecodeError as exc:
        raise DatasetCorruptError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}); {fix}") from exc
    if len(ids) == ids.count(word_to_index.get(EOS, -1)):
        raise DatasetCorruptError(f"{path}: empty text file (no words); {fix}")
    return torch.tensor(ids, dtype=torch.int64)


def batchify(tokens: Tensor, batch_size: int) -> Tensor:
    """(T, batch_size): the stream cut into batch_size contiguous columns, the remainder dropped."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    steps = len(tokens) // batch_size
    if steps == 0:
        raise ValueError(f"{len(tokens)} tokens cannot fill one row of batch size {batch_size}")
    return tokens[:steps * batch_size].view(batch_size, steps).t().contiguous()


def get_bptt_batch(source: Tensor, i: int, bptt: int = BPTT) -> tuple[Tensor, Tensor]:
    """Rows i..i+L of a batchified stream and the next-token targets: (input (L, B), target (L*B,))."""
    length = min(bptt, len(source) - 1 - i)
    return source[i:i + length], source[i + 1:i + 1 + length].reshape(-1)
