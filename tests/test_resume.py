"""Checkpoints and --resume: an interrupted or extended run gives an uninterrupted run's metrics."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT
from helpers_e2e import QUICK_MNIST, TIMING_COLUMNS, job_env, read_metrics, run_job, wait_until_gone

from Utils.aggregation import ServerUpdate
from Utils.checkpoint import (
    CHECKPOINT_NAME,
    RESUMABLE_CHANGES,
    CheckpointError,
    CheckpointWriter,
    read_checkpoint,
    write_checkpoint,
)

SCRIPTS = ("FedAvg.py", "AsyncFedAvg.py")
SMALL = ("--max_train_samples", "2000")
# Rounds slow enough (a 1 s link each way) for the launcher to be killed between two; the link changes
# only time, so a resumed run may drop it.
SLOW_LINK = ("--latency", "1000")


def result_columns(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in TIMING_COLUMNS} for row in rows]


def checkpoint_round(out_dir: Path) -> int | None:
    path = out_dir / CHECKPOINT_NAME
    if not path.is_file():
        return None
    return torch.load(path, weights_only=True)["round"]


def run_and_kill_after(script: str, rounds_done: int, out_dir: Path, data_dir: Path, *options: str) -> None:
    """Start a 4-round job, SIGKILL the launcher once a checkpoint of `rounds_done` rounds or more exists."""
    env = job_env()
    command = [sys.executable, script, *QUICK_MNIST, *SMALL, *SLOW_LINK, "--max_epoch", "4", *options,
               "--out_dir", str(out_dir), "--data_dir", str(data_dir)]
    job = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while (checkpoint_round(out_dir) or 0) < rounds_done:
        assert job.poll() is None, f"the job ended before round {rounds_done}: {job.stderr.read()[-2000:]}"
        assert time.monotonic() < deadline, "no checkpoint within 120 s"
        time.sleep(0.05)
    os.kill(job.pid, signal.SIGKILL)
    job.wait(30)
    job.stderr.close()
    assert not wait_until_gone(env["OVERLAP_FEDAVG_TEST_TAG"]), "ranks outlived their launcher"
    assert checkpoint_round(out_dir) < 4, "the job finished before it was killed: slow its rounds down"


@pytest.mark.slow
@pytest.mark.parametrize("script", SCRIPTS)
def test_a_killed_run_resumes_and_an_extended_run_equals_a_longer_one(script, mnist_root, tmp_path):
    reference = run_job(script, *QUICK_MNIST, *SMALL, "--max_epoch", "6", out_dir=tmp_path / "six",
                        data_dir=mnist_root)
    assert reference.returncode == 0, reference.stderr[-2000:]
    expected = result_columns(read_metrics(tmp_path / "six"))

    interrupted = tmp_path / "interrupted"
    run_and_kill_after(script, 2, interrupted, mnist_root)
    resumed = run_job(script, "--resume", str(interrupted), "--master_port", "0", "--latency", "0",
                      out_dir=interrupted, data_dir=mnist_root)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed after round" in resumed.stderr
    assert result_columns(read_metrics(interrupted)) == expected[:4]

    extended = run_job(script, "--resume", str(interrupted), "--max_epoch", "6", "--master_port", "0",
                       out_dir=interrupted, data_dir=mnist_root)
    assert extended.returncode == 0, extended.stderr[-2000:]
    assert result_columns(read_metrics(interrupted)) == expected
    assert checkpoint_round(interrupted) == 6


@pytest.mark.slow
def test_resume_refuses_what_would_change_the_result(mnist_root, tmp_path):
    run = tmp_path / "run"
    done = run_job("AsyncFedAvg.py", *QUICK_MNIST, "--max_epoch", "2", out_dir=run, data_dir=mnist_root)
    assert done.returncode == 0, done.stderr[-2000:]

    def resume(*options: str) -> subprocess.CompletedProcess:
        return run_job("AsyncFedAvg.py", "--resume", str(run), *options, out_dir=run, data_dir=mnist_root)

    changed = resume("--lr", "0.05", "--max_epoch", "3")
    assert changed.returncode == 2
    assert "--lr 0.05 (the run has 0.01) would change the result" in changed.stderr.strip().splitlines()[-1]
    finished = resume()
    assert finished.returncode == 2
    assert "the run has completed 2 rounds; give --max_epoch above 2" in finished.stderr.strip().splitlines()[-1]
    wrong_script = run_job("FedAvg.py", "--resume", str(run), out_dir=run, data_dir=mnist_root)
    assert wrong_script.returncode == 2 and "resume it with that script" in wrong_script.stderr
    fresh_into_it = run_job("AsyncFedAvg.py", *QUICK_MNIST, "--max_epoch", "2", out_dir=run, data_dir=mnist_root)
    assert fresh_into_it.returncode == 2
    assert "is not empty; give a new directory, or --resume" in fresh_into_it.stderr.strip().splitlines()[-1]
    assert "Traceback" not in changed.stderr + finished.stderr + wrong_script.stderr + fresh_into_it.stderr


def test_the_resume_docs_name_every_option_a_resume_may_change():
    """docs/resume.md lists the options a resume takes from its new command line (--resume's help and the
    refusal summarise them, the help points there); the list is written by hand beside RESUMABLE_CHANGES."""
    section = (ROOT / "docs" / "resume.md").read_text().split("## Resuming", 1)[1].split("\n## ", 1)[0]
    bookkeeping = {"resume", "out_dir", "launch_time"}   # the run's own directory and launch: no change allowed
    unnamed = sorted(name for name in RESUMABLE_CHANGES - bookkeeping if f"`--{name}`" not in section)
    assert not unnamed, f"docs/resume.md's Resuming section does not name {unnamed}"


def test_a_damaged_or_foreign_checkpoint_gives_one_line(tmp_path):
    config = {"script": "FedAvg", "model": "mlp", "lr": 0.01, "max_epoch": 4, "gpus": None}
    update = ServerUpdate(torch.zeros(3), stale=False)
    write_checkpoint(tmp_path, {"round": 1, "update": update.state_dict(), "rows": [], "startup_s": 1.0,
                                "options": {k: v for k, v in config.items() if k not in ("max_epoch", "gpus")}})
    assert read_checkpoint(tmp_path, {**config, "max_epoch": 9})["round"] == 1   # rounds may be extended
    with pytest.raises(CheckpointError, match="belongs to another run: lr differ"):
        read_checkpoint(tmp_path, {**config, "lr": 0.02})
    (tmp_path / CHECKPOINT_NAME).write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot be read"):
        read_checkpoint(tmp_path, config)
    (tmp_path / CHECKPOINT_NAME).unlink()
    with pytest.raises(CheckpointError, match="stopped before its first round was complete"):
        read_checkpoint(tmp_path, config)


@pytest.mark.parametrize("momentum, compensation", [(0.0, "none"), (0.9, "secant")])
def test_server_update_state_round_trips_exactly(momentum, compensation):
    """Five updates straight, against two, a state_dict round trip into a fresh update, and three more."""
    generator = torch.Generator().manual_seed(0)
    uploads = [torch.randn(2, 8, generator=generator) for _ in range(5)]

    def new_update():
        return ServerUpdate(torch.ones(8), stale=True, momentum=momentum, server_lr=0.5, compensation=compensation)

    def step(update, pair):
        moments = update.new_round()
        for upload in pair:
            moments.add(upload, 0.5)
        update.apply(moments)

    straight, first = new_update(), new_update()
    for pair in uploads:
        step(straight, pair)
    for pair in uploads[:2]:
        step(first, pair)
    second = new_update()
    second.load_state_dict(first.state_dict())
    for pair in uploads[2:]:
        step(second, pair)
    assert torch.equal(second.current, straight.current)
    assert second.last_comp_coef == straight.last_comp_coef


def test_the_checkpoint_thread_writes_the_latest_state_and_reports_a_failure(tmp_path):
    writer = CheckpointWriter(tmp_path)
    for round_index in range(1, 6):
        writer.submit({"round": round_index, "options": {}})
    writer.wait()
    assert torch.load(tmp_path / CHECKPOINT_NAME, weights_only=True)["round"] == 5   # the latest wins
    assert not (tmp_path / (CHECKPOINT_NAME + ".tmp")).exists()
    gone = CheckpointWriter(tmp_path / "missing")
    gone.submit({"round": 1})
    with pytest.raises(OSError, match="writing .*checkpoint.pt failed"):
        gone.wait()


def test_a_bounded_checkpoint_writer_keeps_the_disk_within_the_clients_kept_states(tmp_path, monkeypatch):
    """With --compress a resume needs each client's state of the checkpoint's round, and a client keeps only its
    last few: when the disk is slower than the rounds, the server waits rather than let the checkpoint fall
    further behind than those states reach."""
    import Utils.checkpoint as checkpoint
    real_write = checkpoint.write_checkpoint

    def slow_write(run_dir, state):
        time.sleep(0.05)
        real_write(run_dir, state)

    monkeypatch.setattr(checkpoint, "write_checkpoint", slow_write)
    worst_lag = {}
    for bounded in (False, True):
        (tmp_path / str(bounded)).mkdir()
        writer = CheckpointWriter(tmp_path / str(bounded), bounded=bounded)
        worst_lag[bounded] = 0
        for round_number in range(1, 21):
            writer.submit({"round": round_number, "options": {}})
            worst_lag[bounded] = max(worst_lag[bounded], round_number - writer.written_round)
        writer.wait()
        assert writer.written_round == 20
    assert worst_lag[True] <= checkpoint.CHECKPOINT_LAG_BOUND < worst_lag[False]


def test_a_hung_disk_stops_the_checkpoint_writer_with_one_line(tmp_path, monkeypatch):
    import Utils.checkpoint as checkpoint
    hang = threading.Event()
    monkeypatch.setattr(checkpoint, "write_checkpoint", lambda run_dir, state: hang.wait(30))
    writer = CheckpointWriter(tmp_path, bounded=True, timeout_s=0.2)
    with pytest.raises(OSError, match="round 3 is done, and no write has ended in 0 s .* not keeping up or hangs"):
        for round_number in range(1, 4):
            writer.submit({"round": round_number, "options": {}})
    with pytest.raises(OSError, match="the last round's checkpoint is not written"):
        writer.wait()
    hang.set()


def test_the_rows_a_checkpoint_saves_are_not_changed_by_the_rounds_after():
    """The checkpoint thread pickles the waiting rows while the server goes on to complete them (their
    evaluation, their communication figures): it must get copies, or a write fails or saves half a row."""
    from Characters.server import DelayedRows

    def write_row(row: dict, reports) -> None:
        row["comm_s"] = 1.0   # as the server's write_row adds the round's communication figures

    rows = DelayedRows(None, write_row)
    rows.add({"round": 1, "train_loss": 0.5})
    saved = rows.saved()
    rows.attach_reports([])
    rows.flush()
    assert saved == [{"row": {"round": 1, "train_loss": 0.5}, "model": None}]


def test_a_checkpoint_older_than_an_option_resumes_with_its_default(tmp_path):
    """A run checkpointed before --merge_weight existed ran with its default, so it still resumes; another
    value is refused."""
    config = {"script": "AsyncFedAvg", "model": "mlp", "compensation": "secant", "max_epoch": 4}
    update = ServerUpdate(torch.zeros(3), stale=True)
    write_checkpoint(tmp_path, {"round": 1, "update": update.state_dict(), "rows": [], "startup_s": 1.0,
                                "options": {k: v for k, v in config.items() if k != "max_epoch"}})
    assert read_checkpoint(tmp_path, {**config, "merge_weight": 1.0})["round"] == 1
    with pytest.raises(CheckpointError, match="belongs to another run: merge_weight differ"):
        read_checkpoint(tmp_path, {**config, "merge_weight": 0.5})
