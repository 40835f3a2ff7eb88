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

from conftest import ROOT

from Utils.aggregation import CLIENT_MERGE
from Utils.tools.replay import ScheduleReplay, server_update_step

# A small MNIST job: 3 processes (server + 2 clients), a 6,000-sample subset, few rounds.
QUICK_MNIST = ("--dataset", "mnist", "--model", "mlp", "--world_size", "3", "--max_train_samples", "6000",
               "--client_epoch", "1", "--master_port", "0", "--timeout", "60")
# Columns that depend on timing (waited_for: which client the server waited for), not on the seed.
TIMING_COLUMNS = {"round_s", "train_s", "comm_wait_s", "comm_s", "wall_s", "eval_s", "waited_for"}


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


def replay_schedule(data_root: Path, rounds: int, *, overlap: bool, merge_weight: float = 1.0,
                    compression: str = "none", topk_ratio: float = 0.05, num_clients: int = 2,
                    clients_per_round: int | None = None, sampling: str = "uniform", client_ranks: int = 1,
                    **server_options) -> list[float]:
    """QUICK_MNIST's schedule in one process (Utils.tools.replay): the test accuracy of G_1..G_rounds."""
    replay = ScheduleReplay(data_root, num_clients=num_clients, max_train_samples=6000, compression=compression,
                            topk_ratio=topk_ratio, clients_per_round=clients_per_round, sampling=sampling,
                            client_ranks=client_ranks)
    step = server_update_step(replay.initial, overlap=overlap, **server_options)
    if overlap and server_options.get("compensation") == CLIENT_MERGE:
        return replay.run_client_merge(step, rounds, merge_weight=merge_weight)
    return replay.run(step, rounds, overlap=overlap)
