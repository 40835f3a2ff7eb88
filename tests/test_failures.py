"""A failed rank brings the whole job down, quickly, naming the rank, with nothing left running."""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from conftest import ROOT
from helpers_e2e import QUICK_MNIST, job_env, processes_with_tag, read_metrics, run_job, wait_until_gone

from Utils.transport import free_port

pytestmark = pytest.mark.slow
SCRIPTS = ["FedAvg.py", "AsyncFedAvg.py"]


@pytest.mark.parametrize("script", SCRIPTS)
@pytest.mark.parametrize("action", ["raise", "kill"])
def test_a_failing_client_stops_the_job(script, action, mnist_root, tmp_path):
    temporary = tmp_path / "tmp"   # the job's temporary directory: the ranks' traceback files go there
    temporary.mkdir()
    env = job_env(OVERLAP_FEDAVG_FAULT=f"2:2:{action}", TMPDIR=str(temporary))
    started = time.monotonic()
    done = run_job(script, *QUICK_MNIST, "--max_epoch", "3", out_dir=tmp_path / "run", data_dir=mnist_root,
                   env=env, timeout=120)
    assert done.returncode != 0
    assert "rank 2" in done.stderr.splitlines()[-1], done.stderr[-2000:]   # the last line names the failed rank
    assert ("injected fault" in done.stderr) if action == "raise" else ("SIGKILL" in done.stderr)
    assert "Traceback" not in done.stderr   # one line says what failed (OVERLAP_FEDAVG_DEBUG shows more)
    assert time.monotonic() - started < 60   # far below --timeout 60 + start-up: no waiting it out
    assert wait_until_gone(env["OVERLAP_FEDAVG_TEST_TAG"]) == []
    assert sorted(path.name for path in temporary.iterdir()
                  if path.name.startswith(("pytorch-errorfile-", "pymp-"))) == []   # nothing left behind


@pytest.mark.parametrize("problem, options, message", [
    ("out_dir is a file", [], "is a file; give a directory"),
    ("more clients than shards", ["--world_size", "9", "--max_train_samples", "300"],
     "--partition noniid: 8 clients need at least one of the 3 shards of 100 samples each; use fewer clients"),
])
def test_a_job_no_partition_or_run_directory_can_serve_is_refused_in_one_line(problem, options, message,
                                                                              mnist_root, tmp_path):
    out_dir = tmp_path / "run"
    if problem == "out_dir is a file":
        out_dir.write_text("not a directory")
    env = job_env()
    done = run_job("FedAvg.py", *QUICK_MNIST, *options, out_dir=out_dir, data_dir=mnist_root, env=env, timeout=60)
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if "ERROR" in line]
    assert len(errors) == 1 and message in errors[0] and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert out_dir.is_file() if problem == "out_dir is a file" else not out_dir.exists()   # nothing written
    assert wait_until_gone(env["OVERLAP_FEDAVG_TEST_TAG"]) == []


@pytest.mark.parametrize("script", SCRIPTS)
def test_a_diverged_run_stops_naming_the_round_and_the_client(script, mnist_root, tmp_path):
    env = job_env()
    done = run_job(script, *QUICK_MNIST, "--max_epoch", "3", "--lr", "1000", out_dir=tmp_path / "run",
                   data_dir=mnist_root, env=env, timeout=120)
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert "rank 0 failed" in last and "round 1: client 1's model is not finite" in last, done.stderr[-2000:]
    assert "try a smaller --lr" in last and "Traceback" not in done.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())   # tools read the reason there
    assert summary["diverged"].startswith("round 1: client 1's model is not finite") and summary["rounds"] == 0
    assert wait_until_gone(env["OVERLAP_FEDAVG_TEST_TAG"]) == []


def test_a_busy_port_is_a_clear_error(mnist_root, tmp_path):
    with socket.socket() as busy:
        busy.bind(("", 0))
        busy.listen()
        port = busy.getsockname()[1]
        args = [a for a in QUICK_MNIST if a not in ("--master_port", "0")]
        env = job_env()
        done = run_job("FedAvg.py", *args, "--master_port", str(port), out_dir=tmp_path / "run",
                       data_dir=mnist_root, env=env, timeout=60)
    assert done.returncode == 2
    assert f"port {port} is already in use" in done.stderr
    assert wait_until_gone(env["OVERLAP_FEDAVG_TEST_TAG"]) == []


@pytest.mark.parametrize(("how", "whom"), [("SIGINT", "group"), ("SIGTERM", "launcher"), ("SIGKILL", "launcher")],
                         ids=["ctrl-c", "terminate-launcher", "kill-launcher"])
def test_stopping_the_launcher_stops_every_process(how, whom, mnist_root, tmp_path):
    """Ctrl-C in a terminal signals the whole group; `kill` reaches the launcher alone. No rank survives."""
    env = job_env()
    job = subprocess.Popen([sys.executable, "FedAvg.py", *QUICK_MNIST, "--max_epoch", "50",
                            "--out_dir", str(tmp_path / "run"), "--data_dir", str(mnist_root)],
                           cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           start_new_session=True)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and not (tmp_path / "run" / "metrics.csv").exists():
        time.sleep(0.2)
    time.sleep(1.0)
    assert len(processes_with_tag(env["OVERLAP_FEDAVG_TEST_TAG"])) >= 4   # launcher + 3 ranks
    signum = getattr(signal, how)
    if whom == "group":
        os.killpg(job.pid, signum)
    else:
        job.send_signal(signum)
    _, stderr = job.communicate(timeout=30)
    assert job.returncode != 0
    if how != "SIGKILL":
        assert "stopping every rank" in stderr
        assert "leaked" not in stderr, stderr[-2000:]   # a terminated rank holds no named semaphore
    assert wait_until_gone(env["OVERLAP_FEDAVG_TEST_TAG"]) == []


def test_ctrl_c_stops_a_whole_search_not_just_its_trial(mnist_root, tmp_path):
    pytest.importorskip("optuna")
    env = job_env()
    job = subprocess.Popen([sys.executable, "AsyncFedAvg.py", *QUICK_MNIST, "--max_epoch", "50", "--optuna",
                            "--optuna_lr", "0.005", "0.05", "--optuna_trials", "3",
                            "--out_dir", str(tmp_path / "search"), "--data_dir", str(mnist_root)],
                           cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           start_new_session=True)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and not (tmp_path / "search" / "trial0" / "metrics.csv").exists():
        time.sleep(0.2)
    os.killpg(job.pid, signal.SIGINT)
    _, stderr = job.communicate(timeout=30)
    assert job.returncode == 130, stderr[-2000:]
    assert "optuna: interrupted in trial 0" in stderr and "Traceback" not in stderr
    assert sorted(p.name for p in (tmp_path / "search").iterdir()) == ["trial0"]
    assert wait_until_gone(env["OVERLAP_FEDAVG_TEST_TAG"]) == []


def test_a_dead_peer_ends_a_job_started_rank_by_rank(mnist_root, tmp_path):
    """Several machines: no launcher watches the ranks, so the survivors notice on their own and exit."""
    port = str(free_port())
    env_base = job_env(OVERLAP_FEDAVG_FAULT="2:2:kill")
    args = [a for a in QUICK_MNIST if a not in ("--master_port", "0", "--timeout", "60")]
    procs = []
    for rank in range(3):
        env = {**env_base, "RANK": str(rank), "WORLD_SIZE": "3", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}
        procs.append(subprocess.Popen([sys.executable, "FedAvg.py", *args, "--max_epoch", "4", "--timeout", "20",
                                       "--out_dir", str(tmp_path / "run"), "--data_dir", str(mnist_root)],
                                      cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outputs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode != 0 for p in procs), [p.returncode for p in procs]
    assert "rank 2" in outputs[0][1], outputs[0][1][-2000:]   # the server names the rank it lost
    assert wait_until_gone(env_base["OVERLAP_FEDAVG_TEST_TAG"]) == []


FAULT_OPTIONS = [a for a in QUICK_MNIST if a not in ("--timeout", "60")] + ["--timeout", "20", "--max_epoch", "4"]
# Overlap-FedAvg with the client merge: every client carries state (its start) that a resume must restore.
SCRIPT_OPTIONS = {"FedAvg.py": [],
                  "AsyncFedAvg.py": ["--compensation", "local", "--merge_weight", "0.5", "--mom", "0.5"]}
TIMING = ("round_s", "train_s", "comm_wait_s", "comm_s", "wall_s", "eval_s", "waited_for")


@pytest.fixture(scope="module")
def uninterrupted(mnist_root, tmp_path_factory) -> dict:
    """Each script's metrics without a fault, timing aside: what a resumed run must give."""
    metrics = {}
    for script in SCRIPTS:
        out_dir = tmp_path_factory.mktemp("uninterrupted") / "run"
        done = run_job(script, *FAULT_OPTIONS, *SCRIPT_OPTIONS[script], out_dir=out_dir, data_dir=mnist_root)
        assert done.returncode == 0, done.stderr[-2000:]
        metrics[script] = [{k: v for k, v in r.items() if k not in TIMING} for r in read_metrics(out_dir)]
    return metrics


def test_a_job_started_rank_by_rank_resumes_as_on_several_machines(uninterrupted, mnist_root, tmp_path):
    """docs/resume.md: rank 0 gets --resume RUN_DIR, the clients the run's original command line; the server
    tells them the round. The resumed run ends with the uninterrupted run's metrics."""
    run, port = tmp_path / "run", str(free_port())
    options = [a for a in FAULT_OPTIONS if a not in ("--master_port", "0")] + SCRIPT_OPTIONS["AsyncFedAvg.py"]
    original = [sys.executable, "AsyncFedAvg.py", *options, "--out_dir", str(run), "--data_dir", str(mnist_root)]
    resumed = [sys.executable, "AsyncFedAvg.py", "--resume", str(run), "--timeout", "20", "--data_dir", str(mnist_root)]

    def start_ranks(env_base: dict, rank0_command: list[str]) -> list[subprocess.Popen]:
        return [subprocess.Popen(rank0_command if rank == 0 else original, cwd=ROOT, text=True,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 env={**env_base, "RANK": str(rank), "WORLD_SIZE": "3", "MASTER_ADDR": "127.0.0.1",
                                      "MASTER_PORT": port})
                for rank in range(3)]

    failed = start_ranks(job_env(OVERLAP_FEDAVG_FAULT="2:3:kill"), original)   # client 2 dies in round 3
    for p in failed:
        p.communicate(timeout=120)
    assert all(p.returncode != 0 for p in failed)
    assert len(read_metrics(run)) < 4
    env = job_env()
    procs = start_ranks(env, resumed)
    outputs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outputs[0][1][-2000:]
    rows = [{k: v for k, v in r.items() if k not in TIMING} for r in read_metrics(run)]
    assert rows == uninterrupted["AsyncFedAvg.py"]
    assert wait_until_gone(env["OVERLAP_FEDAVG_TEST_TAG"]) == []


@pytest.mark.parametrize(("script", "fault", "names"), [
    ("AsyncFedAvg.py", "2:3:kill", "rank 2 died (signal SIGKILL)"),               # while training
    ("FedAvg.py", "1:3:kill-upload", "rank 1 died (signal SIGKILL)"),             # while uploading
    ("AsyncFedAvg.py", "2:3:kill-download", "rank 2 died (signal SIGKILL)"),      # while downloading
    ("FedAvg.py", "0:3:kill", "rank 0 died (signal SIGKILL)"),                    # the server
    ("AsyncFedAvg.py", "2:3:stop", "rank 0 failed: rank 2 did not answer for 20 s (the "
                                   "server was waiting for client 2's upload"),  # hung, not dead
], ids=["client-training", "client-uploading", "client-downloading", "server", "client-stopped"])
def test_a_fault_ends_the_job_in_one_line_and_the_checkpoint_resumes(script, fault, names, uninterrupted,
                                                                     mnist_root, tmp_path):
    """Every rank ends, one line names the failed rank and what it was doing, and the last checkpoint resumes
    to the uninterrupted run's metrics. A stopped rank is noticed within --timeout (20 s here)."""
    env = job_env(OVERLAP_FEDAVG_FAULT=fault)
    run = tmp_path / "run"
    started = time.monotonic()
    failed = run_job(script, *FAULT_OPTIONS, *SCRIPT_OPTIONS[script], out_dir=run, data_dir=mnist_root, env=env,
                     timeout=120)
    assert failed.returncode == 1
    errors = [line for line in failed.stderr.splitlines() if "[launcher] ERROR" in line]
    assert len(errors) == 1 and names in errors[0], failed.stderr[-2000:]
    assert "Traceback" not in failed.stderr
    assert time.monotonic() - started < 60
    assert wait_until_gone(env["OVERLAP_FEDAVG_TEST_TAG"]) == []
    resumed = run_job(script, "--resume", str(run), "--master_port", "0", out_dir=run, data_dir=mnist_root)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert [{k: v for k, v in r.items() if k not in TIMING} for r in read_metrics(run)] == uninterrupted[script]


def test_a_client_with_other_options_is_refused_before_any_model_is_sent(mnist_root, tmp_path):
    """Several machines: a client started with another --lr would compute another run; the server says so."""
    port = str(free_port())
    env_base = job_env()
    args = [a for a in QUICK_MNIST if a not in ("--master_port", "0", "--timeout", "60")] + ["--timeout", "20"]
    procs = []
    for rank in range(3):
        env = {**env_base, "RANK": str(rank), "WORLD_SIZE": "3", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}
        lr = ["--lr", "0.05"] if rank == 2 else []
        procs.append(subprocess.Popen([sys.executable, "FedAvg.py", *args, *lr, "--max_epoch", "2",
                                       "--out_dir", str(tmp_path / f"run{rank}"), "--data_dir", str(mnist_root)],
                                      cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outputs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode != 0 for p in procs), [p.returncode for p in procs]
    last = outputs[0][1].strip().splitlines()[-1]
    assert "client rank 2 runs with other options or another model than the server" in last, outputs[0][1][-2000:]
    assert "Traceback" not in outputs[0][1]
    assert wait_until_gone(env_base["OVERLAP_FEDAVG_TEST_TAG"]) == []


# Compressed runs carry state on both sides: the server's replica of what the clients hold, and each client's
# error-feedback residual (merging, also its start) in the run directory's client-state files.
COMPRESSED = {"fedavg-int8": ("FedAvg.py", ["--compress", "int8"], "1:3:kill"),
              "merge-topk-server": ("AsyncFedAvg.py", ["--compress", "topk", "--topk_ratio", "0.1", "--merge_weight",
                                                       "0.5", "--mom", "0.5"], "0:3:kill"),
              "secant-fp16-client": ("AsyncFedAvg.py", ["--compress", "fp16", "--compensation", "secant"],
                                     "2:3:kill-download")}


@pytest.mark.parametrize("case", sorted(COMPRESSED))
def test_a_compressed_run_resumes_to_the_uninterrupted_metrics(case, mnist_root, tmp_path):
    script, options, fault = COMPRESSED[case]
    plain = run_job(script, *FAULT_OPTIONS, *options, out_dir=tmp_path / "plain", data_dir=mnist_root)
    assert plain.returncode == 0, plain.stderr[-2000:]
    run = tmp_path / "run"
    failed = run_job(script, *FAULT_OPTIONS, *options, out_dir=run, data_dir=mnist_root,
                     env=job_env(OVERLAP_FEDAVG_FAULT=fault), timeout=120)
    # stopped in round 3, after a checkpoint: the resume continues mid-run, from the saved client state
    assert failed.returncode == 1 and (run / "checkpoint.pt").is_file() and (run / "client-state").is_dir()
    resumed = run_job(script, "--resume", str(run), "--master_port", "0", out_dir=run, data_dir=mnist_root)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    strip = lambda rows: [{k: v for k, v in r.items() if k not in TIMING} for r in rows]  # noqa: E731
    assert strip(read_metrics(run)) == strip(read_metrics(tmp_path / "plain"))
    assert len(list((run / "client-state").glob("rank1-*.pt"))) <= 5
