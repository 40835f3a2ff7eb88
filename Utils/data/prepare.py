"""Prepare datasets on disk once, so that training needs no network: download them, import local copies,
and write the uint8 caches that Utils/data/datasets.py reads (its docstring gives the layout).

ensure_dataset (the launcher calls it before any rank starts) builds the caches from files in place, or
downloads the dataset (torchvision for images, requests for text), or, when that is impossible for lack
of network, imports the local copy found by local_copy. prepare_data.py calls prepare_dataset. One
importer per source format (idx files, CIFAR pickled batches, CIFAR-10 JPEG npz, text files) reads and
checks every file before writing any. Files are written under a temporary name and renamed once
complete, under a per-dataset file lock, so several processes on one machine may prepare one root at once.
"""
from __future__ import annotations

import contextlib
import fcntl
import http.client
import logging
import os
import queue
import shutil
import socket
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import requests
import torch
from torch import Tensor
from tqdm import tqdm

from Utils.data.datasets import (
    IMAGE_SPECS,
    SPLITS,
    TEXT_SPECS,
    cache_path,
    check_dataset_name,
    prepare_hint,
    read_cache,
    split_problem,
)
from Utils.data.errors import DatasetCorruptError, DatasetUnavailableError
from Utils.data.image_files import (
    cifar_batch_files,
    gunzip,
    idx_file_names,
    read_cifar_split,
    read_idx_split,
    read_jpeg_npz_split,
    torchvision_class,
)
from Utils.data.text import scan_corpus_file

log = logging.getLogger(__name__)

SOURCE_ENV = "OVERLAP_FEDAVG_DATA_SOURCE"   # a folder laid out as ../shared/data, imported from when offline
DEFAULT_SOURCE = Path(__file__).resolve().parents[2].parent / "shared" / "data"   # ../shared/data of the checkout
LOCK_WAIT_S = 1800.0   # the longest a process waits for another preparing the same dataset (--timeout's default)
NETWORK_TIMEOUT_S = 60.0   # per socket operation of a download (connect, each read)
PROBE_TIMEOUT_S = 5.0      # for the first connection to a download host: longer means no network

Splits = dict[str, tuple[Tensor, Tensor]]   # split -> (uint8 images (N, C, H, W), int64 labels (N,))


# ------------------------------------------------------------------------------------ public API

def is_prepared(name: str, data_dir: str | Path) -> bool:
    """Whether load_dataset would find the dataset (its caches, or its text files); files not read."""
    check_dataset_name(name)
    root = Path(data_dir)
    if name in TEXT_SPECS:
        return _files_in_place(name, root)
    return all(cache_path(name, root, split).is_file() for split in SPLITS)


def ensure_dataset(name: str, data_dir: str | Path = "./data", download: bool = True, *,
                   lock_wait_s: float = LOCK_WAIT_S) -> None:
    """Make sure a dataset is prepared: build its caches from files in place, else download it, else (no
    network, or download=False) import its local copy (local_copy), logging one line saying so. Another
    process preparing it is waited for, lock_wait_s at most.

    Raises ValueError for an unknown name, DatasetUnavailableError when it is absent and none of these
    works, DatasetCorruptError for a broken file.
    """
    root = Path(data_dir)
    check_dataset_name(name)
    if is_prepared(name, root):
        return
    if not download and not _files_in_place(name, root) and local_copy(name) is None:
        raise DatasetUnavailableError(_unavailable_message(name, root, "downloading is off"))
    with _dataset_lock(root, name, lock_wait_s):
        if is_prepared(name, root):   # another process finished it while this one waited
            return
        if _files_in_place(name, root):   # image files without their caches (text files in place are prepared)
            _build_caches(name, root, provenance="torchvision")
            return
        failure = _download(name, root) if download else "downloading is off"
        if failure is None:
            if name in IMAGE_SPECS:
                _build_caches(name, root, provenance="torchvision")
            return
        copy = local_copy(name)
        if copy is None:
            raise DatasetUnavailableError(_unavailable_message(name, root, failure))
        log.info("%s: %s; importing from %s", name, "no network" if download else failure, copy)
        _import(name, copy, root)


def local_copy(name: str) -> Path | None:
    """The folder holding a local copy of `name`, or None: looked for in $OVERLAP_FEDAVG_DATA_SOURCE if set,
    else in ../shared/data beside the project's checkout (both laid out as ../shared/data)."""
    return find_source(name, os.environ.get(SOURCE_ENV) or DEFAULT_SOURCE)


def import_dataset(name: str, source: str | Path, data_dir: str | Path = "./data") -> None:
    """Copy a local copy of `name` (the formats of ../shared/data) from folder `source` into the data root.

    Idx files land decompressed in torchvision's raw layout; CIFAR-10 as JPEG npz goes straight into the
    uint8 cache (torchvision accepts only its checksummed pickles), marked not verified.
    """
    check_dataset_name(name)
    root, source = Path(data_dir), Path(source)
    if _source_format(name, source) is None:
        raise DatasetUnavailableError(f"{name}: {source} does not hold {_files_wanted(name)}")
    with _dataset_lock(root, name):
        if not is_prepared(name, root):
            log.info("%s: importing from %s", name, source)
            _import(name, source, root)


def prepare_dataset(name: str, data_dir: str | Path = "./data", source: str | Path | None = None, *,
                    dataset_folder_ok: bool = False) -> str:
    """prepare_data.py's work for one dataset: download it (or import it from `source`); return the summary.

    Returns "NAME: already present" or "NAME: ready in ..."; raises DatasetUnavailableError or
    DatasetCorruptError otherwise. With a source, nothing is downloaded.
    """
    check_dataset_name(name)
    root = Path(data_dir)
    if is_prepared(name, root):
        for split in SPLITS if name in IMAGE_SPECS else ():
            read_cache(name, root, split, mmap=True)   # a cheap check (header and labels) of the caches
        return f"{name}: already present"
    if source is None:
        ensure_dataset(name, root, download=True)
    else:
        folder = find_source(name, source, dataset_folder_ok=dataset_folder_ok)
        if folder is None:
            raise DatasetUnavailableError(source_hint(name, source))
        import_dataset(name, folder, root)
    return f"{name}: ready in {describe_prepared(name, root)}"


def describe_prepared(name: str, data_dir: str | Path) -> str:
    """Where a prepared dataset is and how big, e.g. "data/MNIST (60,000 train / 10,000 test)"."""
    check_dataset_name(name)
    root = Path(data_dir)
    if name in TEXT_SPECS:
        spec = TEXT_SPECS[name]
        counts = [scan_corpus_file(root / spec.folder / file, name)[0] for file in spec.files]
        return f"{root / spec.folder} ({' / '.join(f'{c:,}' for c in counts)} train / valid / test tokens)"
    train, test = (len(read_cache(name, root, split, mmap=True)["labels"]) for split in SPLITS)
    return f"{root / IMAGE_SPECS[name].folder} ({train:,} train / {test:,} test)"


def find_source(name: str, source_dir: str | Path, *, dataset_folder_ok: bool = False) -> Path | None:
    """The folder of a --source DIR that holds `name` in an importable format, or None.

    DIR may be laid out as ../shared/data (mnist/, fashion-mnist/, cifar10-jpeg/, wikitext-2/, ptb/, and
    emnist/, cifar100/ for those), or, with dataset_folder_ok, be the dataset's own folder.
    """
    check_dataset_name(name)
    source_dir = Path(source_dir)
    spec = IMAGE_SPECS.get(name) or TEXT_SPECS[name]
    candidates = ([source_dir] if dataset_folder_ok else []) + [source_dir / sub for sub in spec.source_folders]
    return next((folder for folder in candidates if _source_format(name, folder) is not None), None)


def source_hint(name: str, source_dir: str | Path) -> str:
    """One line saying where under `source_dir` the files of `name` were looked for."""
    spec = IMAGE_SPECS.get(name) or TEXT_SPECS[name]
    folders = ", ".join(f"{sub}/" for sub in spec.source_folders)
    return f"{name}: not found in {source_dir} (looked in {folders} for {_files_wanted(name)})"


# ------------------------------------------------------------------- importers, one per format

def _import(name: str, source: Path, root: Path) -> None:
    """Import from folder `source`, which find_source accepted (the caller holds the lock)."""
    _IMPORTERS[_source_format(name, source)](name, source, root, f"imported from {source}")


def _import_idx(name: str, source: Path, root: Path, provenance: str) -> None:
    """Idx files, plain or gzipped, land decompressed in torchvision's raw layout (as a download leaves
    them): all are decompressed into a staging folder and read before any is moved into place."""
    raw = root / IMAGE_SPECS[name].folder / "raw"
    with _staging_folder(root, f"{name}-import") as staging:
        origins = {}
        for file in idx_file_names(name):
            origin = source / file if (source / file).is_file() else source / f"{file}.gz"
            (staging / file).write_bytes(gunzip(origin) if origin.suffix == ".gz" else origin.read_bytes())
            origins[file] = origin
        splits = {split: read_idx_split(name, staging, split, "re-copy it", origins) for split in SPLITS}
        _check_splits(name, splits, provenance)
        raw.mkdir(parents=True, exist_ok=True)
        for file in origins:
            os.replace(staging / file, raw / file)
    _write_caches(name, root, splits, provenance, _torchvision_checksums_ok(name, root))


def _import_cifar_pickles(name: str, source: Path, root: Path, provenance: str) -> None:
    """torchvision's pickled batches, read and checked, then copied where a download leaves them."""
    splits = {split: read_cifar_split(name, source, split, fix="re-copy it") for split in SPLITS}
    _check_splits(name, splits, provenance)
    for file in cifar_batch_files(name) + [torchvision_class(name).meta["filename"]]:
        if (source / file).is_file():
            with _atomic_path(root / IMAGE_SPECS[name].folder / file) as temporary:
                shutil.copyfile(source / file, temporary)
    _write_caches(name, root, splits, provenance, _torchvision_checksums_ok(name, root))


def _import_jpeg_npz(name: str, source: Path, root: Path, provenance: str) -> None:
    """train.npz/test.npz as ../shared/data/cifar10-jpeg go straight into the caches (torchvision's CIFAR
    classes accept only their checksummed pickles), not checksum-verified."""
    splits = {split: read_jpeg_npz_split(source / f"{split}.npz") for split in SPLITS}
    _write_caches(name, root, splits, provenance, verified=False)


def _import_text(name: str, source: Path, root: Path, provenance: str) -> None:
    spec = TEXT_SPECS[name]
    origins = [source / file for file in spec.files]
    if not origins[0].is_file():
        origins[0] = source / spec.train_stand_in
    for origin in origins:   # all checked before any is written
        if origin.stat().st_size == 0:
            raise DatasetCorruptError(f"{origin}: empty text file; re-copy it")
    for origin, file in zip(origins, spec.files, strict=True):
        with _atomic_path(root / spec.folder / file) as temporary:
            shutil.copyfile(origin, temporary)


_IMPORTERS: dict[str, Callable[[str, Path, Path, str], None]] = {
    "idx": _import_idx, "pickles": _import_cifar_pickles, "jpeg-npz": _import_jpeg_npz, "text": _import_text}


def _source_format(name: str, folder: Path) -> str | None:
    """Which importer reads `folder` as dataset `name` (a key of _IMPORTERS), or None if none does."""
    if not folder.is_dir():
        return None
    has = lambda file: (folder / file).is_file()  # noqa: E731
    if name in TEXT_SPECS:
        spec = TEXT_SPECS[name]
        train_ok = has(spec.files[0]) or (spec.train_stand_in is not None and has(spec.train_stand_in))
        return "text" if train_ok and all(has(f) for f in spec.files[1:]) else None
    spec = IMAGE_SPECS[name]
    if spec.idx_files:
        return "idx" if all(has(f) or has(f + ".gz") for f in idx_file_names(name)) else None
    if all(has(f) for f in cifar_batch_files(name)):
        return "pickles"
    if spec.jpeg_npz and has("train.npz") and has("test.npz"):
        return "jpeg-npz"
    return None


# ----------------------------------------------------------------------------------- the caches

def _build_caches(name: str, root: Path, provenance: str) -> None:
    """Write both uint8 caches from the files in torchvision's layout."""
    folder = root / IMAGE_SPECS[name].folder
    if IMAGE_SPECS[name].idx_files:
        splits = {split: read_idx_split(name, folder / "raw", split) for split in SPLITS}
    else:
        splits = {split: read_cifar_split(name, folder, split) for split in SPLITS}
    _write_caches(name, root, splits, provenance, _torchvision_checksums_ok(name, root))


def _check_splits(name: str, splits: Splits, provenance: str) -> None:
    for split, (images, labels) in splits.items():
        problem = split_problem(name, images, labels)
        if problem:
            raise DatasetCorruptError(f"{name} {split} set from {provenance}: {problem}; {prepare_hint(name)}")


def _write_caches(name: str, root: Path, splits: Splits, provenance: str, verified: bool) -> None:
    _check_splits(name, splits, provenance)   # every split before any is written
    for split, (images, labels) in splits.items():
        path = cache_path(name, root, split)
        with _atomic_path(path) as temporary:
            torch.save({"images": images.contiguous(), "labels": labels, "source": provenance,
                        "verified": verified}, temporary)
        log.info("%s: %s set cached in %s (%s, %s)", name, split, path, provenance,
                 "checksum-verified" if verified else "not checksum-verified")


def _torchvision_checksums_ok(name: str, root: Path) -> bool:
    """Whether the files in place pass torchvision's own md5 checks (downloaded archives or batches)."""
    from torchvision.datasets.utils import check_integrity
    spec, dataset_class = IMAGE_SPECS[name], torchvision_class(name)
    folder = root / spec.folder
    if name == "emnist":   # torchvision keeps the downloaded zip beside the extracted files
        return check_integrity(folder / "raw" / "gzip.zip", dataset_class.md5)
    if spec.idx_files:
        return all(check_integrity(folder / "raw" / file, md5) for file, md5 in dataset_class.resources)
    return all(check_integrity(folder / file, md5)
               for file, md5 in dataset_class.train_list + dataset_class.test_list)


# ------------------------------------------------------------------------------------- download

def _download(name: str, root: Path) -> str | None:
    """Download `name` into the root: None once done, "it could not be downloaded (no network)" when
    offline; any other failure (an HTTP error, a checksum mismatch) raises DatasetUnavailableError."""
    offline = "it could not be downloaded (no network)"
    if not _network_reaches(_download_urls(name)):
        return offline
    try:
        if name in TEXT_SPECS:
            _download_text(name, root)
        else:
            _download_images(name, root)
    except (OSError, RuntimeError, http.client.HTTPException) as exc:   # urllib, socket and requests errors,
        # or torchvision's RuntimeError when every mirror failed or a checksum did not match
        reason = _download_failure(exc)
        if reason == offline:
            return offline
        raise DatasetUnavailableError(_unavailable_message(name, root, reason)) from exc
    return None


def _download_urls(name: str) -> list[str]:
    if name in TEXT_SPECS:
        return [TEXT_SPECS[name].base_url]
    dataset_class = torchvision_class(name)   # one archive (EMNIST, CIFAR), or files on mirrors (MNIST)
    url = getattr(dataset_class, "url", None)
    return [url] if url else list(dataset_class.mirrors)


def _network_reaches(urls: list[str], timeout_s: float = PROBE_TIMEOUT_S) -> bool:
    """Whether a TCP connection opens to any url's host (or to the environment's proxy) within timeout_s,
    name lookup included. This bounds the offline case: torchvision would try every mirror in turn, each
    for up to NETWORK_TIMEOUT_S on a network that drops packets."""
    results: queue.SimpleQueue[bool] = queue.SimpleQueue()

    def probe(url: str) -> None:
        scheme = urllib.parse.urlsplit(url).scheme
        target = urllib.parse.urlsplit(urllib.request.getproxies().get(scheme, url))
        try:
            port = target.port or (443 if target.scheme == "https" else 80)
            socket.create_connection((target.hostname, port), timeout=timeout_s).close()
            results.put(True)
        except (OSError, ValueError):
            results.put(False)

    for url in urls:   # daemon threads: a name lookup that hangs cannot hold the process
        threading.Thread(target=probe, args=(url,), daemon=True).start()
    deadline = time.monotonic() + timeout_s
    for _ in urls:
        try:
            if results.get(timeout=max(0.0, deadline - time.monotonic())):
                return True
        except queue.Empty:
            return False
    return False


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
    folder = IMAGE_SPECS[name].folder
    with _staging_folder(root, f"{name}-download") as staging:
        log.info("%s: downloading with torchvision into %s", name, root / folder)
        extra = {"split": "balanced"} if name == "emnist" else {}
        with _socket_timeout(NETWORK_TIMEOUT_S):
            torchvision_class(name)(str(staging), train=True, download=True, **extra)
        for path in sorted((staging / folder).rglob("*")):
            if path.is_file():
                target = root / folder / path.relative_to(staging / folder)
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(path, target)


def _download_text(name: str, root: Path) -> None:
    spec = TEXT_SPECS[name]
    for file in spec.files:
        path = root / spec.folder / file
        if path.is_file():
            continue
        url = spec.base_url + file
        log.info("%s: downloading %s", name, url)
        with requests.get(url, stream=True, timeout=(10, NETWORK_TIMEOUT_S)) as response, \
                _atomic_path(path) as temporary, open(temporary, "wb") as out:
            response.raise_for_status()
            size = int(response.headers.get("content-length", 0)) or None
            with tqdm(total=size, unit="B", unit_scale=True, desc=f"{name} {file}") as progress:
                for chunk in response.iter_content(1 << 16):
                    out.write(chunk)
                    progress.update(len(chunk))


# -------------------------------------------------------------------------- files, locks, names

def _files_in_place(name: str, root: Path) -> bool:
    """Whether the source files (torchvision's layout, or the text files) are all on disk."""
    if name in TEXT_SPECS:
        spec = TEXT_SPECS[name]
        return all((root / spec.folder / file).is_file() for file in spec.files)
    folder = root / IMAGE_SPECS[name].folder
    if IMAGE_SPECS[name].idx_files:
        return all((folder / "raw" / file).is_file() for file in idx_file_names(name))
    return all((folder / file).is_file() for file in cifar_batch_files(name))


def _files_wanted(name: str) -> str:
    if name in TEXT_SPECS:
        spec = TEXT_SPECS[name]
        train = f"{spec.files[0]} (or {spec.train_stand_in})" if spec.train_stand_in else spec.files[0]
        return ", ".join((train,) + spec.files[1:])
    return IMAGE_SPECS[name].source_files


def _unavailable_message(name: str, root: Path, reason: str) -> str:
    folder = root / (IMAGE_SPECS.get(name) or TEXT_SPECS[name]).folder
    command = f"python prepare_data.py --dataset {name}" + ("" if root == Path("data") else f" --data_dir {root}")
    return (f"{name}: not in {folder} and {reason}; run `{command}` on a machine with network, or `{command} "
            f"--source DIR` with DIR holding {_files_wanted(name)}")


@contextlib.contextmanager
def _dataset_lock(root: Path, name: str, wait_s: float = LOCK_WAIT_S) -> Iterator[None]:
    """Exclusive lock on <root>/.<name>.lock: one process prepares a dataset, the others wait for it.

    flock is released by the kernel when its holder dies, so a crashed rank never leaves a stale lock. A holder
    that writes nothing under the data root for wait_s (stopped or stuck, not downloading) is named in a
    DatasetUnavailableError.
    """
    try:
        root.mkdir(parents=True, exist_ok=True)
        lock_file = open(root / f".{name}.lock", "a")   # closed by the with-block below
    except OSError as error:   # the first write under the data root: say so in one line
        reason = "it is a file" if root.is_file() else error.strerror or error
        raise DatasetUnavailableError(f"{name}: cannot write to the data directory {root} ({reason}); give a "
                                      f"--data_dir this user can write to") from error
    with lock_file:
        written, quiet_since = None, time.monotonic()
        while True:
            try:
                fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if written is None:
                    log.info("%s: waiting for another process preparing it in %s", name, root)
                if (now_written := _written_under(root)) != written:   # the holder makes progress
                    written, quiet_since = now_written, time.monotonic()
                elif time.monotonic() - quiet_since >= wait_s:
                    raise DatasetUnavailableError(
                        f"{name}: another process holds {lock_file.name} and has written nothing under {root} for "
                        f"{wait_s:.0f} s (stopped or stuck?); end it and start again") from None
                time.sleep(0.5)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


def _written_under(root: Path) -> tuple[int, int]:
    """(entries, latest modification) of everything under the data root: it changes while a dataset is written."""
    stamps = [entry.stat().st_mtime_ns for entry in root.rglob("*") if entry.exists()]
    return len(stamps), max(stamps, default=0)


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


@contextlib.contextmanager
def _staging_folder(root: Path, label: str) -> Iterator[Path]:
    """A hidden folder under the root (same file system: files leave it by rename), removed afterwards."""
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{label}-", dir=root))
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)
