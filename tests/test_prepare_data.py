"""prepare_data.py: import from ../shared/data and generated sources, idempotence, offline, bad arguments."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import torchvision
from conftest import ROOT, require_shared
from test_datasets import (
    files_under,
    make_cifar_pickles,
    make_emnist,
    make_mnist,
    no_local_copy,
    no_network,
    write_text_corpus,
)

import prepare_data
from Utils.data.datasets import DATASET_NAMES, load_dataset

__all__ = ["no_local_copy", "no_network"]   # fixtures of test_datasets, requested by name below


def run(capsys, *argv: str) -> tuple[int, list[str]]:
    code = prepare_data.main(list(argv))
    return code, capsys.readouterr().out.splitlines()


def test_import_mnist_from_shared_data_then_a_second_run_does_nothing(tmp_path, capsys):
    shared = require_shared("mnist").parent
    data_dir = tmp_path / "data"
    code, lines = run(capsys, "--dataset", "mnist", "--source", str(shared), "--data_dir", str(data_dir))
    assert code == 0 and lines == [f"mnist: ready in {data_dir / 'MNIST'} (60,000 train / 10,000 test)"]
    assert len(torchvision.datasets.MNIST(str(data_dir), train=True, download=False)) == 60_000
    before = {path: path.stat().st_mtime_ns for path in data_dir.rglob("*")}
    code, lines = run(capsys, "--dataset", "mnist", "--source", str(shared), "--data_dir", str(data_dir))
    assert code == 0 and lines == ["mnist: already present"]
    assert {path: path.stat().st_mtime_ns for path in data_dir.rglob("*")} == before


def test_import_wikitext2_from_shared_data_uses_the_shuffled_chunks_as_train(tmp_path, capsys):
    shared = require_shared("wikitext-2").parent
    code, lines = run(capsys, "--dataset", "wikitext2", "--source", str(shared), "--data_dir", str(tmp_path))
    assert code == 0
    assert lines == [f"wikitext2: ready in {tmp_path / 'wikitext-2'} "
                     "(2,088,628 / 217,646 / 245,569 train / valid / test tokens)"]
    assert (tmp_path / "wikitext-2" / "train.txt").read_bytes() == \
        (shared / "wikitext-2" / "train.shuffled-chunks.txt").read_bytes()


def test_script_imports_one_dataset_from_its_own_folder(tmp_path):
    source = require_shared("ptb")
    result = subprocess.run([sys.executable, "prepare_data.py", "--dataset", "ptb", "--source", str(source),
                             "--data_dir", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [f"ptb: ready in {tmp_path / 'ptb'} "
                                          "(929,589 / 73,760 / 82,430 train / valid / test tokens)"]
    assert load_dataset("ptb", tmp_path).vocab_size == 10_000


def test_all_from_a_source_imports_what_it_holds_and_reports_the_rest(tmp_path, capsys):
    source = tmp_path / "source"
    make_mnist(source / "mnist", gz=True)
    upright = make_emnist(source / "emnist", gz=True)
    make_cifar_pickles(source / "cifar100", "cifar100")
    write_text_corpus(source / "ptb", ("ptb.train.txt", "ptb.valid.txt", "ptb.test.txt"), ("a b\n", "b\n", "a\n"))
    data_dir = tmp_path / "data"
    code, lines = run(capsys, "--source", str(source), "--data_dir", str(data_dir))
    assert code == 1 and [line.split(":")[0] for line in lines] == list(DATASET_NAMES)
    status = dict(line.split(": ", 1) for line in lines)
    assert status["mnist"] == f"ready in {data_dir / 'MNIST'} (200 train / 50 test)"
    assert status["emnist"] == f"ready in {data_dir / 'EMNIST'} (282 train / 94 test)"
    assert status["cifar100"] == f"ready in {data_dir / 'cifar-100-python'} (200 train / 200 test)"
    assert status["ptb"].startswith("ready in")
    for name, folder in (("fmnist", "fashion-mnist/"), ("cifar10", "cifar10-jpeg/"), ("wikitext2", "wikitext-2/")):
        assert status[name].startswith(f"unavailable: not found in {source} (looked in {folder}")
    # The imported files are those a download would have left: torchvision reads them, and so does the loader.
    emnist = torchvision.datasets.EMNIST(str(data_dir), split="balanced", train=True, download=False)
    assert torch.equal(emnist.data.transpose(1, 2), torch.from_numpy(upright["train"]))
    assert load_dataset("emnist", data_dir).num_classes == 47
    assert load_dataset("cifar100", data_dir).train_images.shape == (200, 3, 32, 32)
    assert not (data_dir / "FashionMNIST").exists() and not (data_dir / "wikitext-2").exists()


def test_offline_without_source_one_line_per_dataset_and_nothing_written(tmp_path, capsys, no_network,
                                                                         no_local_copy):
    code, lines = run(capsys, "--data_dir", str(tmp_path))
    assert code == 1 and len(lines) == len(DATASET_NAMES)
    for name, line in zip(DATASET_NAMES, lines, strict=True):
        assert line.startswith(f"{name}: unavailable: not in ") and "(no network)" in line
        assert f"python prepare_data.py --dataset {name} --data_dir {tmp_path} --source DIR" in line
    assert all(path.endswith(".lock") for path in files_under(tmp_path))
    assert [p.name for p in tmp_path.iterdir() if p.is_dir()] == []   # no staging or half-made folders


def test_corrupt_source_and_corrupt_cache_are_reported(tmp_path, capsys):
    source = tmp_path / "mnist"
    make_mnist(source, gz=True)
    gz = source / "t10k-labels-idx1-ubyte.gz"
    gz.write_bytes(gz.read_bytes()[:20])
    code, lines = run(capsys, "--dataset", "mnist", "--source", str(source), "--data_dir", str(tmp_path / "d"))
    assert code == 1 and len(lines) == 1 and lines[0].startswith(f"mnist: corrupt: {gz}: not a complete gzip file")
    assert [f for f in files_under(tmp_path / "d") if not f.endswith(".lock")] == []

    make_mnist(source, gz=True)
    assert run(capsys, "--dataset", "mnist", "--source", str(source), "--data_dir", str(tmp_path / "d"))[0] == 0
    (tmp_path / "d" / "MNIST" / "cache-test.pt").write_bytes(b"garbage")
    code, lines = run(capsys, "--dataset", "mnist", "--data_dir", str(tmp_path / "d"))
    assert code == 1 and lines[0].startswith("mnist: corrupt: ") and "unreadable cache file" in lines[0]


@pytest.mark.parametrize("argv", [["--dataset", "imagenet"], ["--source", "/nonexistent/folder"], ["--bogus"]])
def test_bad_arguments_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as error:
        prepare_data.main(argv)
    assert error.value.code == 2
    assert "usage:" in capsys.readouterr().err
