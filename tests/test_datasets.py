"""Utils/data/datasets.py, Utils/data/prepare.py, Utils/data/image_files.py and Utils/data/text.py: the real data of
../shared/data, generated files in the real on-disk formats (EMNIST idx, CIFAR pickles), the uint8 cache,
augmentation, offline (with and without a local copy) and broken inputs."""
from __future__ import annotations

import fcntl
import gzip
import logging
import math
import pickle
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from conftest import require_shared

import Utils.data.prepare as prepare_module
from Networks import build_model
from Utils.data.datasets import (
    DATASET_NAMES,
    ImageData,
    augment_batch,
    dataset_is_text,
    dataset_metric,
    load_dataset,
    unverified_note,
)
from Utils.data.errors import DatasetCorruptError, DatasetUnavailableError
from Utils.data.prepare import SOURCE_ENV, ensure_dataset, import_dataset, is_prepared, local_copy
from Utils.data.text import TextData, batchify, get_bptt_batch, load_text_corpus

# torchvision 0.29 deprecates its JPEG codec in favour of TorchCodec (not a dependency): still used here.
pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding:DeprecationWarning")

# ------------------------------------------------------------------ generated files, real formats


def idx_bytes(array: np.ndarray) -> bytes:
    """An idx file (LeCun's format) holding a uint8 array."""
    header = bytes((0, 0, 8, array.ndim)) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def make_idx_dataset(folder: Path, files: dict[str, tuple[str, str]], samples: dict[str, int], num_classes: int,
                     *, transposed: bool = False, gz: bool = False, seed: int = 0) -> dict[str, np.ndarray]:
    """Images whose row 3 is bright (upright), every class present; stored transposed as EMNIST's files."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    upright = {}
    for split, (image_file, label_file) in files.items():
        count = samples[split]
        images = rng.integers(0, 100, (count, 28, 28), dtype=np.uint8)
        images[:, 3, :] = 255
        labels = (np.arange(count) % num_classes).astype(np.uint8)
        stored = images.transpose(0, 2, 1) if transposed else images
        for file, array in ((image_file, stored), (label_file, labels)):
            data = idx_bytes(array)
            if gz:
                (folder / f"{file}.gz").write_bytes(gzip.compress(data))
            else:
                (folder / file).write_bytes(data)
        upright[split] = images
    return upright


MNIST_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
               "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
EMNIST_FILES = {s: (f"emnist-balanced-{s}-images-idx3-ubyte", f"emnist-balanced-{s}-labels-idx1-ubyte")
                for s in ("train", "test")}


def make_mnist(folder: Path, *, gz: bool = False) -> dict[str, np.ndarray]:
    return make_idx_dataset(folder, MNIST_FILES, {"train": 200, "test": 50}, 10, gz=gz)


def make_emnist(folder: Path, *, gz: bool = False) -> dict[str, np.ndarray]:
    return make_idx_dataset(folder, EMNIST_FILES, {"train": 47 * 6, "test": 47 * 2}, 47, transposed=True, gz=gz)


def make_cifar_pickles(folder: Path, name: str, seed: int = 0) -> dict[str, tuple[np.ndarray, list[int]]]:
    """Pickled batches as torchvision's cifar-10-batches-py / cifar-100-python (protocol 2, numpy data)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    if name == "cifar10":
        batches, label_key, num_classes = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"], "labels", 10
        meta = ("batches.meta", {"label_names": [f"class{i}" for i in range(10)]})
    else:
        batches, label_key, num_classes = ["train", "test"], "fine_labels", 100
        meta = ("meta", {"fine_label_names": [f"class{i}" for i in range(100)]})
    per_batch = 20 if name == "cifar10" else 200
    contents: dict[str, tuple[np.ndarray, list[int]]] = {}
    for index, batch in enumerate(batches):
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        labels = [(index * per_batch + i) % num_classes for i in range(per_batch)]
        entry = {"batch_label": batch, "data": data, label_key: labels, "filenames": [f"{i}.png" for i in labels]}
        if name == "cifar100":
            entry["coarse_labels"] = [label // 5 for label in labels]
        (folder / batch).write_bytes(pickle.dumps(entry, protocol=2))
        contents[batch] = (data, labels)
    (folder / meta[0]).write_bytes(pickle.dumps(meta[1], protocol=2))
    return contents


def write_text_corpus(folder: Path, files: tuple[str, str, str], texts: tuple[str, str, str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for file, text in zip(files, texts, strict=True):
        (folder / file).write_text(text, encoding="utf8")


@pytest.fixture
def no_network(monkeypatch):
    """Every name lookup and connection fails at once, as on a machine without network; counts attempts."""
    attempts = []

    def refuse_lookup(*args, **kwargs):
        attempts.append(args[:1])
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution (test: no network)")

    def refuse_connect(self, *args, **kwargs):
        attempts.append(args[:1])
        raise OSError(101, "Network is unreachable (test: no network)")

    monkeypatch.setattr(socket, "getaddrinfo", refuse_lookup)
    monkeypatch.setattr(socket.socket, "connect", refuse_connect)
    return attempts


@pytest.fixture
def no_local_copy(monkeypatch, tmp_path_factory):
    """No local copy to fall back on: $OVERLAP_FEDAVG_DATA_SOURCE names an empty folder (else ../shared/data
    beside the checkout, present on this machine, would be imported from)."""
    monkeypatch.setenv(SOURCE_ENV, str(tmp_path_factory.mktemp("no-local-copies")))


def files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


# ------------------------------------------------------------------------------ real datasets

@pytest.fixture(scope="module")
def real_root(tmp_path_factory) -> Path:
    """One data root per module, each real dataset imported into it at most once."""
    return tmp_path_factory.mktemp("real-data")


def real(root: Path, name: str, subdir: str) -> ImageData | TextData:
    source = require_shared(subdir)
    if not is_prepared(name, root):
        import_dataset(name, source, root)
    return load_dataset(name, root)


@pytest.mark.parametrize("name, subdir, train, test, classes, shape, std_tol", [
    ("mnist", "mnist", 60_000, 10_000, 10, (1, 28, 28), 0.01),
    ("fmnist", "fashion-mnist", 60_000, 10_000, 10, (1, 28, 28), 0.01),
    ("cifar10", "cifar10-jpeg", 50_000, 10_000, 10, (3, 32, 32), 0.02),   # JPEG smooths: std 0.993..0.997
])
def test_real_image_dataset_shapes_classes_and_normalisation(real_root, name, subdir, train, test, classes,
                                                             shape, std_tol):
    data = real(real_root, name, subdir)
    assert isinstance(data, ImageData) and data.name == name and data.num_classes == classes
    assert data.train_images.shape == (train, *shape) and data.test_images.shape == (test, *shape)
    assert data.train_images.dtype == torch.uint8   # as stored: memory-mapped, normalised when taken
    assert data.train_labels.dtype == torch.int64 and data.train_labels.shape == (train,)
    assert (data.in_channels, data.image_size) == shape[:2]
    assert data.augment == name.startswith("cifar")
    for labels in (data.train_labels, data.test_labels):
        assert torch.bincount(labels, minlength=classes).min() > 0 and labels.max() == classes - 1
    normalised = data.normalise(data.train_images)
    assert normalised.dtype == torch.float32 and normalised.is_contiguous()
    per_channel = normalised.transpose(0, 1).reshape(shape[0], -1)
    assert per_channel.mean(dim=1).abs().max() < 0.01
    assert (per_channel.std(dim=1) - 1).abs().max() < std_tol
    cache = torch.load(real_root / {"mnist": "MNIST", "fmnist": "FashionMNIST", "cifar10": "cifar-10-batches-py"}[name]
                       / "cache-train.pt", weights_only=True)
    assert cache["source"] == f"imported from {require_shared(subdir)}" and cache["verified"] is False
    assert cache["images"].dtype == torch.uint8 and cache["images"].shape == (train, *shape)


@pytest.mark.parametrize("name, subdir, torchvision_class, folder", [
    ("mnist", "mnist", torchvision.datasets.MNIST, "MNIST"),
    ("fmnist", "fashion-mnist", torchvision.datasets.FashionMNIST, "FashionMNIST")])
def test_imported_idx_files_load_in_torchvision_as_if_downloaded(real_root, name, subdir, torchvision_class,
                                                                  folder):
    data = real(real_root, name, subdir)
    for train, labels in ((True, data.train_labels), (False, data.test_labels)):
        reference = torchvision_class(str(real_root), train=train, download=False)
        assert torch.equal(reference.targets, labels)
    cache = torch.load(real_root / folder / "cache-test.pt", weights_only=True)
    assert torch.equal(cache["images"][:, 0], reference.data)


def test_real_wikitext2_and_ptb_corpora(real_root):
    wikitext = real(real_root, "wikitext2", "wikitext-2")
    assert isinstance(wikitext, TextData) and wikitext.vocab_size == 33_278 and "<eos>" in wikitext.vocab
    assert (len(wikitext.train_tokens), len(wikitext.valid_tokens), len(wikitext.test_tokens)) == \
        (2_088_628, 217_646, 245_569)
    assert (real_root / "wikitext-2" / "train.txt").is_file()   # the shuffled chunks stand in for train.txt
    first_valid_words = (require_shared("wikitext-2") / "valid.txt").read_text("utf8").splitlines()[1].split()
    assert [wikitext.vocab[i] for i in wikitext.valid_tokens[1:1 + len(first_valid_words)]] == first_valid_words
    ptb = real(real_root, "ptb", "ptb")
    assert ptb.vocab_size == 10_000 and ptb.train_tokens.dtype == torch.int64
    assert (len(ptb.train_tokens), len(ptb.valid_tokens), len(ptb.test_tokens)) == (929_589, 73_760, 82_430)


# ------------------------------------------------------------- EMNIST and CIFAR, generated files

def test_emnist_balanced_from_torchvision_raw_layout_is_upright(tmp_path):
    upright = make_emnist(tmp_path / "EMNIST" / "raw")
    ensure_dataset("emnist", tmp_path, download=False)   # the raw files in place: only the caches are built
    data = load_dataset("emnist", tmp_path)
    assert data.num_classes == 47 and data.train_images.shape == (47 * 6, 1, 28, 28) and not data.augment
    assert data.test_images.shape == (47 * 2, 1, 28, 28)
    assert torch.equal(data.train_labels, torch.arange(47 * 6) % 47)
    pixels = torch.round((data.normalise(data.train_images) * 0.3332 + 0.1751) * 255).to(torch.uint8)
    assert torch.equal(pixels[:, 0], torch.from_numpy(upright["train"]))   # row 3 bright: upright again
    cache = torch.load(tmp_path / "EMNIST" / "cache-balanced-train.pt", weights_only=True)
    assert cache["source"] == "torchvision" and cache["verified"] is False   # no torchvision zip to check


@pytest.mark.parametrize("name, folder", [("cifar100", "cifar-100-python"), ("cifar10", "cifar-10-batches-py")])
def test_cifar_pickled_batches_load_with_the_right_pixels(tmp_path, name, folder):
    contents = make_cifar_pickles(tmp_path / folder, name)
    ensure_dataset(name, tmp_path, download=False)
    data = load_dataset(name, tmp_path)
    train_batches = [b for b in contents if b not in ("test", "test_batch")]
    expected_pixels = np.concatenate([contents[b][0] for b in train_batches]).reshape(-1, 3, 32, 32)
    expected_labels = sum((contents[b][1] for b in train_batches), [])
    mean, std = {"cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
                 "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))}[name]
    normalised = (torch.from_numpy(expected_pixels) / 255 - torch.tensor(mean).view(1, 3, 1, 1)) \
        / torch.tensor(std).view(1, 3, 1, 1)
    torch.testing.assert_close(data.normalise(data.train_images), normalised, rtol=0, atol=1e-5)
    assert data.train_labels.tolist() == expected_labels and data.augment
    assert data.num_classes == (100 if name == "cifar100" else 10)
    assert len(data.test_labels) == len(contents["test" if name == "cifar100" else "test_batch"][1])
    assert torch.load(tmp_path / folder / "cache-test.pt", weights_only=True)["verified"] is False   # md5s differ


def test_cifar10_jpeg_npz_import_decodes_the_images(tmp_path):
    rng = np.random.default_rng(0)
    source = tmp_path / "cifar10-jpeg"
    source.mkdir()
    originals = {}
    for split, count in (("train", 30), ("test", 10)):
        colours = torch.from_numpy(rng.integers(20, 236, (count, 3, 1, 1), dtype=np.uint8))
        images = colours.expand(count, 3, 32, 32).contiguous()   # flat colours survive JPEG almost exactly
        blobs = [torchvision.io.encode_jpeg(image, quality=95).numpy() for image in images]
        offsets = np.concatenate([[0], np.cumsum([len(b) for b in blobs])]).astype(np.int64)
        np.savez(source / f"{split}.npz", jpeg=np.concatenate(blobs), offsets=offsets,
                 labels=(np.arange(count) % 10).astype(np.uint8))
        originals[split] = images
    import_dataset("cifar10", source, tmp_path / "data")
    cache = torch.load(tmp_path / "data" / "cifar-10-batches-py" / "cache-train.pt", weights_only=True)
    assert cache["images"].shape == (30, 3, 32, 32) and cache["verified"] is False
    assert cache["source"] == f"imported from {source}"
    assert (cache["images"].int() - originals["train"].int()).abs().max() <= 3
    data = load_dataset("cifar10", tmp_path / "data")
    assert data.test_labels.tolist() == list(range(10))
    assert unverified_note("cifar10", tmp_path / "data") == \
        f"cifar10: using a copy imported from {source} (not checksum-verified)"


# -------------------------------------------------------------------------- offline, downloads

def test_absent_image_dataset_offline_raises_one_clear_line_and_writes_nothing(tmp_path, no_network, no_local_copy):
    start = time.monotonic()
    with pytest.raises(DatasetUnavailableError) as error:
        ensure_dataset("mnist", tmp_path / "data")
    assert time.monotonic() - start < 2   # no network is noticed at once, not after each mirror's timeout
    message = str(error.value)
    assert "\n" not in message and message.startswith("mnist: not in")
    assert "no network" in message and "prepare_data.py" in message and "--source DIR" in message
    assert "train-images-idx3-ubyte.gz" in message
    assert no_network   # a download was really tried
    assert files_under(tmp_path) == ["data/.mnist.lock"]   # no staging folder, no partial file


def test_absent_text_dataset_offline_raises_one_clear_line(tmp_path, no_network, no_local_copy):
    with pytest.raises(DatasetUnavailableError, match=r"^wikitext2: not in .*no network.*train\.txt"):
        ensure_dataset("wikitext2", tmp_path)
    assert not (tmp_path / "wikitext-2").exists() or files_under(tmp_path / "wikitext-2") == []


def test_offline_a_missing_dataset_is_imported_from_the_local_copy(tmp_path, no_network, monkeypatch, caplog):
    source = tmp_path / "copies"
    upright = make_mnist(source / "mnist", gz=True)
    monkeypatch.setenv(SOURCE_ENV, str(source))
    with caplog.at_level(logging.INFO, logger="Utils.data.prepare"):
        ensure_dataset("mnist", tmp_path / "data")
    assert f"mnist: no network; importing from {source / 'mnist'}" in caplog.messages
    assert no_network   # a download was tried first
    data = load_dataset("mnist", tmp_path / "data")
    assert torch.equal(data.test_labels, torch.arange(50) % 10) and data.train_images.shape == (200, 1, 28, 28)
    cache = torch.load(tmp_path / "data" / "MNIST" / "cache-train.pt", weights_only=True)
    assert torch.equal(cache["images"][:, 0], torch.from_numpy(upright["train"]))
    assert cache["source"] == f"imported from {source / 'mnist'}" and cache["verified"] is False
    assert [f for f in files_under(tmp_path / "data") if "/raw/" in f] == \
        sorted(f"MNIST/raw/{f}" for pair in MNIST_FILES.values() for f in pair)   # decompressed, as torchvision's


def test_without_the_variable_the_local_copy_is_shared_data_beside_the_checkout(monkeypatch):
    monkeypatch.delenv(SOURCE_ENV, raising=False)
    assert local_copy("mnist") == require_shared("mnist") and local_copy("cifar10") == require_shared("cifar10-jpeg")


def test_load_dataset_never_prepares_and_says_how(tmp_path, no_network):
    make_mnist(tmp_path / "MNIST" / "raw")   # raw files, but no caches yet
    with pytest.raises(DatasetUnavailableError, match=r"^mnist: not prepared in .*cache-train\.pt is missing\); "
                                                      r"run `python prepare_data\.py --dataset mnist --data_dir "):
        load_dataset("mnist", tmp_path)
    with pytest.raises(DatasetUnavailableError, match=r"^ptb: not prepared in .*ptb\.train\.txt is missing"):
        load_dataset("ptb", tmp_path)
    assert no_network == [] and files_under(tmp_path) == sorted(f"MNIST/raw/{f}" for f in MNIST_FILES["train"]
                                                                + MNIST_FILES["test"])   # nothing built


class FakeTorchvisionMNIST:
    """Stands in for torchvision.datasets.MNIST's download: leaves the files torchvision would leave."""
    resources = torchvision.datasets.MNIST.resources
    mirrors = torchvision.datasets.MNIST.mirrors
    fail = False

    def __init__(self, root: str, train: bool, download: bool):
        raw = Path(root) / "MNIST" / "raw"
        make_mnist(raw)
        if self.fail:   # a mirror dropped the connection half-way through the last file
            (raw / "t10k-labels-idx1-ubyte.gz").write_bytes(b"\x1f\x8b partial")
            raise RuntimeError("Error downloading t10k-labels-idx1-ubyte.gz:\nTried https://m/, got:\n"
                               "HTTP Error 503: Service Unavailable")


@pytest.fixture
def fake_mnist_download(monkeypatch):
    monkeypatch.setattr(torchvision.datasets, "MNIST", FakeTorchvisionMNIST)
    monkeypatch.setattr(prepare_module, "_network_reaches", lambda urls: True)


def test_download_moves_a_finished_download_into_place(tmp_path, fake_mnist_download):
    ensure_dataset("mnist", tmp_path)
    data = load_dataset("mnist", tmp_path)
    assert data.train_images.shape == (200, 1, 28, 28) and data.test_labels.shape == (50,)
    assert files_under(tmp_path) == [".mnist.lock", "MNIST/cache-test.pt", "MNIST/cache-train.pt"] + \
        sorted(f"MNIST/raw/{f}" for pair in MNIST_FILES.values() for f in pair)
    cache = torch.load(tmp_path / "MNIST" / "cache-train.pt", weights_only=True)
    assert cache["source"] == "torchvision" and cache["verified"] is False   # no .gz with torchvision's md5


def test_failed_download_leaves_nothing_behind(tmp_path, monkeypatch, fake_mnist_download):
    monkeypatch.setattr(FakeTorchvisionMNIST, "fail", True)
    with pytest.raises(DatasetUnavailableError,
                       match=r"could not be downloaded \(RuntimeError: HTTP Error 503: Service Unavailable\)"):
        ensure_dataset("mnist", tmp_path)
    assert files_under(tmp_path) == [".mnist.lock"] and not is_prepared("mnist", tmp_path)


def test_download_off_fails_without_touching_the_network(tmp_path, no_network, no_local_copy):
    with pytest.raises(DatasetUnavailableError, match="downloading is off"):
        ensure_dataset("cifar100", tmp_path, download=False)
    assert no_network == [] and not tmp_path.joinpath(".cifar100.lock").exists()


def test_a_second_process_waits_for_the_lock_then_finds_the_dataset(tmp_path):
    make_mnist(tmp_path / "MNIST" / "raw")
    finished = threading.Event()
    worker = threading.Thread(target=lambda: (ensure_dataset("mnist", tmp_path, download=False), finished.set()))
    with open(tmp_path / ".mnist.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        worker.start()
        time.sleep(0.3)
        assert not finished.is_set() and not is_prepared("mnist", tmp_path)
        fcntl.flock(lock, fcntl.LOCK_UN)
    worker.join(timeout=30)
    assert finished.is_set() and is_prepared("mnist", tmp_path)


def test_a_lock_held_by_a_stopped_process_is_waited_for_a_bounded_time(tmp_path):
    """A holder that writes nothing (stopped with Ctrl-Z, say) is given up on after the wait; one that is still
    writing (a slow download) is waited for however long it takes."""
    make_mnist(tmp_path / "MNIST" / "raw")
    with open(tmp_path / ".mnist.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        with pytest.raises(DatasetUnavailableError, match=r"another process holds .*/\.mnist\.lock and has written "
                                                          r"nothing under .* for 1 s \(stopped or stuck\?\)"):
            ensure_dataset("mnist", tmp_path, download=False, lock_wait_s=1.0)
    assert not is_prepared("mnist", tmp_path)

    def slow_download(lock) -> None:   # 2.4 s of writes, then the lock is released
        for part in range(8):
            (tmp_path / f".download-part{part}").write_bytes(b"x")
            time.sleep(0.3)
        fcntl.flock(lock, fcntl.LOCK_UN)

    with open(tmp_path / ".mnist.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        holder = threading.Thread(target=slow_download, args=(lock,))
        holder.start()
        ensure_dataset("mnist", tmp_path, download=False, lock_wait_s=1.0)
        holder.join()
    assert is_prepared("mnist", tmp_path)


# -------------------------------------------------------------------------------- bad inputs

@pytest.mark.parametrize("call", [load_dataset, ensure_dataset, dataset_is_text, lambda n: is_prepared(n, ".")])
def test_unknown_dataset_is_a_value_error_naming_the_options(call):
    with pytest.raises(ValueError, match="unknown dataset 'imagenet'; choose one of: mnist, fmnist"):
        call("imagenet")


def test_dataset_is_text():
    assert [dataset_is_text(name) for name in DATASET_NAMES] == [False] * 5 + [True] * 2


@pytest.mark.parametrize("damage, complaint", [   # torchvision's reader fails; the message says how
    (lambda data: data[:-100], r"\(RuntimeError: shape '\[200, 28, 28\]' is invalid for input of size 156700\)"),
    (lambda data: b"\x00\x00\x09\x03" + data[4:], r"\(TypeError: x should be of dtype torch.uint8"),
    (lambda data: b"garbage" * 3, r"\(AssertionError on its header\)"),
])
def test_broken_idx_file_is_corrupt_with_its_path(tmp_path, damage, complaint):
    make_mnist(tmp_path / "MNIST" / "raw")
    broken = tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte"
    broken.write_bytes(damage(broken.read_bytes()))
    with pytest.raises(DatasetCorruptError, match="not a complete uint8 idx file of images .*" + complaint) as error:
        ensure_dataset("mnist", tmp_path, download=False)
    assert str(error.value).startswith(f"{broken}: ") and "\n" not in str(error.value)
    assert "delete it and run `python prepare_data.py --dataset mnist`" in str(error.value)
    assert not is_prepared("mnist", tmp_path)


@pytest.fixture
def mnist_cache_root(tmp_path) -> Path:
    make_mnist(tmp_path / "MNIST" / "raw")
    ensure_dataset("mnist", tmp_path, download=False)
    return tmp_path


@pytest.mark.parametrize("damage, complaint", [
    (lambda path: path.write_bytes(b"this is not a torch file"), "unreadable cache file"),
    (lambda path: path.write_bytes(path.read_bytes()[: path.stat().st_size // 2]), "unreadable cache file"),
    (lambda path: torch.save([1, 2, 3], path), "not a cache dict"),
    (lambda path: torch.save({"images": torch.zeros(5, 1, 28, 28), "labels": torch.zeros(5, dtype=torch.long)},
                             path), r"images should be uint8 \(N, 1, 28, 28\)"),
    (lambda path: torch.save({"images": torch.zeros(5, 1, 28, 28, dtype=torch.uint8),
                              "labels": torch.full((5,), 10)}, path), r"labels outside 0\.\.9"),
])
def test_broken_cache_is_corrupt_with_its_path(mnist_cache_root, damage, complaint):
    cache = mnist_cache_root / "MNIST" / "cache-train.pt"
    damage(cache)
    with pytest.raises(DatasetCorruptError, match=complaint) as error:
        load_dataset("mnist", mnist_cache_root)
    assert str(cache) in str(error.value) and "delete it" in str(error.value) and "\n" not in str(error.value)
    assert f"prepare_data.py --dataset mnist --data_dir {mnist_cache_root}`" in str(error.value)   # this root


def test_broken_cifar_pickles_are_corrupt_and_foreign_globals_refused(tmp_path):
    folder = tmp_path / "cifar-100-python"
    make_cifar_pickles(folder, "cifar100")
    (folder / "train").write_bytes((folder / "train").read_bytes()[:1000])
    with pytest.raises(DatasetCorruptError, match="train: not a readable CIFAR batch"):
        ensure_dataset("cifar100", tmp_path, download=False)

    class Payload:   # unpickling this would call os.getcwd: any global but numpy's must be refused
        def __reduce__(self):
            import os
            return os.getcwd, ()
    (folder / "train").write_bytes(pickle.dumps({"data": Payload()}, protocol=2))
    with pytest.raises(DatasetCorruptError, match="refusing to load posix.getcwd"):
        ensure_dataset("cifar100", tmp_path, download=False)


def test_broken_jpeg_npz_and_gzip_sources_are_corrupt(tmp_path):
    source = tmp_path / "cifar10-jpeg"
    source.mkdir()
    for split in ("train", "test"):
        np.savez(source / f"{split}.npz", jpeg=np.arange(100, dtype=np.uint8), offsets=np.array([0, 40, 90]),
                 labels=np.array([1, 2], dtype=np.uint8))
    with pytest.raises(DatasetCorruptError, match="offsets do not cut the jpeg bytes"):
        import_dataset("cifar10", source, tmp_path / "data")
    for split in ("train", "test"):
        np.savez(source / f"{split}.npz", jpeg=np.arange(100, dtype=np.uint8), offsets=np.array([0, 40, 100]),
                 labels=np.array([1, 2], dtype=np.uint8))
    with pytest.raises(DatasetCorruptError, match="does not decode as a 32x32 JPEG"):
        import_dataset("cifar10", source, tmp_path / "data")
    (source / "train.npz").write_bytes(b"garbage")
    with pytest.raises(DatasetCorruptError, match="not a readable npz"):
        import_dataset("cifar10", source, tmp_path / "data")

    mnist = tmp_path / "mnist"
    make_mnist(mnist, gz=True)
    gz = mnist / "train-images-idx3-ubyte.gz"
    gz.write_bytes(gz.read_bytes()[:-50])
    with pytest.raises(DatasetCorruptError, match="train-images-idx3-ubyte.gz: not a complete gzip file"):
        import_dataset("mnist", mnist, tmp_path / "data")
    make_mnist(mnist, gz=True)   # now a good .gz, and a truncated plain test label file (the last one read)
    labels = mnist / "t10k-labels-idx1-ubyte"
    labels.write_bytes(gzip.decompress((mnist / "t10k-labels-idx1-ubyte.gz").read_bytes())[:-5])
    with pytest.raises(DatasetCorruptError, match=f"^{labels}: not a complete uint8 idx file of labels .*re-copy it$"):
        import_dataset("mnist", mnist, tmp_path / "data")
    assert [f for f in files_under(tmp_path / "data") if not f.endswith(".lock")] == []   # none written


def test_empty_or_binary_text_file_is_corrupt(tmp_path):
    files = ("train.txt", "valid.txt", "test.txt")
    write_text_corpus(tmp_path, files, ("a b\n", "", "c\n"))
    with pytest.raises(DatasetCorruptError, match=r"valid\.txt: empty text file"):
        load_text_corpus([tmp_path / file for file in files], "wikitext2")
    (tmp_path / "valid.txt").write_bytes(b"ok \xff\xfe\n")
    with pytest.raises(DatasetCorruptError, match=r"valid\.txt: not UTF-8 text"):
        load_text_corpus([tmp_path / file for file in files], "wikitext2")


# ------------------------------------------------------------------------------ augmentation

def reference_augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """torchvision's RandomCrop(32, padding=4) + RandomHorizontalFlip, one sample at a time, same draws."""
    offsets = torch.randint(0, 9, (2, len(images)), generator=generator)
    flips = torch.rand(len(images), generator=generator) < 0.5
    out = []
    for image, top, left, flip in zip(images, offsets[0].tolist(), offsets[1].tolist(), flips.tolist(),
                                      strict=True):
        crop = F.pad(image, (4, 4, 4, 4))[:, top:top + 32, left:left + 32]
        out.append(crop.flip(-1) if flip else crop)
    return torch.stack(out)


def test_augment_batch_is_a_padded_random_crop_and_flip_per_sample():
    images = torch.randn(64, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    before = images.clone()
    augmented = augment_batch(images, torch.Generator().manual_seed(7))
    assert torch.equal(augmented, reference_augment(images, torch.Generator().manual_seed(7)))
    assert torch.equal(images, before) and augmented.shape == images.shape
    assert torch.equal(augmented, augment_batch(images, torch.Generator().manual_seed(7)))   # deterministic
    assert not torch.equal(augmented, augment_batch(images, torch.Generator().manual_seed(8)))
    assert (augmented == 0).any()   # some borders padded with 0 (the mean colour after normalising)


def test_augment_batch_fill_and_its_draws_cover_every_offset_and_both_flips():
    images = torch.ones(2000, 1, 32, 32)
    augmented = augment_batch(images, torch.Generator().manual_seed(0), fill=-1.0)
    assert set(augmented.unique().tolist()) == {-1.0, 1.0}
    padded_rows = (augmented[:, 0, :, 16] == -1).sum(dim=1)   # rows of padding = |top offset - 4|
    assert set(padded_rows.tolist()) == {0, 1, 2, 3, 4}
    ramp = torch.arange(32.0).expand(200, 1, 32, 32)
    flipped = augment_batch(ramp, torch.Generator().manual_seed(0))[:, 0, 16]
    increasing = (flipped.diff(dim=1) >= 0).all(dim=1)
    assert 60 < increasing.sum() < 140   # about half flipped


# ------------------------------------------------------------------------------------ text

def test_text_corpus_vocabulary_in_first_seen_order_with_eos(tmp_path):
    files = ("ptb.train.txt", "ptb.valid.txt", "ptb.test.txt")
    write_text_corpus(tmp_path, files, (" a b \n b c\n", "c d\n", "\nd\n"))
    corpus = load_text_corpus([tmp_path / file for file in files], "ptb")
    assert corpus.vocab == ["a", "b", "<eos>", "c", "d"] and corpus.vocab_size == 5
    assert corpus.train_tokens.tolist() == [0, 1, 2, 1, 3, 2]
    assert corpus.valid_tokens.tolist() == [3, 4, 2] and corpus.test_tokens.tolist() == [2, 4, 2]


def test_the_sizes_before_loading_count_the_tokens_the_corpus_loads(tmp_path):
    """dataset_size (the launcher's memory and partition checks) reads a corpus without building it: its counts
    and vocabulary are load_text_corpus's, a last line without its newline included, and the memory estimate
    counts every token every rank tokenises (the validation split too)."""
    from Utils.data.datasets import TEXT_SPECS, dataset_size
    folder = tmp_path / TEXT_SPECS["ptb"].folder
    files = TEXT_SPECS["ptb"].files
    write_text_corpus(folder, files, (" a b \n b c\n x", "c d\n", "\nd\ny z"))
    corpus = load_text_corpus([folder / file for file in files], "ptb")
    size = dataset_size("ptb", tmp_path)
    assert (size.train, size.valid, size.test, size.num_classes) == (
        len(corpus.train_tokens), len(corpus.valid_tokens), len(corpus.test_tokens), corpus.vocab_size) == (8, 3, 6, 8)
    assert size.memory(8, 6)["corpus_tokens"] == 8 + 3 + 6


def test_batchify_and_bptt_batches_as_pytorch_examples():
    batched = batchify(torch.arange(11), 3)   # 11 // 3 = 3 rows, 2 tokens dropped
    assert batched.tolist() == [[0, 3, 6], [1, 4, 7], [2, 5, 8]]
    source = batchify(torch.arange(20), 2)    # (10, 2)
    inputs, targets = get_bptt_batch(source, 0, bptt=4)
    assert torch.equal(inputs, source[0:4]) and torch.equal(targets, source[1:5].reshape(-1))
    inputs, targets = get_bptt_batch(source, 8, bptt=4)   # the last, shorter chunk
    assert inputs.shape == (1, 2) and targets.tolist() == source[9].tolist()
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        batchify(torch.arange(5), 0)
    with pytest.raises(ValueError, match="cannot fill one row"):
        batchify(torch.arange(5), 6)


def test_image_and_text_data_answer_the_same_questions():
    """The rest of the code asks a dataset the same things whatever it holds: its metric and direction, the
    model's output size and input shape, a client's batched shard, a model's test metrics."""
    images = ImageData("x", torch.randint(0, 255, (6, 1, 28, 28), dtype=torch.uint8), torch.arange(6) % 3,
                       torch.randint(0, 255, (4, 1, 28, 28), dtype=torch.uint8), torch.arange(4) % 3, 3, False,
                       (0.5,), (0.25,))
    text = TextData("t", torch.arange(200) % 7, torch.arange(20) % 7, torch.arange(80) % 7,
                    vocab=[str(i) for i in range(7)])
    assert (images.metric, images.higher_is_better, text.metric, text.higher_is_better) == \
        ("accuracy", True, "perplexity", False)
    assert (images.output_size, images.model_shape) == (3, {"in_channels": 1, "image_size": 28})
    assert (text.output_size, text.model_shape) == (7, {})
    assert dataset_metric("cifar10") == "accuracy" and dataset_metric("ptb") == "perplexity"
    for data, shard, model_name in ((images, [0, 2, 5], "mlp"), (text, (10, 110), "transformer")):
        torch.manual_seed(0)
        model = build_model(model_name, data.output_size, **data.model_shape)
        client = data.client_shard(shard, 2, torch.device("cpu"))
        batches = list(client.batches(torch.Generator().manual_seed(1)))
        assert batches and all(len(inputs) > 0 for inputs, _ in batches)
        assert client.num_samples == (3 if data is images else 100)
        assert client.grad_clip == (None if data is images else 0.25)
        metrics = data.evaluate(model)
        assert set(metrics) == {data.metric, "test_loss"} and math.isfinite(metrics[data.metric])
