"""The GPU path on any machine: where each rank computes under every launch form, several ranks on one GPU,
nccl's refusal to share one, device memory, models saved so that they load without a GPU; and, where CUDA is
present, real jobs on it (marked cuda: skipped here with the reason, run by benchmarks/gpu_check.sh)."""
import os

import pytest
import torch
from conftest import ROOT
from helpers_e2e import QUICK_MNIST, read_metrics, run_job
from test_cli import run_entry

import Characters.rank as rank_module
from Networks import build_model
from Utils.config import RunConfig, device_for, nccl_sharing_refusal
from Utils.data.datasets import ImageData
from Utils.data.text import TextData
from Utils.flat import cpu_state_dict
from Utils.memory import (
    CUDA_CONTEXT_BYTES,
    DEVICE_MODEL_COPIES,
    MB,
    JobShape,
    device_memory_bytes,
    device_memory_refusal,
)

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (benchmarks/gpu_check.sh)")


def test_each_rank_gets_its_device_from_the_list_cycled_over_the_local_ranks():
    assert device_for(None, 3, cuda_available=True) == torch.device("cpu")
    assert device_for((0, 1), 3, cuda_available=False) == torch.device("cpu")   # --gpus ignored without CUDA
    assert [device_for((0, 1, 2, 3, 4), r, True).index for r in range(5)] == [0, 1, 2, 3, 4]   # the seed's command
    assert {device_for((0,), r, True).index for r in range(5)} == {0}   # --gpus 0: five ranks share GPU 0
    assert [device_for((0, 1), r, True).index for r in range(5)] == [0, 1, 0, 1, 0]


@pytest.mark.parametrize("env, rank, expected", [
    ({}, 3, 3),                                          # own launcher: the rank
    ({"LOCAL_RANK": "1"}, 6, 1),                         # torchrun: the rank on this machine
    ({"RANK": "4", "WORLD_SIZE": "5"}, 4, 4),            # by hand: RANK (list this machine's devices)
], ids=["launcher", "torchrun", "environment"])
def test_every_launch_form_places_its_rank(env, rank, expected, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for name in ("LOCAL_RANK", "RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    cfg = RunConfig(script="FedAvg", overlap=False, gpus=(0, 1, 2, 3, 4, 5, 6, 7))
    assert rank_module.pick_device(cfg, rank) == torch.device(f"cuda:{expected}")


def test_nccl_refuses_two_ranks_on_one_gpu_in_one_line(capsys, monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    status, _, err = run_entry(["FedAvg.py", "--backend", "nccl", "--gpus", "0"], capsys)
    assert status == 2
    assert err.strip().splitlines()[-1].endswith("--backend nccl cannot run two ranks on one GPU (ranks 0 and 1 on "
                                                 "GPU 0): give one device per rank, or share GPUs with --backend gloo")
    assert nccl_sharing_refusal((0, 1, 2, 3, 4), range(5)) is None
    assert "(ranks 0 and 3 on GPU 0)" in nccl_sharing_refusal((0, 1, 2), range(4))


def test_device_memory_is_estimated_per_device_and_refused_in_one_line():
    shape = JobShape(world_size=5, model_bytes=100 * MB, train_bytes=400 * MB, test_bytes=50 * MB)
    rank_bytes = CUDA_CONTEXT_BYTES + DEVICE_MODEL_COPIES * 100 * MB
    shared = device_memory_bytes(shape, [0, 0, 0, 0, 0])
    assert shared == {0: 5 * rank_bytes + 50 * MB + 100 * MB + 400 * MB}   # five contexts, the data once
    spread = device_memory_bytes(shape, [0, 1, 2, 3, 4])
    assert spread[0] == rank_bytes + 150 * MB and spread[1] == rank_bytes + 100 * MB
    assert device_memory_refusal(shared, {0: 80 * 2**30}) is None
    refusal = device_memory_refusal(shared, {0: 2**30})
    assert refusal.startswith("GPU 0 would need about") and "spread the ranks over more devices" in refusal


def test_saved_models_are_cpu_tensors_that_load_without_a_gpu(tmp_path):
    model = build_model("mlp", 10)
    torch.save(cpu_state_dict(model), tmp_path / "model.pt")
    loaded = torch.load(tmp_path / "model.pt", weights_only=True)
    assert all(t.device.type == "cpu" for t in loaded.values()) and loaded.keys() == model.state_dict().keys()


def test_the_evaluator_stages_the_test_split_once_on_its_device():
    """On the CPU the data as it is; elsewhere (meta stands for a GPU here) the test split moved, the rest kept."""
    images = ImageData("x", torch.zeros(4, 1, 2, 2, dtype=torch.uint8), torch.zeros(4, dtype=torch.int64),
                       torch.zeros(3, 1, 2, 2, dtype=torch.uint8), torch.zeros(3, dtype=torch.int64), 10, False,
                       (0.5,), (0.25,))
    assert images.test_on(torch.device("cpu")) is images
    staged = images.test_on(torch.device("meta"))
    assert staged.test_images.is_meta and staged.test_labels.is_meta and staged.train_images is images.train_images
    text = TextData("t", torch.arange(8), torch.arange(4), torch.arange(4), vocab=[str(i) for i in range(8)])
    staged_text = text.test_on(torch.device("meta"))
    assert staged_text.test_tokens.is_meta and staged_text.train_tokens is text.train_tokens


@pytest.mark.cuda
@pytest.mark.slow
@CUDA
@pytest.mark.parametrize("script", ["FedAvg.py", "AsyncFedAvg.py"])
def test_five_ranks_share_one_gpu_with_gloo(script, mnist_root, tmp_path):
    options = [a for a in QUICK_MNIST if a not in ("--world_size", "3")]
    done = run_job(script, *options, "--world_size", "5", "--max_epoch", "3", "--gpus", "0", out_dir=tmp_path / "run",
                   data_dir=mnist_root)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "ranks use CUDA devices 0" in done.stderr
    accuracy = [float(r["accuracy"]) for r in read_metrics(tmp_path / "run")]
    assert accuracy[-1] > 0.6 and accuracy[0] < accuracy[-1]
    for name in ("final_model.pt", "best_model.pt"):
        state = torch.load(tmp_path / "run" / name, weights_only=True)
        assert all(t.device.type == "cpu" for t in state.values())


@pytest.mark.cuda
@pytest.mark.slow
@CUDA
@pytest.mark.skipif(torch.cuda.device_count() < 3, reason="nccl needs one GPU per rank: 3 GPUs")
def test_nccl_with_a_gpu_per_rank(mnist_root, tmp_path):
    done = run_job("AsyncFedAvg.py", *QUICK_MNIST, "--max_epoch", "2", "--backend", "nccl", "--gpus", "0,1,2",
                   out_dir=tmp_path / "run", data_dir=mnist_root)
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(read_metrics(tmp_path / "run")) == 2


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_the_gpu_check_says_in_one_line_that_it_needs_a_gpu(tmp_path):
    import subprocess
    import sys
    done = subprocess.run(["bash", "benchmarks/gpu_check.sh", str(tmp_path / "out")], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PYTHON": sys.executable})
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == ["gpu_check.sh needs a CUDA device (torch.cuda.is_available() is "
                                                "False on this machine)"]
    assert not (tmp_path / "out").exists()
