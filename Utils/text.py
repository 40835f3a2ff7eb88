"""Word-level corpora as in pytorch/examples word_language_model: tokenise, batchify, cut bptt chunks."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from Utils.datasets import DatasetCorruptError, DatasetUnavailableError, TextData

BPTT = 35
EOS = "<eos>"
# The two namings of a corpus folder: WikiText's (pytorch/examples) and Mikolov's PTB files.
FILE_NAMINGS = (("train.txt", "valid.txt", "test.txt"), ("ptb.train.txt", "ptb.valid.txt", "ptb.test.txt"))


def load_text_corpus(folder: str | Path, name: str) -> TextData:
    """Tokenise a folder's train/valid/test files: each line's words then "<eos>".

    The vocabulary is every word of train, valid and test in first-seen order, as pytorch/examples.
    """
    folder = Path(folder)
    paths = next(([folder / file for file in files] for files in FILE_NAMINGS
                  if all((folder / file).is_file() for file in files)), None)
    if paths is None:
        namings = " or ".join(", ".join(files) for files in FILE_NAMINGS)
        raise DatasetUnavailableError(f"{name}: {folder} holds neither {namings}; "
                                      f"run `python prepare_data.py --dataset {name}`")
    word_to_index: dict[str, int] = {}
    train, valid, test = (_tokenize(path, word_to_index, name) for path in paths)
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
