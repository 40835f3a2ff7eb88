"""Shared pieces of the end-to-end tests: run a job, read its outputs, find leftover processes."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import torch
from conftest import ROOT

from Networks import build_model
from Utils.aggregation import ServerUpdate, client_weights
from Utils.datasets import load_dataset
from Utils.flat import flatten_model, load_flat_into_model
from Utils.partition import client_shards, limit_training_set
from Utils.training import LocalTrainer, evaluate

# A small MNIST job: 3 processes (server + 2 clients), a 6,000-sample subset, few rounds.
QUICK_MNIST = ("--dataset", "mnist", "--model", "mlp", "--world_size", "3", "--max_train_samples", "6000",
               "--client_epoch", "1", "--master_port", "0", "--timeout", "60")
TIMING_COLUMNS = {"round_s", "train_s", "comm_wait_s", "comm_s", "wall_s", "eval_s"}


def job_env(**extra: str) -> dict:
    """Environment for a job, tagged so that its processes can be found afterwards."""
    return {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OVERLAP_FEDAVG_TEST_TAG": uuid.uuid4().hex, **extra}


def run_job(script: str, *args: str, out_dir: Path, data_dir: Path, env: dict | None = None,
            timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, script, *args, "--out_dir", str(out_dir), "--data_dir", str(data_dir)],
                          cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env or job_env())


def read_metrics(out_dir: Path) -> list[dict]:
    with (out_dir / "metrics.csv").open() as f:
        return list(csv.DictReader(f))


def read_config(out_dir: Path) -> dict:
    return json.loads((out_dir / "config.json").read_text())


def processes_with_tag(tag: str) -> list[int]:
    """PIDs of live processes whose environment carries the job's tag."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
            state = (entry / "stat").read_text().split(")")[-1].split()[0]
        except OSError:
            continue
        if f"OVERLAP_FEDAVG_TEST_TAG={tag}".encode() in environ and state != "Z":
            found.append(int(entry.name))
    return found


def wait_until_gone(tag: str, within_s: float = 15.0) -> list[int]:
    """Wait for the job's processes to exit; return the ones still alive after within_s."""
    deadline = time.monotonic() + within_s
    while (alive := processes_with_tag(tag)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return alive


def replay_schedule(data_root: Path, rounds: int, *, overlap: bool, **server_options) -> list[float]:
    """QUICK_MNIST's schedule in one process, written out round by round (DESIGN §3): FedAvg's round r
    trains from G_r; Overlap's from G_{r-1} (rounds 0 and 1 from G_0), the server applying the stale
    update. Returns the test accuracy of G_1..G_rounds."""
    torch.set_num_threads(1)
    seed, num_clients = 2020, 2
    data = limit_training_set(load_dataset("mnist", data_root), 6000, seed)
    torch.manual_seed(seed)
    model = build_model("mlp", 10)
    shards = client_shards(data, num_clients, "noniid", seed)
    trainers = [LocalTrainer(build_model("mlp", 10), data, shard, batch_size=32, lr=0.01, epochs=1,
                             seed=seed, rank=k + 1) for k, shard in enumerate(shards)]
    update = ServerUpdate(flatten_model(model), stale=overlap, **server_options)
    weights = client_weights([len(s) for s in shards])
    versions, accuracy = [update.current.clone()], []
    for r in range(rounds):
        start = versions[max(r - 1, 0)] if overlap else versions[r]
        moments = update.new_round()
        for trainer, weight in zip(trainers, weights, strict=True):
            moments.add(trainer.train_round(start, r)[0], weight)
        versions.append(update.apply(moments).clone())
        load_flat_into_model(update.current, model)
        accuracy.append(evaluate(model, data)["accuracy"])
    return accuracy
