"""FedAvg.py end to end: 3-process jobs on real MNIST and a real text corpus, outputs, determinism."""
import json
import math

import pytest
import torch
from helpers_e2e import QUICK_MNIST, TIMING_COLUMNS, job_env, read_config, read_metrics, replay_schedule, run_job

from Networks import build_model

pytestmark = pytest.mark.slow

EXPECTED_COLUMNS = ["round", "accuracy", "test_loss", "train_loss", "round_s", "train_s", "comm_wait_s",
                    "comm_s", "bytes_up", "bytes_down", "wall_s", "comp_coef", "eval_s", "waited_for"]


@pytest.fixture(scope="module")
def mnist_run(mnist_root, tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("fedavg") / "run"
    done = run_job("FedAvg.py", *QUICK_MNIST, "--max_epoch", "3", out_dir=out_dir, data_dir=mnist_root)
    assert done.returncode == 0, done.stderr[-3000:]
    return out_dir, done


def test_fedavg_and_fedavgm_match_the_schedule_written_out(mnist_run, mnist_root, tmp_path):
    """Every round trains from the latest global model; FedAvgM adds the server's Nesterov step."""
    out_dir, _ = mnist_run
    plain = replay_schedule(mnist_root, 3, overlap=False)
    assert [f"{a:.6g}" for a in plain] == [r["accuracy"] for r in read_metrics(out_dir)]
    done = run_job("FedAvg.py", *QUICK_MNIST, "--max_epoch", "3", "--mom", "0.5", "--server_lr", "0.7",
                   out_dir=tmp_path / "fedavgm", data_dir=mnist_root)
    assert done.returncode == 0, done.stderr[-3000:]
    momentum = replay_schedule(mnist_root, 3, overlap=False, momentum=0.5, server_lr=0.7)
    assert [f"{a:.6g}" for a in momentum] == [r["accuracy"] for r in read_metrics(tmp_path / "fedavgm")]
    assert momentum != plain


def test_mnist_learns_and_writes_the_run_directory(mnist_run):
    out_dir, done = mnist_run
    rows = read_metrics(out_dir)
    assert list(rows[0].keys()) == EXPECTED_COLUMNS
    assert [int(r["round"]) for r in rows] == [1, 2, 3]
    accuracy = [float(r["accuracy"]) for r in rows]
    test_loss = [float(r["test_loss"]) for r in rows]
    train_loss = [float(r["train_loss"]) for r in rows]
    assert accuracy[-1] > 0.80, accuracy
    assert test_loss[-1] < test_loss[0] and train_loss[-1] < train_loss[0], (test_loss, train_loss)
    for row in rows:   # every timing and byte column is filled in, including the last round's (waited_for is
        for column in (TIMING_COLUMNS - {"waited_for"}) | {"bytes_up", "bytes_down"}:   # empty when none was)
            assert row[column] != "" and float(row[column]) >= 0, (column, row)
    assert float(rows[0]["bytes_down"]) == 2 * (199_210 + 1) * 4   # model + continue flag, 2 clients
    assert float(rows[0]["bytes_up"]) == 2 * (199_210 + 4) * 4     # model + 4 statistics

    config = read_config(out_dir)
    assert config["script"] == "FedAvg" and config["overlap"] is False and config["world_size"] == 3
    log = (out_dir / "train.log").read_text()
    assert "round 3/3" in log and "done: 3 rounds" in log
    assert "done: 3 rounds" in done.stderr   # the final line sums up

    model = build_model("mlp", 10)
    for checkpoint in ("final_model.pt", "best_model.pt"):   # both load into a freshly built model
        model.load_state_dict(torch.load(out_dir / checkpoint, weights_only=True))

    summary = json.loads((out_dir / "summary.json").read_text())   # what tools read instead of train.log
    assert (summary["script"], summary["dataset"], summary["metric"], summary["rounds"]) == \
        ("FedAvg", "mnist", "accuracy", 3)
    assert f"{summary['final']:.6g}" == rows[-1]["accuracy"] and summary["best"] == max(accuracy)
    assert summary["bytes_up"] == sum(float(r["bytes_up"]) for r in rows)
    assert set(summary["time_to_target_s"]) == {"0.93", "0.95", "0.97"}
    assert 0 < summary["startup_s"] < summary["rounds_wall_s"] <= summary["wall_s"]


def test_same_seed_gives_identical_metrics(mnist_run, mnist_root, tmp_path):
    first, _ = mnist_run
    done = run_job("FedAvg.py", *QUICK_MNIST, "--max_epoch", "3", out_dir=tmp_path / "again", data_dir=mnist_root)
    assert done.returncode == 0, done.stderr[-3000:]
    strip = lambda rows: [{k: v for k, v in r.items() if k not in TIMING_COLUMNS} for r in rows]  # noqa: E731
    assert strip(read_metrics(first)) == strip(read_metrics(tmp_path / "again"))


def test_text_corpus_learns(ptb_root, tmp_path):
    done = run_job("FedAvg.py", "--dataset", "ptb", "--model", "transformer", "--world_size", "3",
                   "--max_train_samples", "30000", "--batch_size", "10", "--lr", "5", "--client_epoch", "1",
                   "--max_epoch", "2", "--partition", "iid", "--master_port", "0", "--timeout", "120",
                   out_dir=tmp_path / "ptb", data_dir=ptb_root)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = read_metrics(tmp_path / "ptb")
    assert "perplexity" in rows[0] and "accuracy" not in rows[0]
    perplexity = [float(r["perplexity"]) for r in rows]
    train_loss = [float(r["train_loss"]) for r in rows]
    assert train_loss[1] < train_loss[0], train_loss
    assert perplexity[1] < perplexity[0] and perplexity[1] < 2000, perplexity   # uniform guess: 10,000
    assert math.isfinite(float(rows[1]["test_loss"]))
    assert "best perplexity" in done.stderr


def test_runs_as_separate_processes_started_through_the_environment(mnist_root, tmp_path):
    """As on several machines: each rank is its own OS process, told its rank by RANK/WORLD_SIZE/MASTER_*."""
    import subprocess
    import sys

    from conftest import ROOT

    from Utils.transport import free_port
    port = str(free_port())
    out_dir = tmp_path / "env"
    procs = []
    for rank in range(3):
        env = job_env(RANK=str(rank), WORLD_SIZE="3", MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
        args = [a for a in QUICK_MNIST if a not in ("--master_port", "0")]
        procs.append(subprocess.Popen([sys.executable, "FedAvg.py", *args, "--max_epoch", "2",
                                       "--out_dir", str(out_dir), "--data_dir", str(mnist_root)],
                                      cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outputs = [p.communicate(timeout=240) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outputs[0][1][-3000:]
    rows = read_metrics(out_dir)
    assert len(rows) == 2 and float(rows[-1]["accuracy"]) > 0.7
    assert "[rank 1] INFO rank 1 of 3: " in outputs[1][1] and "Traceback" not in outputs[1][1]   # its own lines


def test_a_seeded_test_subset_is_what_the_server_evaluates(mnist_root, tmp_path):
    """--test_samples: every round's metrics are those of the saved model on the seeded subset."""
    from Utils.data.datasets import load_dataset
    from Utils.data.partition import limit_test_set
    done = run_job("FedAvg.py", *QUICK_MNIST, "--max_epoch", "2", "--test_samples", "700",
                   out_dir=tmp_path / "run", data_dir=mnist_root)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = read_metrics(tmp_path / "run")
    assert all(abs(float(r["accuracy"]) * 700 - round(float(r["accuracy"]) * 700)) < 1e-3 for r in rows)
    model = build_model("mlp", 10)
    model.load_state_dict(torch.load(tmp_path / "run" / "final_model.pt", weights_only=True))
    subset = limit_test_set(load_dataset("mnist", mnist_root), 700, 2020)
    assert f"{subset.evaluate(model)['accuracy']:.6g}" == rows[-1]["accuracy"]
