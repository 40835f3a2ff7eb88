"""Readers of the image datasets' source files into uint8 tensors: idx files (MNIST, Fashion-MNIST,
EMNIST), CIFAR pickled batches, CIFAR-10 as JPEG npz (../shared/data/cifar10-jpeg). Each returns a split's
images (N, C, H, W) uint8 and labels int64; any broken file raises one DatasetCorruptError line that
names it, says what is wrong and how to fix it.
"""
from __future__ import annotations

import gzip
import pickle
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from Utils.data.datasets import IMAGE_SPECS, prepare_hint
from Utils.data.errors import DatasetCorruptError


def torchvision_class(name: str) -> type:
    """The torchvision.datasets class that downloads `name` (looked up when called, so tests can stand in).
    torchvision is imported here, not at the top, because importing it costs a job's start-up about 1 s."""
    import torchvision.datasets
    return getattr(torchvision.datasets, IMAGE_SPECS[name].torchvision_class)


def idx_file_names(name: str) -> list[str]:
    return [file for pair in IMAGE_SPECS[name].idx_files.values() for file in pair]


def cifar_batch_files(name: str) -> list[str]:
    dataset_class = torchvision_class(name)
    return [file for file, _ in dataset_class.train_list + dataset_class.test_list]


def _read_idx(path: Path, reader: Callable[[str], Tensor], what: str, fix: str, origin: Path | None = None) -> Tensor:
    """torchvision's idx reader, whose failures on a broken file (an assert on the header, a shape that a
    truncated file cannot fill, a wrong dtype or rank) become one DatasetCorruptError naming `origin`."""
    try:
        return reader(str(path))
    except Exception as exc:   # AssertionError, KeyError, TypeError, ValueError, RuntimeError: all "broken"
        detail = f"{type(exc).__name__}: {exc}" if str(exc) else f"{type(exc).__name__} on its header"
        raise DatasetCorruptError(f"{origin or path}: not a complete uint8 idx file of {what} ({detail}); "
                                  f"{fix}") from exc


def read_idx_split(name: str, raw: Path, split: str, fix: str | None = None,
                   origins: dict[str, Path] | None = None) -> tuple[Tensor, Tensor]:
    """A split's images (N, 1, H, W) and labels from the idx files in `raw` (origins: where each came from)."""
    spec, origins = IMAGE_SPECS[name], origins or {}
    fix = fix or f"delete it and {prepare_hint(name)}"
    image_file, label_file = spec.idx_files[split]
    from torchvision.datasets.mnist import read_image_file, read_label_file
    images = _read_idx(raw / image_file, read_image_file, "images (3-D)", fix, origins.get(image_file))
    labels = _read_idx(raw / label_file, read_label_file, "labels (1-D)", fix, origins.get(label_file))
    if spec.idx_transposed:
        images = images.transpose(1, 2)   # make every image upright
    return images.unsqueeze(1).contiguous(), labels


class _CifarUnpickler(pickle.Unpickler):
    """Builds the dicts, lists and numpy arrays of a CIFAR batch and refuses any other global. torchvision
    unpickles its batches without restriction; an imported copy is not checksum-verified, and unpickling
    it unrestricted could run arbitrary code."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def read_cifar_split(name: str, folder: Path, split: str, fix: str | None = None) -> tuple[Tensor, Tensor]:
    """A split's images (N, 3, 32, 32) and labels from torchvision's pickled batches in `folder`."""
    fix = fix or f"delete it and {prepare_hint(name)}"
    dataset_class = torchvision_class(name)
    batches = dataset_class.train_list if split == "train" else dataset_class.test_list
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


def read_jpeg_npz_split(path: Path) -> tuple[Tensor, Tensor]:
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
    from torchvision.io import ImageReadMode, decode_jpeg
    data = torch.from_numpy(jpeg)
    blobs = [data[begin:end] for begin, end in zip(offsets[:-1].tolist(), offsets[1:].tolist(), strict=True)]
    try:
        images = torch.stack(decode_jpeg(blobs, mode=ImageReadMode.RGB))
    except RuntimeError as exc:
        raise DatasetCorruptError(f"{path}: an image does not decode as a 32x32 JPEG ({exc}); {fix}") from exc
    return images, torch.from_numpy(labels.astype(np.int64))


def gunzip(path: Path) -> bytes:
    try:
        return gzip.decompress(path.read_bytes())
    except (OSError, EOFError, zlib.error) as exc:   # BadGzipFile is an OSError; truncation is EOFError
        raise DatasetCorruptError(f"{path}: not a complete gzip file ({exc}); re-copy it") from exc
