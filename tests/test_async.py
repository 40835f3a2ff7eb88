"""AsyncFedAvg.py end to end: the one-version-stale pipeline, determinism on any network, grid, optuna."""
import numpy as np
import pytest
from helpers_e2e import QUICK_MNIST, TIMING_COLUMNS, job_env, read_config, read_metrics, replay_schedule, run_job

from Utils.tools.replay import ScheduleReplay, server_update_step

pytestmark = pytest.mark.slow
SERVER = ("--compensation", "full", "--mom", "0.5", "--server_lr", "0.3")


def without_timing(rows):
    return [{k: v for k, v in r.items() if k not in TIMING_COLUMNS} for r in rows]


@pytest.fixture(scope="module")
def overlap_run(mnist_root, tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("overlap") / "run"
    done = run_job("AsyncFedAvg.py", *QUICK_MNIST, *SERVER, "--max_epoch", "3", out_dir=out_dir,
                   data_dir=mnist_root)
    assert done.returncode == 0, done.stderr[-3000:]
    return out_dir


def test_overlap_learns_and_matches_the_pipeline_written_out(overlap_run, mnist_root):
    rows = read_metrics(overlap_run)
    accuracy = [float(r["accuracy"]) for r in rows]
    assert len(rows) == 3 and accuracy[-1] > 0.65 and accuracy[0] < accuracy[1] < accuracy[2], accuracy
    assert all(r[c] != "" for r in rows for c in ("comm_s", "comm_wait_s", "train_s")), rows
    config = read_config(overlap_run)
    assert config["overlap"] is True and config["compensation"] == "full" and config["mom"] == 0.5
    # The distributed run trains exactly the one-version-stale schedule, bit for bit.
    replayed = replay_schedule(mnist_root, 3, overlap=True, momentum=0.5, server_lr=0.3, compensation="full")
    assert [f"{a:.6g}" for a in replayed] == [r["accuracy"] for r in rows]


def test_the_secant_coefficient_is_estimated_and_logged_every_round(mnist_root, tmp_path):
    done = run_job("AsyncFedAvg.py", *QUICK_MNIST, "--max_epoch", "3", "--compensation", "secant", "--comp_coef",
                   "0.3", "--mom", "0", "--server_lr", "1", out_dir=tmp_path / "secant", data_dir=mnist_root)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = read_metrics(tmp_path / "secant")
    coefs = [float(r["comp_coef"]) for r in rows]
    assert coefs[:2] == [0.3, 0.3] and 0.0 <= coefs[2] <= 1.0 and coefs[2] != 0.3, coefs   # prior, then estimate
    assert "| C " in done.stderr
    replayed = replay_schedule(mnist_root, 3, overlap=True, compensation="secant", comp_coef=0.3)
    assert [f"{a:.6g}" for a in replayed] == [r["accuracy"] for r in rows]


@pytest.mark.parametrize("merge", [("--merge_weight", "1"),
                                   ("--merge_weight", "0.5", "--mom", "0.5", "--server_lr", "0.7")],
                         ids=["full-merge", "half-merge-fedavgm"])
def test_the_client_merge_trains_exactly_the_replayed_schedule_on_any_link(merge, mnist_root, tmp_path):
    """--compensation local: each client starts from the late global model plus b times its own progress; the
    server averages as FedAvg(M) does. Bit for bit the one-process replay, on a fast and on a slow link."""
    options = (*QUICK_MNIST, "--max_epoch", "3", "--compensation", "local", *merge)
    fast = run_job("AsyncFedAvg.py", *options, out_dir=tmp_path / "fast", data_dir=mnist_root)
    assert fast.returncode == 0, fast.stderr[-3000:]
    rows = read_metrics(tmp_path / "fast")
    assert all(r["comp_coef"] == "" for r in rows) and "client merge" in fast.stderr   # no server-side C
    values = dict(zip(merge[::2], merge[1::2], strict=True))
    replayed = replay_schedule(mnist_root, 3, overlap=True, compensation="local",
                               merge_weight=float(values["--merge_weight"]), momentum=float(values.get("--mom", 0)),
                               server_lr=float(values.get("--server_lr", 1)))
    assert [f"{a:.6g}" for a in replayed] == [r["accuracy"] for r in rows]
    slow = run_job("AsyncFedAvg.py", *options, "--bandwidth", "100", "--latency", "30", out_dir=tmp_path / "slow",
                   data_dir=mnist_root)
    assert slow.returncode == 0, slow.stderr[-3000:]
    assert without_timing(read_metrics(tmp_path / "slow")) == without_timing(rows)


def test_a_text_job_with_the_client_merge_trains_exactly_the_replayed_schedule(ptb_root, tmp_path):
    """The replay covers the language model too (its vocabulary, clients weighed by tokens, --test_samples): a PTB
    Transformer job with the client merge, perplexity bit for bit."""
    done = run_job("AsyncFedAvg.py", "--dataset", "ptb", "--model", "transformer", "--world_size", "3",
                   "--max_train_samples", "8000", "--test_samples", "2000", "--lr", "1", "--client_epoch", "1",
                   "--max_epoch", "2", "--master_port", "0", "--timeout", "60", out_dir=tmp_path / "ptb",
                   data_dir=ptb_root)
    assert done.returncode == 0, done.stderr[-3000:]
    replay = ScheduleReplay(ptb_root, dataset="ptb", model="transformer", num_clients=2, max_train_samples=8000,
                            test_samples=2000, lr=1.0)
    replayed = replay.run_client_merge(server_update_step(replay.initial, overlap=True, compensation="local"), 2)
    assert [f"{p:.6g}" for p in replayed] == [r["perplexity"] for r in read_metrics(tmp_path / "ptb")]


def test_identical_metrics_on_a_slow_emulated_link(overlap_run, mnist_root, tmp_path):
    # 799 kB per message at 100 Mbit/s + 30 ms latency: ~90 ms per transfer, near the training time.
    done = run_job("AsyncFedAvg.py", *QUICK_MNIST, *SERVER, "--max_epoch", "3", "--bandwidth", "100",
                   "--latency", "30", out_dir=tmp_path / "slow", data_dir=mnist_root)
    assert done.returncode == 0, done.stderr[-3000:]
    slow = read_metrics(tmp_path / "slow")
    assert without_timing(slow) == without_timing(read_metrics(overlap_run))
    assert np.mean([float(r["comm_s"]) for r in slow]) > 2 * 0.09   # the link was really slow


def test_grid_runs_each_combination_in_its_own_directory(mnist_root, tmp_path):
    done = run_job("AsyncFedAvg.py", *QUICK_MNIST, "--max_epoch", "1", "--lr", "0.01", "0.05",
                   "--mom", "0.5", out_dir=tmp_path / "grid", data_dir=mnist_root)
    assert done.returncode == 0, done.stderr[-3000:]
    for lr in ("0.01", "0.05"):
        run_dir = tmp_path / "grid" / f"lr{lr}-mom0.5-lambd0.04"
        assert read_config(run_dir)["lr"] == float(lr) and len(read_metrics(run_dir)) == 1
    assert "grid summary" in done.stderr and "lr0.05-mom0.5-lambd0.04" in done.stderr.split("grid summary")[1]


def test_optuna_searches_and_prunes_early_stopped_trials(mnist_root, tmp_path):
    pytest.importorskip("optuna")
    done = run_job("AsyncFedAvg.py", *QUICK_MNIST, "--max_epoch", "2", "--optuna", "--optuna_lr", "0.005",
                   "0.05", "--optuna_trials", "2", "--optuna_early_stop", "1", "0.5",
                   out_dir=tmp_path / "search", data_dir=mnist_root)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "optuna: 2 trials" in done.stderr and "(maximize accuracy)" in done.stderr
    assert "best trial" in done.stderr
    lrs = {read_config(tmp_path / "search" / f"trial{n}")["lr"] for n in range(2)}
    assert len(lrs) == 2 and all(0.005 <= lr <= 0.05 for lr in lrs)


def test_failed_trials_are_one_line_each_and_the_search_goes_on(mnist_root, tmp_path):
    pytest.importorskip("optuna")
    done = run_job("AsyncFedAvg.py", *QUICK_MNIST, "--max_epoch", "2", "--optuna", "--optuna_lr", "0.005", "0.05",
                   "--optuna_trials", "2", out_dir=tmp_path / "search", data_dir=mnist_root,
                   env=job_env(OVERLAP_FEDAVG_FAULT="1:1:raise"))   # every trial's client 1 raises in round 1
    assert done.returncode == 1, done.stderr[-3000:]
    assert done.stderr.count("failed with exit 1") == 2 and "optuna: no trial completed" in done.stderr
    assert "Traceback" not in done.stderr, done.stderr[-3000:]


def test_early_stop_ends_a_poor_run_and_every_process(mnist_root, tmp_path):
    env = job_env()
    done = run_job("AsyncFedAvg.py", *QUICK_MNIST, "--max_epoch", "5", "--optuna_early_stop", "1", "0.99",
                   out_dir=tmp_path / "stop", data_dir=mnist_root, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(read_metrics(tmp_path / "stop")) == 2   # decided on G_1, announced with G_2
    assert "stopped early" in done.stderr
    # the uninterrupted run ends there, so a resumed one must too: refused, with nothing written
    resumed = run_job("AsyncFedAvg.py", "--resume", str(tmp_path / "stop"), out_dir=tmp_path / "stop",
                      data_dir=mnist_root, env=env)
    assert resumed.returncode == 2
    assert "stopped early by --optuna_early_stop after round 2" in resumed.stderr.strip().splitlines()[-1]
    assert len(read_metrics(tmp_path / "stop")) == 2


def test_optuna_missing_is_a_clear_error(mnist_root, tmp_path):
    blocker = tmp_path / "block"
    blocker.mkdir()
    (blocker / "optuna.py").write_text("raise ImportError('optuna is not installed')\n")
    env = job_env(PYTHONPATH=str(blocker))
    done = run_job("AsyncFedAvg.py", *QUICK_MNIST, "--optuna", "--optuna_lr", "0.005", "0.05",
                   out_dir=tmp_path / "none", data_dir=mnist_root, env=env, timeout=60)
    assert done.returncode == 2
    assert "--optuna needs the optuna package" in done.stderr.strip().splitlines()[-1]


def test_search_direction_follows_the_metric():
    from Characters.sweep import study_direction
    assert study_direction("mnist") == ("accuracy", "maximize")
    assert study_direction("wikitext2") == ("perplexity", "minimize")
