"""Word-level corpora as in pytorch/examples word_language_model: TextData, tokenise, batchify, bptt chunks.

TextData answers what the rest of the code asks of a dataset (as ImageData does for images): its metric
(perplexity, lower is better), the model's output size (the vocabulary), how a client's shard (a slice of
the token stream) is batched, and how a model is evaluated.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from Utils.data.errors import DatasetCorruptError

BPTT = 35
EOS = "<eos>"
GRAD_CLIP = 0.25    # the language model's gradient clipping (pytorch/examples word_language_model, as official)
EVAL_BATCH = 10     # columns of the batchified test stream


@dataclass(frozen=True, eq=False)   # eq=False: tensors do not compare with ==
class TextData:
    name: str
    train_tokens: Tensor   # int64 1-D
    valid_tokens: Tensor
    test_tokens: Tensor
    vocab: list[str]       # index -> word, "<eos>" included (as pytorch/examples word_language_model)

    metric = "perplexity"       # the test metric, lower is better
    higher_is_better = False

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    @property
    def output_size(self) -> int:
        """The model's outputs: one logit per word."""
        return self.vocab_size

    @property
    def model_shape(self) -> dict:
        """What build_model needs beyond the output size: nothing for the Transformer."""
        return {}

    def client_shard(self, shard: tuple[int, int], batch_size: int, device: torch.device) -> TextShard:
        """A client's slice (start, stop) of the training stream, batchified on `device`."""
        start, stop = shard
        return TextShard(batchify(self.train_tokens[start:stop], batch_size).to(device), stop - start)

    def test_on(self, device: torch.device) -> TextData:
        """The same corpus with its test stream on `device` (staged once for an evaluator on a GPU)."""
        return self if device.type == "cpu" else dataclasses.replace(self, test_tokens=self.test_tokens.to(device))

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> dict[str, float]:
        """{"perplexity", "test_loss"} of `model` on the test stream (mean next-word cross-entropy)."""
        model.eval()
        device = next(model.parameters()).device
        loss_fn = nn.CrossEntropyLoss(reduction="sum")
        source = batchify(self.test_tokens, EVAL_BATCH).to(device)
        total_loss, count = 0.0, 0
        for i in range(0, source.size(0) - 1, BPTT):
            inputs, targets = get_bptt_batch(source, i)
            output = model(inputs)
            total_loss += loss_fn(output.reshape(-1, output.shape[-1]), targets).item()
            count += targets.numel()
        mean_loss = total_loss / count
        return {"perplexity": math.exp(min(mean_loss, 700.0)), "test_loss": mean_loss}


@dataclass(frozen=True, eq=False)
class TextShard:
    """A client's batchified slice of the stream; its training batches are bptt chunks in a shuffled order."""
    tokens: Tensor      # (T, batch_size)
    num_samples: int    # tokens
    grad_clip = GRAD_CLIP

    def batches(self, generator: torch.Generator) -> Iterator[tuple[Tensor, Tensor]]:
        # The Transformer carries no state between chunks, so their order can be shuffled like samples.
        starts = torch.arange(0, self.tokens.size(0) - 1, BPTT)
        for i in starts[torch.randperm(len(starts), generator=generator)].tolist():
            yield get_bptt_batch(self.tokens, i)


def load_text_corpus(paths: Sequence[str | Path], name: str) -> TextData:
    """Tokenise the train, valid and test files `paths`: each line's words then "<eos>".

    The vocabulary is every word of train, valid and test in first-seen order, as pytorch/examples.
    """
    word_to_index: dict[str, int] = {}
    train, valid, test = (_tokenize(Path(path), word_to_index, name) for path in paths)
    return TextData(name, train, valid, test, vocab=list(word_to_index))


def _tokenize(path: Path, word_to_index: dict[str, int], name: str) -> Tensor:
    ids = [word_to_index.setdefault(word, len(word_to_index)) for words in _lines(path, name) for word in words]
    return torch.tensor(ids, dtype=torch.int64)


def scan_corpus_file(path: Path, name: str) -> tuple[int, set[str]]:
    """A corpus file's token count and its words, as load_text_corpus would read them, without the ids."""
    tokens, vocab = 0, set()
    for words in _lines(path, name):
        tokens += len(words)
        vocab.update(words)
    return tokens, vocab


def _lines(path: Path, name: str) -> Iterator[list[str]]:
    """Each line's words and its <eos>, iterated as pytorch/examples does; DatasetCorruptError for a file that
    is not UTF-8 or holds no word."""
    fix = f"delete it and run `python prepare_data.py --dataset {name}`"
    any_word = False
    try:
        with open(path, encoding="utf8") as lines:
            for line in lines:
                words = line.split()
                any_word = any_word or bool(words)
                yield words + [EOS]
    except UnicodeDecodeError as exc:
        raise DatasetCorruptError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}); {fix}") from exc
    if not any_word:
        raise DatasetCorruptError(f"{path}: empty text file (no words); {fix}")


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
